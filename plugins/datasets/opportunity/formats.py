"""The on-disk formats of Opportunity (UCI) and Opportunity++, their fixed facts, readers and writers.

Facts marked UNCONFIRMED (not yet checked against the real release) live in one named constant each, so a
correction is a one-line change. Every reader error names the file and the line.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detach_framework.errors import UserError

# ---- the 250-column sensor file (.dat / _sensors_data.txt) -------------------------------------------

NUM_COLUMNS = 250
SENSOR_RATE_HZ = 30.0
MILLISEC_COLUMN = 1  # 1-based, as in column_names.txt
AMBIENT_COLUMNS: tuple[int, ...] = tuple(range(195, 232))  # the 37 ambient channels DETACH uses

# 13 reed switches (0/1), 1-based column -> (sensor, switch).
REED_COLUMNS: dict[int, tuple[str, str]] = {
    195: ("DISHWASHER", "S1"),
    196: ("FRIDGE", "S3"),
    197: ("FRIDGE", "S2"),
    198: ("FRIDGE", "S1"),
    199: ("MIDDLEDRAWER", "S1"),
    200: ("MIDDLEDRAWER", "S2"),
    201: ("MIDDLEDRAWER", "S3"),
    202: ("LOWERDRAWER", "S3"),
    203: ("LOWERDRAWER", "S2"),
    204: ("UPPERDRAWER", ""),
    205: ("DISHWASHER", "S3"),
    206: ("LOWERDRAWER", "S1"),
    207: ("DISHWASHER", "S2"),
}
# 3-axis accelerometers (milli-g) on 8 fixtures: first column of x, y, z.
ACCEL_FIRST_COLUMN: dict[str, int] = {
    "DOOR1": 208,
    "LAZYCHAIR": 211,
    "DOOR2": 214,
    "DISHWASHER": 217,
    "UPPERDRAWER": 220,
    "LOWERDRAWER": 223,
    "MIDDLEDRAWER": 226,
    "FRIDGE": 229,
}
# Label tracks, 1-based columns (column_names.txt's "Label columns:" section overrides these if present).
TRACK_COLUMNS: dict[str, int] = {
    "Locomotion": 244,
    "HL_Activity": 245,
    "LL_Left_Arm": 246,
    "LL_Left_Arm_Object": 247,
    "LL_Right_Arm": 248,
    "LL_Right_Arm_Object": 249,
    "ML_Both_Arms": 250,
}
DEFAULT_TRACK = "ML_Both_Arms"

# ---- classes and fixtures ------------------------------------------------------------------------------

# The 14 open/close classes of ML_Both_Arms (raw ids; classes are always mapped by id, never position).
OPEN_CLOSE_IDS: tuple[int, ...] = (
    406516,  # Open Door 1
    404516,  # Close Door 1
    406517,  # Open Door 2
    404517,  # Close Door 2
    406520,  # Open Fridge
    404520,  # Close Fridge
    406505,  # Open Dishwasher
    404505,  # Close Dishwasher
    406519,  # Open Drawer 1
    404519,  # Close Drawer 1
    406511,  # Open Drawer 2
    404511,  # Close Drawer 2
    406508,  # Open Drawer 3
    404508,  # Close Drawer 3
)
# The K=7 fixtures (locations) of the open/close classes, for diagnostics (the `fixture` sample key).
FIXTURE_NAMES: list[str] = ["door1", "door2", "fridge", "dishwasher", "drawer1", "drawer2", "drawer3"]
CLASS_FIXTURE: dict[int, str] = {
    406516: "door1",
    404516: "door1",
    406517: "door2",
    404517: "door2",
    406520: "fridge",
    404520: "fridge",
    406505: "dishwasher",
    404505: "dishwasher",
    406519: "drawer1",
    404519: "drawer1",
    406511: "drawer2",
    404511: "drawer2",
    406508: "drawer3",
    404508: "drawer3",
}
# The legend's Drawer 1 (top) / 2 (middle) / 3 (lower) are the columns' UPPER/MIDDLE/LOWERDRAWER.
SENSOR_FIXTURE: dict[str, str | None] = {
    "DOOR1": "door1",
    "DOOR2": "door2",
    "FRIDGE": "fridge",
    "DISHWASHER": "dishwasher",
    "UPPERDRAWER": "drawer1",
    "MIDDLEDRAWER": "drawer2",
    "LOWERDRAWER": "drawer3",
    "LAZYCHAIR": None,  # sensed, but not one of the 7 open/close fixtures
}


def column_fixture(column: int) -> str | None:
    """Fixture (of FIXTURE_NAMES) whose sensor writes this 1-based column, or None."""
    if column in REED_COLUMNS:
        return SENSOR_FIXTURE[REED_COLUMNS[column][0]]
    for sensor, first in ACCEL_FIRST_COLUMN.items():
        if first <= column < first + 3:
            return SENSOR_FIXTURE[sensor]
    return None


def ambient_column_name(column: int) -> str:
    """Short unique name of an ambient column (official names repeat: never key on them)."""
    if column in REED_COLUMNS:
        sensor, switch = REED_COLUMNS[column]
        return f"reed_{sensor.lower()}{'_' + switch.lower() if switch else ''}"
    for sensor, first in ACCEL_FIRST_COLUMN.items():
        if first <= column < first + 3:
            return f"acc_{sensor.lower()}_{'xyz'[column - first]}"
    return f"col{column}"


# ---- layouts (UNCONFIRMED in part) ---------------------------------------------------------------------

METADATA_DIRS: tuple[str, ...] = ("", "data", "dataset")  # column_names.txt / label_legend.txt may sit in any
COLUMN_NAMES_FILE = "column_names.txt"
LABEL_LEGEND_FILE = "label_legend.txt"
UCI_DATA_DIRS: tuple[str, ...] = ("dataset", "OpportunityUCIDataset/dataset", "")  # where S1-ADL1.dat sits
# Run names: S<subject>-ADL<k> or S<subject>-Drill; "_" accepted for "-" (UNCONFIRMED for Opportunity++).
RUN_PATTERN = re.compile(r"^S(\d+)[-_](ADL\d+|Drill)$", re.IGNORECASE)
# Opportunity++ per-run files under <root>/<PP_RUN_DIR> (UNCONFIRMED layout).
PP_RUN_DIR = "data/{run}"
PP_SENSOR_FILE = "{run}_sensors_data.txt"
PP_VIDEO_FILES: tuple[str, ...] = ("{run}_side.avi", "{run}_side.mp4")  # side camera; the first found is used
PP_POSE_FILE = "{run}_pose.csv"
PP_SRT_FILE = "{run}_side.{track}.srt"  # track lower-cased, e.g. S1-ADL1_side.ml_both_arms.srt
PP_VIDEO_FPS = 10.0  # nominal side-camera rate (the reader uses the container's own)
POSE_PARTICIPANT = 1  # OpenPose rows kept
POSE_FRAME_MS = 100.0  # pose frame time = Frame_Number x this (UNCONFIRMED)
# Offset estimate from label onsets (SRT times are taken to be on the video clock, ms from its first frame:
# UNCONFIRMED): search window and match tolerance.
OFFSET_SEARCH_MS = 60_000.0
OFFSET_MATCH_TOLERANCE_MS = 400.0


def parse_run_name(name: str) -> tuple[int, str] | None:
    """(subject, 'ADL1'|'Drill') of a run name, or None."""
    m = RUN_PATTERN.match(name)
    if not m:
        return None
    session = m.group(2)
    return int(m.group(1)), ("Drill" if session.lower() == "drill" else session.upper())


def canonical_run(subject: int, session: str) -> str:
    return f"S{subject}-{session}"


def find_metadata(root: Path, filename: str) -> Path:
    """The metadata file in <root>, <root>/data or <root>/dataset (first found); a clear error otherwise."""
    searched = [root / d / filename if d else root / filename for d in METADATA_DIRS]
    for path in searched:
        if path.is_file():
            return path
    raise UserError(f"opportunity: metadata file {filename} not found; searched {', '.join(map(str, searched))}")


# ---- readers -------------------------------------------------------------------------------------------


def read_sensor_file(path: Path) -> np.ndarray:
    """float64 [rows, 250] of a .dat / _sensors_data.txt file: whitespace separated, literal NaN."""
    path = Path(path)
    try:
        data = np.loadtxt(path, dtype=np.float64, ndmin=2, comments=None)
    except ValueError as exc:
        _raise_located(path, exc)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    if data.shape[0] == 0:
        raise UserError(f"{path}: holds no data rows")
    if data.shape[1] != NUM_COLUMNS:
        raise UserError(f"{path}:1: {data.shape[1]} columns, expected {NUM_COLUMNS}")
    ms = data[:, MILLISEC_COLUMN - 1]
    if np.isnan(ms).any():
        raise UserError(f"{path}:{int(np.flatnonzero(np.isnan(ms))[0]) + 1}: MILLISEC (column 1) is NaN")
    back = np.flatnonzero(np.diff(ms) <= 0)
    if len(back):
        raise UserError(
            f"{path}:{int(back[0]) + 2}: MILLISEC does not increase ({ms[back[0]]:g} -> {ms[back[0] + 1]:g})"
        )
    return data


def _raise_located(path: Path, exc: Exception) -> None:
    """Find the first bad line numpy refused, and name it."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, 1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != NUM_COLUMNS:
                raise UserError(f"{path}:{lineno}: {len(tokens)} columns, expected {NUM_COLUMNS}") from None
            for col, token in enumerate(tokens, 1):
                try:
                    float(token)
                except ValueError:
                    raise UserError(f"{path}:{lineno}: column {col} holds a non-numeric token {token!r}") from None
    raise UserError(f"{path}: unreadable ({exc})") from None


