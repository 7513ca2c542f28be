"""Composable sensor preprocessing, dataset-agnostic: NaN policy, train-only z-score, low-pass, resampling.

A dataset lists its steps in its params (`preprocessing: [...]`, each tagged by `name`); the default is
DETACH's: NaN policy -> per-channel z-score (training split statistics) -> Butterworth low-pass (order 4,
cutoff 0.1 x Nyquist, zero phase) -> linear resampling to `data.sensor_length` steps.

Windows travel as `Windows(x [N, C, n] float64, dead [N, C] bool)`: `dead` marks channels the NaN policy
dropped in a window, so statistics skip them and the z-score leaves them at exactly 0.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from detach_framework.contracts import PreprocessingRestoreSource, PreprocessingStateSource
from detach_framework.errors import UserError
from detach_framework.registry import MAX_SENSOR_LENGTH, ComponentParams

DEAD_CHANNEL_NAN_FRACTION = 0.5  # DETACH: a channel more NaN than this in a window carries no information
PREPROCESSING_FILE = "preprocessing.json"  # the fitted pipeline, written into the run directory
_MIN_STD = 1e-6  # a channel that never moved in train stays unscaled rather than blown up


# ---- the plain functions ------------------------------------------------------------------------------


def resolve_nan(window: np.ndarray, dead_fraction: float = DEAD_CHANNEL_NAN_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """NaN policy on one raw window [C, n]: a channel more than `dead_fraction` NaN is zeroed (and flagged
    dead), any other NaN is interpolated linearly, edge values held. Returns (filled, dead [C] bool).
    +-inf counts as missing too: a sensor glitch, never a value to scale, filter or interpolate from."""
    window = np.asarray(window, np.float64)
    missing = ~np.isfinite(window)
    dead = missing.mean(axis=1) > dead_fraction
    out = np.where(missing, 0.0, window)
    out[dead] = 0.0
    steps = np.arange(window.shape[1])
    for c in np.flatnonzero(missing.any(axis=1) & ~dead):
        ok = ~missing[c]
        out[c] = np.interp(steps, steps[ok], window[c, ok])
    return out, dead


def resample_linear(x: np.ndarray, length: int) -> np.ndarray:
    """Linear resampling of the last axis to `length` points spanning the same interval."""
    n = x.shape[-1]
    if n == 1:
        return np.repeat(x, length, axis=-1)
    pos = np.linspace(0.0, n - 1, length)
    i0 = np.minimum(np.floor(pos).astype(np.int64), n - 2)
    frac = pos - i0
    return x[..., i0] * (1.0 - frac) + x[..., i0 + 1] * frac


def butter_lowpass(x: np.ndarray, order: int = 4, cutoff: float = 0.1, zero_phase: bool = True) -> np.ndarray:
    """Butterworth low-pass along the last axis; `cutoff` is a fraction of the Nyquist frequency.

    Zero phase runs the filter forwards and backwards (scipy.signal.sosfiltfilt), which squares the
    magnitude response; second-order sections keep it stable at low cutoffs.
    """
    from scipy import signal  # here, not at the top: importing it takes seconds that only filtering needs

    x = np.asarray(x, np.float64)
    n = x.shape[-1]
    sos = signal.butter(order, cutoff, btype="low", output="sos")
    if not zero_phase:
        # Start from the first sample's steady state so a constant offset does not ring.
        zi = signal.sosfilt_zi(sos).reshape((len(sos),) + (1,) * (x.ndim - 1) + (2,)) * x[None, ..., :1]
        return signal.sosfilt(sos, x, axis=-1, zi=zi)[0]
    if n < 2:
        return x.copy()
    padlen = 3 * (2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum())))
    return signal.sosfiltfilt(sos, x, axis=-1, padlen=min(padlen, n - 1))  # short windows: shorter padding


def channel_statistics(
    x: np.ndarray, dead: np.ndarray, min_std: float = _MIN_STD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel (mean, std, count) over windows x [N, C, L], skipping windows where the channel is dead."""
    live = (~dead)[:, :, None].astype(np.float64)
    count = live.sum(axis=(0, 2)) * x.shape[2]
    safe = np.maximum(count, 1.0)
    mean = (x * live).sum(axis=(0, 2)) / safe
    var = (((x - mean[None, :, None]) ** 2) * live).sum(axis=(0, 2)) / safe
    std = np.sqrt(var)
    return mean, np.where(std < min_std, 1.0, std), count


