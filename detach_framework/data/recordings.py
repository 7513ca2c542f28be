"""Recordings -> sliding windows -> a DatasetSource: the dataset-agnostic part of every real-data reader.

A reader turns its files into `Recording`s (a sensor stream, per-sample or per-recording labels, an
optional video with its clock offset) and assigns recordings to splits; `WindowedSource` cuts windows,
fits the preprocessing on the training split only, and serves samples. Nothing is skipped silently:
each skip is counted in `source.skips` and announced with a `DataSkipWarning`.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detach_framework.contracts import SPLITS, SensorLayout
from detach_framework.data.settings import DataSettings
from detach_framework.data.transforms import Pipeline, TransformStep, chunked
from detach_framework.data.video import VideoReader, probe_video, uniform_frame_times
from detach_framework.errors import UserError

LABEL_MIN_COVERAGE = 0.5  # a window takes an action's label when it covers half of it (or half the window)
_LABEL_CHUNK = 1 << 20  # window x action overlaps held at once by labelling_actions
_WINDOW_CHUNK = 256  # raw windows preprocessed at once (fitting the z-score, shifted reads)


class DataSkipWarning(UserWarning):
    """Data left out on purpose (a run without video, windows past the video's end...), counted."""


@dataclass
class Recording:
    """One continuous recording. Times: sample k is at sensor time `start_s + k / rate_hz`; the video
    shows sensor time t at video time t + video_offset_s (seconds from its first frame)."""

    name: str
    subject: int
    stream: np.ndarray  # [C, n] float32, NaN where missing
    rate_hz: float
    start_s: float = 0.0
    sample_labels: np.ndarray | None = None  # [n] int64 class index per sample (0 = Null)
    label: int | None = None  # recording-level class index (when labels are per recording)
    fixture_of_class: dict[int, int] = field(default_factory=dict)  # class index -> fixture index
    video: Path | None = None
    video_offset_s: float = 0.0


@dataclass
class WindowTable:
    recording: np.ndarray  # [N] index into the source's recordings
    start: np.ndarray  # [N] first sample index
    label: np.ndarray  # [N] int64
    fixture: np.ndarray  # [N] int64, -1 where none
    subject: np.ndarray  # [N] int64

    @classmethod
    def concat(cls, parts: list[WindowTable]) -> WindowTable:
        if not parts:
            empty = np.zeros(0, np.int64)
            return cls(empty, empty, empty, empty, empty)
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in cls.__dataclass_fields__))


def label_segments(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, class) of every maximal run of one non-zero class in per-sample labels."""
    labels = np.asarray(labels)
    change = np.flatnonzero(np.diff(labels) != 0) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(labels)]])
    keep = labels[starts] != 0
    return starts[keep], ends[keep], labels[starts[keep]].astype(np.int64)


def labelling_actions(
    starts: np.ndarray, window: float, onset: np.ndarray, dur: np.ndarray, *, cap_at_window: bool
) -> np.ndarray:
    """The one window-labelling rule: per window [s, s + window), the index of the action overlapping it most
    (the earlier one on a tie), or -1 (Null) unless that overlap covers at least LABEL_MIN_COVERAGE of the
    action or, with `cap_at_window`, of the window when the action is longer. Times in any one unit."""
    starts, onset, dur = (np.asarray(a) for a in (starts, onset, dur))
    taken = np.full(len(starts), -1, np.int64)
    if len(onset) == 0:
        return taken
    need = LABEL_MIN_COVERAGE * (np.minimum(dur, window) if cap_at_window else dur) - 1e-9
    rows = max(1, _LABEL_CHUNK // len(onset))
    for lo in range(0, len(starts), rows):
        s = starts[lo : lo + rows, None]
        overlap = np.clip(np.minimum(s + window, (onset + dur)[None]) - np.maximum(s, onset[None]), 0.0, None)
        best = overlap.argmax(axis=1)
        most = overlap[np.arange(len(best)), best]
        taken[lo : lo + rows] = np.where((most > 0) & (most >= need[best]), best, -1)
    return taken


def window_labels_from_samples(labels: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Label of each window [s, s + length) of per-sample labels by `labelling_actions`, each run of one class
    an action; capped at the window, since a reader's label runs (an activity, a long gesture) may outlast it."""
    seg_start, seg_end, seg_class = label_segments(labels)
    taken = labelling_actions(starts, length, seg_start, seg_end - seg_start, cap_at_window=True)
    return np.append(seg_class, 0)[taken]  # -1 picks the appended Null


