"""`detach predict`: per-window class probabilities of one recording, from an export directory alone.

The recording is read by a dataset's READ_RECORDING tool (its own file format) or from a CSV of channels
(header: channel names, optionally a `time` column in seconds), checked against the export's channels and
sampling rate, cut into the export's windows and classified by its probe.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detach_framework.atomic import atomic_write_text
from detach_framework.contracts import READ_RECORDING, RecordingReader, SensorRecording
from detach_framework.engine.encoder import FrozenSensorEncoder
from detach_framework.errors import UserError
from detach_framework.registry import Registry

CSV_FORMAT = "csv"
TIME_COLUMN = "time"
START_COLUMN = "window_start_s"
_RATE_TOLERANCE = 1e-3  # relative: a CSV's time column carries rounded timestamps


@dataclass
class Predictions:
    """Per-window class probabilities [W, K] of one recording, windows starting at `start_s` [W] seconds."""

    start_s: np.ndarray
    probabilities: np.ndarray
    class_names: list[str]

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([START_COLUMN, *self.class_names])
        for start, row in zip(self.start_s, self.probabilities, strict=True):
            writer.writerow([f"{start:.6f}", *(f"{p:.9g}" for p in row)])
        return buffer.getvalue()


def recording_reader(registry: Registry, dataset: str) -> RecordingReader:
    """The dataset's declared reader of one recording; a dataset without one is a one-line UserError."""
    tools = registry.get("dataset", dataset).tools
    if READ_RECORDING not in tools:
        raise UserError(
            f"dataset '{dataset}' cannot read a single recording (it registers no '{READ_RECORDING}' tool); "
            "pass a CSV of channels instead"
        )
    return tools[READ_RECORDING]


def read_channels_csv(path: Path) -> SensorRecording:
    """A CSV with one column per channel (header: the names) and optionally `time` in seconds; empty cells and
    `nan` are missing values. Without a time column the rate is unknown (rate_hz 0: the export's is assumed)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: unreadable CSV ({exc})") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise UserError(f"{path}: empty CSV; expected a header of channel names")
    header = [cell.strip() for cell in rows[0]]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise UserError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header")
    values = np.full((len(rows) - 1, len(header)), np.nan)
    for r, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise UserError(f"{path}: line {r + 2} has {len(row)} fields, the header {len(header)}")
        for c, cell in enumerate(row):
            if cell.strip():
                try:
                    values[r, c] = float(cell)
                except ValueError:
                    raise UserError(f"{path}: line {r + 2}, column {header[c]}: {cell!r} is not a number") from None
    rate, start = 0.0, 0.0
    if TIME_COLUMN in header:
        time = values[:, header.index(TIME_COLUMN)]
        steps = np.diff(time)
        if not np.isfinite(time).all() or len(time) < 2 or (steps <= 0).any():
            raise UserError(f"{path}: column {TIME_COLUMN} must hold increasing seconds on every line")
        rate, start = 1.0 / float(np.median(steps)), float(time[0])
    channels = [name for name in header if name != TIME_COLUMN]
    stream = values[:, [header.index(name) for name in channels]].T
    return SensorRecording(channel_names=channels, rate_hz=rate, stream=stream, start_s=start)


def read_recording(path: Path, fmt: str, default_dataset: str, registry: Registry) -> SensorRecording:
    """`fmt` auto: a .csv file as a CSV of channels, anything else in the export's own dataset's format."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"input {path} not found")
    if fmt == "auto":
        fmt = CSV_FORMAT if path.suffix.lower() == ".csv" else default_dataset
    if fmt == CSV_FORMAT:
        return read_channels_csv(path)
    return recording_reader(registry, fmt)(path)


def channels_in_order(recording: SensorRecording, encoder: FrozenSensorEncoder, where: str) -> np.ndarray:
    """The recording's stream [C, n] with the encoder's channels in its order; missing or unknown ones refused."""
    expected, given = encoder.channel_names, list(recording.channel_names)
    missing = [name for name in expected if name not in given]
    extra = [name for name in given if name not in expected]
    if missing:
        raise UserError(f"{where}: missing channel(s) {_some(missing)} (the export takes {len(expected)} channels)")
    if extra:
        raise UserError(f"{where}: channel(s) {_some(extra)} are not the export's (it takes {_some(expected)})")
    stream = np.asarray(recording.stream, np.float64)
    return stream[[given.index(name) for name in expected]]


def _some(names: list[str], shown: int = 6) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def check_rate(recording: SensorRecording, encoder: FrozenSensorEncoder, where: str) -> None:
    rate = recording.rate_hz
    if rate and not math.isclose(rate, encoder.rate_hz, rel_tol=_RATE_TOLERANCE):
        raise UserError(
            f"{where}: sampled at {rate:g} Hz, but the export was trained at {encoder.rate_hz:g} Hz; "
            "resample the recording first"
        )


def window_starts(samples: int, window: int, stride: float) -> np.ndarray:
    """First sample of each window [s, s + window) of a stream of `samples`, every `stride` samples."""
    if samples < window:
        return np.zeros(0, np.int64)
    count = int(np.floor((samples - window) / stride + 1e-9)) + 1
    return np.minimum(np.rint(np.arange(count) * stride).astype(np.int64), samples - window)


def predict_recording(encoder: FrozenSensorEncoder, recording: SensorRecording, where: str) -> Predictions:
    check_rate(recording, encoder, where)
    stream = channels_in_order(recording, encoder, where)
    n = encoder.window_samples
    starts = window_starts(stream.shape[1], n, encoder.stride_seconds * encoder.rate_hz)
    if len(starts) == 0:
        raise UserError(
            f"{where}: {stream.shape[1]} samples, shorter than one window ({n} samples, "
            f"{encoder.window_seconds:g} s at {encoder.rate_hz:g} Hz)"
        )
    windows = stream[:, starts[:, None] + np.arange(n)].transpose(1, 0, 2)  # [W, C, n]
    return Predictions(
        start_s=recording.start_s + starts / encoder.rate_hz,
        probabilities=encoder.predict_proba(windows),
        class_names=encoder.class_names,
    )


def predict_file(
    encoder: FrozenSensorEncoder, path: Path, out: Path | None, registry: Registry, fmt: str = "auto"
) -> Predictions:
    """Read `path`, predict every window, write the CSV to `out` (atomically) when given."""
    recording = read_recording(path, fmt, encoder.dataset, registry)
    predictions = predict_recording(encoder, recording, f"input {path}")
    if out is not None:
        atomic_write_text(out, predictions.to_csv())
    return predictions
