"""Windows, subject-wise splits and the torch Dataset of the synthetic kitchen."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detach_framework.contracts import SPLITS, SensorLayout
from detach_framework.data.recordings import labelling_actions
from detach_framework.data.settings import DataSettings
from detach_framework.data.transforms import (
    NanPolicyStep,
    Pipeline,
    ResampleStep,
    ZScoreStep,
    apply_zscore,
    channel_statistics,
    resample_linear,
    resolve_nan,
)
from detach_framework.engine.encoder import window_samples
from detach_framework.errors import UserError

from .layout import ACTIVITY_NAMES, DEFAULT_LAYOUT, SENSOR_RATE_HZ, KitchenLayout
from .presets import Knobs
from .render import KitchenRenderer
from .scene import SceneRecording, frame_states
from .storage import export_recordings

SPLIT_FRACTIONS = {"val": 0.2, "test": 0.2}  # of the subjects; the rest train

# What building a kitchen holds in memory, in bytes: per raw sensor value, the float32 stream kept in its
# SceneRecording; per window and channel step, the float64 resampled windows of every split, one split's float64
# z-scores and the float32 copy kept; per window, its WindowTable row. Video is rendered per sample, never held.
_STREAM_VALUE_BYTES = 4
_WINDOW_VALUE_BYTES = 8 + 8 + 4
_WINDOW_ROW_BYTES = 6 * 8
# Generating one recording takes a few float64 copies of its stream at once (signal, extents, noise, wander).
_GENERATION_COPIES = 6
MEMORY_SHARE = 0.5  # of the machine's physical memory a kitchen may take

# What `_sensor_windows` and the z-score of __init__ do to a raw window, as transform steps (their defaults are
# the NaN threshold and minimum std used there), so that an export can apply it to a raw recording.
ZSCORE = ZScoreStep()
PREPROCESSING = [NanPolicyStep(), ResampleStep(), ZSCORE]


def estimated_bytes(knobs: Knobs, data: DataSettings, layout: KitchenLayout = DEFAULT_LAYOUT) -> int:
    """Peak memory of generating the kitchen of `knobs` and `layout` and cutting its windows for `data`."""
    channels = len(layout.channels().names)
    stream = int(round(knobs.recording_seconds * SENSOR_RATE_HZ)) * channels
    recordings = knobs.subjects * knobs.recordings_per_subject
    per_recording = int((knobs.recording_seconds - data.window_seconds) / data.stride_seconds + 1e-9) + 1
    windows = recordings * max(per_recording, 0)
    return (
        recordings * stream * _STREAM_VALUE_BYTES
        + _GENERATION_COPIES * stream * 8
        + windows * (channels * data.sensor_length * _WINDOW_VALUE_BYTES + _WINDOW_ROW_BYTES)
    )


def check_fits_in_memory(knobs: Knobs, data: DataSettings, layout: KitchenLayout) -> None:
    """Refuse, before generating anything, a kitchen that would take more than MEMORY_SHARE of the machine."""
    needed = estimated_bytes(knobs, data, layout)
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > MEMORY_SHARE * physical:
        raise UserError(
            f"synthetic_kitchen: subjects={knobs.subjects} x recordings_per_subject={knobs.recordings_per_subject} "
            f"x recording_seconds={knobs.recording_seconds:g} with data.window_seconds={data.window_seconds:g}, "
            f"data.stride_seconds={data.stride_seconds:g} and data.sensor_length={data.sensor_length} needs about "
            f"{needed / 1e9:.1f} GB of memory, more than {MEMORY_SHARE:.0%} of this machine's "
            f"{physical / 1e9:.1f} GB: make the kitchen or its windows smaller"
        )


def subject_splits(subjects: int, seed: int) -> dict[str, list[int]]:
    """Disjoint subject sets per split, at least one subject each."""
    if subjects < len(SPLITS):
        raise UserError(f"synthetic_kitchen needs at least {len(SPLITS)} subjects, got {subjects}")
    order = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, 4])).permutation(subjects)
    n_val = max(1, int(round(SPLIT_FRACTIONS["val"] * subjects)))
    n_test = max(1, int(round(SPLIT_FRACTIONS["test"] * subjects)))
    n_val = min(n_val, subjects - n_test - 1)
    return {
        "test": sorted(int(s) for s in order[:n_test]),
        "val": sorted(int(s) for s in order[n_test : n_test + n_val]),
        "train": sorted(int(s) for s in order[n_test + n_val :]),
    }


@dataclass
class WindowTable:
    """The windows of one split: where each one comes from and what it shows."""

    recording: np.ndarray  # [N] index into SyntheticKitchen.recordings
    start: np.ndarray  # [N] window start, seconds on the sensor clock
    label: np.ndarray  # [N] int64
    fixture: np.ndarray  # [N] int64, -1 for Null
    subject: np.ndarray  # [N] int64
    activity: np.ndarray  # [N] int64 recording-level activity


def window_labels(
    starts: np.ndarray,
    window: float,
    onset: np.ndarray,
    dur: np.ndarray,
    labels: np.ndarray,
    fixtures: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Label and fixture of each window by `labelling_actions` over the open and close actions, uncapped: a
    window is labelled only when it holds at least half of an action's motion, however short the window, as
    the kitchen always has (so every data setting keeps its windows). An action lasts at most 1.15 s / 0.6
    (the slowest subject), so windows of 2 s (the default) or more would get the same labels capped."""
    taken = labelling_actions(starts, window, onset, dur, cap_at_window=False)
    # -1 picks the appended Null
    return np.append(labels, 0)[taken].astype(np.int64), np.append(fixtures, -1)[taken].astype(np.int64)


