"""Any timm image model as a per-frame video backbone, with weights only ever read from a local file.

Nothing here reaches the network, without touching process-wide settings such as HF_HUB_OFFLINE: every
`timm.create_model` call is either `pretrained=False` (random init, nothing fetched) or loads the user's
`weights_file` through a pretrained-config overlay whose `file` (with source '') outranks any url or hub
source; hub-prefixed model names ("hf-hub:...") are refused by the model-name check.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import DEFAULT_CROP_PCT, resolve_model_data_config
from torch import nn
from torchvision.transforms.v2.functional import InterpolationMode, center_crop, resize

from detach_framework.errors import PluginError, UserError
from detach_plugins.backbones.timm_params import TimmBackboneParams

# timm reports checkpoint keys it could not place only through this logger (at INFO), never by raising.
_TIMM_BUILDER_LOGGER = "timm.models._builder"
_MISSING_KEYS = re.compile(r"Missing keys \((.*)\) discovered")
# The interpolations torchvision offers for tensors (timm configs may also name PIL's lanczos, box, hamming).
_TENSOR_INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def _check_model_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" close matches: {', '.join(close)};" if close else ""
    raise UserError(f"unknown timm model '{name}';{hint} see timm.list_models() for the names")


class _MissingKeyCatcher(logging.Handler):
    """Collects the key names of timm's 'Missing keys (...)' message while a checkpoint loads."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.keys: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = _MISSING_KEYS.match(record.getMessage())
        if match:
            self.keys += [key.strip() for key in match.group(1).split(",")]


