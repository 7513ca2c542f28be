"""Write the synthetic kitchen in the Opportunity++ layout, so the real reader path runs end to end.

Each recording becomes a run S<subject+1>-ADL<k> (the 6th of a subject: Drill) with a 250-column
_sensors_data.txt (the kitchen's 34 channels in Opportunity's ambient columns, accelerations in milli-g),
a side video at 10 fps, an ML_Both_Arms SubRip file on the video clock, and truth.json.

The video file starts before the sensors: its frame at file time v shows the scene at sensor time
v - video_offset_s, with video_offset_s = lead-in + the recording's clock offset (the kitchen's nuisance),
so reading with that offset (or `estimate_offset: true`) aligns the modalities.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from detach_framework.atomic import atomic_directory
from detach_framework.data.video import write_video
from detach_framework.errors import UserError
from detach_plugins.datasets.opportunity.formats import (
    ACCEL_FIRST_COLUMN,
    LEGEND,
    NUM_COLUMNS,
    PP_RUN_DIR,
    PP_SENSOR_FILE,
    PP_SRT_FILE,
    PP_VIDEO_FPS,
    REED_COLUMNS,
    SENSOR_FIXTURE,
    TRACK_COLUMNS,
    column_names_text,
    format_sensor_rows,
    label_legend_text,
    write_srt,
)

from .layout import ACTIVITY_NAMES, CLASS_NAMES, SENSOR_RATE_HZ, channel_layout
from .presets import PRESETS
from .render import KitchenRenderer
from .scene import SceneRecording, frame_states, generate_recordings

SESSIONS = ("ADL1", "ADL2", "ADL3", "ADL4", "ADL5", "Drill")
LEAD_IN_S = 0.5  # the side camera starts this long (plus the clock offset) before the sensors
_RAW_ID = {name: raw for raw, (track, name) in LEGEND.items() if track == "ML_Both_Arms"}
_HL_ID = {name: raw for raw, (track, name) in LEGEND.items() if track == "HL_Activity"}
# Kitchen fixture -> Opportunity sensor; the kitchen's drawer1-3 are top to bottom, as the legend's.
_SENSOR_OF = {fixture: sensor for sensor, fixture in SENSOR_FIXTURE.items() if fixture is not None}


def opportunity_columns() -> list[int]:
    """1-based Opportunity column of each kitchen channel, in the kitchen's channel order."""
    columns = []
    for name in channel_layout().names:
        fixture, _, rest = name.partition("_")  # "door1_acc_x" or "fridge_reed2"
        sensor = _SENSOR_OF[fixture]
        if rest.startswith("acc_"):
            columns.append(ACCEL_FIRST_COLUMN[sensor] + "xyz".index(rest[-1]))
        else:
            switch = f"S{int(rest.removeprefix('reed'))}"
            columns.append(next(c for c, (s, sw) in REED_COLUMNS.items() if s == sensor and sw in ("", switch)))
    return columns


def run_name(rec: SceneRecording, index_in_subject: int) -> str:
    if index_in_subject >= len(SESSIONS):
        raise UserError(f"export_opportunity_pp: Opportunity has {len(SESSIONS)} runs per subject, not more")
    return f"S{rec.subject + 1}-{SESSIONS[index_in_subject]}"


def export_opportunity_pp(
    out_dir: str | Path, preset: str = "quickstart", seed: int = 42, frame_size: int = 64
) -> Path:
    """Generate the kitchen (preset, seed) and write it in the Opportunity++ layout (all or nothing)."""
    if preset not in PRESETS:
        raise UserError(f"export_opportunity_pp: unknown preset '{preset}' ({', '.join(PRESETS)})")
    knobs = PRESETS[preset]
    recordings = generate_recordings(knobs, seed)
    return atomic_directory(
        out_dir, lambda tmp: _write(tmp, recordings, knobs, preset, seed, frame_size), "export_opportunity_pp"
    )


def _write(root: Path, recordings: list[SceneRecording], knobs, preset: str, seed: int, frame_size: int) -> None:
    (root / "dataset").mkdir(parents=True)
    (root / "dataset" / "column_names.txt").write_text(column_names_text())
    (root / "dataset" / "label_legend.txt").write_text(label_legend_text())
    columns = [c - 1 for c in opportunity_columns()]
    renderer = KitchenRenderer(seed, knobs.fixture_motion_px)
    lead_in = max(LEAD_IN_S, knobs.max_clock_offset_s + 0.1)
    truth: dict = {"preset": preset, "seed": seed, "runs": {}}
    seen: dict[int, int] = {}
    for rec in recordings:
        k = seen.get(rec.subject, 0)
        seen[rec.subject] = k + 1
        run = run_name(rec, k)
        folder = root / PP_RUN_DIR.format(run=run)
        folder.mkdir(parents=True)
        n = rec.sensor.shape[1]
        data = np.zeros((n, NUM_COLUMNS))
        data[:, 0] = np.round(np.arange(n) * 1000.0 / SENSOR_RATE_HZ)
        sensor = rec.sensor.astype(np.float64).T  # [n, C]
        is_accel = np.asarray(["_acc_" in name for name in channel_layout().names])
        data[:, columns] = np.where(is_accel[None, :], np.round(sensor * 1000.0), sensor)  # accelerations in milli-g
        lazy = ACCEL_FIRST_COLUMN["LAZYCHAIR"] - 1
        data[:, lazy : lazy + 3] = [0.0, -1000.0, 0.0]
        data[:, TRACK_COLUMNS["Locomotion"] - 1] = 1
        data[:, TRACK_COLUMNS["HL_Activity"] - 1] = _HL_ID[ACTIVITY_NAMES[rec.activity]]
        onset, dur, _, _ = rec.actions()
        raw_ids = [_RAW_ID[CLASS_NAMES[c]] for c in rec.action_labels()]
        t = data[:, 0] / 1000.0
        for on, d, raw in zip(onset, dur, raw_ids, strict=True):
            data[(t >= on) & (t < on + d), TRACK_COLUMNS["ML_Both_Arms"] - 1] = raw
        (folder / PP_SENSOR_FILE.format(run=run)).write_text(format_sensor_rows(data))
        offset = lead_in + rec.clock_offset
        events = [
            (1000.0 * (on + offset), 1000.0 * (on + d + offset), raw, LEGEND[raw][1])
            for on, d, raw in zip(onset, dur, raw_ids, strict=True)
        ]
        write_srt(folder / PP_SRT_FILE.format(run=run, track="ml_both_arms"), events)
        frames = int(np.ceil((rec.duration + offset + 0.2) * PP_VIDEO_FPS))
        scene_times = np.arange(frames) / PP_VIDEO_FPS - offset
        states = frame_states(rec, scene_times, knobs.flicker_amplitude, knobs.camera_jitter_px)
        images = renderer.render(states, frame_size, rec.shirt).transpose(0, 2, 3, 1)
        write_video(folder / f"{run}_side.avi", np.ascontiguousarray(images), PP_VIDEO_FPS, "mjpeg")
        truth["runs"][run] = {
            "subject": rec.subject + 1,
            "video_offset_ms": 1000.0 * offset,
            "actions": len(onset),
            "activity": ACTIVITY_NAMES[rec.activity],
        }
    (root / "truth.json").write_text(json.dumps(truth, indent=1))
