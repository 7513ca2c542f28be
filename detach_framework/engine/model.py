"""The alignment model: video backbone + video head and sensor encoder, built from the spec's slots."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detach_framework.contracts import DatasetSource
from detach_framework.errors import PluginError
from detach_framework.registry import Registry


class AlignmentModel(nn.Module):
    """Encodes raw uint8 video and sensor windows into a shared embedding space."""

    def __init__(self, spec, registry: Registry, source: DatasetSource, sensor_length: int) -> None:
        super().__init__()
        self.video_backbone = registry.build("video_backbone", spec.video_backbone)
        self.backbone_frozen = bool(spec.video_backbone.frozen)
        self.video_head = registry.build("video_head", spec.video_head, in_dim=int(self.video_backbone.feature_dim))
        self.sensor_encoder = registry.build(
            "sensor_encoder", spec.sensor_encoder, in_channels=len(source.channel_names), length=sensor_length
        )
        for slot in ("video_head", "sensor_encoder"):
            if not isinstance(getattr(self, slot), nn.Module) or not hasattr(getattr(self, slot), "out_dim"):
                raise PluginError(f"{slot} '{getattr(spec, slot).name}' must be an nn.Module with `out_dim`")
        mean = torch.tensor(self.video_backbone.mean, dtype=torch.float32).view(1, 1, 3, 1, 1)
        std = torch.tensor(self.video_backbone.std, dtype=torch.float32).view(1, 1, 3, 1, 1)
        # Folded so that normalisation is one multiply-add: x/255 - mean) / std.
        self.register_buffer("pixel_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("pixel_shift", -mean / std, persistent=False)
        if self.backbone_frozen:
            self.video_backbone.requires_grad_(False)

    def normalise_video(self, video: torch.Tensor) -> torch.Tensor:
        return video.float() * self.pixel_scale + self.pixel_shift

    def video_maps(self, video: torch.Tensor) -> torch.Tensor:
        x = self.normalise_video(video)
        if self.backbone_frozen:
            with torch.no_grad():
                return self.video_backbone(x)
        return self.video_backbone(x)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.video_head(self.video_maps(video))

    def encode_sensor(self, sensor: torch.Tensor) -> torch.Tensor:
        return self.sensor_encoder(sensor)

    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Frozen embeddings for evaluation: probe features and the joint video/sensor embeddings."""
        video = F.normalize(self.encode_video(batch["video"]), dim=-1)
        sensor = F.normalize(self.encode_sensor(batch["sensor"]), dim=-1)
        return {"probe": sensor, "video": video, "sensor": sensor}