@dataclass
class ColumnNames:
    path: Path
    descriptions: dict[int, str]  # 1-based column -> description (before ';')
    tracks: dict[str, int]  # label track -> 1-based column


_COLUMN_LINE = re.compile(r"^\s*Column:\s*(\d+)\s+(.*?)\s*$")


def read_column_names(path: Path) -> ColumnNames:
    """`Data columns:` then `Column: <n> <description>; value = ..., unit = ...`; then `Label columns:`."""
    descriptions: dict[int, str] = {}
    tracks: dict[str, int] = {}
    section = None
    for lineno, line in enumerate(_read_lines(path), 1):
        text = line.strip()
        if not text:
            continue
        lowered = text.lower()
        if lowered.startswith("data columns"):
            section = "data"
            continue
        if lowered.startswith("label columns"):
            section = "label"
            continue
        m = _COLUMN_LINE.match(text)
        if not m:
            raise UserError(f"{path}:{lineno}: expected 'Column: <n> <description>', got {text[:60]!r}")
        column, description = int(m.group(1)), m.group(2).split(";")[0].strip()
        if not 1 <= column <= NUM_COLUMNS:
            raise UserError(f"{path}:{lineno}: column {column} outside 1..{NUM_COLUMNS}")
        if section == "label":
            tracks[description] = column
        descriptions[column] = description
    if section is None:
        raise UserError(f"{path}: no 'Data columns:' section: not an Opportunity column_names.txt")
    return ColumnNames(Path(path), descriptions, tracks or dict(TRACK_COLUMNS))


