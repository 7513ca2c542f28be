"""HWU-USP's on-disk facts and the ambient CSV reader. UNCONFIRMED facts are named constants here."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from detach_framework.errors import UserError

ACTIVITIES: tuple[str, ...] = (
    "cereals",
    "tidy",
    "laptop",
    "newspaper",
    "sandwich",
    "smartphone",
    "table",
    "tea",
    "dishes",
)
NUM_SUBJECTS = 16
# Official protocol: 8 folds, 2 subjects held out per fold. Which 2 is UNCONFIRMED: consecutive pairs.
FOLDS: tuple[tuple[int, int], ...] = tuple((2 * f + 1, 2 * f + 2) for f in range(8))

# Ambient CSV (UNCONFIRMED layout): `timestamp` + 11 channels at 50 Hz.
SENSOR_RATE_HZ = 50.0
TIMESTAMP_COLUMN = "timestamp"
CHANNELS: tuple[str, ...] = (
    "Ktch_B1_Drawer",
    "Ktch_B2_Cupboard",
    "Ktch_B3_Cupboard",
    "Ktch_B4_Cupboard",
    "Ktch_Motion_1",
    "Ktch_Motion_2",
    "Ktch_T1_Cupboard",
    "Ktch_T2_Cupboard",
    "Ktch_T3_Cupboard",
    "Ktch_T4_Cupboard",
    "TP_L_Power",
)
DETACH_CHANNELS: tuple[str, ...] = (
    "Ktch_B4_Cupboard",
    "Ktch_Motion_1",
    "Ktch_Motion_2",
    "Ktch_T1_Cupboard",
    "Ktch_T2_Cupboard",
    "Ktch_T3_Cupboard",
)
DETACH_K = 7  # DETACH's cluster count on HWU-USP
BOOLEAN_TOKENS: dict[str, float] = {"true": 1.0, "false": 0.0, "on": 1.0, "off": 0.0}  # tolerated in 0/1 columns

# Where a recording's files sit (UNCONFIRMED): a folder <root>/<activity>/<activity>_sXX/ holding them, or
# files named <root>/<activity>/<activity>_sXX*.<ext>. The first pattern that matches wins.
RECORDING_NAME = "{activity}_s{subject:02d}"
RECORDING_PATTERN = re.compile(r"^([a-z]+)_s(\d{2})", re.IGNORECASE)
AMBIENT_PATTERNS: tuple[str, ...] = ("*ambient*.csv", "*sensor*.csv", "*.csv")
VIDEO_PATTERNS: tuple[str, ...] = ("*rgb*.mp4", "*rgb*.avi", "*.mp4", "*.avi")
VIDEO_EXCLUDE = "depth"  # depth videos also exist: never take one for RGB
VIDEO_FPS = 25.0  # nominal RGB rate (the reader uses the container's own)


@dataclass
class AmbientTable:
    path: Path
    header: bool
    delimiter: str
    channels: list[str]
    times: np.ndarray  # [n] seconds from the first row (NaN where no timestamp could be read)
    values: np.ndarray  # [n, len(channels)] float64, NaN where empty


def read_ambient_csv(path: Path) -> AmbientTable:
    """Ambient CSV with header sniffing: delimiter among , ; tab; a header row when the first row is not
    numeric (then channels by name), else CHANNELS' order after the timestamp."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig", errors="replace")
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    lines = [line for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise UserError(f"{path}: empty file")
    delimiter = max(",;\t", key=first.count)
    rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter))
    header_row = [cell.strip() for cell in rows[0]]
    header = not all(_is_number(c) or not c for c in header_row[1:]) or not _is_time(header_row[0])
    if header:
        names = header_row
        lowered = [n.lower() for n in names]
        if TIMESTAMP_COLUMN not in lowered:
            raise UserError(f"{path}:1: header has no '{TIMESTAMP_COLUMN}' column ({', '.join(names[:6])}...)")
        time_col = lowered.index(TIMESTAMP_COLUMN)
        body = rows[1:]
        first_line = 2
    else:
        if len(header_row) not in (len(CHANNELS) + 1,):
            raise UserError(
                f"{path}:1: no header and {len(header_row)} fields; expected {len(CHANNELS) + 1} "
                f"({TIMESTAMP_COLUMN} + {len(CHANNELS)} channels)"
            )
        names = [TIMESTAMP_COLUMN, *CHANNELS]
        time_col = 0
        body = rows
        first_line = 1
    channel_cols = [j for j in range(len(names)) if j != time_col]
    times = np.full(len(body), np.nan)
    values = np.full((len(body), len(channel_cols)), np.nan)
    kept = 0
    for offset, row in enumerate(body):
        lineno = first_line + offset
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            raise UserError(f"{path}:{lineno}: {len(row)} fields, expected {len(names)}")
        times[kept] = _time(row[time_col], path, lineno)
        for k, j in enumerate(channel_cols):
            values[kept, k] = _value(row[j], path, lineno, names[j])
        kept += 1
    if kept == 0:
        raise UserError(f"{path}: no data rows")
    times, values = times[:kept], values[:kept]
    return AmbientTable(path, header, delimiter, [names[j] for j in channel_cols], times - times[0], values)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _is_time(token: str) -> bool:
    return _is_number(token) or _iso(token) is not None


def _iso(token: str) -> float | None:
    try:
        return datetime.fromisoformat(token.strip()).timestamp()
    except ValueError:
        return None


def _time(token: str, path: Path, lineno: int) -> float:
    token = token.strip()
    if _is_number(token):
        return float(token)
    stamp = _iso(token)
    if stamp is None:
        raise UserError(f"{path}:{lineno}: timestamp {token!r} is neither a number nor an ISO date")
    return stamp


def _value(token: str, path: Path, lineno: int, column: str) -> float:
    token = token.strip()
    if not token or token.lower() == "nan":
        return float("nan")
    if token.lower() in BOOLEAN_TOKENS:
        return BOOLEAN_TOKENS[token.lower()]
    try:
        return float(token)
    except ValueError:
        raise UserError(f"{path}:{lineno}: column {column} holds a non-numeric token {token!r}") from None


def timestamp_seconds(times: np.ndarray) -> tuple[np.ndarray, str]:
    """Timestamps in seconds, guessing the unit from the median step at 50 Hz (s, ms or us)."""
    steps = np.diff(times[np.isfinite(times)])
    step = float(np.median(steps)) if len(steps) else 1.0 / SENSOR_RATE_HZ
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if step * scale < 10.0 / SENSOR_RATE_HZ:
            return times * scale, unit
    return times, "s"


def write_ambient_csv(
    path: Path, times: np.ndarray, values: np.ndarray, *, header: bool = True, delimiter: str = ","
) -> None:
    """Writer for fixtures: `timestamp` (seconds) + CHANNELS."""
    lines = [delimiter.join([TIMESTAMP_COLUMN, *CHANNELS])] if header else []
    for t, row in zip(times, values, strict=True):
        cells = ["" if np.isnan(v) else (str(int(v)) if float(v).is_integer() else f"{v:.3f}") for v in row]
        lines.append(delimiter.join([f"{t:.3f}", *cells]))
    Path(path).write_text("\n".join(lines) + "\n")
