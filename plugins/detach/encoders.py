"""DETACH's decomposed encoders (docs/METHOD.md, "Decomposition"): spatial and temporal, per modality."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from detach_framework.registry import MAX_SENSOR_LENGTH, MAX_WIDTH, ComponentParams, Width


class SpatialHeadParams(ComponentParams):
    dim: int = Field(256, ge=1, le=MAX_WIDTH, description="Output size of z_v.")
    head_channels: int = Field(256, ge=1, le=MAX_WIDTH, description="Channels of the scene and object conv heads.")


class VideoSpatialHead(nn.Module):
    """z_v: scene head + object-saliency head over the time-averaged backbone map, fused, LayerNorm.

    maps [B, T, D, h, w] -> mean over T -> scene: conv3x3+BN+ReLU, global average pool;
    object: conv3x3+BN+ReLU, 1x1 conv + sigmoid saliency s, sum(s * f) / sum(s) -> concat -> Linear -> LN.
    """

    def __init__(self, params: SpatialHeadParams, in_dim: int) -> None:
        super().__init__()
        self.out_dim = params.dim
        c = params.head_channels

        def block() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(in_dim, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True))

        self.scene = block()
        self.object = block()
        self.saliency = nn.Conv2d(c, 1, 1)
        self.fuse = nn.Linear(2 * c, params.dim)
        self.norm = nn.LayerNorm(params.dim)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        x = maps.mean(dim=1)
        scene = self.scene(x).mean(dim=(2, 3))
        objects = self.object(x)
        weights = torch.sigmoid(self.saliency(objects))
        pooled = (objects * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp(min=1e-6)
        return self.norm(self.fuse(torch.cat([scene, pooled], dim=1)))


class CosineLinear(nn.Module):
    """A linear layer whose weight rows and input are both L2-normalised (outputs are cosines)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


SEGMENTS_DESCRIPTION = (
    "Time segments averaged separately and concatenated before the projection: 1 is the mean over the whole "
    "window (paper), which is blind to the direction of motion; 2 or more keep the order (a window played "
    "backwards embeds differently)."
)


def pool_over_time(x: torch.Tensor, segments: int, time_dim: int) -> torch.Tensor:
    """[B, C, T] (time_dim 2) or [B, T, C] (time_dim 1) -> [B, C * segments]: the mean of each of `segments`
    consecutive stretches of time (segment-major)."""
    if segments == 1:
        return x.mean(dim=time_dim)  # the paper's pooling, computed exactly as before segments existed
    if time_dim == 1:
        x = x.transpose(1, 2)
    return F.adaptive_avg_pool1d(x, segments).transpose(1, 2).flatten(1)


class TemporalHeadParams(ComponentParams):
    dim: int = Field(256, ge=1, le=MAX_WIDTH, description="Output size of h_v.")
    channels: list[Width] = Field(
        [32, 64, 256], min_length=3, max_length=3, description="Channels of the three Conv3d layers."
    )
    input: Literal["frames", "maps"] = Field(
        "frames", description="Frame differences of the raw frames (paper) or of the backbone maps."
    )
    segments: int = Field(1, ge=1, le=64, description=SEGMENTS_DESCRIPTION)


