"""Sensor augmentations of DETACH's stage 1 (docs/METHOD.md): the time warp of the clustering input."""

from __future__ import annotations

import torch


def time_warp(sensor: torch.Tensor, amplitude: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Warp the time axis of [B, C, L]: t' = t + a_b * amplitude * L * sin(linspace(0, 4 pi, L)), a_b ~ U(0, 1)
    per sample, clipped to [0, L-1], linear interpolation. Amplitude 0 returns `sensor` and draws nothing."""
    batch, _, length = sensor.shape
    if amplitude == 0 or length < 2:
        return sensor
    fraction = torch.rand(batch, 1, generator=generator).to(sensor.device)
    steps = torch.arange(length, dtype=sensor.dtype, device=sensor.device)
    offset = amplitude * length * torch.sin(torch.linspace(0, 4 * torch.pi, length, device=sensor.device))
    position = (steps + fraction * offset).clamp(0, length - 1)  # [B, L]
    low = position.floor().long().clamp(max=length - 2)
    weight = (position - low).unsqueeze(1)  # [B, 1, L]
    index = low.unsqueeze(1).expand(-1, sensor.shape[1], -1)
    left = sensor.gather(2, index)
    right = sensor.gather(2, index + 1)
    return left + weight * (right - left)
