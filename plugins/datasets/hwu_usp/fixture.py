"""A tiny HWU-USP in the (unconfirmed) real layout, with planted sensor events and truth.json.

Quirks planted: recordings both as folders and as flat files, a depth video next to the RGB one, a CSV
with ';', one without a header, timestamps in milliseconds, empty fields (NaN), mp4 (H.264) and avi
(MJPEG) videos.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from detach_framework.data.video import index_frame, write_video
from detach_framework.errors import UserError

from .formats import ACTIVITIES, CHANNELS, RECORDING_NAME, SENSOR_RATE_HZ, VIDEO_FPS, write_ambient_csv

TRUTH_FILE = "truth.json"
SUBJECTS: tuple[int, ...] = (1, 2, 3, 4)
SECONDS = 5.0
VIDEO_SIZE = (24, 32)  # height, width
# Channels each activity touches (contacts close/open, motion holds, the kettle's power for tea).
ACTIVITY_CHANNELS: dict[str, tuple[str, ...]] = {
    "cereals": ("Ktch_B4_Cupboard", "Ktch_T1_Cupboard"),
    "tidy": ("Ktch_B1_Drawer", "Ktch_Motion_2"),
    "laptop": ("Ktch_Motion_1",),
    "newspaper": ("Ktch_Motion_2",),
    "sandwich": ("Ktch_T2_Cupboard", "Ktch_B2_Cupboard"),
    "smartphone": ("Ktch_Motion_1", "Ktch_Motion_2"),
    "table": ("Ktch_T3_Cupboard",),
    "tea": ("Ktch_T4_Cupboard", "TP_L_Power"),
    "dishes": ("Ktch_B3_Cupboard", "Ktch_T2_Cupboard"),
}


def write_hwu_fixture(out_dir: str | Path, seed: int = 0) -> Path:
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"fixture: {root} exists and is not empty")
    rng = np.random.default_rng(seed)
    truth: dict = {"rate_hz": SENSOR_RATE_HZ, "fold0_test_subjects": [1, 2], "recordings": {}}
    n = int(SECONDS * SENSOR_RATE_HZ)
    for a, activity in enumerate(ACTIVITIES):
        for s in SUBJECTS:
            k = a * len(SUBJECTS) + s
            name = RECORDING_NAME.format(activity=activity, subject=s)
            values = np.zeros((n, len(CHANNELS)))
            events = []
            for j, channel in enumerate(ACTIVITY_CHANNELS[activity]):
                c = CHANNELS.index(channel)
                start = int(rng.integers(10, n // 2)) + 20 * j
                length = int(rng.integers(40, 100))
                values[start : start + length, c] = (
                    1.0 if channel != "TP_L_Power" else 1500.0 + rng.normal(0, 5, length)
                )
                events.append(
                    {"channel": channel, "start_s": start / SENSOR_RATE_HZ, "end_s": (start + length) / SENSOR_RATE_HZ}
                )
            if k % 5 == 0:  # an empty field now and then: NaN
                values[30:33, CHANNELS.index("Ktch_Motion_1")] = np.nan
            flat = k % 4 == 0
            header = k % 7 != 3
            delimiter = ";" if k % 6 == 1 else ","
            millis = k % 3 == 0
            times = np.arange(n) / SENSOR_RATE_HZ * (1000.0 if millis else 1.0) + (1000.0 if millis else 1.0) * 3600.0
            folder = root / activity if flat else root / activity / name
            folder.mkdir(parents=True, exist_ok=True)
            prefix = f"{name}_" if flat else ""
            write_ambient_csv(folder / f"{prefix}ambient.csv", times, values, header=header, delimiter=delimiter)
            frames = int(np.ceil((SECONDS + 0.2) * VIDEO_FPS))
            images = np.stack([index_frame(i, *VIDEO_SIZE) for i in range(frames)])
            if k % 2:
                write_video(folder / f"{prefix}rgb.mp4", images, VIDEO_FPS, "libx264", gop=10)
            else:
                write_video(folder / f"{prefix}rgb.avi", images, VIDEO_FPS, "mjpeg")
            if not flat and k % 9 == 1:  # a depth video that must never be taken for RGB
                write_video(folder / "depth.avi", 255 - images[:5], VIDEO_FPS, "mjpeg")
            truth["recordings"][name] = {
                "activity": activity,
                "label": a,
                "subject": s,
                "rows": n,
                "layout": "flat" if flat else "folder",
                "header": header,
                "delimiter": delimiter,
                "timestamp_unit": "ms" if millis else "s",
                "events": events,
                "nan_fraction": {
                    c: float(np.isnan(values[:, i]).mean())
                    for i, c in enumerate(CHANNELS)
                    if np.isnan(values[:, i]).any()
                },
                "video_frames": frames,
            }
    (root / TRUTH_FILE).write_text(json.dumps(truth, indent=1))
    return root
