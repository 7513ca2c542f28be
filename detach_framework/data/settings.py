"""Settings every dataset receives from the spec's `data` section."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataSettings:
    """How samples are cut and shaped, whatever the dataset.

    window_seconds / stride_seconds: sliding windows over each recording.
    frames: video frames sampled uniformly per window; frame_size: square side in pixels.
    sensor_length: every sensor window is resampled to this many steps.
    """

    window_seconds: float = 2.0
    stride_seconds: float = 1.0
    frames: int = 8
    frame_size: int = 64
    sensor_length: int = 128
    seed: int = 42
