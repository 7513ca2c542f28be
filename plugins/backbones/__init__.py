"""Video backbones: any timm image model, and the small per-frame CNN of docs/METHOD.md."""

from __future__ import annotations

from torch import nn

from detach_framework.plugins import hookimpl
from detach_framework.registry import Register
from detach_plugins.backbones.small_cnn import SmallCnnBackbone, SmallCnnParams
from detach_plugins.backbones.timm_params import TimmBackboneParams

__all__ = [
    "SmallCnnBackbone",
    "SmallCnnParams",
    "TimmBackboneParams",
    "build_timm_backbone",
    "detach_register_components",
]


def build_timm_backbone(params: TimmBackboneParams) -> nn.Module:
    """The `timm` component's factory, importing timm only when a run builds one (see timm_params.py)."""
    from detach_plugins.backbones.timm_backbone import TimmVideoBackbone

    return TimmVideoBackbone(params)


@hookimpl
def detach_register_components(register: Register) -> None:
    register(
        kind="video_backbone",
        name="timm",
        factory=build_timm_backbone,
        params=TimmBackboneParams,
        description="Any timm image model applied per frame (feature maps, ViT token grids or pooled "
        "vectors); weights only from a local file.",
    )
    register(
        kind="video_backbone",
        name="small_cnn",
        factory=SmallCnnBackbone,
        params=SmallCnnParams,
        description="The 4-layer stride-2 conv+BN+ReLU per-frame CNN of docs/METHOD.md (maps at 1/16 size).",
    )
