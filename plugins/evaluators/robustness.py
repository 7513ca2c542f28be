"""Robustness of a trained run's linear probe: the probe the `linear_probe` evaluator fits (same params, same clean
train features, same seed) scores the eval split's windows again under perturbed sensor conditions.

Every perturbation changes the windows the model embedded, i.e. after the dataset's preprocessing (in the kitchen:
NaN policy, resampling to data.sensor_length, z-score with the train split's statistics), and the run's sensor side
embeds them again; video and labels stay as they are. What a perturbation needs to know of the dataset (which
channels each fixture carries, the training noise level, the sample rate) comes from its
`contracts.SensorLayoutSource.sensor_layout()`, the shifted windows from `contracts.ShiftedSensorSource`; a
condition the dataset cannot support is skipped with the reason in the table, never an error.

  clean          the windows as they are (the first row: it equals the linear_probe evaluator's numbers)
  silence_<f>    fixture f's channels read 0: what the framework's NaN policy leaves of a sensor node that sent
                 nothing (after the z-score, a dead channel is zeroed: "no information", not the train mean's
                 raw value or a resting level)
  offset_<+d>s   the sensor stream shifted d seconds against video and labels: each window's sensor samples are
                 read again from its recording d seconds later (d < 0: earlier; rounded to a raw sample) and
                 preprocessed as before (`contracts.ShiftedSensorSource`), so a shift of any length reads real
                 data (a window the shift would carry past its recording's end reads the last window there)
  noise_x<k>     sensor noise at k times the training level: noise of std sqrt(k^2 - 1) * sigma_c is added at the
                 raw rate and resampled linearly to the window's steps like the training noise, so the windows
                 hold noise of std k * sigma_c per raw sample (sigma_c: the dataset's training noise of channel c in
                 window units). One standard normal draw, seeded by the spec's seed, serves every k; channels that
                 read 0 over a whole window (dead) stay silent.

Metrics: robust/<condition>/weighted_f1 and robust/<condition>/macro_map; the table `robustness` (one row per
condition, skipped ones with the reason); the figure robustness.png.

On a finished run (evaluators are outside the spec uid, so nothing retrains), give it the run's linear_probe params
so that its clean row is the run's probe, e.g. for a run whose spec has `linear_probe: {epochs: 50, standardize:
false}`:

    detach eval RUN_DIR 'eval.evaluators=[{name: robustness, epochs: 50, standardize: false}]'

which writes RUN_DIR/eval/<eval-uid>/summary.json and plots/robustness.png (`detach report RUN_DIR` shows it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from matplotlib.figure import Figure
from pydantic import Field, field_validator

from detach_framework.contracts import EmbeddingSet, EvalContext, EvalResult, EvalWindows
from detach_framework.data.transforms import resample_linear
from detach_framework.errors import UserError
from detach_framework.evaluation import macro_map, save_figure_atomic, weighted_f1
from detach_framework.report.page import Table

from .linear_probe import LinearProbeEvaluator, LinearProbeParams

if TYPE_CHECKING:
    from detach_framework.report import ReportContext, Section

CONDITION_KINDS = ("silence", "offset", "noise")
TABLE = "robustness"
FIGURE = "robustness.png"
METRIC_PREFIX = "robust"
# The figure's bars: offset on the condition's row, table column, legend label, colour.
BARS = ((-0.2, "weighted_f1", "weighted F1", "#1f77b4"), (0.2, "macro_map", "macro mAP", "#ff7f0e"))
# The noise draw's own seed stream, so that it never coincides with the probe's generator seeded by the seed alone.
NOISE_STREAM = 17

ConditionKind = Literal["silence", "offset", "noise"]
OffsetSeconds = Annotated[float, Field(ge=-60.0, le=60.0, allow_inf_nan=False)]
NoiseFactor = Annotated[float, Field(ge=1.0, le=100.0, allow_inf_nan=False)]


def _distinct(values: list[Any], what: str) -> list[Any]:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} repeats a value: {values}")
    return values


class RobustnessParams(LinearProbeParams):
    """The linear probe's params (give it the run's linear_probe entry's, so its clean row is that probe), and the
    perturbed conditions."""

    conditions: list[ConditionKind] = Field(
        default_factory=lambda: list(CONDITION_KINDS),
        min_length=1,
        max_length=len(CONDITION_KINDS),
        description="Which perturbations to score (besides the clean windows): silence (each fixture's channels in "
        "turn), offset (the sensor stream shifted against video and labels), noise (added sensor noise).",
    )
    offsets_s: list[OffsetSeconds] = Field(
        default_factory=lambda: [0.5, 1.0],
        min_length=1,
        max_length=16,
        description="Sensor-stream shifts in seconds (non-zero, at least half a raw sample; + is later), read "
        "from the recordings. The defaults are 2x and 4x the kitchen's largest training offset (0.25 s).",
    )
    noise_factors: list[NoiseFactor] = Field(
        default_factory=lambda: [2.0, 4.0],
        min_length=1,
        max_length=16,
        description="Total sensor-noise std as multiples k >= 1 of the training level (noise of std "
        "sqrt(k^2 - 1) times that level is added).",
    )

    @field_validator("conditions")
    @classmethod
    def _conditions_distinct(cls, value: list[str]) -> list[str]:
        return _distinct(value, "conditions")

    @field_validator("offsets_s")
    @classmethod
    def _offsets_distinct_and_nonzero(cls, value: list[float]) -> list[float]:
        if 0.0 in value:
            raise ValueError("an offset of 0 s is the clean condition; give non-zero shifts")
        return _distinct(value, "offsets_s")

    @field_validator("noise_factors")
    @classmethod
    def _factors_distinct(cls, value: list[float]) -> list[float]:
        return _distinct(value, "noise_factors")


# ---- the perturbations, on windows [N, C, L] -------------------------------------------------------------------


def silence_channels(windows: np.ndarray, channels: list[int]) -> np.ndarray:
    """A copy with `channels` at 0 in every window (a dead sensor after the NaN policy and z-score)."""
    out = np.array(windows, copy=True)
    out[:, channels, :] = 0.0
    return out


def unit_noise(shape: tuple[int, int, int], raw_samples: int, seed: int) -> np.ndarray:
    """Standard normal noise drawn at the raw rate ([N, C, raw_samples], seeded) and resampled linearly to the
    windows' L = shape[-1] steps, as the datasets resample the raw stream and its noise."""
    n, c, length = shape
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, NOISE_STREAM]))
    return resample_linear(rng.standard_normal((n, c, raw_samples)), length)


