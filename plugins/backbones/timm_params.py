"""The `timm` video backbone's params, apart from its implementation (timm_backbone.py): importing timm pulls in
torchvision and torch._dynamo, seconds that every CLI call would pay to register the component; only a run that
builds a timm backbone imports it."""

from __future__ import annotations

from pydantic import Field

from detach_framework.contracts import VideoBackboneParams


class TimmBackboneParams(VideoBackboneParams):
    """Params of the `timm` video backbone."""

    model: str = Field(default="resnet18", description="timm model name (see timm.list_models())")
    pretrained: bool = Field(
        default=False,
        description="start from trained weights; they must come from `weights_file` (nothing is downloaded)",
    )
    weights_file: str | None = Field(
        default=None,
        description="local checkpoint (.pth/.bin/.safetensors) loaded through timm's pretrained path "
        "(classifier dropped, position embeddings resized); setting it implies pretrained",
    )
    pool: bool = Field(
        default=False,
        description="return the model's pooled pre-logits vector per frame as 1x1 maps, not feature maps",
    )
    img_size: int | None = Field(
        default=None,
        gt=0,
        le=4096,
        description="input size for models built for a fixed size (ViTs); null keeps the model's default",
    )
    drop_path_rate: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="stochastic depth rate for models that support it"
    )
    resize: bool = Field(
        default=False,
        description="preprocess frames as timm does for this model (its data config): scale to input_size / "
        "crop_pct with its interpolation keeping the aspect ratio (or as its crop_mode says), centre-crop to "
        "input_size; false: frames reach the model at the data's frame size. Its mean/std apply either way",
    )
