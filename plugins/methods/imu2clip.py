"""IMU2CLIP adapted to exocentric video + ambient sensors: global alignment with symmetric InfoNCE.

Components: sensor_encoder `imu2clip_sensor` (GroupNorm, conv blocks k10/5/5, GroupNorm, GRU),
video_head `pooled_projection` (average over frames and space, then a projection) and aligner
`global_contrastive` (one vector per clip and per window, aligned end to end by the stage loss, e.g. the
symmetric InfoNCE `infonce` of detach_plugins.losses).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from detach_framework.contracts import AlignerBase
from detach_framework.errors import UserError
from detach_framework.plugins import hookimpl
from detach_framework.registry import MAX_SENSOR_LENGTH, MAX_WIDTH, ComponentParams, Register, Width
from detach_plugins.losses import require_contrastive

# IMU2CLIP's loss is the `infonce` component of detach_plugins.losses (imported from here too).
from detach_plugins.losses.infonce import InfoNceLoss, InfoNceParams, weighted_nce  # noqa: F401


class Imu2ClipSensorParams(ComponentParams):
    dim: int = Field(256, ge=1, le=MAX_WIDTH, description="Output embedding size.")
    channels: list[Width] = Field(
        [64, 128, 128], min_length=3, max_length=3, description="Output channels of the three conv blocks."
    )
    kernels: list[Annotated[int, Field(ge=1, le=MAX_SENSOR_LENGTH)]] = Field(
        [10, 5, 5], min_length=3, max_length=3, description="Kernel sizes of the three conv blocks."
    )
    gru_hidden: int = Field(256, ge=1, le=MAX_WIDTH, description="GRU hidden size.")
    gru_layers: int = Field(1, ge=1, le=4, description="Stacked GRU layers.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout before the output projection.")


class Imu2ClipSensorEncoder(nn.Module):
    """[B, C, L] -> [B, dim]: normalised input, three conv blocks, GroupNorm, GRU's last hidden state."""

    def __init__(self, params: Imu2ClipSensorParams, in_channels: int, length: int) -> None:
        super().__init__()
        self.out_dim = params.dim
        blocks: list[nn.Module] = [nn.GroupNorm(1, in_channels)]
        previous = in_channels
        for index, (channels, kernel) in enumerate(zip(params.channels, params.kernels, strict=True)):
            blocks += [nn.Conv1d(previous, channels, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]
            if index < 2 and length >= 8:  # halve the sequence after the first two blocks
                blocks.append(nn.MaxPool1d(2))
            previous = channels
        blocks.append(nn.GroupNorm(_groups(previous), previous))
        self.features = nn.Sequential(*blocks)
        self.gru = nn.GRU(previous, params.gru_hidden, num_layers=params.gru_layers, batch_first=True)
        self.dropout = nn.Dropout(params.dropout)
        self.project = nn.Linear(params.gru_hidden, params.dim)

    def forward(self, sensor: torch.Tensor) -> torch.Tensor:
        x = self.features(sensor)  # [B, C', L']
        _, hidden = self.gru(x.transpose(1, 2))
        return self.project(self.dropout(hidden[-1]))


def _groups(channels: int, wanted: int = 4) -> int:
    return math.gcd(channels, wanted)


class PooledProjectionParams(ComponentParams):
    dim: int = Field(256, ge=1, le=MAX_WIDTH, description="Output embedding size.")
    hidden: int | None = Field(
        None, ge=1, le=MAX_WIDTH, description="Hidden width of a two-layer MLP (null: one linear)."
    )


class PooledProjectionHead(nn.Module):
    """maps [B, T, D, h, w] -> mean over frames and space -> projection [B, dim] (a whole-clip vector)."""

    def __init__(self, params: PooledProjectionParams, in_dim: int) -> None:
        super().__init__()
        self.out_dim = params.dim
        if params.hidden is None:
            self.project: nn.Module = nn.Linear(in_dim, params.dim)
        else:
            self.project = nn.Sequential(
                nn.Linear(in_dim, params.hidden), nn.GELU(), nn.Linear(params.hidden, params.dim)
            )

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.project(maps.mean(dim=(1, 3, 4)))


class GlobalContrastiveParams(ComponentParams):
    pass


class GlobalContrastiveAligner(AlignerBase):
    """Global alignment: one vector per clip and per window, the loss between them; trains everything."""

    def __init__(self, params: GlobalContrastiveParams, model: nn.Module, loss: nn.Module | None) -> None:
        super().__init__()
        if loss is None:
            raise UserError("aligner global_contrastive needs a stage loss (e.g. name: infonce)")
        if model.video_head.out_dim != model.sensor_encoder.out_dim:
            raise UserError(
                f"model.video_head.dim ({model.video_head.out_dim}) must equal model.sensor_encoder.dim "
                f"({model.sensor_encoder.out_dim}) for a shared embedding space"
            )
        require_contrastive("global_contrastive", loss)
        self.loss = loss

    def trainable_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.video_backbone, model.video_head, model.sensor_encoder]

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # The loss draws its negatives from the global batch (it gathers this process's rows).
        out = {"loss": self.loss(model.encode_video(batch), model.encode_sensor(batch))}
        if isinstance(self.loss, InfoNceLoss):
            out["temperature"] = 1.0 / self.loss.logit_scale().detach()
        return out


@hookimpl
def detach_register_components(register: Register) -> None:
    register(
        kind="sensor_encoder",
        name="imu2clip_sensor",
        factory=Imu2ClipSensorEncoder,
        params=Imu2ClipSensorParams,
        embedding_field="dim",
        description="IMU2CLIP sensor encoder: GroupNorm, conv blocks k10/5/5, GroupNorm, GRU.",
    )
    register(
        kind="video_head",
        name="pooled_projection",
        factory=PooledProjectionHead,
        params=PooledProjectionParams,
        embedding_field="dim",
        description="Whole-clip vector: average over frames and space, then a projection.",
    )
    register(
        kind="aligner",
        name="global_contrastive",
        factory=GlobalContrastiveAligner,
        params=GlobalContrastiveParams,
        description="Global alignment of whole-clip and whole-window vectors (IMU2CLIP adapted).",
    )