def apply_zscore(x: np.ndarray, dead: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    z = (x - mean[None, :, None]) / std[None, :, None]
    z[dead] = 0.0  # after scaling, so a dropped channel reads "no information" rather than a spike
    return z


# ---- spec entries --------------------------------------------------------------------------------------


class NanPolicyStep(ComponentParams):
    """Channels more than `dead_fraction` NaN in a window -> 0; other NaN interpolated, edges held."""

    name: Literal["nan_policy"] = "nan_policy"
    dead_fraction: float = Field(
        DEAD_CHANNEL_NAN_FRACTION, ge=0.0, le=1.0, description="NaN share above which a channel is dropped."
    )


class ZScoreStep(ComponentParams):
    """Per-channel z-score with statistics of the TRAINING split only (written to the run directory)."""

    name: Literal["zscore"] = "zscore"
    min_std: float = Field(_MIN_STD, gt=0.0, description="Channels with a smaller train std are only centred.")


class LowPassStep(ComponentParams):
    """Butterworth low-pass (scipy.signal); cutoff as a fraction of the Nyquist frequency."""

    name: Literal["lowpass"] = "lowpass"
    order: int = Field(4, ge=1, le=12, description="Filter order.")
    cutoff: float = Field(0.1, gt=0.0, lt=1.0, description="Cutoff as a fraction of Nyquist.")
    zero_phase: bool = Field(True, description="Filter forwards and backwards (no phase shift).")


class ResampleStep(ComponentParams):
    """Linear resampling of each window to a fixed number of steps."""

    name: Literal["resample"] = "resample"
    length: int | None = Field(
        None, ge=2, le=MAX_SENSOR_LENGTH, description="Steps per window; null uses data.sensor_length."
    )


TransformStep = Annotated[NanPolicyStep | ZScoreStep | LowPassStep | ResampleStep, Field(discriminator="name")]


def detach_preprocessing() -> list[TransformStep]:
    """DETACH's preprocessing, the default of every real dataset."""
    return [NanPolicyStep(), ZScoreStep(), LowPassStep(), ResampleStep()]


# ---- the pipeline --------------------------------------------------------------------------------------


@dataclass
class Windows:
    x: np.ndarray  # [N, C, n] float64
    dead: np.ndarray  # [N, C] bool


def _nan_policy(step: NanPolicyStep) -> Callable[[Windows], Windows]:
    def apply(w: Windows) -> Windows:
        x, dead = w.x.copy(), w.dead.copy()
        for i in np.flatnonzero(~np.isfinite(x).all(axis=(1, 2))):  # NaN or +-inf
            x[i], d = resolve_nan(x[i], step.dead_fraction)
            dead[i] |= d
        return Windows(x, dead)

    return apply


class Pipeline:
    """The steps of a dataset's `preprocessing`, fitted on training windows, then applied to any window.

    Fitting streams the training windows (chunks from `fit`'s callable) through the steps before each
    z-score, so memory stays bounded on long datasets; chunk statistics combine exactly (Chan et al.).
    """

    def __init__(self, steps: Sequence[TransformStep], sensor_length: int, where: str) -> None:
        self.steps = list(steps)
        self.sensor_length = int(sensor_length)
        self.where = where
        self.stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # step index -> (mean, std)
        self.fit_windows = 0
        lengths = [s.length or self.sensor_length for s in self.steps if isinstance(s, ResampleStep)]
        self.output_length: int | None = lengths[-1] if lengths else None
        if self.output_length is not None and self.output_length != self.sensor_length:
            raise UserError(
                f"{where}: preprocessing resamples to {self.output_length} steps but data.sensor_length is "
                f"{self.sensor_length} (drop `length` to follow data.sensor_length)"
            )

    @property
    def needs_fit(self) -> bool:
        return any(isinstance(s, ZScoreStep) for s in self.steps)

    def fit(self, chunks: Callable[[], Iterable[np.ndarray]]) -> None:
        """Fit every z-score on the windows `chunks()` yields (raw [N, C, n]); call with training windows only."""
        for k, step in enumerate(self.steps):
            if not isinstance(step, ZScoreStep):
                continue
            total = None
            windows = 0
            for raw in chunks():
                w = self._run(self._wrap(raw), stop=k)
                windows += len(w.x)
                part = _chunk_moments(w.x, w.dead)
                total = part if total is None else _combine(total, part)
            if total is None or windows == 0:
                raise UserError(f"{self.where}: no training windows to fit the z-score on")
            mean, m2, count = total
            std = np.sqrt(m2 / np.maximum(count, 1.0))
            self.stats[k] = (mean, np.where(std < step.min_std, 1.0, std))
            self.fit_windows = windows

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Raw windows [N, C, n] (NaN allowed) or one window [C, n] -> float32, finite, last axis resampled."""
        single = raw.ndim == 2
        w = self._run(self._wrap(raw[None] if single else raw))
        if not np.isfinite(w.x).all():
            raise UserError(f"{self.where}: preprocessing leaves NaN or inf in a window; add a `nan_policy` step first")
        if self.output_length is None and w.x.shape[-1] != self.sensor_length:
            raise UserError(
                f"{self.where}: windows have {w.x.shape[-1]} steps but data.sensor_length is {self.sensor_length}; "
                "add a `resample` step"
            )
        out = w.x.astype(np.float32)
        return out[0] if single else out

    def _wrap(self, raw: np.ndarray) -> Windows:
        x = np.asarray(raw, np.float64)
        return Windows(x, np.zeros(x.shape[:2], bool))

    def _run(self, w: Windows, stop: int | None = None) -> Windows:
        for k, step in enumerate(self.steps[:stop]):
            if isinstance(step, NanPolicyStep):
                w = _nan_policy(step)(w)
            elif isinstance(step, ZScoreStep):
                if k not in self.stats:
                    raise RuntimeError(f"{self.where}: the z-score was applied before being fitted")
                mean, std = self.stats[k]
                w = Windows(apply_zscore(w.x, w.dead, mean, std), w.dead)
            elif isinstance(step, LowPassStep):
                x = butter_lowpass(w.x, step.order, step.cutoff, step.zero_phase)
                x[w.dead] = 0.0
                w = Windows(x, w.dead)
            elif isinstance(step, ResampleStep):
                w = Windows(resample_linear(w.x, step.length or self.sensor_length), w.dead)
        return w

    # -- persistence: the run directory keeps what training used ----------------------------------------

    def state(self, channel_names: Sequence[str]) -> dict[str, Any]:
        return {
            "steps": [s.model_dump() for s in self.steps],
            "fit_split": "train",
            "fit_windows": self.fit_windows,
            "channels": list(channel_names),
            "zscore": {
                str(k): {"mean": mean.tolist(), "std": std.tolist()} for k, (mean, std) in sorted(self.stats.items())
            },
        }

    def load_state(self, state: dict[str, Any], source: str) -> None:
        """Use statistics stored by an earlier run (the steps must match)."""
        if state.get("steps") != [s.model_dump() for s in self.steps]:
            raise UserError(f"{source}: stored preprocessing steps differ from the spec's")
        try:
            self.stats = {
                int(k): (np.asarray(v["mean"], np.float64), np.asarray(v["std"], np.float64))
                for k, v in state["zscore"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{source}: bad stored statistics ({exc})") from None
        self.fit_windows = int(state.get("fit_windows", 0))


def _chunk_moments(x: np.ndarray, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, sum of squared deviations, count) per channel over live entries; NaN and inf are skipped too."""
    live = (~dead)[:, :, None] & np.isfinite(x)
    count = live.sum(axis=(0, 2)).astype(np.float64)
    xs = np.where(live, x, 0.0)
    mean = xs.sum(axis=(0, 2)) / np.maximum(count, 1.0)
    m2 = (np.where(live, x - mean[None, :, None], 0.0) ** 2).sum(axis=(0, 2))
    return mean, m2, count


def _combine(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean_a, m2_a, n_a = a
    mean_b, m2_b, n_b = b
    n = n_a + n_b
    safe = np.maximum(n, 1.0)
    delta = mean_b - mean_a
    return mean_a + delta * n_b / safe, m2_a + m2_b + delta**2 * n_a * n_b / safe, n


def chunked(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---- run-directory hooks (called by the CLI; datasets opt in through contracts.PreprocessingState/Restore...) -


def save_preprocessing(source: Any, run_dir: Path) -> Path | None:
    """Write the source's fitted preprocessing (train statistics) into the run directory, if it has one."""
    if not isinstance(source, PreprocessingStateSource):
        return None
    from detach_framework.atomic import atomic_write_json

    path = Path(run_dir) / PREPROCESSING_FILE
    atomic_write_json(path, source.preprocessing_state())
    return path


def load_preprocessing(source: Any, run_dir: Path) -> None:
    """Evaluation of a run uses the statistics training stored, not ones recomputed from today's data."""
    path = Path(run_dir) / PREPROCESSING_FILE
    if path.is_file() and isinstance(source, PreprocessingRestoreSource):
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: unreadable ({exc})") from None
        source.load_preprocessing_state(state, str(path))