class WindowedSource:
    """A DatasetSource over recordings: `split(name)` serves windows of the recordings assigned to it."""

    def __init__(
        self,
        *,
        name: str,
        recordings: list[Recording],
        assignment: dict[str, list[int]],
        class_names: list[str],
        channel_names: list[str],
        fixture_names: list[str],
        data: DataSettings,
        preprocessing: Sequence[TransformStep],
        require_video: bool = True,
        channel_fixture: np.ndarray | None = None,
        skips: Counter | None = None,
    ) -> None:
        self.name = name
        self.class_names = list(class_names)
        self.channel_names = list(channel_names)
        self.fixture_names = list(fixture_names)
        self.channel_fixture = channel_fixture
        self.recordings = recordings
        self.data = data
        self.require_video = require_video
        self.skips: Counter = skips if skips is not None else Counter()
        self.notes: list[str] = []
        self._readers: dict[int, VideoReader] = {}
        self._check_settings()
        self._check_rates([r for split in SPLITS for r in assignment.get(split, [])])
        self._video_span = {r: self._video_span_of(r) for r in range(len(recordings))}
        tables = {}
        for split in SPLITS:
            tables[split] = WindowTable.concat([self._windows(r) for r in assignment.get(split, [])])
        for split in ("train", "test"):
            if len(tables[split].start) == 0:
                names = [recordings[r].name for r in assignment.get(split, [])]
                raise UserError(
                    f"{name}: the {split} split is empty after filtering (recordings: {', '.join(names) or 'none'}; "
                    f"skipped: {dict(self.skips) or 'nothing'})"
                )
        self.pipeline = Pipeline(preprocessing, data.sensor_length, f"{name} preprocessing")
        if self.pipeline.needs_fit:
            train = tables["train"]
            self.pipeline.fit(
                lambda: (self._raw(train, rows) for rows in chunked(np.arange(len(train.start)), _WINDOW_CHUNK))
            )
        self._splits = {s: WindowedSplit(self, s, tables[s]) for s in SPLITS}

    # -- DatasetSource -------------------------------------------------------------------------------------

    def split(self, name: str) -> WindowedSplit:
        if name not in self._splits:
            raise UserError(f"unknown split '{name}'; expected one of: {', '.join(SPLITS)}")
        return self._splits[name]

    def preprocessing_state(self) -> dict[str, Any]:
        rate = self.recordings[int(self._splits["train"].recording[0])].rate_hz  # one rate (_check_rates)
        return {"dataset": self.name, "rate_hz": rate, **self.pipeline.state(self.channel_names)}

    def load_preprocessing_state(self, state: dict[str, Any], source: str) -> None:
        if state.get("channels") != self.channel_names:
            raise UserError(f"{source}: stored statistics are for other channels than this dataset's")
        self.pipeline.load_state(state, source)

    def shifted_sensor_windows(self, split: str, offset_s: float) -> np.ndarray:
        """contracts.ShiftedSensorSource (the robustness evaluator's offset): the split's windows read offset_s
        later on their recordings, through the fitted preprocessing."""
        table = self.split(split).table
        rows = np.arange(len(table.start))
        parts = [self.pipeline(self._raw(table, chunk, offset_s)) for chunk in chunked(rows, _WINDOW_CHUNK)]
        channels = len(self.channel_names)
        return np.concatenate(parts) if parts else np.zeros((0, channels, self.data.sensor_length), np.float32)

    def sensor_layout(self) -> SensorLayout:
        """Each fixture's channels as the reader assigned them (`channel_fixture`); recorded data says nothing of
        its noise level or of the clock offsets left after synchronisation."""
        rec = self.recordings[int(self._splits["train"].recording[0])]  # one rate (_check_rates)
        return SensorLayout.from_channel_fixture(
            self.fixture_names, self.channel_fixture, rate_hz=rec.rate_hz, window_samples=self.window_length(rec)
        )

    # -- windows -------------------------------------------------------------------------------------------

    def _check_settings(self) -> None:
        d = self.data
        if d.window_seconds <= 0 or d.stride_seconds <= 0 or d.frames < 1 or d.frame_size < 8:
            raise UserError(f"{self.name}: needs positive window/stride seconds, frames >= 1, frame_size >= 8")

    def _check_rates(self, used: list[int]) -> None:
        """One sensor rate across recordings (windows of one length, one filter cutoff in Hz), and windows
        of at least two samples at it: anything else would crash later or resample nothing into a window."""
        recs = [self.recordings[r] for r in used]
        other = next((rec for rec in recs if rec.rate_hz != recs[0].rate_hz), None)
        if other is not None:
            raise UserError(
                f"{self.name}: recordings are sampled at different rates ({recs[0].name} {recs[0].rate_hz:g} Hz, "
                f"{other.name} {other.rate_hz:g} Hz); resample the streams to one rate when reading them"
            )
        if recs and round(self.data.window_seconds * recs[0].rate_hz) < 2:
            samples = round(self.data.window_seconds * recs[0].rate_hz)
            raise UserError(
                f"{self.name}: data.window_seconds={self.data.window_seconds:g} holds {samples} sensor sample(s) "
                f"at {recs[0].rate_hz:g} Hz; a window needs at least 2"
            )

    def skip(self, key: str | None, count: int, message: str) -> None:
        """Count a deliberate skip under `key` (None: a note only) and say so (never silent)."""
        if key is not None:
            self.skips[key] += count
        self.notes.append(message)
        warnings.warn(f"{self.name}: {message}", DataSkipWarning, stacklevel=3)

    def _video_span_of(self, r: int) -> tuple[float, float] | None:
        rec = self.recordings[r]
        if rec.video is None:
            return None
        info = probe_video(rec.video)
        period = 1.0 / info.fps
        return -period, info.duration  # a frame time within one period before the first frame shows it

    def _windows(self, r: int) -> WindowTable:
        rec = self.recordings[r]
        n = max(int(round(self.data.window_seconds * rec.rate_hz)), 1)
        step = self.data.stride_seconds * rec.rate_hz
        length = rec.stream.shape[1]
        count = int(np.floor((length - n) / step + 1e-9)) + 1 if length >= n else 0
        starts = np.rint(np.arange(max(count, 0)) * step).astype(np.int64)
        if count <= 0:
            self.skip("short_recordings", 1, f"{rec.name}: shorter than one window ({length} samples < {n})")
        if rec.video is None and self.require_video:
            self.skip("recordings_without_video", 1, f"{rec.name}: no video file, recording left out")
            starts = starts[:0]
        span = self._video_span[r]
        if span is not None and len(starts):
            times = self.frame_times(rec, starts)
            inside = (times.min(axis=1) >= span[0]) & (times.max(axis=1) < span[1])
            if not inside.all():
                self.skip(
                    "windows_outside_video",
                    int((~inside).sum()),
                    f"{rec.name}: {(~inside).sum()} of {len(starts)} windows fall outside its video "
                    f"({span[1]:.1f} s, offset {rec.video_offset_s:+.3f} s): left out",
                )
                starts = starts[inside]
        if rec.sample_labels is not None:
            labels = window_labels_from_samples(rec.sample_labels, starts, n)
        else:
            labels = np.full(len(starts), rec.label if rec.label is not None else 0, np.int64)
        fixtures = np.asarray([rec.fixture_of_class.get(int(c), -1) for c in labels], np.int64)
        return WindowTable(
            recording=np.full(len(starts), r, np.int64),
            start=starts,
            label=labels,
            fixture=fixtures,
            subject=np.full(len(starts), rec.subject, np.int64),
        )

    def window_length(self, rec: Recording) -> int:
        return max(int(round(self.data.window_seconds * rec.rate_hz)), 1)

    def frame_times(self, rec: Recording, starts: np.ndarray) -> np.ndarray:
        """[W, frames] video-clock times of each window's frames (uniform by timestamp)."""
        sensor_start = rec.start_s + np.asarray(starts, np.float64) / rec.rate_hz
        offsets = uniform_frame_times(0.0, self.data.window_seconds, self.data.frames)
        return sensor_start[:, None] + offsets[None, :] + rec.video_offset_s

    def _raw(self, table: WindowTable, rows: np.ndarray, shift_s: float = 0.0) -> np.ndarray:
        """Raw sensor windows [len(rows), C, n] (NaN kept) of the given table rows; with `shift_s`, each read that
        many seconds later on its recording (rounded to a sample, kept within the recording)."""
        out = []
        for i in rows:
            rec = self.recordings[table.recording[i]]
            n = self.window_length(rec)
            first = int(np.clip(table.start[i] + round(shift_s * rec.rate_hz), 0, rec.stream.shape[1] - n))
            out.append(rec.stream[:, first : first + n])
        return np.stack(out).astype(np.float64)

    def video(self, r: int, start: int) -> np.ndarray:
        rec = self.recordings[r]
        size = self.data.frame_size
        if rec.video is None:
            return np.zeros((self.data.frames, 3, size, size), np.uint8)  # only when video is not required
        if r not in self._readers:
            self._readers[r] = VideoReader(rec.video)
        times = self.frame_times(rec, np.asarray([start]))[0]
        return self._readers[r].read(np.maximum(times, 0.0), size)

    # -- summaries (inspect) --------------------------------------------------------------------------------

    def label_counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for split in SPLITS:
            counts = np.bincount(self._splits[split].labels, minlength=len(self.class_names))
            out[split] = {self.class_names[c]: int(counts[c]) for c in range(len(self.class_names))}
        return out


class WindowedSplit(torch.utils.data.Dataset):
    """One split's windows: sensors preprocessed and video decoded on access."""

    def __init__(self, source: WindowedSource, name: str, table: WindowTable) -> None:
        self.source = source
        self.name = name
        self.table = table
        self.recording = table.recording
        self.labels = table.label
        self.fixtures = table.fixture
        self.subjects = table.subject

    def __len__(self) -> int:
        return len(self.labels)

    def sensor(self, i: int) -> np.ndarray:
        return self.source.pipeline(self.source._raw(self.table, np.asarray([i])))[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = range(len(self))[i]  # negative indices and IndexError like a sequence
        r = int(self.recording[i])
        return {
            "video": torch.from_numpy(self.source.video(r, int(self.table.start[i]))),
            "sensor": torch.from_numpy(self.sensor(i)),
            "label": torch.tensor(int(self.labels[i]), dtype=torch.int64),
            "subject": torch.tensor(int(self.subjects[i]), dtype=torch.int64),
            "fixture": torch.tensor(int(self.fixtures[i]), dtype=torch.int64),
            "index": torch.tensor(i, dtype=torch.int64),
            "recording": torch.tensor(r, dtype=torch.int64),
        }
