"""Opportunity (UCI) and Opportunity++ as DatasetSources: runs, label mapping, channels, splits, video."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
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
    AMBIENT_COLUMNS,
    CLASS_FIXTURE,
    COLUMN_NAMES_FILE,
    DEFAULT_TRACK,
    FIXTURE_NAMES,
    LABEL_LEGEND_FILE,
    MILLISEC_COLUMN,
    NUM_COLUMNS,
    OPEN_CLOSE_IDS,
    PP_POSE_FILE,
    PP_RUN_DIR,
    PP_SENSOR_FILE,
    PP_SRT_FILE,
    PP_VIDEO_FILES,
    SENSOR_RATE_HZ,
    UCI_DATA_DIRS,
    ColumnNames,
    Legend,
    SrtTrack,
    ambient_column_name,
    canonical_run,
    column_fixture,
    estimate_offset_ms,
    find_metadata,
    label_onsets,
    parse_run_name,
    read_column_names,
    read_label_legend,
    read_sensor_file,
    read_srt,
)

# The common split of the Opportunity challenge: test S2/S3 ADL4-5, train S1 all + S2/S3 ADL1-3 + Drill.
CHALLENGE_TEST: tuple[str, ...] = ("S2-ADL4", "S2-ADL5", "S3-ADL4", "S3-ADL5")
SESSIONS: tuple[str, ...] = ("ADL1", "ADL2", "ADL3", "ADL4", "ADL5", "Drill")
CHALLENGE_TRAIN: tuple[str, ...] = (
    *(f"S1-{s}" for s in ("ADL1", "ADL2", "ADL3", "ADL4", "ADL5", "Drill")),
    *(f"S{k}-{s}" for k in (2, 3) for s in ("ADL1", "ADL2", "ADL3", "Drill")),
)


class OpportunityParams(ComponentParams):
    """Opportunity (UCI release): 250-column .dat runs, ambient channels, label track classes by raw id."""

    root: str = Field(description="Dataset root (holding dataset/S1-ADL1.dat or OpportunityUCIDataset/).")
    channels: list[Annotated[int, Field(ge=1, le=NUM_COLUMNS)]] = Field(
        default_factory=lambda: list(AMBIENT_COLUMNS),
        min_length=1,
        max_length=NUM_COLUMNS,
        description="1-based sensor columns to use (default: the 37 ambient channels 195-231).",
    )
    track: str = Field(DEFAULT_TRACK, description="Label track (column_names.txt's label columns).")
    classes: list[int] = Field(
        default_factory=lambda: list(OPEN_CLOSE_IDS),
        min_length=1,
        max_length=1024,
        description="Raw label ids of the classes (default: the 14 open/close ids); others count as Null.",
    )
    split: Literal["challenge", "loso", "custom"] = Field(
        "challenge",
        description="challenge: train S1 + S2/S3 ADL1-3 + Drill, test S2/S3 ADL4-5; loso: leave "
        "`test_subject` out; custom: `train_runs` / `test_runs`.",
    )
    test_subject: int = Field(1, ge=1, description="Held-out subject of the loso split.")
    train_runs: list[str] = Field(default_factory=list, description="custom split: training runs (e.g. S1-ADL1).")
    test_runs: list[str] = Field(default_factory=list, description="custom split: test runs.")
    val_runs: list[str] = Field(default_factory=list, description="Runs moved from train to the val split.")
    preprocessing: list[TransformStep] = Field(
        default_factory=detach_preprocessing,
        description="Sensor preprocessing steps, in order (default: DETACH's).",
    )
    blank_video: bool = Field(
        False, description="The UCI release has no video: set true to serve blank frames (sensor-only use)."
    )


class OpportunityPPParams(OpportunityParams):
    """Opportunity++: the same sensor files plus the side-camera video, per-track SubRip labels and pose."""

    root: str = Field(description="Dataset root (holding data/<RUN>/<RUN>_sensors_data.txt).")
    blank_video: bool = Field(False, description="Serve blank frames instead of the side video (ablations).")
    video_offset_ms: float = Field(
        0.0,
        ge=-3_600_000,
        le=3_600_000,
        description="Video clock minus sensor clock (ms, at most an hour): the video shows sensor time t at "
        "t + offset.",
    )
    estimate_offset: bool = Field(
        False,
        description="Per run, estimate the offset from label onsets (SRT vs sensor file) and use it instead of "
        "video_offset_ms where it finds matches.",
    )
    missing_video: Literal["skip", "error"] = Field(
        "skip", description="A run without its side video: leave it out (counted and reported) or fail."
    )


@dataclass
class RunFiles:
    name: str  # canonical S<k>-<session>
    subject: int
    session: str
    sensors: Path
    video: Path | None = None
    srt: dict[str, Path] = field(default_factory=dict)  # track (lower case) -> file
    pose: Path | None = None


def discover_runs(root: Path, layout: str) -> list[RunFiles]:
    """Runs of a root, sorted by subject then session; the canonical name hides '-' vs '_' differences."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"opportunity: root {root} is not a directory")
    runs: dict[str, RunFiles] = {}
    if layout == "uci":
        for sub in UCI_DATA_DIRS:
            folder = root / sub if sub else root
            for path in sorted(folder.glob("*.dat")) if folder.is_dir() else []:
                parsed = parse_run_name(path.stem)
                if parsed:
                    runs.setdefault(canonical_run(*parsed), RunFiles(canonical_run(*parsed), *parsed, path))
            if runs:
                break
    else:
        data_dir = root / PP_RUN_DIR.format(run="").rstrip("/")
        for folder in sorted(data_dir.iterdir()) if data_dir.is_dir() else []:
            parsed = parse_run_name(folder.name)
            if not parsed or not folder.is_dir():
                continue
            sensors = folder / PP_SENSOR_FILE.format(run=folder.name)
            if not sensors.is_file():
                raise UserError(f"opportunity_pp: run {folder.name}: {sensors} not found")
            run = RunFiles(canonical_run(*parsed), *parsed, sensors)
            videos = [folder / f.format(run=folder.name) for f in PP_VIDEO_FILES]
            run.video = next((v for v in videos if v.is_file()), None)
            prefix, suffix = (part.format(run=folder.name).lower() for part in PP_SRT_FILE.split("{track}"))
            for srt in sorted(folder.iterdir()):
                lowered = srt.name.lower()
                if lowered.startswith(prefix) and lowered.endswith(suffix) and len(lowered) > len(prefix + suffix):
                    run.srt[lowered[len(prefix) : len(lowered) - len(suffix)]] = srt
            pose = folder / PP_POSE_FILE.format(run=folder.name)
            run.pose = pose if pose.is_file() else None
            runs[run.name] = run
    if not runs:
        where = (
            "dataset/S1-ADL1.dat"
            if layout == "uci"
            else PP_RUN_DIR.format(run="S1-ADL1") + "/" + PP_SENSOR_FILE.format(run="S1-ADL1")
        )
        raise UserError(f"opportunity: no runs found under {root} (expected e.g. {where})")
    return sorted(runs.values(), key=lambda r: (r.subject, r.session == "Drill", r.session))