@dataclass
class Legend:
    path: Path
    entries: dict[int, tuple[str, str]]  # raw id -> (track, label name)

    def name(self, raw_id: int) -> str:
        return self.entries[raw_id][1]

    def ids(self, track: str) -> list[int]:
        return [i for i, (t, _) in self.entries.items() if t.lower() == track.lower()]


_LEGEND_SPLIT = re.compile(r"\s+-\s+")


def read_label_legend(path: Path) -> Legend:
    """Header `Unique index - Track name - Label name`, then `<id>   -   <Track>   -   <Name>` lines."""
    entries: dict[int, tuple[str, str]] = {}
    for lineno, line in enumerate(_read_lines(path), 1):
        text = line.strip()
        if not text or text.lower().startswith("unique index"):
            continue
        parts = _LEGEND_SPLIT.split(text, maxsplit=2)
        if len(parts) != 3 or not parts[0].isdigit():
            raise UserError(f"{path}:{lineno}: expected '<id>   -   <Track>   -   <Name>', got {text[:60]!r}")
        raw_id = int(parts[0])
        if raw_id in entries:
            raise UserError(f"{path}:{lineno}: id {raw_id} listed twice")
        entries[raw_id] = (parts[1].strip(), parts[2].strip())
    if not entries:
        raise UserError(f"{path}: no label lines")
    return Legend(Path(path), entries)


@dataclass
class SrtTrack:
    path: Path
    events: list[tuple[float, float, int]]  # (start ms, end ms, raw id) on the video clock
    skipped: Counter = field(default_factory=Counter)  # unknown raw id (or text) -> count


_SRT_TIME = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})\s*-->\s*(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})")
_SRT_TEXT = re.compile(r"^\s*(\d+)\s*-\s*(.*?)\s*$")


def _srt_ms(h: str, m: str, s: str, frac: str) -> float:
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000.0 + int(frac.ljust(3, "0"))


