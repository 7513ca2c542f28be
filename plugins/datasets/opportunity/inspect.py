"""`detach data inspect ROOT --dataset opportunity[_pp]`: what a root holds, before any training."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from detach_framework.data.recordings import DataSkipWarning
from detach_framework.data.settings import DataSettings
from detach_framework.data.video import describe_video
from detach_framework.errors import UserError

from .dataset import (
    OpportunityParams,
    OpportunityPPParams,
    build_opportunity,
    discover_runs,
    load_run,
    read_metadata,
    run_offset_estimate,
)
from .formats import ambient_column_name, read_pose


def inspect_opportunity(root: str | Path, layout: str = "pp", **params: Any) -> str:
    """Runs, durations, per-channel NaN fractions, video facts, estimated clock offsets, label counts per split."""
    root = Path(root)
    model = OpportunityPPParams if layout == "pp" else OpportunityParams
    p = model.model_validate({"root": str(root), **({"blank_video": True} if layout == "uci" else {}), **params})
    meta = read_metadata(root)
    runs = discover_runs(root, layout)
    lines = [
        f"{'opportunity_pp' if layout == 'pp' else 'opportunity'} at {root}",
        f"metadata: {meta.columns.path} ({len(meta.columns.descriptions)} columns), "
        f"{meta.legend.path} ({len(meta.legend.entries)} label ids)",
        f"runs: {len(runs)}",
    ]
    header = f"  {'run':<9} {'rows':>6} {'seconds':>8}  {'video':<28} {'offset est. ms':>15}  {'srt skipped':>11}  pose"
    lines.append(header)
    nan_sum = np.zeros(len(p.channels))
    rows_total = 0
    damaged: list[str] = []  # one line per damaged video, below the table (too long for a cell)
    for files in runs:
        run = load_run(files, meta, p.channels, p.track)
        nan_sum += np.isnan(run.stream).sum(axis=1)
        rows_total += run.stream.shape[1]
        seconds = (run.ms[-1] - run.ms[0]) / 1000.0
        video = "-"
        if files.video is not None:
            video, damage = describe_video(files.video)
            if damage:
                damaged.append(damage)
        estimate, matches = run_offset_estimate(run, p.track) if layout == "pp" else (None, 0)
        offset = f"{estimate:+.0f} ({matches})" if estimate is not None else "-"
        skipped = sum(sum(t.skipped.values()) for t in run.srt.values())
        pose = "-"
        if files.pose is not None:
            pose = f"{len(read_pose(files.pose).times_ms)} frames"
        cells = f"{run.stream.shape[1]:>6} {seconds:>8.1f}  {video:<28} {offset:>15}  {skipped:>11}"
        lines.append(f"  {files.name:<9} {cells}  {pose}")
    lines += damaged
    lines.append("NaN fraction per channel (all runs):")
    fractions = nan_sum / max(rows_total, 1)
    for c, f in zip(p.channels, fractions, strict=True):
        lines.append(f"  {c:>3} {ambient_column_name(c):<28} {f:.4f}")
    lines += _split_counts(p, layout)
    return "\n".join(lines)


def _split_counts(p: OpportunityParams, layout: str) -> list[str]:
    data = DataSettings()
    window = f"{data.window_seconds:g} s windows, stride {data.stride_seconds:g} s"
    lines = [f"label counts per split (split '{p.split}', {window}):"]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataSkipWarning)
            # No preprocessing: counting labels needs no fitted statistics.
            source = build_opportunity(p.model_copy(update={"preprocessing": []}), data, layout)
    except UserError as exc:
        return [*lines, f"  cannot build the splits: {exc}"]
    counts = source.label_counts()
    width = max(len(n) for n in source.class_names)
    lines.append(f"  {'class':<{width}} {'train':>7} {'val':>7} {'test':>7}")
    for name in source.class_names:
        lines.append(f"  {name:<{width}} {counts['train'][name]:>7} {counts['val'][name]:>7} {counts['test'][name]:>7}")
    if source.skips:
        lines.append("skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(source.skips.items())))
    lines += [f"  note: {w.message}" for w in caught if issubclass(w.category, DataSkipWarning)]
    return lines