@dataclass
class Metadata:
    columns: ColumnNames
    legend: Legend


def read_metadata(root: Path) -> Metadata:
    return Metadata(
        read_column_names(find_metadata(root, COLUMN_NAMES_FILE)),
        read_label_legend(find_metadata(root, LABEL_LEGEND_FILE)),
    )


def track_column(meta: Metadata, track: str) -> int:
    for name, column in meta.columns.tracks.items():
        if name.lower() == track.lower():
            return column
    raise UserError(
        f"opportunity: label track '{track}' not among the label columns of {meta.columns.path} "
        f"({', '.join(meta.columns.tracks)})"
    )


def check_labels(path: Path, labels: np.ndarray, legend: Legend, column: int) -> None:
    """Every non-zero raw id in a label column must be in the legend: name the first line that is not."""
    if np.isnan(labels).any() or not np.all(labels == np.round(labels)):
        bad = int(np.flatnonzero(np.isnan(labels) | (labels != np.round(labels)))[0])
        raise UserError(f"{path}:{bad + 1}: label column {column} holds a non-integer value")
    ids = np.unique(labels.astype(np.int64))
    unknown = [int(i) for i in ids if i != 0 and int(i) not in legend.entries]
    if unknown:
        line = int(np.flatnonzero(np.isin(labels.astype(np.int64), unknown))[0]) + 1
        raise UserError(
            f"{path}:{line}: label id {int(labels[line - 1])} in column {column} is missing from {legend.path}"
        )