def add_noise(windows: np.ndarray, noise: np.ndarray, factor: float, noise_std: np.ndarray) -> np.ndarray:
    """Windows with noise raising the training noise `noise_std` [C] to `factor` times it: `noise` (unit std per raw
    sample, from `unit_noise`) scaled by sqrt(factor^2 - 1) * noise_std; dead channels (all 0 in a window) stay 0."""
    live = np.any(windows != 0, axis=-1, keepdims=True)
    scale = math.sqrt(factor**2 - 1.0) * np.asarray(noise_std, np.float64)[None, :, None]
    return (windows + live * scale * noise).astype(windows.dtype)


@dataclass(frozen=True)
class Condition:
    """One row of the table: how the windows are changed (`apply`), or why it is `skipped`."""

    name: str
    perturbation: str
    apply: Callable[[np.ndarray], np.ndarray] | None = None
    skipped: str | None = None


def plan_conditions(params: RobustnessParams, windows: EvalWindows | None, seed: int) -> list[Condition]:
    """The perturbed conditions in order (kinds as `params.conditions` lists them); a bad offset for this dataset's
    windows is a UserError naming `offsets_s`, a condition the dataset cannot support a skipped row."""
    plan: list[Condition] = []
    for kind in params.conditions:
        reason = None
        if windows is None:
            reason = "no sensor windows in the evaluation context (run it through detach train or detach eval)"
        elif windows.layout is None:
            reason = f"dataset '{windows.dataset}' declares no sensor layout (contracts.SensorLayoutSource)"
        if reason is not None:
            plan.append(Condition(kind, _KIND_TITLES[kind], skipped=reason))
            continue
        plan += _PLANNERS[kind](params, windows, seed)
    return plan