class SyntheticKitchen:
    """The synthetic kitchen as a DatasetSource: by default 7 fixtures and 15 classes (Null + open/close per
    fixture); `layout` decides. `fixture_names` has one name per sensor location, so its length is the true K."""

    def __init__(
        self,
        recordings: list[SceneRecording],
        knobs: Knobs,
        seed: int,
        preset: str,
        data: DataSettings,
        layout: KitchenLayout,
    ) -> None:
        channels = layout.channels()
        self.layout = layout
        self.class_names: list[str] = layout.class_names
        self.channel_names: list[str] = list(channels.names)
        self.fixture_names: list[str] = layout.fixture_names
        self.activity_names: list[str] = list(ACTIVITY_NAMES)
        self.channel_fixture: np.ndarray = channels.fixture  # fixture owning each channel
        self.recordings = recordings
        self.knobs = knobs
        self.seed = int(seed)
        self.preset = preset
        self.data = data
        self.renderer = KitchenRenderer(self.seed, knobs.fixture_motion_px, layout)
        self.subject_splits = subject_splits(knobs.subjects, self.seed)
        self._check_settings(data)

        windows = {name: self._windows(self.subject_splits[name]) for name in SPLITS}
        raw = {name: self._sensor_windows(windows[name]) for name in SPLITS}
        self.sensor_mean, self.sensor_std, _ = channel_statistics(*raw["train"])  # train only, computed once
        self._splits = {
            name: KitchenSplit(
                self,
                name,
                windows[name],
                apply_zscore(*raw[name], self.sensor_mean, self.sensor_std).astype(np.float32),
            )
            for name in SPLITS
        }

    def split(self, name: str) -> KitchenSplit:
        if name not in self._splits:
            raise UserError(f"unknown split '{name}'; expected one of: {', '.join(SPLITS)}")
        return self._splits[name]

    def preprocessing_state(self) -> dict:
        """The training-split z-score statistics with the steps they belong to, in `Pipeline.state` form: the
        CLI writes them to the run directory and `detach export` carries them to raw recordings."""
        pipeline = Pipeline(PREPROCESSING, self.data.sensor_length, "synthetic_kitchen preprocessing")
        pipeline.stats = {PREPROCESSING.index(ZSCORE): (self.sensor_mean, self.sensor_std)}
        pipeline.fit_windows = len(self._splits["train"])
        return {"dataset": "synthetic_kitchen", "rate_hz": SENSOR_RATE_HZ, **pipeline.state(self.channel_names)}

    def sensor_layout(self) -> SensorLayout:
        """contracts.SensorLayoutSource (the robustness evaluator): each fixture's channels (`channel_fixture`),
        the raw stream's noise knob in z-score units, and the largest clock offset the knobs draw."""
        return SensorLayout.from_channel_fixture(
            self.fixture_names,
            self.channel_fixture,
            rate_hz=SENSOR_RATE_HZ,
            window_samples=window_samples(self.data.window_seconds, SENSOR_RATE_HZ),
            noise_std=self.knobs.sensor_noise_std / self.sensor_std,
            clock_offset_s=self.knobs.max_clock_offset_s,
        )

    def shifted_sensor_windows(self, split: str, offset_s: float) -> np.ndarray:
        """contracts.ShiftedSensorSource (the robustness evaluator's offset): the split's windows read offset_s
        later on the raw streams (rounded to a raw sample), z-scored with the train statistics."""
        raw = self._sensor_windows(self.split(split).table, int(round(offset_s * SENSOR_RATE_HZ)))
        return apply_zscore(*raw, self.sensor_mean, self.sensor_std).astype(np.float32)

    def export(self, out_dir: Path) -> None:
        """Write the generated ground truth (readable back with params `root`)."""
        export_recordings(Path(out_dir), self.preset, self.seed, self.knobs, self.layout, self.recordings)

    # ---- windows ----------------------------------------------------------------------------------

    def _check_settings(self, data: DataSettings) -> None:
        if data.window_seconds <= 0 or data.stride_seconds <= 0:
            raise UserError("synthetic_kitchen: data.window_seconds and data.stride_seconds must be positive")
        if data.window_seconds > self.knobs.recording_seconds:
            raise UserError(
                f"synthetic_kitchen: data.window_seconds {data.window_seconds} exceeds the recordings' "
                f"{self.knobs.recording_seconds} s"
            )
        if data.frames < 1 or data.frame_size < 8 or data.sensor_length < 2:
            raise UserError("synthetic_kitchen: needs data.frames >= 1, frame_size >= 8, sensor_length >= 2")

    def _windows(self, subjects: list[int]) -> WindowTable:
        w, stride = self.data.window_seconds, self.data.stride_seconds
        parts: list[tuple[np.ndarray, ...]] = []
        for r, rec in enumerate(self.recordings):
            if rec.subject not in subjects:
                continue
            count = int(np.floor((rec.duration - w) / stride + 1e-9)) + 1
            starts = np.arange(count) * stride
            onset, dur, fixture, _ = rec.actions()
            label, fix = window_labels(starts, w, onset, dur, rec.action_labels(), fixture)
            parts.append(
                (
                    np.full(count, r),
                    starts,
                    label,
                    fix,
                    np.full(count, rec.subject),
                    np.full(count, rec.activity),
                )
            )
        # Every subject has a recording at least one window long (checked above), so parts is never empty.
        rec_idx, start, label, fixture, subject, activity = (np.concatenate(c) for c in zip(*parts, strict=True))
        return WindowTable(
            recording=rec_idx.astype(np.int64),
            start=start.astype(np.float64),
            label=label.astype(np.int64),
            fixture=fixture.astype(np.int64),
            subject=subject.astype(np.int64),
            activity=activity.astype(np.int64),
        )

    def _sensor_windows(self, table: WindowTable, shift_samples: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """NaN-resolved, resampled windows [N, C, L] (float64) and their dead-channel flags [N, C]; with
        `shift_samples`, each read that many raw samples later (kept within its recording)."""
        n = max(int(round(self.data.window_seconds * SENSOR_RATE_HZ)), 1)
        length = self.data.sensor_length
        channels = len(self.channel_names)
        out = np.zeros((len(table.start), channels, length))
        dead = np.zeros((len(table.start), channels), bool)
        for r in np.unique(table.recording):
            rows = np.flatnonzero(table.recording == r)
            stream = self.recordings[r].sensor
            first = np.rint(table.start[rows] * SENSOR_RATE_HZ).astype(np.int64) + shift_samples
            k0 = np.clip(first, 0, stream.shape[1] - n)
            raw = stream[:, k0[:, None] + np.arange(n)].transpose(1, 0, 2).astype(np.float64)  # [W, C, n]
            has_nan = np.isnan(raw).any(axis=(1, 2))
            for j in np.flatnonzero(has_nan):
                raw[j], dead[rows[j]] = resolve_nan(raw[j])
            out[rows] = resample_linear(raw, length)
        return out, dead


class KitchenSplit(torch.utils.data.Dataset):
    """One split's windows. Sensors are precomputed; video is rendered lazily and deterministically."""

    def __init__(self, kitchen: SyntheticKitchen, name: str, table: WindowTable, sensor: np.ndarray) -> None:
        self.kitchen = kitchen
        self.name = name
        self.sensor = sensor  # [N, C, L] float32, z-scored with train statistics
        self.table = table  # where each window comes from: shifted reads cut them again
        self.recording = table.recording
        self.start_seconds = table.start
        self.labels = table.label
        self.fixtures = table.fixture
        self.subjects = table.subject
        self.activity = table.activity

    def __len__(self) -> int:
        return len(self.labels)

    def frame_times(self, i: int) -> np.ndarray:
        """Video-clock times of window i's frames: uniform over the window, shifted by the clock offset."""
        data = self.kitchen.data
        rec = self.kitchen.recordings[self.recording[i]]
        centres = (np.arange(data.frames) + 0.5) * data.window_seconds / data.frames
        return self.start_seconds[i] + centres + rec.clock_offset

    def video(self, i: int, size: int | None = None) -> np.ndarray:
        """uint8 [T, 3, S, S] frames of window i."""
        rec = self.kitchen.recordings[self.recording[i]]
        knobs = self.kitchen.knobs
        fixtures = len(self.kitchen.fixture_names)
        states = frame_states(rec, self.frame_times(i), knobs.flicker_amplitude, knobs.camera_jitter_px, fixtures)
        return self.kitchen.renderer.render(states, size or self.kitchen.data.frame_size, rec.shirt)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = range(len(self))[i]  # negative indices and IndexError like a sequence
        return {
            "video": torch.from_numpy(self.video(i)),
            "sensor": torch.tensor(self.sensor[i]),  # a copy: callers may modify it in place
            "label": torch.tensor(int(self.labels[i]), dtype=torch.int64),
            "subject": torch.tensor(int(self.subjects[i]), dtype=torch.int64),
            "fixture": torch.tensor(int(self.fixtures[i]), dtype=torch.int64),
            "index": torch.tensor(i, dtype=torch.int64),
        }
