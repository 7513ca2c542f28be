"""`model.clusterer.k: auto`: the number of sensor locations, estimated from the training windows alone.

DETACH's K is the number of sensor *locations* (fixtures), one cluster each and no extra "none" cluster: the
kitchen's 7 fixtures are `k: 7` in every example spec. Where the layout is unknown, it can be read off the
sensors themselves without labels: the channels mounted on one fixture fire together (its reed switches and
its accelerometer axes all move when it opens or closes), channels on different fixtures rarely do. So:

1. Activity. Per training window and channel, the peak deviation from the window's own least-squares line (a
   level held all window long, e.g. a door left ajar, or a slow baseline drift, is not activity), scored
   against the channel's resting level across windows: z = (a - median) / (1.4826 MAD), the scale floored at
   1e-3 window units. A channel *fires* in a window where z > THRESHOLD; channels firing in fewer than
   MIN_SUPPORT of the windows (nor 2 of them) are left out, as they carry no co-activation evidence.
2. Co-activation graph. Edge weights are the Jaccard similarity of two channels' sets of firing windows.
3. K. The eigengap of the graph's normalised Laplacian: a graph of K loosely linked dense groups has K
   eigenvalues near 0 and then a jump, so K = argmax_k (lambda_k - lambda_{k-1}) over candidates 2 .. m // 2 (m
   firing channels; a location carries at least two channels in practice, and the bound keeps a few stray
   channels from posing as locations of their own).

It is cheap (one pass over the windows, an eigendecomposition of a C x C matrix) and deterministic, so a resumed
run, `detach eval` and `detach report` rebuild the same model; the run directory keeps the estimate in
k_estimate.json all the same, and training reuses it on --resume.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from detach_framework.atomic import atomic_write_json
from detach_framework.errors import UserError

AUTO = "auto"
K_ESTIMATE_FILE = "k_estimate.json"
METHOD = "co-activation eigengap"
THRESHOLD = 3.0  # robust z-units above the channel's resting activity
MIN_SUPPORT = 0.01  # fraction of the training windows a channel must fire in to be grouped
SCALE_FLOOR = 1e-3  # window units: a channel that is flat in every window never fires


@dataclass(frozen=True)
class KEstimate:
    """What k_estimate.json holds: the estimate, the criterion's curve (eigengap per candidate K) and the K used."""

    method: str
    threshold: float
    min_support: float
    windows: int
    channels: list[str]  # the channels that fire often enough to be grouped
    candidates: list[int]
    eigengaps: list[float]  # lambda_K - lambda_{K-1} per candidate
    eigenvalues: list[float]  # of the normalised Laplacian, ascending
    estimate: int
    chosen: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> KEstimate:
        return cls(**payload)


