"""EVI-MAE adapted: masked autoencoding of both modalities (mask ratio 0.75) plus a small contrastive term.

loss = video_weight * L_video + sensor_weight * L_sensor + contrastive_weight * L_contrast

Sensor side, as in a masked autoencoder:
- The sensor encoder is `evi_mae_sensor` (or any `PatchSensorEncoder`): a window is cut into `patch`-step
  time patches (all channels together), each embedded as one token with a fixed sine-cosine position code.
  `mask_ratio` of each window's patches are drawn at random (exactly round(0.75 n), at least 1) and dropped:
  the transformer encoder sees the visible tokens only.
- A light transformer decoder takes the encoded visible tokens, puts a learned mask token with its position
  code at every masked patch, and predicts the raw values of every patch. L_sensor is the MSE over the
  masked patches only; targets are the window's values (the datasets standardise channels), not normalised
  per patch, as METHOD does not ask for it.
- The window embedding is the mean of the encoder's output tokens, projected to `dim`: over the visible
  tokens in training (the contrastive term), over all patches of the unmasked window in evaluation.

Video side (the video backbone slot is a dense per-frame CNN shared with the other methods, so masked tokens
are zeroed instead of dropped): video tokens are `video_patch`-pixel squares of every frame (a T x H/p x W/p
grid); `mask_ratio` of each clip's tokens are zeroed after normalisation (0 = the dataset's mean colour) and
the backbone sees the masked frames. Its maps are average-pooled onto the token grid and a small per-token
MLP decoder predicts each masked token's pixels, average-pooled to `video_target_size`^2 per channel (a small
target keeps the decoder small at 224 px). The per-frame CNN cannot see other frames, so masking frames
independently leaks nothing through time. L_video is the MSE over the masked tokens only.

As in CAV-MAE, the contrastive term (the stage loss, e.g. infonce) compares the pooled embeddings of the
masked inputs, one forward pass per modality. The video backbone must be trainable (masked frames go through
it); a frozen backbone needs video_weight 0. L_video and L_sensor are the `masked_reconstruction` loss
(detach_plugins.losses), which the aligner builds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from detach_framework.contracts import AlignerBase
from detach_framework.errors import UserError
from detach_framework.plugins import hookimpl
from detach_framework.registry import MAX_SENSOR_LENGTH, MAX_WIDTH, ComponentParams, Register
from detach_plugins.losses import require_contrastive
from detach_plugins.losses.reconstruction import (  # noqa: F401 - masked_mse imported from here too
    MaskedReconstructionLoss,
    MaskedReconstructionParams,
    masked_mse,
)


def random_mask(batch: int, tokens: int, ratio: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """[batch, tokens] bool, True = masked: exactly round(ratio * tokens) (at least 1) per row, at random."""
    count = min(tokens, max(1, round(ratio * tokens)))
    order = torch.rand(batch, tokens, device=device).argsort(dim=1)
    mask = torch.zeros(batch, tokens, dtype=torch.bool, device=device)
    return mask.scatter_(1, order[:, :count], True)


def visible_indices(mask: torch.Tensor) -> torch.Tensor:
    """[B, N] bool mask with the same count per row -> [B, n_visible] int64 positions of the unmasked tokens."""
    return (~mask).nonzero()[:, 1].view(mask.shape[0], -1)


def patchify_sensor(sensor: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, L] -> [B, L/patch, C*patch]: token k holds steps k*patch .. (k+1)*patch-1 of every channel."""
    b, c, length = sensor.shape
    return sensor.reshape(b, c, length // patch, patch).permute(0, 2, 1, 3).reshape(b, length // patch, c * patch)


def sincos_positions(count: int, width: int) -> torch.Tensor:
    """[count, width] fixed sine-cosine position codes (as in MAE): nothing to learn, the same in every run."""
    half = width // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    angles = torch.arange(count, dtype=torch.float32)[:, None] * frequencies
    codes = torch.zeros(count, width)
    codes[:, :half], codes[:, half : 2 * half] = angles.sin(), angles.cos()
    return codes


def transformer_blocks(width: int, heads: int, depth: int, mlp_ratio: float) -> nn.ModuleList:
    """Pre-norm transformer blocks (attention + GELU MLP, no dropout), batch first."""
    return nn.ModuleList(
        nn.TransformerEncoderLayer(
            width, heads, round(width * mlp_ratio), dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        for _ in range(depth)
    )


def video_patch_targets(frames: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """[B, T, 3, H, W] -> [B, T, h, w, 3*size*size]: each token's pixels average-pooled to size x size."""
    b, t, c = frames.shape[:3]
    h, w = grid
    pooled = F.adaptive_avg_pool2d(frames.flatten(0, 1), (h * size, w * size))
    pooled = pooled.reshape(b, t, c, h, size, w, size).permute(0, 1, 3, 5, 2, 4, 6)
    return pooled.reshape(b, t, h, w, c * size * size)


def _heads_divide(width: int, heads: int, what: str) -> None:
    if width % heads:
        raise ValueError(f"{what} width {width} must be a multiple of its heads {heads}")


# -- the sensor encoder -------------------------------------------------------------------------------------


class PatchSensorEncoder(nn.Module):
    """The interface aligner evi_mae needs from model.sensor_encoder: per-patch tokens of the visible patches.

    patch, num_patches, token_dim, out_dim       sizes
    patchify(sensor [B, C, L]) -> [B, N, C*patch]   the reconstruction targets, in token order
    encode_tokens(sensor, visible [B, n] | None) -> [B, n, token_dim]   encoded tokens of the visible patches
                                                    (all N patches when visible is None)
    pool(tokens [B, n, token_dim]) -> [B, out_dim]  the window embedding
    forward(sensor) = pool(encode_tokens(sensor)): the sensor encoder slot's contract, on the unmasked window.
    """

    patch: int
    num_patches: int
    token_dim: int
    out_dim: int

    def patchify(self, sensor: torch.Tensor) -> torch.Tensor:
        return patchify_sensor(sensor, self.patch)

    def encode_tokens(self, sensor: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement encode_tokens")

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement pool")

    def forward(self, sensor: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encode_tokens(sensor))


class EviMaeSensorParams(ComponentParams):
    dim: int = Field(256, ge=1, le=MAX_WIDTH, description="Output embedding size.")
    patch: int = Field(8, ge=1, le=MAX_SENSOR_LENGTH, description="Time steps per token (divides sensor_length).")
    width: int = Field(128, ge=1, le=MAX_WIDTH, description="Token width of the transformer encoder.")
    depth: int = Field(4, ge=1, le=48, description="Transformer blocks of the encoder.")
    heads: int = Field(4, ge=1, le=64, description="Attention heads (divide width).")
    mlp_ratio: float = Field(4.0, gt=0, le=16, description="Hidden width of each block's MLP, in units of width.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> EviMaeSensorParams:
        _heads_divide(self.width, self.heads, "the encoder's")
        return self


class EviMaeSensorEncoder(PatchSensorEncoder):
    """[B, C, L] -> time patches -> linear token embedding + position codes -> transformer over the visible
    tokens -> LayerNorm; the window embedding is the tokens' mean, projected to dim."""

    def __init__(self, params: EviMaeSensorParams, in_channels: int, length: int) -> None:
        super().__init__()
        if length % params.patch:
            raise UserError(f"model.sensor_encoder.patch {params.patch} must divide data.sensor_length {length}")
        self.patch, self.num_patches = params.patch, length // params.patch
        self.token_dim, self.out_dim = params.width, params.dim
        self.embed = nn.Linear(in_channels * params.patch, params.width)
        self.register_buffer("positions", sincos_positions(self.num_patches, params.width), persistent=False)
        self.blocks = transformer_blocks(params.width, params.heads, params.depth, params.mlp_ratio)
        self.norm = nn.LayerNorm(params.width)
        self.project = nn.Linear(params.width, params.dim)

    def encode_tokens(self, sensor: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.embed(self.patchify(sensor)) + self.positions
        if visible is not None:  # the masked tokens are dropped before the encoder, not zeroed
            tokens = tokens.gather(1, visible.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.project(tokens.mean(dim=1))


# -- the aligner --------------------------------------------------------------------------------------------


class EviMaeParams(ComponentParams):
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="Fraction of tokens masked in each modality.")
    video_patch: int = Field(16, ge=1, le=1024, description="Side of a video token in pixels.")
    video_target_size: int = Field(4, ge=1, le=64, description="Each video token's pixels are pooled to this side.")
    decoder_hidden: int = Field(256, ge=1, le=MAX_WIDTH, description="Hidden width of the video token decoder.")
    decoder_width: int = Field(64, ge=1, le=MAX_WIDTH, description="Token width of the sensor patch decoder.")
    decoder_depth: int = Field(2, ge=1, le=48, description="Transformer blocks of the sensor patch decoder.")
    decoder_heads: int = Field(4, ge=1, le=64, description="Attention heads of the sensor decoder (divide its width).")
    video_weight: float = Field(1.0, ge=0, description="Weight of the video reconstruction.")
    sensor_weight: float = Field(1.0, ge=0, description="Weight of the sensor reconstruction.")
    contrastive_weight: float = Field(0.01, ge=0, description="Weight of the cross-modal contrastive term.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> EviMaeParams:
        _heads_divide(self.decoder_width, self.decoder_heads, "the sensor decoder's")
        return self


class SensorPatchDecoder(nn.Module):
    """Encoded visible tokens -> every patch's values: visible tokens and a learned mask token at each masked
    position, each with its position code, through a few transformer blocks, then a linear read-out."""

    def __init__(self, params: EviMaeParams, token_dim: int, num_patches: int, patch_values: int) -> None:
        super().__init__()
        width = params.decoder_width
        self.embed = nn.Linear(token_dim, width)
        self.mask_token = nn.Parameter(torch.empty(1, 1, width).normal_(std=0.02))
        self.register_buffer("positions", sincos_positions(num_patches, width), persistent=False)
        self.blocks = transformer_blocks(width, params.decoder_heads, params.decoder_depth, 4.0)
        self.norm = nn.LayerNorm(width)
        self.predict = nn.Linear(width, patch_values)

    def forward(self, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """tokens [B, n, token_dim] at positions visible [B, n] -> predictions [B, N, patch_values]."""
        embedded = self.embed(tokens)
        b, _, width = embedded.shape
        grid = self.mask_token.to(embedded.dtype).expand(b, self.positions.shape[0], width)
        x = grid.scatter(1, visible.unsqueeze(-1).expand(-1, -1, width), embedded) + self.positions
        for block in self.blocks:
            x = block(x)
        return self.predict(self.norm(x))


class EviMaeAligner(AlignerBase):
    def __init__(self, params: EviMaeParams, model: nn.Module, loss: nn.Module | None) -> None:
        super().__init__()
        encoder = model.sensor_encoder
        if not isinstance(encoder, PatchSensorEncoder):
            raise UserError(
                f"aligner evi_mae encodes visible sensor patches: model.sensor_encoder is {type(encoder).__name__}, "
                "expected a patch-token encoder (model.sensor_encoder.name: evi_mae_sensor)"
            )
        if params.contrastive_weight > 0:
            if loss is None:
                raise UserError(
                    "aligner evi_mae needs a stage loss for its contrastive term (or contrastive_weight: 0)"
                )
            require_contrastive("evi_mae", loss)
            if model.video_head.out_dim != encoder.out_dim:
                raise UserError(
                    f"model.video_head.dim ({model.video_head.out_dim}) must equal model.sensor_encoder.dim "
                    f"({encoder.out_dim}) for the contrastive term"
                )
        if params.video_weight > 0 and model.backbone_frozen:
            raise UserError(
                "aligner evi_mae reconstructs masked frames through the video backbone: unfreeze it "
                "(model.video_backbone.frozen: false) or set video_weight: 0"
            )
        self.params = params
        self.loss = loss
        self.reconstruction = MaskedReconstructionLoss(MaskedReconstructionParams())
        self.video_decoder = nn.Sequential(
            nn.Linear(int(model.video_backbone.feature_dim), params.decoder_hidden),
            nn.GELU(),
            nn.Linear(params.decoder_hidden, 3 * params.video_target_size**2),
        )
        self.sensor_decoder = SensorPatchDecoder(
            params, int(encoder.token_dim), int(encoder.num_patches), int(model.sensor_channels) * int(encoder.patch)
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
        return self.reconstruction(pred, target, mask.view(b, t, *grid)), model.video_head(maps)

    def sensor_branch(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked-patch reconstruction loss, window vector of the visible patches)."""
        encoder = model.sensor_encoder
        sensor = batch["sensor"]
        mask = random_mask(sensor.shape[0], encoder.num_patches, self.params.mask_ratio, sensor.device)
        visible = visible_indices(mask)
        tokens = encoder.encode_tokens(sensor, visible)
        pred = self.sensor_decoder(tokens, visible)
        return self.reconstruction(pred, encoder.patchify(sensor), mask), encoder.pool(tokens)

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
def detach_register_components(register: Register) -> None:
    register(
        kind="sensor_encoder",
        name="evi_mae_sensor",
        factory=EviMaeSensorEncoder,
        params=EviMaeSensorParams,
        embedding_field="dim",
        description="EVI-MAE sensor encoder: time-patch tokens, a transformer over the visible ones, mean-pooled.",
    )
    register(
        kind="aligner",
        name="evi_mae",
        factory=EviMaeAligner,
        params=EviMaeParams,
        description="EVI-MAE adapted: masked autoencoding of video tokens and sensor time patches + small contrast.",
    )