def read_srt(path: Path, legend: Legend) -> SrtTrack:
    """SubRip: blocks of index, `HH:MM:SS,mmm --> HH:MM:SS,mmm` (comma or dot), text `406516 - Open Door 1`.
    CRLF and a BOM are fine. Ids missing from the legend are skipped and counted, never guessed."""
    track = SrtTrack(Path(path), [])
    lines = _read_lines(path)
    i = 0
    while i < len(lines):
        m = _SRT_TIME.match(lines[i])
        if not m:
            if lines[i].strip() and not lines[i].strip().isdigit():
                raise UserError(f"{path}:{i + 1}: expected a block index or 'HH:MM:SS,mmm --> HH:MM:SS,mmm'")
            i += 1
            continue
        start, end = _srt_ms(*m.group(1, 2, 3, 4)), _srt_ms(*m.group(5, 6, 7, 8))
        if end < start:
            raise UserError(f"{path}:{i + 1}: block ends before it starts")
        i += 1
        texts = []
        while i < len(lines) and lines[i].strip():
            texts.append(lines[i].strip())
            i += 1
        for text in texts or [""]:
            t = _SRT_TEXT.match(text)
            if t and int(t.group(1)) in legend.entries:
                track.events.append((start, end, int(t.group(1))))
            else:
                track.skipped[t.group(1) if t else text] += 1
    return track


def write_srt(
    path: Path, events: list[tuple[float, float, int, str]], *, dot: bool = False, crlf: bool = False
) -> None:
    """SubRip writer (fixtures, exports): events (start ms, end ms, raw id, name)."""

    def stamp(ms: float) -> str:
        ms = int(round(ms))
        h, rest = divmod(ms, 3_600_000)
        m, rest = divmod(rest, 60_000)
        s, frac = divmod(rest, 1000)
        return f"{h:02d}:{m:02d}:{s:02d}{'.' if dot else ','}{frac:03d}"

    blocks = [f"{k}\n{stamp(a)} --> {stamp(b)}\n{raw} - {name}\n" for k, (a, b, raw, name) in enumerate(events, 1)]
    text = "\n".join(blocks)
    Path(path).write_bytes(text.replace("\n", "\r\n" if crlf else "\n").encode("utf-8"))


@dataclass
class PoseTable:
    path: Path
    times_ms: np.ndarray  # [F] frame time (Frame_Number x POSE_FRAME_MS)
    columns: list[str]
    values: np.ndarray  # [F, K] float64, NaN where empty or non-numeric


