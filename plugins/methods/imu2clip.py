"""IMU2CLIP adapted to exocentric video + ambient sensors: global alignment with symmetric InfoNCE.

Components: sensor_encoder `imu2clip_sensor` (GroupNorm, conv blocks k10/5/5, GroupNorm, GRU),
video_head `pooled_projection` (average over frames and space, then a projection), loss `infonce`
(symmetric, learnable temperature stored as a clamped log scale; optional negative weights), and
aligner `global_contrastive` (one vector per clip and per window, aligned end to end).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from detach_framework.contracts import AlignerBase
from detach_framework.engine.distributed import gather_with_grad
from detach_framework.engine.precision import float32
from detach_framework.errors import UserError
from detach_framework.plugins import hookimpl
from detach_framework.registry import MAX_SENSOR_LENGTH, MAX_WIDTH, ComponentParams, Width


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


class InfoNceParams(ComponentParams):
    temperature: float = Field(0.07, gt=0, description="Initial (or fixed) temperature tau.")
    learnable: bool = Field(True, description="Learn the temperature (as log of the logit scale).")
    max_logit_scale: float = Field(100.0, gt=1, description="Clamp of the logit scale 1/tau.")


class InfoNceLoss(nn.Module):
    """Symmetric InfoNCE on L2-normalised embeddings; `weights` [B, B] scale the negatives.

    L_v2s = -1/N sum_i log(exp(S_ii) / (exp(S_ii) + sum_{j!=i} W_ij exp(S_ij))), S = cos / tau,
    L_s2v the same on S transposed with the same W (sensor anchor i weights negative j by W_ij) unless
    `s2v_weights` gives another matrix, loss = (L_v2s + L_s2v) / 2. W = None is plain InfoNCE.
    """

    def __init__(self, params: InfoNceParams) -> None:
        super().__init__()
        self.max_log_scale = math.log(params.max_logit_scale)
        log_scale = torch.tensor(math.log(1.0 / params.temperature))
        if params.learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    @float32
    def forward(
        self,
        video: torch.Tensor,
        sensor: torch.Tensor,
        weights: torch.Tensor | None = None,
        s2v_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        video, sensor = F.normalize(video, dim=-1), F.normalize(sensor, dim=-1)
        logits = self.logit_scale() * video @ sensor.T  # S[i, j] = cos(v_i, s_j) / tau
        s2v = weights if s2v_weights is None else s2v_weights
        return 0.5 * (weighted_nce(logits, weights) + weighted_nce(logits.T, s2v))


def weighted_nce(logits: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """-mean_i log(exp(S_ii) / (exp(S_ii) + sum_{j!=i} W_ij exp(S_ij))), via a stable logsumexp."""
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    if weights is None:
        return F.cross_entropy(logits, torch.arange(n, device=logits.device))
    # log W with the positive's own weight set to 1 (it is never a negative); W_ij = 0 drops j.
    log_w = torch.where(eye, torch.zeros_like(logits), torch.log(weights.clamp(min=0)))
    denominator = torch.logsumexp(logits + log_w, dim=1)
    return (denominator - logits.diagonal()).mean()


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
        self.loss = loss

    def trainable_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.video_backbone, model.video_head, model.sensor_encoder]

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Negatives come from the global batch when several processes train together.
        video = gather_with_grad(model.encode_video(batch))
        sensor = gather_with_grad(model.encode_sensor(batch))
        out = {"loss": self.loss(video, sensor)}
        if hasattr(self.loss, "logit_scale"):
            out["temperature"] = 1.0 / self.loss.logit_scale().detach()
        return out


@hookimpl
def detach_register_components(registry) -> None:
    registry.add(
        kind="sensor_encoder",
        name="imu2clip_sensor",
        factory=Imu2ClipSensorEncoder,
        params=Imu2ClipSensorParams,
        embedding_field="dim",
        description="IMU2CLIP sensor encoder: GroupNorm, conv blocks k10/5/5, GroupNorm, GRU.",
    )
    registry.add(
        kind="video_head",
        name="pooled_projection",
        factory=PooledProjectionHead,
        params=PooledProjectionParams,
        embedding_field="dim",
        description="Whole-clip vector: average over frames and space, then a projection.",
    )
    registry.add(
        kind="loss",
        name="infonce",
        factory=InfoNceLoss,
        params=InfoNceParams,
        description="Symmetric InfoNCE, clamped learnable log-scale temperature, optional negative weights.",
    )
    registry.add(
        kind="aligner",
        name="global_contrastive",
        factory=GlobalContrastiveAligner,
        params=GlobalContrastiveParams,
        description="Global alignment of whole-clip and whole-window vectors (IMU2CLIP adapted).",
    )
