"""Video backbones: output shapes, local weight loading and the errors a user can hit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from pydantic import ValidationError

from detach_framework.errors import UserError
from detach_framework.registry import Registry
from detach_plugins.backbones import (
    SmallCnnBackbone,
    SmallCnnParams,
    TimmBackboneParams,
    build_timm_backbone,
    detach_register_components,
)
from detach_plugins.backbones.timm_backbone import TimmVideoBackbone


def _video(height: int = 32, width: int = 32, batch: int = 2, frames: int = 2) -> torch.Tensor:
    return torch.randn(batch, frames, 3, height, width)


def test_small_cnn_maps_at_one_sixteenth() -> None:
    backbone = SmallCnnBackbone(SmallCnnParams(channels=[8, 8, 16, 24])).eval()
    with torch.no_grad():
        maps = backbone(_video(64, 48))
    assert maps.shape == (2, 2, 24, 4, 3)
    assert backbone.feature_dim == 24
    assert backbone.mean == (0.485, 0.456, 0.406)


def test_small_cnn_default_widths_follow_method() -> None:
    backbone = SmallCnnBackbone(SmallCnnParams())
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 64, (7, 7), (2, 2)),
        (64, 128, (3, 3), (2, 2)),
        (128, 256, (3, 3), (2, 2)),
        (256, 256, (3, 3), (2, 2)),
    ]


def test_small_cnn_frames_are_independent() -> None:
    # Batching B*T frames must not mix frames: frame t of the output depends on frame t alone.
    backbone = SmallCnnBackbone(SmallCnnParams(channels=[4, 4, 4, 4])).eval()
    video = _video()
    with torch.no_grad():
        whole = backbone(video)
        single = backbone(video[1:, 1:])
    torch.testing.assert_close(whole[1:, 1:], single)


def test_small_cnn_runs_channels_last_and_returns_maps_in_the_default_layout() -> None:
    torch.manual_seed(0)
    backbone = SmallCnnBackbone(SmallCnnParams(channels=[8, 8, 16, 16])).eval()
    video = torch.randn(2, 3, 3, 32, 32)
    maps = backbone(video)
    reference = backbone.features(video.flatten(0, 1).contiguous()).unflatten(0, (2, 3))  # default layout
    assert maps.is_contiguous()
    torch.testing.assert_close(maps, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels", [[8, 8, 8], [8, 8, 8, 0]])
def test_small_cnn_rejects_bad_channels(channels: list[int]) -> None:
    with pytest.raises(ValidationError):
        SmallCnnParams(channels=channels)


def test_timm_resnet_maps() -> None:
    backbone = TimmVideoBackbone(TimmBackboneParams(model="resnet18")).eval()
    with torch.no_grad():
        maps = backbone(_video())
    assert maps.shape == (2, 2, 512, 1, 1)
    assert backbone.feature_dim == 512
    assert backbone.mean == pytest.approx((0.485, 0.456, 0.406))
    assert backbone.input_size == (3, 224, 224)


def test_timm_vit_tokens_fold_into_grid() -> None:
    params = TimmBackboneParams(model="vit_tiny_patch16_224", img_size=32)
    backbone = TimmVideoBackbone(params).eval()
    video = _video()
    with torch.no_grad():
        maps = backbone(video)
        tokens = backbone.model.forward_features(video.flatten(0, 1))
    assert maps.shape == (2, 2, 192, 2, 2)
    assert backbone.input_size == (3, 32, 32)
    # Grid cell (row 0, col 1) is patch token 1 after the class token, in row-major order.
    torch.testing.assert_close(maps[0, 0, :, 0, 1], tokens[0, 1 + 1])
    torch.testing.assert_close(maps[1, 1, :, 1, 0], tokens[3, 1 + 2])


def test_timm_pool_gives_one_by_one() -> None:
    backbone = TimmVideoBackbone(TimmBackboneParams(model="test_vit", pool=True)).eval()
    with torch.no_grad():
        maps = backbone(_video(160, 160, batch=1))
    assert maps.shape == (1, 2, backbone.feature_dim, 1, 1)
    assert backbone.feature_dim == backbone.model.num_features


def test_timm_weights_file_round_trip(tmp_path: Path) -> None:
    source = timm.create_model("resnet18")  # random weights with a 1000-class head, like a real checkpoint
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    params = TimmBackboneParams(model="resnet18", pretrained=True, weights_file=str(path))
    backbone = TimmVideoBackbone(params)
    loaded = backbone.model.state_dict()
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, msg=key)


def test_timm_weights_of_other_architecture_refused(tmp_path: Path) -> None:
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit").state_dict(), path)
    with pytest.raises(UserError, match="lacks .* parameters"):
        TimmVideoBackbone(TimmBackboneParams(model="resnet18", weights_file=str(path)))


def test_timm_missing_weights_file_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "weights.safetensors"
    with pytest.raises(UserError, match="weights_file not found") as info:
        TimmVideoBackbone(TimmBackboneParams(model="resnet18", weights_file=str(path)))
    assert str(path) in str(info.value)


def test_timm_pretrained_without_file_refuses_download() -> None:
    with pytest.raises(UserError, match="nothing is downloaded"):
        TimmVideoBackbone(TimmBackboneParams(model="resnet18", pretrained=True))


def test_timm_unknown_model_suggests() -> None:
    with pytest.raises(UserError, match="unknown timm model 'resnet81'.*resnet18"):
        TimmVideoBackbone(TimmBackboneParams(model="resnet81"))


def test_timm_unsupported_kwarg_is_user_error() -> None:
    with pytest.raises(UserError, match="rejects its params"):
        TimmVideoBackbone(TimmBackboneParams(model="resnet18", img_size=64))


def test_registration_through_hook() -> None:
    registry = Registry()
    detach_register_components(registry.add)  # the hook's `register`, unbound: components of "<direct>"
    assert registry.names("video_backbone") == ["small_cnn", "timm"]
    assert registry.get("video_backbone", "timm").params is TimmBackboneParams
    assert registry.get("video_backbone", "small_cnn").factory is SmallCnnBackbone
    assert registry.get("video_backbone", "small_cnn").description


def test_registering_the_plugins_does_not_import_timm() -> None:
    """timm pulls in torchvision and torch._dynamo (seconds per CLI call): only building a timm backbone imports it."""
    code = (
        "import sys; from detach_framework.plugins import load_plugins; registry = load_plugins().registry; "
        "assert registry.get('video_backbone', 'timm') is not None; "
        "assert not {'timm', 'torchvision'} & set(sys.modules), 'timm imported at registration'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert isinstance(build_timm_backbone(TimmBackboneParams(model="test_vit")), TimmVideoBackbone)


def test_importing_the_timm_plugin_leaves_the_environment_unchanged() -> None:
    # A fresh process: this one imported the plugin long ago.
    code = (
        "import os; before = dict(os.environ); import detach_plugins.backbones.timm_backbone; "
        "changed = sorted(set(before.items()) ^ set(os.environ.items())); assert not changed, changed"
    )
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_timm_backbones_build_without_opening_a_connection(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit").state_dict(), path)

    def refuse(*args, **kwargs):
        raise AssertionError("the timm backbone tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    TimmVideoBackbone(TimmBackboneParams(model="test_vit"))  # random init
    TimmVideoBackbone(TimmBackboneParams(model="test_vit", weights_file=str(path)))  # the local file alone
    with pytest.raises(UserError, match="unknown timm model 'hf-hub:timm/test_vit"):  # a hub id is never fetched
        TimmVideoBackbone(TimmBackboneParams(model="hf-hub:timm/test_vit.r160_in1k"))