def firing(windows: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """[N, C] bool: whether each channel fires in each window (the module docstring's step 1)."""
    x = np.asarray(windows, dtype=np.float64)
    steps = x.shape[2]
    t = np.linspace(-1.0, 1.0, steps) if steps > 1 else np.zeros(1)
    slope = (x * t).sum(axis=2, keepdims=True) / max(float((t * t).sum()), 1e-12)
    residual = x - x.mean(axis=2, keepdims=True) - slope * t
    activity = np.abs(residual).max(axis=2)
    rest = np.median(activity, axis=0)
    scale = np.maximum(1.4826 * np.median(np.abs(activity - rest), axis=0), SCALE_FLOOR)
    return (activity - rest) / scale > threshold


def jaccard(fires: np.ndarray) -> np.ndarray:
    """[C, C] |W_i & W_j| / |W_i | W_j| of the channels' firing-window sets W (0 where both are empty)."""
    a = fires.astype(np.float64)
    both = a.T @ a
    count = a.sum(axis=0)
    either = count[:, None] + count[None, :] - both
    return np.divide(both, either, out=np.zeros_like(both), where=either > 0)


def eigengap(similarity: np.ndarray) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Candidates K = 2 .. m // 2, the eigengap lambda_K - lambda_{K-1} of each, and the eigenvalues of the
    normalised Laplacian I - D^-1/2 S D^-1/2 of the graph S (diagonal ignored)."""
    s = similarity.copy()
    np.fill_diagonal(s, 0.0)
    degree = s.sum(axis=1)
    inverse = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
    laplacian = np.eye(len(s)) - inverse[:, None] * s * inverse[None, :]
    eigenvalues = np.clip(np.linalg.eigvalsh(laplacian), 0.0, None)
    candidates = list(range(2, len(s) // 2 + 1))
    gaps = np.array([eigenvalues[k] - eigenvalues[k - 1] for k in candidates])
    return candidates, gaps, eigenvalues


def estimate_locations(
    windows: np.ndarray, channel_names: list[str] | None = None, threshold: float = THRESHOLD
) -> KEstimate:
    """The number of sensor locations in training windows [N, C, L]; bad input is a UserError naming the field."""
    where = f"model.clusterer.k is {AUTO}"
    if windows.ndim != 3 or len(windows) < 2:
        raise UserError(
            f"{where}, which estimates it from the training windows, but the train split has {len(windows)}: "
            "at least 2 windows are needed (or set k to the number of sensor locations)"
        )
    names = list(channel_names) if channel_names is not None else [str(c) for c in range(windows.shape[1])]
    fires = firing(windows, threshold)
    support = max(2, int(np.ceil(MIN_SUPPORT * len(windows))))
    kept = np.flatnonzero(fires.sum(axis=0) >= support)
    if len(kept) < 4:
        raise UserError(
            f"{where}, but only {len(kept)} of {windows.shape[1]} channels fire (rise {threshold:g} robust z-units "
            f"above their resting level) in at least {support} of the {len(windows)} training windows; at least 4 "
            "are needed to group channels into locations: set k to the number of sensor locations"
        )
    candidates, gaps, eigenvalues = eigengap(jaccard(fires[:, kept]))
    estimate = candidates[int(np.argmax(gaps))]
    return KEstimate(
        method=METHOD,
        threshold=float(threshold),
        min_support=MIN_SUPPORT,
        windows=int(len(windows)),
        channels=[names[c] for c in kept],
        candidates=candidates,
        eigengaps=[float(g) for g in gaps],
        eigenvalues=[float(v) for v in eigenvalues],
        estimate=int(estimate),
        chosen=int(estimate),
    )


def wants_auto_k(clusterer: BaseModel | None) -> bool:
    """Whether a model.clusterer entry asks for `k: auto` (contracts.Clusterer's `k`, a params field)."""
    return clusterer is not None and "k" in type(clusterer).model_fields and clusterer.k == AUTO


def train_windows(split: Any) -> np.ndarray:
    """[N, C, L] sensor windows of a split, read sample by sample (every DatasetSource split offers that)."""
    if len(split) == 0:
        return np.zeros((0, 0, 0), np.float32)
    return np.stack([np.asarray(split[i]["sensor"], dtype=np.float32) for i in range(len(split))])


def read_estimate(run_path: Path) -> KEstimate | None:
    path = Path(run_path) / K_ESTIMATE_FILE
    if not path.is_file():
        return None
    try:
        return KEstimate.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); delete it to estimate model.clusterer.k again") from None


def resolve_auto_k(
    model_spec: BaseModel, source: Any, run_path: Path | None = None, *, record: bool = False
) -> tuple[BaseModel, KEstimate | None]:
    """The model spec with `k: auto` replaced by an int: run_path's k_estimate.json where it has one (a resumed or
    evaluated run keeps its K), else the estimate over the train split. `record` (training, on the main process)
    writes a new estimate to run_path and says the K chosen on stderr."""
    clusterer = model_spec.clusterer
    if not wants_auto_k(clusterer):
        return model_spec, None
    found = read_estimate(run_path) if run_path is not None else None
    result = found or estimate_locations(train_windows(source.split("train")), list(source.channel_names))
    if record:
        if found is None and run_path is not None:
            atomic_write_json(Path(run_path) / K_ESTIMATE_FILE, result.to_json())
        how = "kept from" if found else f"{result.method} over {result.windows} training windows, in"
        print(f"model.clusterer.k: {AUTO} -> {result.chosen} ({how} {K_ESTIMATE_FILE})", file=sys.stderr)
    resolved = clusterer.model_copy(update={"k": result.chosen})
    return model_spec.model_copy(update={"clusterer": resolved}), result
