"""Tiny Opportunity / Opportunity++ datasets in the real on-disk formats, with planted events and a truth file.

Quirks of the real files are planted on purpose: 33/34 ms steps, literal NaN stretches, an all-NaN
channel, metadata split between <root>/dataset and <root>/data (or <root>), a tab in one legend line, SRT
files with comma and with dot before the milliseconds, CRLF line ends, an SRT id missing from the legend,
a per-run video clock offset, and pose rows of two participants. `truth.json` says what a reader must find.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from detach_framework.data.video import index_frame, write_video
from detach_framework.errors import UserError

from .formats import (
    ACCEL_FIRST_COLUMN,
    AMBIENT_COLUMNS,
    CLASS_FIXTURE,
    LEGEND,
    MILLISEC_COLUMN,
    NUM_COLUMNS,
    OPEN_CLOSE_IDS,
    PP_POSE_FILE,
    PP_RUN_DIR,
    PP_SENSOR_FILE,
    PP_SRT_FILE,
    PP_VIDEO_FPS,
    REED_COLUMNS,
    SENSOR_FIXTURE,
    SENSOR_RATE_HZ,
    TRACK_COLUMNS,
    column_names_text,
    format_sensor_rows,
    label_legend_text,
    write_srt,
)

TRUTH_FILE = "truth.json"
RUNS: tuple[str, ...] = ("S1-ADL1", "S1-Drill", "S2-ADL1", "S2-ADL4", "S3-ADL2", "S3-ADL5", "S4-ADL1")
RUN_SECONDS = 16.0
VIDEO_SIZE = (48, 64)  # height, width: not square, like a real camera
UNKNOWN_SRT_ID = 999999  # planted in every SRT: must be skipped and counted
DRINK_ID = 407521  # an ML_Both_Arms label outside the 14 classes: reads as Null
NAN_RUN, NAN_COLUMNS, NAN_SPAN = "S1-ADL1", (208, 209, 210), (90, 150)  # DOOR1 accelerometer packet loss
ALL_NAN_RUN, ALL_NAN_COLUMN = "S2-ADL1", 211  # LAZYCHAIR x never arrives


def fixture_fixtures() -> dict[str, tuple[list[int], list[int]]]:
    """Fixture -> (its reed columns, its accelerometer columns), 1-based."""
    out: dict[str, tuple[list[int], list[int]]] = {}
    for column, (sensor, _) in REED_COLUMNS.items():
        fixture = SENSOR_FIXTURE[sensor]
        out.setdefault(fixture, ([], []))[0].append(column)
    for sensor, first in ACCEL_FIRST_COLUMN.items():
        fixture = SENSOR_FIXTURE[sensor]
        if fixture is not None:
            out.setdefault(fixture, ([], []))[1].extend(range(first, first + 3))
    return out


def plant_run(rng: np.random.Generator, run_index: int, seconds: float) -> tuple[np.ndarray, list[dict]]:
    """One run's 250-column table and its planted events (each open/close class appears across runs)."""
    n = int(round(seconds * SENSOR_RATE_HZ))
    data = np.zeros((n, NUM_COLUMNS))
    data[:, MILLISEC_COLUMN - 1] = np.round(np.arange(n) * 1000.0 / SENSOR_RATE_HZ)  # 33/34 ms steps
    data[:, 1:194] = rng.integers(-900, 900, (n, 193))  # body-worn and object sensors: plausible integers
    for first in ACCEL_FIRST_COLUMN.values():
        data[:, first - 1 : first + 2] = np.round(np.array([0.0, -1000.0, 30.0]) + rng.normal(0, 8, (n, 3)))
    data[:, 231:243] = rng.integers(0, 4000, (n, 12))  # location tags
    data[:, TRACK_COLUMNS["Locomotion"] - 1] = np.where(np.arange(n) % 200 < 150, 1, 2)
    data[:, TRACK_COLUMNS["HL_Activity"] - 1] = 101 + run_index % 5
    fixtures = fixture_fixtures()
    events: list[dict] = []
    # Two visits per run (open then close), cycling over the 7 fixtures; a drink in between.
    visits = [(2 * run_index) % 7, (2 * run_index + 1) % 7]
    opens = [i for i in OPEN_CLOSE_IDS if str(i).startswith("406")]
    t = 30
    for v in visits:
        open_id = opens[v]
        close_id = int("404" + str(open_id)[3:])
        fixture = CLASS_FIXTURE[open_id]
        reeds, accel = fixtures[fixture]
        for raw, length in ((open_id, 30 + 3 * run_index), (close_id, 27)):
            data[t : t + length, TRACK_COLUMNS["ML_Both_Arms"] - 1] = raw
            bump = 300.0 * np.sin(np.linspace(0, np.pi, length))
            data[t : t + length, [c - 1 for c in accel]] += np.round(bump)[:, None]
            events.append({"track": "ML_Both_Arms", "id": raw, "name": LEGEND[raw][1], "start": t, "end": t + length})
            if raw == open_id:
                data[t + length // 2 :, [c - 1 for c in reeds]] = 1
            else:
                data[t + length // 2 :, [c - 1 for c in reeds]] = 0
            t += length + 45
        t += 30
    data[t : t + 40, TRACK_COLUMNS["ML_Both_Arms"] - 1] = DRINK_ID
    events.append({"track": "ML_Both_Arms", "id": DRINK_ID, "name": LEGEND[DRINK_ID][1], "start": t, "end": t + 40})
    if t + 40 > n:
        raise ValueError("run too short for its planted events")
    ms = data[:, MILLISEC_COLUMN - 1]
    for e in events:
        e["start_ms"] = float(ms[e["start"]])
        e["end_ms"] = float(ms[e["end"]]) if e["end"] < n else float(ms[-1] + 1000.0 / SENSOR_RATE_HZ)
    return data, events


def write_opportunity_fixture(out_dir: str | Path, layout: str = "pp", seed: int = 0) -> Path:
    """Write a tiny dataset in the UCI ('uci') or Opportunity++ ('pp') layout plus truth.json; returns the root."""
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"fixture: {root} exists and is not empty")
    if layout not in ("uci", "pp"):
        raise UserError(f"fixture: layout must be 'uci' or 'pp', got {layout!r}")
    rng = np.random.default_rng(seed)
    (root / "dataset").mkdir(parents=True, exist_ok=True)
    (root / "dataset" / "column_names.txt").write_text(column_names_text())
    legend = label_legend_text().splitlines()
    legend[3] = legend[3].replace("   -   ", "\t -   ", 1)  # a tab before the dash, as in some copies
    legend_dir = root / "data" if layout == "pp" else root
    legend_dir.mkdir(parents=True, exist_ok=True)
    (legend_dir / "label_legend.txt").write_text("\n".join(legend) + "\n")
    truth: dict = {
        "layout": layout,
        "metadata": {
            "column_names": "dataset/column_names.txt",
            "label_legend": str((legend_dir / "label_legend.txt").relative_to(root)),
        },
        "rate_hz": SENSOR_RATE_HZ,
        "runs": {},
        "challenge": {"train": ["S1-ADL1", "S1-Drill", "S2-ADL1", "S3-ADL2"], "test": ["S2-ADL4", "S3-ADL5"]},
    }
    for k, run in enumerate(RUNS):
        data, events = plant_run(rng, k, RUN_SECONDS)
        if run == NAN_RUN:
            data[NAN_SPAN[0] : NAN_SPAN[1], [c - 1 for c in NAN_COLUMNS]] = np.nan
        if run == ALL_NAN_RUN:
            data[:, ALL_NAN_COLUMN - 1] = np.nan
        nan_fraction = {str(c): float(np.isnan(data[:, c - 1]).mean()) for c in AMBIENT_COLUMNS}
        entry = {
            "subject": int(run[1]),
            "rows": int(len(data)),
            "first_ms": float(data[0, 0]),
            "last_ms": float(data[-1, 0]),
            "events": [{key: e[key] for key in ("track", "id", "name", "start_ms", "end_ms")} for e in events],
            "ambient_nan_fraction": {c: f for c, f in nan_fraction.items() if f > 0},
        }
        if layout == "uci":
            (root / "dataset" / f"{run}.dat").write_text(format_sensor_rows(data))
        else:
            entry.update(
                _write_pp_run(root, run, k, data, events, np.random.default_rng([seed, 1000 + k]))
            )  # own stream: both layouts hold the same sensor data
        truth["runs"][run] = entry
    (root / TRUTH_FILE).write_text(json.dumps(truth, indent=1))
    return root


def _write_pp_run(root: Path, run: str, k: int, data: np.ndarray, events: list[dict], rng: np.random.Generator) -> dict:
    folder = root / PP_RUN_DIR.format(run=run)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PP_SENSOR_FILE.format(run=run)).write_text(format_sensor_rows(data))
    offset_ms = float([700.0, 0.0, 300.0, 450.0, 150.0, 250.0, 100.0][k % 7])  # video starts no later than the sensors
    # SRT times are on the video clock: sensor time + offset. Alternate the quirks across runs.
    srt_events = [(e["start_ms"] + offset_ms, e["end_ms"] + offset_ms, e["id"], e["name"]) for e in events]
    srt_events.append((srt_events[-1][1] + 500.0, srt_events[-1][1] + 900.0, UNKNOWN_SRT_ID, "Mystery"))
    write_srt(folder / PP_SRT_FILE.format(run=run, track="ml_both_arms"), srt_events, dot=k % 2 == 1, crlf=k % 3 == 0)
    duration_s = (data[-1, 0] + 1000.0 / SENSOR_RATE_HZ + max(offset_ms, 0.0)) / 1000.0 + 0.5
    frames = int(np.ceil(duration_s * PP_VIDEO_FPS))
    write_index_video(folder / f"{run}_side.avi", frames, PP_VIDEO_FPS)
    pose_rows = _write_pose(folder / PP_POSE_FILE.format(run=run), frames, rng)
    return {
        "video_offset_ms": offset_ms,
        "srt_unknown": 1,
        "srt_separator": "." if k % 2 == 1 else ",",
        "video": {"fps": PP_VIDEO_FPS, "height": VIDEO_SIZE[0], "width": VIDEO_SIZE[1], "frames": frames},
        "pose_rows_participant_1": pose_rows,
    }


def write_index_video(path: Path, frames: int, fps: float, size: tuple[int, int] = VIDEO_SIZE) -> Path:
    """A video whose frame k shows index k (see detach_framework.data.video.index_frame)."""
    images = np.stack([index_frame(i, *size) for i in range(frames)])
    return write_video(path, images, fps, "mjpeg")


def _write_pose(path: Path, frames: int, rng: np.random.Generator) -> int:
    lines = ["Participant,Frame_Number,Nose_x,Nose_y,Nose_c,Neck_x,Neck_y,Neck_c"]
    kept = 0
    for f in range(0, frames, 2):
        for p in (1, 2):
            values = ",".join(f"{v:.1f}" for v in rng.uniform(0, 60, 6))
            lines.append(f"{p},{f},{values}")
            kept += p == 1
    path.write_text("\n".join(lines) + "\n")
    return kept
