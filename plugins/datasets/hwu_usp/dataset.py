"""HWU-USP as a DatasetSource: 144 recordings, ambient channels at 50 Hz, RGB video, recording-level labels."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from detach_framework.data.recordings import Recording, WindowedSource
from detach_framework.data.settings import DataSettings
from detach_framework.data.transforms import TransformStep, detach_preprocessing
from detach_framework.errors import UserError
from detach_framework.registry import ComponentParams

from .formats import (
    ACTIVITIES,
    AMBIENT_PATTERNS,
    CHANNELS,
    DETACH_CHANNELS,
    FOLDS,
    NUM_SUBJECTS,
    RECORDING_PATTERN,
    SENSOR_RATE_HZ,
    VIDEO_EXCLUDE,
    VIDEO_PATTERNS,
    read_ambient_csv,
)


class HwuUspParams(ComponentParams):
    """HWU-USP: ambient CSV + RGB video per recording; 9 activities labelled per recording."""

    root: str = Field(description="Dataset root holding <activity>/<activity>_sXX recordings.")
    channels: list[str] = Field(
        default_factory=lambda: list(DETACH_CHANNELS),
        min_length=1,
        max_length=len(CHANNELS),
        description=f"Ambient channels by name (default: DETACH's 6; all 11: {', '.join(CHANNELS)}).",
    )
    fold: int = Field(0, ge=0, lt=len(FOLDS), description="Fold of the 8-fold leave-2-subjects-out protocol.")
    val_subjects: list[Annotated[int, Field(ge=1, le=NUM_SUBJECTS)]] = Field(
        default_factory=list,
        max_length=NUM_SUBJECTS,
        description="Training subjects moved to the val split (e.g. [3]).",
    )
    video_offset_ms: float = Field(
        0.0, ge=-3_600_000, le=3_600_000, description="Video clock minus sensor clock (ms, at most an hour)."
    )
    missing_video: Literal["skip", "error"] = Field(
        "skip", description="A recording without RGB video: leave it out (counted and reported) or fail."
    )
    preprocessing: list[TransformStep] = Field(
        default_factory=detach_preprocessing, description="Sensor preprocessing steps (default: DETACH's)."
    )


@dataclass
class RecordingFiles:
    name: str
    activity: int
    subject: int
    ambient: Path
    video: Path | None


def _pick(candidates: list[Path], patterns: tuple[str, ...], exclude: str | None = None) -> Path | None:
    for pattern in patterns:
        hits = sorted(p for p in candidates if p.match(pattern) and not (exclude and exclude in p.name.lower()))
        if hits:
            return hits[0]
    return None


def discover_recordings(root: Path) -> list[RecordingFiles]:
    """Recordings under <root>/<activity>/: folders <activity>_sXX/ or files <activity>_sXX*.ext."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"hwu_usp: root {root} is not a directory")
    found: dict[str, RecordingFiles] = {}
    for a, activity in enumerate(ACTIVITIES):
        folder = root / activity
        if not folder.is_dir():
            continue
        groups: dict[str, list[Path]] = {}
        for entry in sorted(folder.iterdir()):
            m = RECORDING_PATTERN.match(entry.name)
            if not m or m.group(1).lower() != activity:
                continue
            key = f"{activity}_s{int(m.group(2)):02d}"
            groups.setdefault(key, []).extend(
                sorted(p for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else [entry]
            )
        for key, files in groups.items():
            ambient = _pick(files, AMBIENT_PATTERNS)
            if ambient is None:
                raise UserError(f"hwu_usp: recording {activity}/{key} has no ambient CSV in {folder}")
            video = _pick(files, VIDEO_PATTERNS, exclude=VIDEO_EXCLUDE)
            found[key] = RecordingFiles(key, a, int(key[-2:]), ambient, video)
    if not found:
        raise UserError(f"hwu_usp: no recordings under {root} (expected e.g. {root}/cereals/cereals_s01/)")
    return sorted(found.values(), key=lambda r: (r.activity, r.subject))


def load_stream(files: RecordingFiles, channels: list[str]) -> np.ndarray:
    """[C, n] float32 of the chosen channels (matched by name, case-insensitive)."""
    table = read_ambient_csv(files.ambient)
    lowered = [c.lower() for c in table.channels]
    columns = []
    for name in channels:
        if name.lower() not in lowered:
            raise UserError(f"{files.ambient}: channel '{name}' not in its columns ({', '.join(table.channels)})")
        columns.append(lowered.index(name.lower()))
    return table.values[:, columns].T.astype(np.float32)


def fold_split(params: HwuUspParams) -> dict[str, set[int]]:
    test = set(FOLDS[params.fold])
    val = set(params.val_subjects)
    if val & test:
        raise UserError(f"hwu_usp: val_subjects {sorted(val & test)} are held out for testing in fold {params.fold}")
    return {"test": test, "val": val}


def build_hwu_usp(params: HwuUspParams, data: DataSettings) -> WindowedSource:
    root = Path(params.root)
    files = discover_recordings(root)
    groups = fold_split(params)
    recordings: list[Recording] = []
    assignment: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for f in files:
        if f.video is None and params.missing_video == "error":
            raise UserError(f"hwu_usp: recording {f.name} has no RGB video next to {f.ambient}")
        split = next((s for s, subjects in groups.items() if f.subject in subjects), "train")
        assignment[split].append(len(recordings))
        recordings.append(
            Recording(
                name=f.name,
                subject=f.subject,
                stream=load_stream(f, params.channels),
                rate_hz=SENSOR_RATE_HZ,
                label=f.activity,
                video=f.video,
                video_offset_s=params.video_offset_ms / 1000.0,
            )
        )
    for split in ("train", "test"):
        if not assignment[split]:
            subjects = sorted({f.subject for f in files})
            raise UserError(
                f"hwu_usp: the {split} split is empty after filtering: fold {params.fold} holds out subjects "
                f"{sorted(groups['test'])}; subjects found in {root}: {subjects}"
            )
    source = WindowedSource(
        name="hwu_usp",
        recordings=recordings,
        assignment=assignment,
        class_names=list(ACTIVITIES),
        channel_names=list(params.channels),
        fixture_names=list(params.channels),  # each ambient sensor sits on one fixture (cupboard, area)
        data=data,
        preprocessing=params.preprocessing,
        require_video=True,
        channel_fixture=np.arange(len(params.channels)),
        skips=Counter(),
    )
    for rec in source.recordings:
        dead = np.isnan(rec.stream).all(axis=1)
        if dead.any():
            names = ", ".join(params.channels[c] for c in np.flatnonzero(dead))
            source.skip("all_nan_channels", int(dead.sum()), f"{rec.name}: channels entirely NaN: {names}")
    return source