_KIND_TITLES = {
    "silence": "each fixture's channels silenced",
    "offset": "sensor stream shifted against video",
    "noise": "added sensor noise",
}


def _silence(params: RobustnessParams, windows: EvalWindows, seed: int) -> list[Condition]:
    fixtures = windows.layout.fixture_channels
    if not fixtures:
        reason = f"dataset '{windows.dataset}' does not say which channels each fixture carries"
        return [Condition("silence", _KIND_TITLES["silence"], skipped=reason)]
    return [
        Condition(
            f"silence_{name}",
            f"{name}'s {len(channels)} channel(s) read 0 (a dead node)",
            lambda x, channels=channels: silence_channels(x, channels),
        )
        for name, channels in fixtures.items()
    ]


def _offset(params: RobustnessParams, windows: EvalWindows, seed: int) -> list[Condition]:
    layout, shifted = windows.layout, windows.shifted
    if shifted is None:
        reason = f"dataset '{windows.dataset}' cannot read its recordings shifted (contracts.ShiftedSensorSource)"
        return [Condition("offset", _KIND_TITLES["offset"], skipped=reason)]
    trained = "" if layout.clock_offset_s is None else f"; training offsets up to ±{layout.clock_offset_s:g} s"
    plan = []
    for offset in params.offsets_s:
        samples = round(offset * layout.rate_hz)
        if samples == 0:
            raise UserError(
                f"robustness.offsets_s: {offset:g} s is less than half a raw sample ({1 / layout.rate_hz:.4g} s at "
                f"{layout.rate_hz:g} Hz) and would shift nothing"
            )
        plan.append(
            Condition(
                f"offset_{offset:+g}s",
                f"sensors {offset:+g} s against video ({samples:+d} raw samples, read from the recordings{trained})",
                lambda _, offset=offset: shifted(offset),
            )
        )
    return plan


def _noise(params: RobustnessParams, windows: EvalWindows, seed: int) -> list[Condition]:
    layout = windows.layout
    if layout.noise_std is None:
        reason = f"dataset '{windows.dataset}' does not know its training noise level (recorded data)"
        return [Condition("noise", _KIND_TITLES["noise"], skipped=reason)]
    sigma = np.asarray(layout.noise_std, np.float64)
    if not np.any(sigma > 0):
        reason = f"dataset '{windows.dataset}' trained without sensor noise: k times none is none"
        return [Condition("noise", _KIND_TITLES["noise"], skipped=reason)]
    noise = unit_noise(windows.sensor.shape, layout.window_samples, seed)  # one draw, scaled for every factor
    return [
        Condition(
            f"noise_x{factor:g}",
            f"sensor noise std {factor:g}x training (adds {math.sqrt(factor**2 - 1):.3g}x; mean sigma "
            f"{sigma.mean():.3g} in window units)",
            lambda x, factor=factor: add_noise(x, noise, factor, sigma),
        )
        for factor in params.noise_factors
    ]


_PLANNERS = {"silence": _silence, "offset": _offset, "noise": _noise}


# ---- the evaluator -----------------------------------------------------------------------------------------------


