"""EVI-MAE adapted: masked autoencoding of both modalities (mask ratio 0.75) plus a small contrastive term.

loss = video_weight * L_video + sensor_weight * L_sensor + contrastive_weight * L_contrast

Adaptation choices (EVI-MAE/CAV-MAE use ViT encoders that drop masked tokens; here the encoders are the
framework's slots, e.g. a per-frame CNN and a CNN+GRU sensor encoder, which need a dense input):
- Video tokens are `video_patch`-pixel squares of every frame (a T x H/p x W/p grid). 75% of each clip's
  tokens are masked at random (exactly round(0.75 n) per clip) by zeroing their pixels after normalisation
  (0 = the dataset's mean colour); the backbone sees the masked frames. Its maps are average-pooled onto the
  token grid and a small per-token MLP decoder predicts each token's pixels, average-pooled to
  `video_target_size`^2 per channel (a small target keeps the decoder small at 224 px). The per-frame CNN
  cannot see other frames, so masking frames independently leaks nothing through time.
- Sensor tokens are `sensor_patch`-step time patches (all channels together). 75% of each window's patches
  are zeroed (the datasets standardise channels: 0 is the channel mean); the sensor encoder's pooled vector
  is decoded by a two-layer MLP into the whole window.
- Both reconstruction losses are the MSE over the masked tokens only (MAE).
- As in CAV-MAE, the contrastive term (the stage loss, e.g. infonce) uses the embeddings of the masked
  inputs, one forward pass per modality; evaluation encodes unmasked inputs.
- The video backbone must be trainable (masked frames go through it); a frozen backbone needs video_weight 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from detach_framework.contracts import AlignerBase
from detach_framework.engine.precision import float32
from detach_framework.errors import UserError
from detach_framework.plugins import hookimpl
from detach_framework.registry import MAX_SENSOR_LENGTH, MAX_WIDTH, ComponentParams


class EviMaeParams(ComponentParams):
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="Fraction of tokens masked in each modality.")
    video_patch: int = Field(16, ge=1, le=1024, description="Side of a video token in pixels.")
    video_target_size: int = Field(4, ge=1, le=64, description="Each video token's pixels are pooled to this side.")
    sensor_patch: int = Field(
        8, ge=1, le=MAX_SENSOR_LENGTH, description="Time steps per sensor token (divides the sensor length)."
    )
    decoder_hidden: int = Field(256, ge=1, le=MAX_WIDTH, description="Hidden width of both decoders.")
    video_weight: float = Field(1.0, ge=0, description="Weight of the video reconstruction.")
    sensor_weight: float = Field(1.0, ge=0, description="Weight of the sensor reconstruction.")
    contrastive_weight: float = Field(0.01, ge=0, description="Weight of the cross-modal contrastive term.")


def random_mask(batch: int, tokens: int, ratio: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """[batch, tokens] bool, True = masked: exactly round(ratio * tokens) (at least 1) per row, at random."""
    count = min(tokens, max(1, round(ratio * tokens)))
    order = torch.rand(batch, tokens, device=device).argsort(dim=1)
    mask = torch.zeros(batch, tokens, dtype=torch.bool, device=device)
    return mask.scatter_(1, order[:, :count], True)


@float32
def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked tokens of the per-token mean squared error; pred/target [..., F], mask [...]."""
    per_token = (pred - target).pow(2).mean(dim=-1)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1)


def patchify_sensor(sensor: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, L] -> [B, L/patch, C*patch]: token k holds steps k*patch .. (k+1)*patch-1 of every channel."""
    b, c, length = sensor.shape
    return sensor.reshape(b, c, length // patch, patch).permute(0, 2, 1, 3).reshape(b, length // patch, c * patch)


def video_patch_targets(frames: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """[B, T, 3, H, W] -> [B, T, h, w, 3*size*size]: each token's pixels average-pooled to size x size."""
    b, t, c = frames.shape[:3]
    h, w = grid
    pooled = F.adaptive_avg_pool2d(frames.flatten(0, 1), (h * size, w * size))
    pooled = pooled.reshape(b, t, c, h, size, w, size).permute(0, 1, 3, 5, 2, 4, 6)
    return pooled.reshape(b, t, h, w, c * size * size)


