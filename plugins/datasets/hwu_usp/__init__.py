"""HWU-USP dataset plugin: ambient sensors + RGB video of 9 kitchen activities, labelled per recording.

Tools: `fixture` (a tiny dataset in the layout with truth.json), `fixture_params` (params reading it with
all three splits non-empty) and `inspect` (a root's summary). Evaluate
with the `recording_probe` evaluator (mean of a recording's window embeddings).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from detach_framework.data.recordings import DataSkipWarning
from detach_framework.data.settings import DataSettings
from detach_framework.data.video import describe_video
from detach_framework.errors import UserError
from detach_framework.plugins import hookimpl
from detach_framework.registry import Register

from .dataset import HwuUspParams, build_hwu_usp, discover_recordings, load_stream
from .fixture import write_hwu_fixture
from .formats import ACTIVITIES, read_ambient_csv, timestamp_seconds

__all__ = ["HwuUspParams", "build_hwu_usp", "inspect_hwu_usp", "write_hwu_fixture"]


def inspect_hwu_usp(root: str | Path) -> str:
    """Recordings, durations and measured rates, per-channel NaN fractions, video facts, label counts."""
    p = HwuUspParams(root=str(root))
    files = discover_recordings(Path(root))
    lines = [f"hwu_usp at {root}", f"recordings: {len(files)} ({len({f.subject for f in files})} subjects)"]
    lines.append(f"  {'recording':<16} {'rows':>6} {'seconds':>8} {'rate Hz':>8}  {'csv':<10} video")
    nan_sum, rows_total = None, 0
    damaged: list[str] = []  # one line per damaged video, below the table
    for f in files:
        table = read_ambient_csv(f.ambient)
        seconds, unit = timestamp_seconds(table.times)
        rate = (len(seconds) - 1) / seconds[-1] if len(seconds) > 1 and seconds[-1] > 0 else float("nan")
        stream = load_stream(f, p.channels)
        nan_sum = np.isnan(stream).sum(axis=1) + (0 if nan_sum is None else nan_sum)
        rows_total += stream.shape[1]
        video = "-"
        if f.video is not None:
            facts, damage = describe_video(f.video)
            video = f"{f.video.name}: {facts}"
            if damage:
                damaged.append(damage)
        csv_kind = f"{'hdr' if table.header else 'no hdr'} {table.delimiter!r} {unit}"
        lines.append(f"  {f.name:<16} {stream.shape[1]:>6} {seconds[-1]:>8.1f} {rate:>8.1f}  {csv_kind:<10} {video}")
    lines += damaged
    lines.append("NaN fraction per channel (all recordings):")
    lines += [f"  {c:<18} {v / max(rows_total, 1):.4f}" for c, v in zip(p.channels, nan_sum, strict=True)]
    lines.append(f"label counts per split (fold {p.fold}; windows):")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataSkipWarning)
            source = build_hwu_usp(p.model_copy(update={"preprocessing": []}), DataSettings())
    except UserError as exc:
        return "\n".join([*lines, f"  cannot build the splits: {exc}"])
    counts = source.label_counts()
    lines.append(f"  {'class':<12} {'train':>7} {'val':>7} {'test':>7}")
    lines += [f"  {n:<12} {counts['train'][n]:>7} {counts['val'][n]:>7} {counts['test'][n]:>7}" for n in ACTIVITIES]
    lines += [f"  note: {w.message}" for w in caught if issubclass(w.category, DataSkipWarning)]
    lines.append("clock offset: HWU-USP has per-recording labels only, so no offset can be detected (video_offset_ms)")
    return "\n".join(lines)


@hookimpl
def detach_register_components(register: Register) -> None:
    register(
        kind="dataset",
        name="hwu_usp",
        factory=build_hwu_usp,
        params=HwuUspParams,
        description="HWU-USP: ambient CSV (50 Hz, DETACH's 6 channels) + RGB video; 9 activities per recording",
        tools={
            "fixture": lambda out, seed=0: write_hwu_fixture(Path(out), seed),
            "fixture_params": lambda root: {"root": str(root), "val_subjects": [3]},
            "inspect": inspect_hwu_usp,
        },
    )