class RobustnessEvaluator:
    """The linear probe on clean and perturbed eval windows: weighted F1 and macro mAP per condition, a table and
    a figure."""

    def __init__(self, params: RobustnessParams) -> None:
        self.params = params

    def evaluate(self, train: EmbeddingSet, test: EmbeddingSet, ctx: EvalContext) -> EvalResult:
        plan = plan_conditions(self.params, ctx.windows, ctx.seed)  # bad offsets fail before the probe is fitted
        classifier = LinearProbeEvaluator(self.params).fit_classifier(train, ctx)
        labels = np.asarray(test.labels)
        metrics: dict[str, float] = {}
        rows: list[dict[str, Any]] = []

        def score(name: str, perturbation: str, probe: np.ndarray) -> None:
            probs = classifier.predict_proba(probe)
            f1, mean_ap = weighted_f1(labels, probs.argmax(axis=1)), macro_map(labels, probs)
            metrics[f"{METRIC_PREFIX}/{name}/weighted_f1"] = f1
            metrics[f"{METRIC_PREFIX}/{name}/macro_map"] = mean_ap
            clean = rows[0]["weighted_f1"] if rows else f1
            rows.append(
                {
                    "condition": name,
                    "perturbation": perturbation,
                    "weighted_f1": f1,
                    "macro_map": mean_ap,
                    "f1_change": f1 - clean,
                }
            )

        score("clean", "the windows as they are", test.probe)
        for condition in plan:
            if condition.skipped is not None:
                rows.append(
                    {"condition": condition.name, "perturbation": condition.perturbation, "skipped": condition.skipped}
                )
            else:
                score(condition.name, condition.perturbation, ctx.windows.embed(condition.apply(ctx.windows.sensor)))
        out_dir = Path(ctx.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        return EvalResult(metrics=metrics, tables={TABLE: rows}, plots=[plot_robustness(rows, out_dir / FIGURE)])


# ---- its section of `detach report` (the detach_report_sections hook) -------------------------------------------

SECTION_TITLE = "Robustness of the linear probe to sensor perturbations"
SECTION_CAPTION = (
    "Weighted F1 and macro mAP of the run's linear probe on the eval windows, clean and perturbed (dashed: clean); "
    "f1_change is against the clean row."
)


def report_sections(context: ReportContext) -> list[Section]:
    """A section per robustness table of the run: in its summary.json, and in each re-evaluation's
    eval/<eval-uid>/summary.json (where `detach eval RUN eval.evaluators=...` puts one). [] when there is none."""
    found: list[tuple[str, str, dict[str, Any]]] = [("robustness", "", context.summary)]
    for path in sorted(context.run_path.glob("eval/*/summary.json")):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # a re-evaluation that did not finish writing: nothing of it to show
        if isinstance(summary, dict):
            found.append((f"robustness-{path.parent.name}", f" (eval/{path.parent.name})", summary))
    sections = []
    for key, where, summary in found:
        rows = (summary.get("tables") or {}).get(TABLE)
        if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
            continue
        header = list(dict.fromkeys(column for row in rows for column in row))
        table = Table(header, [[row.get(column, "") for column in header] for row in rows])
        plot = partial(plot_robustness, rows)
        sections.append(context.draw(key, SECTION_TITLE + where, plot, SECTION_CAPTION, table=table))
    return sections


def scored_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of a `robustness` table that hold scores (skipped conditions have none)."""
    return [row for row in rows if isinstance(row, dict) and "weighted_f1" in row and "macro_map" in row]


def plot_robustness(rows: list[dict[str, Any]], path: Path) -> Path:
    """Horizontal bars of weighted F1 and macro mAP per scored condition, the clean values as dashed lines."""
    scored = scored_rows(rows)
    if not scored:
        raise ValueError("the robustness table holds no scored condition")
    names = [str(row["condition"]) for row in scored]
    y = np.arange(len(scored))
    fig = Figure(figsize=(7.5, 1.2 + 0.38 * len(scored)))
    ax = fig.add_subplot()
    for offset, key, label, colour in BARS:
        values = [float(row[key]) for row in scored]
        ax.barh(y + offset, values, height=0.4, label=label, color=colour)
        ax.axvline(values[0], color=colour, linestyle="--", linewidth=1)
    ax.set_yticks(y, labels=names)
    ax.invert_yaxis()  # clean on top, as in the table
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("score on the perturbed eval windows (dashed: clean)")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("Linear probe under sensor perturbations")
    fig.tight_layout()
    return save_figure_atomic(fig, path)
