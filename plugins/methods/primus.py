"""PRIMUS adapted (no text branch): IMU2CLIP's cross-modal InfoNCE plus sensor self-supervision.

loss = L_MM + ssl_weight * (L_SS + L_NN)
- L_MM: the stage loss (e.g. `infonce`) between the whole-clip video vector and the clean sensor vector.
- L_SS: SimCLR NT-Xent between two augmented views of each window (per-channel Gaussian noise scaled by the
  batch's channel std, and a per-sample per-channel scale factor), on an SSL projection head.
- L_NN: NNCLR: each view's nearest neighbour in a FIFO queue of past view-1 projections replaces it as the
  positive for the other view (symmetric). An empty queue (the first step) falls back to the view itself.
The projection head and the queue belong to the aligner (the queue is a buffer: checkpointed, resumed).
L_SS + L_NN is the `primus_ssl` loss (detach_plugins.losses), which the aligner builds from its ssl_temperature
and nearest_neighbour; the stage loss is the cross-modal term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from detach_framework.contracts import AlignerBase
from detach_framework.errors import UserError
from detach_framework.plugins import hookimpl
from detach_framework.registry import MAX_WIDTH, ComponentParams, Register
from detach_plugins.losses import require_contrastive
from detach_plugins.losses.views import (  # noqa: F401 - the loss functions imported from here too
    SSL_TEMPERATURE,
    PrimusSslLoss,
    PrimusSslParams,
    nearest_neighbours,
    nnclr_loss,
    nt_xent,
)

from .queues import FeatureQueue


class PrimusParams(ComponentParams):
    ssl_weight: float = Field(0.5, ge=0, description="Weight of the sensor self-supervision (L_SS + L_NN).")
    nearest_neighbour: bool = Field(True, description="Add the NNCLR term L_NN (off: SimCLR only).")
    queue_size: int = Field(8192, ge=1, le=262_144, description="NNCLR support-set (queue) size.")
    ssl_temperature: float = Field(SSL_TEMPERATURE, gt=0, description="Temperature of L_SS and L_NN.")
    projection_dim: int = Field(128, ge=1, le=MAX_WIDTH, description="Output size of the SSL projection head.")
    projection_hidden: int = Field(256, ge=1, le=MAX_WIDTH, description="Hidden width of the SSL projection head.")
    noise_std: float = Field(0.05, ge=0, description="Gaussian noise std, as a fraction of each channel's std.")
    scale_std: float = Field(0.1, ge=0, description="Std of the per-channel scale factor (mean 1).")


def augment(sensor: torch.Tensor, noise_std: float, scale_std: float) -> torch.Tensor:
    """Noise + scaling of [B, C, L]; the noise follows each channel's batch std so raw units do not matter."""
    channel_std = sensor.detach().std(dim=(0, 2), keepdim=True).clamp(min=1e-6)
    noise = torch.randn_like(sensor) * noise_std * channel_std
    scale = 1 + scale_std * torch.randn(sensor.shape[0], sensor.shape[1], 1, device=sensor.device)
    return (sensor + noise) * scale


class PrimusAligner(AlignerBase):
    """Trains the video side and the sensor encoder end to end, like IMU2CLIP, plus the sensor SSL terms."""

    def __init__(self, params: PrimusParams, model: nn.Module, loss: nn.Module | None) -> None:
        super().__init__()
        if loss is None:
            raise UserError("aligner primus needs a stage loss for the cross-modal term (e.g. name: infonce)")
        if model.video_head.out_dim != model.sensor_encoder.out_dim:
            raise UserError(
                f"model.video_head.dim ({model.video_head.out_dim}) must equal model.sensor_encoder.dim "
                f"({model.sensor_encoder.out_dim}) for a shared embedding space"
            )
        require_contrastive("primus", loss)
        self.params = params
        self.loss = loss
        self.self_supervision = PrimusSslLoss(
            PrimusSslParams(temperature=params.ssl_temperature, nearest_neighbour=params.nearest_neighbour)
        )
        dim = int(model.sensor_encoder.out_dim)
        self.projector = nn.Sequential(
            nn.Linear(dim, params.projection_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(params.projection_hidden, params.projection_dim),
        )
        self.queue = FeatureQueue(params.queue_size, params.projection_dim)

    def trainable_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.video_backbone, model.video_head, model.sensor_encoder]

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.params
        sensor = batch["sensor"]
        views = [sensor, augment(sensor, p.noise_std, p.scale_std), augment(sensor, p.noise_std, p.scale_std)]
        # One encoder call for the clean window and both views: a recurrent encoder's steps are sequential,
        # so a 3x batch costs far less than three calls (batch-norm encoders then share statistics).
        clean, view1, view2 = model.sensor_encoder(torch.cat(views)).split(len(sensor))
        cross = self.loss(model.encode_video(batch), clean)
        view1, view2 = self.projector(view1), self.projector(view2)
        terms = self.self_supervision.terms(view1, view2, self.queue.valid())
        ssl = terms["ssl"]
        out = {"cross": cross.detach(), "ssl": ssl.detach()}
        total = cross + p.ssl_weight * ssl
        if p.nearest_neighbour:
            nn_term = terms["nn"]
            total = total + p.ssl_weight * nn_term
            out["nn"] = nn_term.detach()
            if self.training:  # validation reads the queue but never fills it
                self.queue.push(F.normalize(view1.detach(), dim=-1))
        out["loss"] = total
        return out


@hookimpl
def detach_register_components(register: Register) -> None:
    register(
        kind="aligner",
        name="primus",
        factory=PrimusAligner,
        params=PrimusParams,
        description="PRIMUS adapted: cross-modal InfoNCE + two-view sensor SimCLR + NNCLR queue positives.",
    )