@dataclass
class LoadedRun:
    files: RunFiles
    ms: np.ndarray  # [n] MILLISEC
    stream: np.ndarray  # [C, n] float32 selected channels
    track_ids: np.ndarray  # [n] int64 raw ids of the label track
    srt: dict[str, SrtTrack] = field(default_factory=dict)
    unknown_ids: Counter = field(default_factory=Counter)  # ids of the other tracks missing from the legend


def load_run(files: RunFiles, meta: Metadata, channels: list[int], track: str) -> LoadedRun:
    data = read_sensor_file(files.sensors)
    column = track_column(meta, track)
    for c in (*channels, column):
        if not 1 <= c <= NUM_COLUMNS:
            raise UserError(f"opportunity: column {c} outside 1..{NUM_COLUMNS}")
    check_labels(files.sensors, data[:, column - 1], meta.legend, column)  # the track in use: strict
    unknown: Counter = Counter()
    for c in meta.columns.tracks.values():  # the other tracks: counted and reported, not fatal
        if c != column:
            ids = np.unique(data[:, c - 1][~np.isnan(data[:, c - 1])]).astype(np.int64)
            unknown.update({f"column {c} id {i}": 1 for i in ids if i != 0 and int(i) not in meta.legend.entries})
    srt = {name: read_srt(path, meta.legend) for name, path in files.srt.items()}
    return LoadedRun(
        files=files,
        ms=data[:, MILLISEC_COLUMN - 1].copy(),
        stream=data[:, [c - 1 for c in channels]].T.astype(np.float32),
        track_ids=data[:, column - 1].astype(np.int64),
        srt=srt,
        unknown_ids=unknown,
    )


def resolve_split(params: OpportunityParams) -> dict[str, list[str]]:
    """Run names each split wants (runs missing from the root are dropped later, and an empty split is an error)."""
    if params.split == "challenge":
        train, test = list(CHALLENGE_TRAIN), list(CHALLENGE_TEST)
    elif params.split == "loso":
        subjects = range(1, 5)
        test = [f"S{params.test_subject}-{s}" for s in SESSIONS]
        train = [f"S{k}-{s}" for k in subjects for s in SESSIONS if k != params.test_subject]
    else:
        if not params.train_runs or not params.test_runs:
            raise UserError("opportunity: split 'custom' needs both train_runs and test_runs")
        train, test = [_canonical(n) for n in params.train_runs], [_canonical(n) for n in params.test_runs]
    val = [_canonical(n) for n in params.val_runs]
    overlap = (set(train) | set(val)) & set(test)
    if overlap:
        raise UserError(f"opportunity: runs {sorted(overlap)} are in both train/val and test")
    unknown_val = [v for v in val if v not in train]
    if unknown_val:
        raise UserError(f"opportunity: val_runs {unknown_val} are not training runs of split '{params.split}'")
    return {"train": [n for n in train if n not in val], "val": val, "test": test}


def _canonical(name: str) -> str:
    parsed = parse_run_name(name)
    if parsed is None:
        raise UserError(f"opportunity: '{name}' is not a run name (expected e.g. S1-ADL1 or S2-Drill)")
    return canonical_run(*parsed)


def class_table(params: OpportunityParams, legend: Legend) -> tuple[list[str], dict[int, int], dict[int, int]]:
    """(class names, raw id -> class index, class index -> fixture index); index 0 is Null."""
    if len(set(params.classes)) != len(params.classes):
        raise UserError("opportunity: classes lists a raw id twice")
    missing = [i for i in params.classes if i not in legend.entries]
    if missing:
        raise UserError(f"opportunity: class ids {missing} are missing from {legend.path}")
    names = ["Null"] + [legend.name(i) for i in params.classes]
    to_class = {raw: k + 1 for k, raw in enumerate(params.classes)}
    fixture = {
        k + 1: FIXTURE_NAMES.index(CLASS_FIXTURE[raw]) for k, raw in enumerate(params.classes) if raw in CLASS_FIXTURE
    }
    return names, to_class, fixture


