"""Video-only self-supervision: trains the video side (backbone + head) by clip-level contrastive learning.

Made for COMODO's teacher (docs/METHOD.md: the teacher must know video; a randomly initialised one gives clip
vectors that are nearly all alike) where no pretrained weights exist: a spec declares it as the stage before
the `comodo` stage, which then distils the trained video side, frozen, into the sensor encoder.
Each training window's frames are augmented twice on the device (`augment_clips`), both views go through the
backbone and the video head as one batch, and SimCLR's NT-Xent over the 2B views is the loss (each view's
positive is the other view of its window, the 2B - 2 other views are negatives). The sensor encoder is
untouched. Random draws come from torch's CPU generator, which the trainer seeds and checkpoints, so runs and
resumes are reproducible on any device; validation draws from a fixed seed so val_loss is comparable across
epochs and leaves the training stream alone.
After every epoch the trained batch norms' running statistics are re-estimated on the clean training clips
(`recalibrate_batch_norm`): COMODO reads the teacher in eval mode, and a small CNN's default statistics
(mean 0, variance 1) are what makes an untrained teacher's clip vectors nearly identical (cosine 0.999).
With `model.video_backbone.frozen` (e.g. a pretrained timm backbone) only the video head trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from detach_framework.contracts import AlignerBase, UnusableLoss
from detach_framework.errors import UserError
from detach_framework.plugins import hookimpl
from detach_framework.registry import MAX_WIDTH, ComponentParams, Register
from detach_plugins.losses.views import nt_xent

VALIDATION_SEED = 0


class VideoSslParams(ComponentParams):
    temperature: float = Field(0.1, gt=0, description="Temperature of the NT-Xent loss.")
    crop_min_scale: float = Field(
        0.6, gt=0, le=1, description="Random resized crop: smallest crop area as a fraction of the frame (1: none)."
    )
    crop_max_aspect: float = Field(
        4 / 3, ge=1, le=4, description="Random resized crop: aspect ratios drawn log-uniformly in [1/a, a]."
    )
    flip_probability: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Horizontal flip probability; off by default because with a fixed camera it makes the "
        "teacher blind to left versus right fixtures.",
    )
    brightness: float = Field(0.2, ge=0, lt=1, description="Brightness factor drawn in [1 - b, 1 + b] per clip.")
    contrast: float = Field(0.2, ge=0, lt=1, description="Contrast factor drawn in [1 - c, 1 + c] per clip.")
    temporal_shift: int = Field(
        1, ge=0, le=64, description="Temporal jitter: the clip's frames shifted by up to this many (edges repeat)."
    )
    projector: Literal["none", "mlp"] = Field(
        "none",
        description="none: the loss on the video head's output, the space COMODO's teacher reads; mlp: on a "
        "SimCLR projection head owned by this aligner (dropped after the stage).",
    )
    projection_hidden: int = Field(512, ge=1, le=MAX_WIDTH, description="Hidden width of the mlp projector.")

    @model_validator(mode="after")
    def _some_augmentation(self) -> VideoSslParams:
        # Two identical views make every positive trivial: the loss would only push clips apart at random.
        if (
            self.crop_min_scale == 1
            and self.crop_max_aspect == 1
            and self.flip_probability == 0
            and self.brightness == 0
            and self.contrast == 0
            and self.temporal_shift == 0
        ):
            raise ValueError("every augmentation is off: the two views would be identical")
        return self


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def crop_flip_grid(batch: int, params: VideoSslParams, generator: torch.Generator | None) -> torch.Tensor:
    """Affine maps [batch, 2, 3] from output to input coordinates ([-1, 1]): a random crop, maybe mirrored."""
    area = _uniform((batch,), params.crop_min_scale, 1.0, generator)
    log_aspect = _uniform((batch,), -math.log(params.crop_max_aspect), math.log(params.crop_max_aspect), generator)
    width = (area * log_aspect.exp()).sqrt().clamp(max=1.0)
    height = (area / log_aspect.exp()).sqrt().clamp(max=1.0)
    centre_x = (1 - width) * _uniform((batch,), -1.0, 1.0, generator)
    centre_y = (1 - height) * _uniform((batch,), -1.0, 1.0, generator)
    mirror = torch.rand(batch, generator=generator) < params.flip_probability
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = torch.where(mirror, -width, width)
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    return theta


def augment_clips(
    video: torch.Tensor, params: VideoSslParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One random view of each clip: video [B, T, 3, H, W] (uint8 or float, 0-255) -> float [B, T, 3, H, W].

    Per clip (the same for all its frames, so motion stays intact): temporal shift, crop resized back to H x W
    (bilinear), optional mirror, then brightness and contrast around the clip's mean, clamped to 0-255.
    """
    batch, frames, channels, height, width = video.shape
    out = video.float()
    if params.temporal_shift > 0:
        shift = torch.randint(-params.temporal_shift, params.temporal_shift + 1, (batch, 1), generator=generator)
        order = (torch.arange(frames).unsqueeze(0) + shift).clamp(0, frames - 1).to(video.device)
        out = out.gather(1, order.view(batch, frames, 1, 1, 1).expand_as(out))
    if params.crop_min_scale < 1 or params.crop_max_aspect > 1 or params.flip_probability > 0:
        theta = crop_flip_grid(batch, params, generator).to(video.device).repeat_interleave(frames, dim=0)
        images = out.flatten(0, 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = out.view(batch, frames, channels, height, width)
    if params.brightness > 0 or params.contrast > 0:
        shape = (batch, 1, 1, 1, 1)
        gain = _uniform(shape, 1 - params.brightness, 1 + params.brightness, generator).to(video.device)
        spread = _uniform(shape, 1 - params.contrast, 1 + params.contrast, generator).to(video.device)
        mean = out.mean(dim=(1, 2, 3, 4), keepdim=True)
        out = ((out - mean) * spread + mean) * gain
    return out.clamp(0.0, 255.0)


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@torch.no_grad()
def recalibrate_batch_norm(
    modules: list[nn.Module], forward: Callable[[dict[str, torch.Tensor]], Any], batches: Iterable[dict[str, Any]]
) -> None:
    """Re-estimate the running statistics of every batch norm in `modules` as exact averages over `batches`.

    Training updates them as a moving average over augmented views of weights that keep changing; the
    teacher is read in eval mode on clean clips, so its statistics are taken from clean clips of the final
    weights (only the batch norms switch to train mode; nothing else changes).
    """
    norms = [m for module in modules for m in module.modules() if isinstance(m, BATCH_NORMS)]
    if not norms:
        return
    saved = [(m, m.momentum, m.training) for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: every batch counts the same
        norm.train()
    try:
        for batch in batches:
            forward(batch)
    finally:
        for norm, momentum, training in saved:
            norm.momentum = momentum
            norm.train(training)


class VideoSslAligner(AlignerBase):
    def __init__(self, params: VideoSslParams, model: nn.Module, loss: nn.Module | None) -> None:
        super().__init__()
        if loss is not None:
            raise UnusableLoss("aligner video_ssl has its own NT-Xent loss: remove the stage's `loss`")
        self.params = params
        dim = int(model.video_head.out_dim)
        self.projector: nn.Module = nn.Identity()
        if params.projector == "mlp":
            self.projector = nn.Sequential(
                nn.Linear(dim, params.projection_hidden), nn.ReLU(), nn.Linear(params.projection_hidden, dim)
            )

        self.train_batches: Callable[[], Iterable[dict[str, Any]]] | None = None  # set at stage start

    def trainable_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.video_backbone, model.video_head]  # the sensor encoder is not this stage's business

    def on_stage_start(self, model: nn.Module, context: Any) -> None:
        self.train_batches = context.train_batches  # the unshuffled train split, for the end-of-epoch pass

    def on_epoch_end(self, model: nn.Module) -> dict[str, Any]:
        trained = [model.video_head] if model.backbone_frozen else [model.video_backbone, model.video_head]
        if self.train_batches is not None:
            recalibrate_batch_norm(trained, model.encode_video, self.train_batches())
        return {}

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "video" not in batch:
            raise UserError(
                "aligner video_ssl augments frames, but the batches hold only cached backbone features: "
                "set cache.frames: on (or cache.mode: off)"
            )
        video = batch["video"]
        generator = None if self.training else torch.Generator().manual_seed(VALIDATION_SEED)
        views = torch.cat([augment_clips(video, self.params, generator), augment_clips(video, self.params, generator)])
        embedded = self.projector(model.encode_video({"video": views}))
        first, second = embedded.chunk(2)
        loss = nt_xent(first, second, self.params.temperature)
        with torch.no_grad():
            unit = F.normalize(first.float(), dim=-1)
            similarity = unit @ unit.T
            off_diagonal = similarity[~torch.eye(len(unit), dtype=torch.bool, device=unit.device)]
            # Collapse monitor: near 1 the clips are alike (an untrained teacher), which is what this stage fixes.
            clip_cosine = off_diagonal.mean() if len(unit) > 1 else similarity.new_zeros(())
        return {"loss": loss, "clip_cosine": clip_cosine}


@hookimpl
def detach_register_components(register: Register) -> None:
    register(
        kind="aligner",
        name="video_ssl",
        factory=VideoSslAligner,
        params=VideoSslParams,
        description="Video-only SimCLR (two augmented views per clip, NT-Xent) training the video backbone + "
        "head, e.g. as COMODO's teacher stage.",
    )