class EviMaeAligner(AlignerBase):
    def __init__(self, params: EviMaeParams, model: nn.Module, loss: nn.Module | None) -> None:
        super().__init__()
        if params.contrastive_weight > 0:
            if loss is None:
                raise UserError(
                    "aligner evi_mae needs a stage loss for its contrastive term (or contrastive_weight: 0)"
                )
            if model.video_head.out_dim != model.sensor_encoder.out_dim:
                raise UserError(
                    f"model.video_head.dim ({model.video_head.out_dim}) must equal model.sensor_encoder.dim "
                    f"({model.sensor_encoder.out_dim}) for the contrastive term"
                )
        if params.video_weight > 0 and model.backbone_frozen:
            raise UserError(
                "aligner evi_mae reconstructs masked frames through the video backbone: unfreeze it "
                "(model.video_backbone.frozen: false) or set video_weight: 0"
            )
        channels, length = int(model.sensor_channels), int(model.sensor_length)
        if length % params.sensor_patch:
            raise UserError(
                f"aligner evi_mae: sensor_patch {params.sensor_patch} must divide data.sensor_length {length}"
            )
        self.params = params
        self.loss = loss
        hidden = params.decoder_hidden
        target = 3 * params.video_target_size**2
        self.video_decoder = nn.Sequential(
            nn.Linear(int(model.video_backbone.feature_dim), hidden), nn.GELU(), nn.Linear(hidden, target)
        )
        self.sensor_decoder = nn.Sequential(
            nn.Linear(int(model.sensor_encoder.out_dim), hidden), nn.GELU(), nn.Linear(hidden, channels * length)
        )

    def trainable_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.video_backbone, model.video_head, model.sensor_encoder]

    def video_branch(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked-token reconstruction loss, clip vector of the masked video)."""
        p = self.params
        frames = model.normalise_video(batch["video"])
        b, t, _, height, width = frames.shape
        grid = (max(1, height // p.video_patch), max(1, width // p.video_patch))
        mask = random_mask(b, t * grid[0] * grid[1], p.mask_ratio, frames.device).view(b * t, 1, *grid)
        pixel_mask = F.interpolate(mask.float(), size=(height, width), mode="nearest").view(b, t, 1, height, width)
        maps = model.video_backbone(frames * (1 - pixel_mask))  # [B, T, D, h', w']
        tokens = F.adaptive_avg_pool2d(maps.flatten(0, 1), grid).view(b, t, -1, *grid).permute(0, 1, 3, 4, 2)
        pred = self.video_decoder(tokens)
        target = video_patch_targets(frames, grid, p.video_target_size)
        return masked_mse(pred, target, mask.view(b, t, *grid)), model.video_head(maps)

    def sensor_branch(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked-patch reconstruction loss, window vector of the masked sensor)."""
        p = self.params
        sensor = batch["sensor"]
        b, c, length = sensor.shape
        mask = random_mask(b, length // p.sensor_patch, p.mask_ratio, sensor.device)
        steps = mask.repeat_interleave(p.sensor_patch, dim=1).unsqueeze(1)  # [B, 1, L]
        vector = model.sensor_encoder(sensor.masked_fill(steps, 0.0))
        recon = self.sensor_decoder(vector).view(b, c, length)
        loss = masked_mse(patchify_sensor(recon, p.sensor_patch), patchify_sensor(sensor, p.sensor_patch), mask)
        return loss, vector

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.params
        if "video_maps" in batch and p.video_weight > 0:
            raise UserError("aligner evi_mae masks raw frames: disable the feature cache (cache.mode: off)")
        sensor_loss, sensor_vector = self.sensor_branch(model, batch)
        if p.video_weight > 0:
            video_loss, video_vector = self.video_branch(model, batch)
        else:
            video_loss, video_vector = sensor_loss.new_zeros(()), model.encode_video(batch)
        total = p.video_weight * video_loss + p.sensor_weight * sensor_loss
        out = {"video_rec": video_loss.detach(), "sensor_rec": sensor_loss.detach()}
        if p.contrastive_weight > 0:
            contrast = self.loss(video_vector, sensor_vector)
            total = total + p.contrastive_weight * contrast
            out["contrast"] = contrast.detach()
        out["loss"] = total
        return out


@hookimpl
def detach_register_components(registry) -> None:
    registry.add(
        kind="aligner",
        name="evi_mae",
        factory=EviMaeAligner,
        params=EviMaeParams,
        description="EVI-MAE adapted: masked autoencoding of video tokens and sensor time patches + small contrast.",
    )