def read_pose(path: Path) -> PoseTable:
    """OpenPose CSV (`Participant`, `Frame_Number`, ...): rows of POSE_PARTICIPANT only."""
    text = "\n".join(_read_lines(path))
    try:
        dialect = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text), dialect))
    if not rows:
        raise UserError(f"{path}: empty pose file")
    header = [h.strip() for h in rows[0]]
    lowered = [h.lower() for h in header]
    for need in ("participant", "frame_number"):
        if need not in lowered:
            raise UserError(f"{path}:1: pose header lacks '{need}' (has {', '.join(header[:8])}...)")
    p_col, f_col = lowered.index("participant"), lowered.index("frame_number")
    others = [j for j in range(len(header)) if j not in (p_col, f_col)]
    times, values = [], []
    for lineno, row in enumerate(rows[1:], 2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise UserError(f"{path}:{lineno}: {len(row)} fields, header has {len(header)}")
        digits = re.sub(r"\D", "", row[p_col])
        if not digits or int(digits) != POSE_PARTICIPANT:
            continue
        try:
            frame = float(row[f_col])
        except ValueError:
            raise UserError(f"{path}:{lineno}: Frame_Number {row[f_col]!r} is not a number") from None
        times.append(frame * POSE_FRAME_MS)
        values.append([_float_or_nan(row[j]) for j in others])
    return PoseTable(
        Path(path), np.asarray(times), [header[j] for j in others], np.asarray(values).reshape(len(times), len(others))
    )


def _float_or_nan(token: str) -> float:
    try:
        return float(token)
    except ValueError:
        return float("nan")


def _read_lines(path: Path) -> list[str]:
    try:
        text = Path(path).read_bytes().decode("utf-8-sig", errors="replace")
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


# ---- offset between the video and sensor clocks -------------------------------------------------------


def label_onsets(ms: np.ndarray, labels: np.ndarray) -> list[tuple[float, int]]:
    """(MILLISEC, raw id) where a non-zero label starts in a sensor file's track column."""
    labels = np.asarray(labels, np.int64)
    starts = np.flatnonzero((labels != 0) & (np.concatenate([[0], labels[:-1]]) != labels))
    return [(float(ms[i]), int(labels[i])) for i in starts]


def estimate_offset_ms(
    sensor_onsets: list[tuple[float, int]], srt_events: list[tuple[float, float, int]]
) -> tuple[float | None, int]:
    """Video-minus-sensor clock offset (ms) from label onsets: the offset on which most onsets of the same
    id agree (within OFFSET_MATCH_TOLERANCE_MS), refined by their median. Returns (offset, matches)."""
    by_id: dict[int, list[float]] = {}
    for start, _, raw in srt_events:
        by_id.setdefault(raw, []).append(start)
    diffs = np.asarray(
        [v - t for t, raw in sensor_onsets for v in by_id.get(raw, []) if abs(v - t) <= OFFSET_SEARCH_MS], np.float64
    )
    if len(diffs) == 0:
        return None, 0
    support = np.abs(diffs[:, None] - diffs[None, :]) <= OFFSET_MATCH_TOLERANCE_MS
    best = diffs[int(np.argmax(support.sum(axis=1)))]
    agreeing = diffs[np.abs(diffs - best) <= OFFSET_MATCH_TOLERANCE_MS]
    return float(np.median(agreeing)), int(len(agreeing))


# ---- writers (fixtures and the synthetic kitchen's export) --------------------------------------------


def format_sensor_rows(data: np.ndarray) -> str:
    """Rows as the real files hold them: single spaces, integers where integral, literal NaN."""
    finite = np.isfinite(data)
    integral = finite & (data == np.round(data))
    other = finite & ~integral
    cells = np.empty(data.shape, dtype=object)
    cells[~finite] = "NaN"
    cells[integral] = [str(v) for v in data[integral].astype(np.int64).tolist()]
    cells[other] = [f"{v:.6g}" for v in data[other].tolist()]
    return "\n".join(" ".join(row) for row in cells.tolist()) + "\n"


def column_names_text() -> str:
    """A column_names.txt in the real layout (descriptions for the columns this project reads)."""
    lines = ["Data columns:", "Column: 1 MILLISEC; value = round(original_value), unit = ms"]
    for c in range(2, 195):
        lines.append(f"Column: {c} Body or object sensor {c}; value = round(original_value), unit = unknown")
    for c, (sensor, switch) in REED_COLUMNS.items():
        name = f"REED SWITCH {sensor}{' ' + switch if switch else ''}"
        lines.append(f"Column: {c} {name}; value = round(original_value), unit = logical (0/1)")
    for sensor, first in ACCEL_FIRST_COLUMN.items():
        for k in range(3):
            lines.append(
                f"Column: {first + k} Accelerometer {sensor} accX; value = round(original_value), unit = milli g"
            )
    for c in range(232, 244):
        lines.append(f"Column: {c} Location tag {c - 231}; value = round(original_value), unit = mm")
    lines.sort(key=lambda s: int(s.split()[1]) if s.startswith("Column") else 0)
    lines.append("")
    lines.append("Label columns:")
    lines += [f"Column: {c} {track}" for track, c in TRACK_COLUMNS.items()]
    return "\n".join(lines) + "\n"


# The legend of the labels used by fixtures and exports (ML_Both_Arms, HL_Activity, Locomotion).
LEGEND: dict[int, tuple[str, str]] = {
    1: ("Locomotion", "Stand"),
    2: ("Locomotion", "Walk"),
    4: ("Locomotion", "Sit"),
    5: ("Locomotion", "Lie"),
    101: ("HL_Activity", "Relaxing"),
    102: ("HL_Activity", "Coffee time"),
    103: ("HL_Activity", "Early morning"),
    104: ("HL_Activity", "Cleanup"),
    105: ("HL_Activity", "Sandwich time"),
    406516: ("ML_Both_Arms", "Open Door 1"),
    406517: ("ML_Both_Arms", "Open Door 2"),
    404516: ("ML_Both_Arms", "Close Door 1"),
    404517: ("ML_Both_Arms", "Close Door 2"),
    406520: ("ML_Both_Arms", "Open Fridge"),
    404520: ("ML_Both_Arms", "Close Fridge"),
    406505: ("ML_Both_Arms", "Open Dishwasher"),
    404505: ("ML_Both_Arms", "Close Dishwasher"),
    406519: ("ML_Both_Arms", "Open Drawer 1"),
    404519: ("ML_Both_Arms", "Close Drawer 1"),
    406511: ("ML_Both_Arms", "Open Drawer 2"),
    404511: ("ML_Both_Arms", "Close Drawer 2"),
    406508: ("ML_Both_Arms", "Open Drawer 3"),
    404508: ("ML_Both_Arms", "Close Drawer 3"),
    408512: ("ML_Both_Arms", "Clean Table"),
    407521: ("ML_Both_Arms", "Drink from Cup"),
    405506: ("ML_Both_Arms", "Toggle Switch"),
}


def label_legend_text(entries: dict[int, tuple[str, str]] | None = None) -> str:
    lines = ["Unique index   -   Track name   -   Label name", ""]
    lines += [f"{i}   -   {track}   -   {name}" for i, (track, name) in (entries or LEGEND).items()]
    return "\n".join(lines) + "\n"