def _create(params: TimmBackboneParams) -> nn.Module:
    kwargs: dict[str, Any] = {"num_classes": 0}  # no classifier: only features are used
    overlay: dict[str, Any] = {}
    if params.img_size is not None:
        kwargs["img_size"] = params.img_size
        # Keep the data config (input_size) in step with the size the model is built for.
        overlay["input_size"] = (3, params.img_size, params.img_size)
    if params.drop_path_rate > 0:
        kwargs["drop_path_rate"] = params.drop_path_rate

    if params.weights_file is None:
        if params.pretrained:
            raise UserError(
                f"timm backbone '{params.model}': pretrained=true needs weights_file, a local checkpoint; "
                "nothing is downloaded (the network is closed). Save the weights on a connected machine "
                "and set weights_file to that path, or set pretrained=false for random init"
            )
        try:
            return timm.create_model(params.model, pretrained=False, pretrained_cfg_overlay=overlay, **kwargs)
        except TypeError as exc:  # a kwarg (img_size, drop_path_rate) this architecture does not take
            raise UserError(f"timm model '{params.model}' rejects its params: {exc}") from exc

    path = Path(params.weights_file).expanduser()
    if not path.is_file():
        raise UserError(f"timm backbone '{params.model}': weights_file not found: {path}")
    # An explicit file outranks any url/hub source in the model's pretrained config; source '' keeps a
    # registry 'hf-hub' source from taking precedence over it.
    overlay.update(file=str(path), source="")
    catcher = _MissingKeyCatcher()
    logger = logging.getLogger(_TIMM_BUILDER_LOGGER)
    old_level = logger.level
    logger.addHandler(catcher)
    logger.setLevel(logging.INFO)
    try:
        model = timm.create_model(params.model, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except TypeError as exc:
        raise UserError(f"timm model '{params.model}' rejects its params: {exc}") from exc
    except Exception as exc:  # unreadable file, wrong shapes: all are a bad weights_file
        first = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise UserError(f"timm backbone '{params.model}': cannot load weights_file {path}: {first}") from exc
    finally:
        logger.removeHandler(catcher)
        logger.setLevel(old_level)
    # timm loads non-strictly once the classifier is dropped, so a checkpoint of another architecture
    # would leave the model silently random: refuse when any parameter (buffers may be derived) is missing.
    parameters = dict(model.named_parameters())
    missing = [key for key in catcher.keys if key in parameters]
    if missing:
        raise UserError(
            f"timm backbone '{params.model}': weights_file {path} lacks {len(missing)} of the model's "
            f"parameters (e.g. {', '.join(missing[:3])}); is it a checkpoint of another architecture?"
        )
    return model


class TimmVideoBackbone(nn.Module):
    """forward(video [B, T, 3, H, W]) -> maps [B, T, D, h, w] (h = w = 1 with `pool`).

    `mean`/`std` (the alignment model normalises frames with them) come from the timm data config; with `resize`
    the frames are also scaled and cropped as that config says before the model sees them.

    CNN feature maps pass through; ViT-style tokens lose their prefix (class/register) tokens and are
    folded back into the patch grid.
    """

    def __init__(self, params: TimmBackboneParams) -> None:
        super().__init__()
        _check_model_name(params.model)
        self.model = _create(params)
        self.pool = params.pool
        # Pre-logits can be wider than the feature maps (e.g. a conv head in MobileNetV3).
        pooled_dim = getattr(self.model, "head_hidden_size", None) or self.model.num_features
        self.feature_dim: int = int(pooled_dim if params.pool else self.model.num_features)
        config = resolve_model_data_config(self.model)
        self.mean: tuple[float, float, float] = tuple(float(v) for v in config["mean"])  # type: ignore[assignment]
        self.std: tuple[float, float, float] = tuple(float(v) for v in config["std"])  # type: ignore[assignment]
        self.input_size: tuple[int, int, int] = tuple(int(v) for v in config["input_size"])  # type: ignore[assignment]
        self.resize = params.resize
        self.crop_pct = float(config.get("crop_pct") or DEFAULT_CROP_PCT)
        self.crop_mode = str(config.get("crop_mode") or "center")
        self.interpolation = str(config["interpolation"])
        if params.resize and self.interpolation not in _TENSOR_INTERPOLATIONS:
            raise UserError(
                f"timm model '{params.model}': its data config resizes with {self.interpolation} interpolation, "
                f"which tensors lack (they offer {', '.join(_TENSOR_INTERPOLATIONS)}); set resize: false"
            )
        if params.resize and self.crop_mode not in ("center", "squash", "border"):
            raise UserError(f"timm model '{params.model}': unknown crop_mode '{self.crop_mode}' in its data config")

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5:
            raise ValueError(f"timm backbone expects video [B, T, 3, H, W], got shape {tuple(video.shape)}")
        batch, frames = video.shape[:2]
        # All frames as one batch of B*T images: one model call instead of a loop over time.
        images = video.flatten(0, 1)
        if self.resize:
            images = self._preprocess_as_timm(images)
        height, width = images.shape[-2:]
        features = self.model.forward_features(images)
        if self.pool:
            vectors = self.model.forward_head(features, pre_logits=True)
            maps = vectors[:, :, None, None]
        else:
            maps = self._to_maps(features, height, width)
        return maps.unflatten(0, (batch, frames))

    def _preprocess_as_timm(self, images: torch.Tensor) -> torch.Tensor:
        """timm's evaluation preprocessing of this model, on normalised frames (resizing is linear, so it commutes
        with the per-channel normalisation): scale to input_size / crop_pct, then centre-crop to input_size.
        center scales the short side (the image covers the scaled size), squash each side on its own, border the
        long side (padding, 0 here: the mean colour, fills the rest)."""
        _, crop_height, crop_width = self.input_size
        scaled = [math.floor(crop_height / self.crop_pct), math.floor(crop_width / self.crop_pct)]
        height, width = images.shape[-2:]
        if self.crop_mode == "squash":
            size = scaled
        elif self.crop_mode == "center" and scaled[0] == scaled[1]:
            size = [scaled[0]]  # torchvision's shortest-edge resize, as timm uses for a square input size
        else:
            ratio = (max if self.crop_mode == "center" else min)(scaled[0] / height, scaled[1] / width)
            size = [round(height * ratio), round(width * ratio)]
        images = resize(images, size, interpolation=_TENSOR_INTERPOLATIONS[self.interpolation], antialias=True)
        return center_crop(images, [crop_height, crop_width])  # pads with zeros where the image is smaller

    def _to_maps(self, features: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if features.ndim == 4:
            # Swin-style models emit channels-last maps.
            if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
                features = features.permute(0, 3, 1, 2)
            return features
        if features.ndim != 3:
            raise PluginError(f"timm model output of shape {tuple(features.shape)} is neither maps nor tokens")
        tokens = features[:, getattr(self.model, "num_prefix_tokens", 0) :]
        count = tokens.shape[1]
        grid = self._grid(count, height, width)
        if grid is None:
            raise PluginError(f"cannot fold {count} patch tokens of timm model into a grid for {height}x{width} frames")
        return tokens.transpose(1, 2).unflatten(2, grid)

    def _grid(self, count: int, height: int, width: int) -> tuple[int, int] | None:
        patch_embed = getattr(self.model, "patch_embed", None)
        if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
            # The patch embedding knows its stride/padding, which also handles non-square frames.
            rows, cols = patch_embed.dynamic_feat_size((height, width))
            if rows * cols == count:
                return int(rows), int(cols)
        side = math.isqrt(count)
        return (side, side) if side * side == count else None