class VideoTemporalHead(nn.Module):
    """h_v: frame differences -> 3x (Conv3d k3, stride (1,2,2), BN3d, ReLU) -> mean over H, W, then over T
    (or per time segment, see `segments`) -> cosine
    projection. With input "frames" it consumes normalised frames [B, T, 3, H, W]; with "maps" the backbone
    maps [B, T, D, h, w]."""

    def __init__(self, params: TemporalHeadParams, in_dim: int) -> None:
        super().__init__()
        self.out_dim = params.dim
        self.input_kind = params.input
        previous = 3 if params.input == "frames" else in_dim
        layers: list[nn.Module] = []
        for channels in params.channels:
            layers += [
                nn.Conv3d(previous, channels, 3, stride=(1, 2, 2), padding=1),
                nn.BatchNorm3d(channels),
                nn.ReLU(inplace=True),
            ]
            previous = channels
        self.convs = nn.Sequential(*layers)
        self.segments = params.segments
        self.project = CosineLinear(previous * params.segments, params.dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        diffs = (video[:, 1:] - video[:, :-1]).transpose(1, 2)  # [B, C, T-1, H, W]
        return self.project(pool_over_time(self.convs(diffs).mean(dim=(3, 4)), self.segments, time_dim=2))


class SensorSpatialParams(ComponentParams):
    dim: int = Field(256, ge=1, le=MAX_WIDTH, description="Output size of z_s.")
    pool_steps: int = Field(32, ge=1, le=MAX_SENSOR_LENGTH, description="Adaptive average pool length before the GRU.")
    percentile: float = Field(99.0, gt=0, le=100, description="Per-channel percentile of |x| (which channel fired).")


class SensorSpatialEncoder(nn.Module):
    """z_s: dilated CNN (C->32 k5 d2, 32->64 k3 d2, 64->64 k3 d2; BN+ReLU; max-pool 2 after the first two;
    adaptive pool) -> GroupNorm(4) -> GRU(64->dim) last hidden, plus Linear(C->dim) of the per-channel
    percentile of |x| over the window, added."""

    def __init__(self, params: SensorSpatialParams, in_channels: int, length: int) -> None:
        super().__init__()
        self.out_dim = params.dim
        self.quantile = params.percentile / 100.0

        def block(cin: int, cout: int, kernel: int) -> list[nn.Module]:
            pad = kernel - 1  # dilation 2: "same" length
            return [nn.Conv1d(cin, cout, kernel, dilation=2, padding=pad), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]

        self.cnn = nn.Sequential(
            *block(in_channels, 32, 5),
            nn.MaxPool1d(2),
            *block(32, 64, 3),
            nn.MaxPool1d(2),
            *block(64, 64, 3),
            nn.AdaptiveAvgPool1d(params.pool_steps),
            nn.GroupNorm(4, 64),
        )
        self.gru = nn.GRU(64, params.dim, batch_first=True)
        self.active = nn.Linear(in_channels, params.dim)

    def forward(self, sensor: torch.Tensor) -> torch.Tensor:
        _, hidden = self.gru(self.cnn(sensor).transpose(1, 2))
        activity = torch.quantile(sensor.abs(), self.quantile, dim=-1)  # [B, C]
        return hidden[-1] + self.active(activity)


class SensorTemporalParams(ComponentParams):
    dim: int = Field(256, ge=1, le=MAX_WIDTH, description="Output size of h_s.")
    gru_hidden: int = Field(256, ge=1, le=MAX_WIDTH, description="Hidden size of each GRU direction.")
    segments: int = Field(1, ge=1, le=64, description=SEGMENTS_DESCRIPTION)


class SensorTemporalEncoder(nn.Module):
    """h_s: CNN (C->32 k5, 32->64 k3 d2, 64->128 k3 d4; BN+ReLU; max-pool 2 after the first two) ->
    GroupNorm(8) -> BiGRU -> single-head self-attention over time, mean over time (or per
    segment) -> Linear(dim)."""

    def __init__(self, params: SensorTemporalParams, in_channels: int, length: int) -> None:
        super().__init__()
        self.out_dim = params.dim

        def block(cin: int, cout: int, kernel: int, dilation: int) -> list[nn.Module]:
            pad = dilation * (kernel - 1) // 2
            return [
                nn.Conv1d(cin, cout, kernel, dilation=dilation, padding=pad),
                nn.BatchNorm1d(cout),
                nn.ReLU(inplace=True),
            ]

        self.cnn = nn.Sequential(
            *block(in_channels, 32, 5, 1),
            nn.MaxPool1d(2),
            *block(32, 64, 3, 2),
            nn.MaxPool1d(2),
            *block(64, 128, 3, 4),
            nn.GroupNorm(8, 128),
        )
        self.gru = nn.GRU(128, params.gru_hidden, batch_first=True, bidirectional=True)
        self.attention = nn.MultiheadAttention(2 * params.gru_hidden, num_heads=1, batch_first=True)
        self.segments = params.segments
        self.project = nn.Linear(2 * params.gru_hidden * params.segments, params.dim)

    def forward(self, sensor: torch.Tensor) -> torch.Tensor:
        x, _ = self.gru(self.cnn(sensor).transpose(1, 2))
        attended, _ = self.attention(x, x, x, need_weights=False)
        return self.project(pool_over_time(attended, self.segments, time_dim=1))
