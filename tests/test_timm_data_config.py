"""The timm backbone and the model's timm data config: mean/std always, interpolation, crop_pct, crop_mode and
input size with `resize`, matched against timm's own evaluation transform (random weights, nothing downloaded)."""

from __future__ import annotations

import pytest
import torch
from timm.data import create_transform, resolve_model_data_config

from detach_framework.errors import UserError
from detach_plugins.backbones import TimmBackboneParams
from detach_plugins.backbones import timm_backbone as timm_module
from detach_plugins.backbones.timm_backbone import TimmVideoBackbone

# test_convnext: bicubic, mean = std = 0.5 (not ImageNet's), crop_pct 0.95, input 160 x 160; it takes any size.
MODEL = "test_convnext"


def normalised(backbone: TimmVideoBackbone, frames: torch.Tensor) -> torch.Tensor:
    """What the alignment model feeds the backbone: frames in [0, 1] normalised with the backbone's mean/std."""
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (backbone.mean, backbone.std))
    return (frames - mean) / std


def with_config(monkeypatch, **changes) -> None:
    real = resolve_model_data_config
    monkeypatch.setattr(timm_module, "resolve_model_data_config", lambda model: {**real(model), **changes})


@pytest.mark.parametrize("crop_mode", [None, "squash"])  # None: the model's own (center)
def test_resize_preprocesses_frames_as_timm_does(monkeypatch, crop_mode) -> None:
    if crop_mode is not None:
        with_config(monkeypatch, crop_mode=crop_mode)
    torch.manual_seed(0)
    backbone = TimmVideoBackbone(TimmBackboneParams(model=MODEL, resize=True)).eval()
    config = timm_module.resolve_model_data_config(backbone.model)
    assert (config["interpolation"], config["mean"], config["crop_pct"]) == ("bicubic", (0.5, 0.5, 0.5), 0.95)
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    frames = torch.rand(2, 3, 3, 48, 72)  # wider than high: `center` keeps the aspect ratio, `squash` does not
    timm_inputs = torch.stack([create_transform(**config)(frame) for frame in frames.flatten(0, 1)])
    assert timm_inputs.shape[-2:] == (160, 160)
    with torch.no_grad():
        maps = backbone(normalised(backbone, frames))
        expected = backbone.model.forward_features(timm_inputs)
    torch.testing.assert_close(maps.flatten(0, 1), expected, rtol=1e-4, atol=1e-4)


def test_resize_off_feeds_frames_at_their_size() -> None:
    backbone = TimmVideoBackbone(TimmBackboneParams(model=MODEL)).eval()
    frames = normalised(backbone, torch.rand(1, 2, 3, 48, 72))
    with torch.no_grad():
        torch.testing.assert_close(backbone(frames)[0], backbone.model.forward_features(frames[0]))


def test_border_crop_mode_pads_with_the_mean_colour(monkeypatch) -> None:
    with_config(monkeypatch, crop_mode="border", crop_pct=1.0)
    backbone = TimmVideoBackbone(TimmBackboneParams(model=MODEL, resize=True))
    images = backbone._preprocess_as_timm(torch.ones(1, 3, 40, 80))  # long side to 160: 80 rows, 40 padded
    assert images.shape == (1, 3, 160, 160)
    torch.testing.assert_close(images[:, :, 40:120], torch.ones(1, 3, 80, 160))
    assert images[:, :, :40].eq(0).all() and images[:, :, 120:].eq(0).all()


def test_resize_with_an_interpolation_tensors_lack_is_refused(monkeypatch) -> None:
    with_config(monkeypatch, interpolation="lanczos")
    TimmVideoBackbone(TimmBackboneParams(model=MODEL))  # without resize the interpolation is never used
    with pytest.raises(UserError, match="resizes with lanczos interpolation.*set resize: false"):
        TimmVideoBackbone(TimmBackboneParams(model=MODEL, resize=True))


def test_resize_lets_a_fixed_size_vit_read_small_frames() -> None:
    """A ViT built for 160 x 160 reads 32 x 32 frames once they are resized to its input size."""
    backbone = TimmVideoBackbone(TimmBackboneParams(model="test_vit", resize=True)).eval()
    with torch.no_grad():
        maps = backbone(torch.randn(1, 2, 3, 32, 32))
    assert maps.shape == (1, 2, backbone.feature_dim, 10, 10)  # 160 / patch 16


def test_resize_at_its_default_keeps_the_uid_of_timm_specs(registry) -> None:
    from pathlib import Path

    from detach_framework.spec import load_spec

    quickstart = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
    timm = load_spec(quickstart, registry, ["model.video_backbone.name=timm"])
    assert timm.uid.endswith("-67e7592e6d")  # its uid before `resize` existed
    resized = load_spec(quickstart, registry, ["model.video_backbone.name=timm", "model.video_backbone.resize=true"])
    assert resized.uid != timm.uid