def build_opportunity(params: OpportunityParams, data: DataSettings, layout: str = "uci") -> WindowedSource:
    root = Path(params.root)
    name = "opportunity" if layout == "uci" else "opportunity_pp"
    if layout == "uci" and not params.blank_video:
        raise UserError(
            "opportunity: the UCI release has no video; use dataset 'opportunity_pp' for video, or set "
            "blank_video: true for sensor-only use"
        )
    meta = read_metadata(root)
    runs = discover_runs(root, layout)
    wanted_by_split = resolve_split(params)
    present = {r.name for r in runs}
    split = {s: [n for n in names if n in present] for s, names in wanted_by_split.items()}
    wanted = {n for names in split.values() for n in names}
    class_names, to_class, class_fixture = class_table(params, meta.legend)
    skips: Counter = Counter()
    recordings: list[Recording] = []
    index: dict[str, int] = {}
    notes: list[str] = []
    srt_skips: dict[str, int] = {}
    for files in runs:
        if files.name not in wanted:
            continue
        run = load_run(files, meta, params.channels, params.track)
        if run.unknown_ids:
            notes.append(
                f"{files.name}: label ids missing from {meta.legend.path} in unused tracks: {sorted(run.unknown_ids)}"
            )
        skipped_srt = sum(sum(t.skipped.values()) for t in run.srt.values())
        if skipped_srt:
            skips["srt_unknown_ids"] += skipped_srt
            srt_skips[files.name] = skipped_srt
        offset_ms = getattr(params, "video_offset_ms", 0.0)
        if layout == "pp" and getattr(params, "estimate_offset", False):
            estimate, matches = run_offset_estimate(run, params.track)
            if estimate is not None:
                offset_ms = estimate
            else:
                why = "no label onsets matched its SRT" if params.track.lower() in run.srt else "no SRT for the track"
                notes.append(f"{files.name}: {why}; video_offset_ms {offset_ms:g} kept")
        video = None if params.blank_video else files.video
        if layout == "pp" and video is None and not params.blank_video and params.missing_video == "error":
            raise UserError(f"opportunity_pp: run {files.name} has no side video in {files.sensors.parent}")
        ids, inverse = np.unique(run.track_ids, return_inverse=True)
        labels = np.asarray([to_class.get(int(i), 0) for i in ids], np.int64)[inverse]
        index[files.name] = len(recordings)
        recordings.append(
            Recording(
                name=files.name,
                subject=files.subject,
                stream=run.stream,
                rate_hz=SENSOR_RATE_HZ,
                start_s=float(run.ms[0]) / 1000.0,
                sample_labels=labels,
                fixture_of_class=class_fixture,
                video=video,
                video_offset_s=offset_ms / 1000.0,
            )
        )
    assignment = {s: [index[n] for n in split[s]] for s in ("train", "val", "test")}
    for s in ("train", "test"):
        if not assignment[s]:
            found = ", ".join(r.name for r in runs)
            raise UserError(
                f"{name}: the {s} split is empty after filtering: split '{params.split}' wants "
                f"{', '.join(wanted_by_split[s]) or 'no runs'}; found in {root}: {found}"
            )
    source = WindowedSource(
        name=name,
        recordings=recordings,
        assignment=assignment,
        class_names=class_names,
        channel_names=[ambient_column_name(c) for c in params.channels],
        fixture_names=list(FIXTURE_NAMES),
        data=data,
        preprocessing=params.preprocessing,
        require_video=not params.blank_video,
        channel_fixture=np.asarray(
            [FIXTURE_NAMES.index(f) if (f := column_fixture(c)) else -1 for c in params.channels], np.int64
        ),
        skips=skips,
    )
    if srt_skips:  # one line for all runs: the real files may hold many such blocks
        per_run = ", ".join(f"{run} {count}" for run, count in srt_skips.items())
        notes.append(f"SRT blocks with ids missing from {meta.legend.path} skipped: {per_run}")
    for note in notes:
        source.skip(None, 0, note)
    report_all_nan(source)
    return source


def run_offset_estimate(run: LoadedRun, track: str) -> tuple[float | None, int]:
    srt = run.srt.get(track.lower())
    if srt is None:
        return None, 0
    return estimate_offset_ms(label_onsets(run.ms, run.track_ids), srt.events)


def report_all_nan(source: WindowedSource) -> None:
    """An all-NaN channel of a run is zeroed in every window by the NaN policy: say so, once per run."""
    for rec in source.recordings:
        dead = np.isnan(rec.stream).all(axis=1)
        if dead.any():
            names = [source.channel_names[c] for c in np.flatnonzero(dead)]
            source.skip(
                "all_nan_channels",
                int(dead.sum()),
                f"{rec.name}: channels entirely NaN (zero in every window): {', '.join(names)}",
            )
