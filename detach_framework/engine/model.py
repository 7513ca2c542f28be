"""The alignment model, built from the spec's slots.

Global methods use one video head and one sensor encoder. Decomposed methods (DETACH) add a temporal
video head and a temporal sensor encoder, and may carry a clusterer whose state (memory bank,
centroids) lives in the model so it is checkpointed with it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detach_framework.contracts import FRAME_INPUT_KINDS, DatasetSource, FrameInputHead, SensorEncoder, VideoHead
from detach_framework.errors import PluginError, UserError
from detach_framework.registry import Component, Registry
from detach_framework.spec import SLOT_KINDS

# The slots returning embeddings [B, out_dim]; with the backbone, the slots whose outputs are checked against
# their contract on every call (cheap: a few shape comparisons). spec.SLOT_KINDS gives each slot's component kind.
EMBEDDING_SLOTS: tuple[str, ...] = ("video_head", "sensor_encoder", "video_temporal_head", "sensor_temporal_encoder")
# Each embedding kind's protocol in contracts.py (both declare `out_dim`, the width OutputCheck holds them to).
EMBEDDING_CONTRACTS: dict[str, type] = {"video_head": VideoHead, "sensor_encoder": SensorEncoder}
OUTPUT_CHECKED_SLOTS: tuple[str, ...] = ("video_backbone", *EMBEDDING_SLOTS)


class OutputCheck:
    """A forward hook: a component returning the wrong shape fails at once with a PluginError naming the
    component, its plugin and distribution, instead of a shape error deep inside a loss."""

    def __init__(self, slot: str, component: Component) -> None:
        self.slot = slot
        self.where = f"model.{slot} '{component.name}' from {component.origin}"

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        batch = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() else None
        if self.slot == "video_backbone":
            expected = "[B, T, feature_dim, h, w]"
            width = int(module.feature_dim)
            ok = isinstance(output, torch.Tensor) and output.dim() == 5 and output.shape[2] == width
        else:
            expected = "[B, out_dim]"
            width = int(module.out_dim)
            ok = isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] == width
        ok = ok and (batch is None or output.shape[0] == batch)
        if not ok:
            got = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise PluginError(
                f"{self.where} returned {got} for a batch of {batch}; its contract is {expected} "
                f"with {'feature_dim' if self.slot == 'video_backbone' else 'out_dim'}={width}"
            )


# The sensor side of the model: what `detach export` carries and `load_encoder` rebuilds without the rest.
SENSOR_SLOTS: tuple[str, ...] = ("sensor_encoder", "sensor_temporal_encoder")


def sensor_state_dict(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sensor slots' entries of an AlignmentModel state dict (the keys keep their slot prefix)."""
    return {key: value for key, value in model_state.items() if key.split(".", 1)[0] in SENSOR_SLOTS}


def build_sensor_encoder(entry, registry: Registry, channels: int, sensor_length: int) -> nn.Module:
    """One sensor slot's encoder from its spec entry (anything with the entry's `name` and params)."""
    return registry.build("sensor_encoder", entry, in_channels=channels, length=sensor_length)


def probe_embedding(spatial: torch.Tensor, temporal: torch.Tensor | None = None) -> torch.Tensor:
    """The sensor feature of the linear probe: normalize(z_s), or [normalize(z_s), normalize(h_s)] when decomposed."""
    spatial = F.normalize(spatial, dim=-1)
    return spatial if temporal is None else torch.cat([spatial, F.normalize(temporal, dim=-1)], dim=-1)


def reads_frames(head: nn.Module) -> bool:
    """A video head declaring `input_kind = "frames"` (contracts.FrameInputHead) reads normalised frames instead
    of backbone maps."""
    if not isinstance(head, FrameInputHead):
        return False
    if head.input_kind not in FRAME_INPUT_KINDS:
        raise PluginError(
            f"video head {type(head).__name__} declares input_kind {head.input_kind!r}; expected one of: "
            f"{', '.join(FRAME_INPUT_KINDS)}"
        )
    return head.input_kind == "frames"


class AlignmentModel(nn.Module):
    """Encodes batches of raw uint8 video (or cached backbone maps) and sensor windows."""

    def __init__(self, spec, registry: Registry, source: DatasetSource, sensor_length: int, num_train: int = 0) -> None:
        super().__init__()
        channels = len(source.channel_names)
        # Sizes aligners may need for their own heads (decoders, classifiers): read, never changed.
        self.sensor_channels, self.sensor_length = channels, sensor_length
        self.num_classes = len(source.class_names)
        self.video_backbone = registry.build("video_backbone", spec.video_backbone)
        self.backbone_frozen = bool(spec.video_backbone.frozen)
        feature_dim = int(self.video_backbone.feature_dim)
        self.video_head = registry.build("video_head", spec.video_head, in_dim=feature_dim)
        if reads_frames(self.video_head):  # encode_video feeds backbone maps: only the temporal slot gets frames
            raise UserError(
                f"model.video_head '{spec.video_head.name}' reads raw frames (input: frames), which only "
                "model.video_temporal_head receives: set its input to maps, or move it to video_temporal_head"
            )
        self.sensor_encoder = build_sensor_encoder(spec.sensor_encoder, registry, channels, sensor_length)
        self.video_temporal_head = None
        self.sensor_temporal_encoder = None
        if spec.video_temporal_head is not None:
            head_spec = spec.video_temporal_head
            self.video_temporal_head = registry.build("video_head", head_spec, in_dim=feature_dim)
            self.sensor_temporal_encoder = build_sensor_encoder(
                spec.sensor_temporal_encoder, registry, channels, sensor_length
            )
        self.clusterer = None
        if spec.clusterer is not None:
            self.clusterer = registry.build(
                "clusterer", spec.clusterer, num_samples=num_train, dim=int(self.sensor_encoder.out_dim)
            )
        for slot in EMBEDDING_SLOTS:
            part = getattr(self, slot)
            contract = EMBEDDING_CONTRACTS[SLOT_KINDS[slot]]
            if part is not None and not (isinstance(part, nn.Module) and isinstance(part, contract)):
                raise PluginError(f"model.{slot} '{getattr(spec, slot).name}' must be an nn.Module with `out_dim`")
        for slot in OUTPUT_CHECKED_SLOTS:
            part = getattr(self, slot)
            if isinstance(part, nn.Module):
                component = registry.get(SLOT_KINDS[slot], getattr(spec, slot).name)
                part.register_forward_hook(OutputCheck(slot, component))
        mean = torch.tensor(self.video_backbone.mean, dtype=torch.float32).view(1, 1, 3, 1, 1)
        std = torch.tensor(self.video_backbone.std, dtype=torch.float32).view(1, 1, 3, 1, 1)
        # Folded so that normalisation is one multiply-add: (x / 255 - mean) / std.
        self.register_buffer("pixel_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("pixel_shift", -mean / std, persistent=False)
        if self.backbone_frozen:
            self.video_backbone.requires_grad_(False)

    @property
    def decomposed(self) -> bool:
        return self.video_temporal_head is not None

    @property
    def reads_raw_frames(self) -> bool:
        """Whether encoding reads raw frames besides backbone maps (so even with maps cached): a temporal head
        declaring input_kind "frames"."""
        return self.decomposed and reads_frames(self.video_temporal_head)

    def normalise_video(self, video: torch.Tensor) -> torch.Tensor:
        return video.float() * self.pixel_scale + self.pixel_shift

    def video_maps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Backbone maps [B, T, D, h, w]: read from the batch when a feature cache supplied them."""
        if "video_maps" in batch:
            return batch["video_maps"].float()
        x = self.normalise_video(batch["video"])
        if self.backbone_frozen:
            with torch.no_grad():
                return self.video_backbone(x)
        return self.video_backbone(x)

    def encode_video(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """z_v (or the global video vector): the video head on the backbone maps."""
        return self.video_head(self.video_maps(batch))

    def encode_sensor(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """z_s (or the global sensor vector)."""
        return self.sensor_encoder(batch["sensor"])

    def video_temporal_input(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A temporal head declaring `input_kind = "frames"` sees normalised frames, others backbone maps."""
        if self.reads_raw_frames:
            return self.normalise_video(batch["video"])
        return self.video_maps(batch)

    def encode_video_temporal(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """h_v."""
        return self.video_temporal_head(self.video_temporal_input(batch))

    def encode_sensor_temporal(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.sensor_temporal_encoder(batch["sensor"])

    def spatial_modules(self) -> list[nn.Module]:
        return [m for m in (self.video_backbone, self.video_head, self.sensor_encoder) if m is not None]

    def temporal_modules(self) -> list[nn.Module]:
        return [m for m in (self.video_temporal_head, self.sensor_temporal_encoder) if m is not None]

    def embed_probe(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The linear probe's sensor feature (`embed`'s probe), from batch["sensor"] alone."""
        spatial = self.encode_sensor(batch)
        return probe_embedding(spatial, self.encode_sensor_temporal(batch) if self.decomposed else None)

    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Frozen embeddings for evaluation.

        probe: the sensor feature of the linear probe, [normalize(z_s), normalize(h_s)] when decomposed.
        video / sensor: L2-normalised joint embeddings u (for a decomposed model u = [n(z), n(h)] / sqrt 2,
        whose cosine is the mean of the spatial and temporal cosines, as in the stage-2 loss).
        """
        video = F.normalize(self.encode_video(batch), dim=-1)
        if not self.decomposed:
            sensor = self.embed_probe(batch)
            return {"probe": sensor, "video": video, "sensor": sensor}
        video_t = F.normalize(self.encode_video_temporal(batch), dim=-1)
        probe = self.embed_probe(batch)
        return {
            "probe": probe,
            "video": torch.cat([video, video_t], dim=-1) / math.sqrt(2.0),
            "sensor": probe / math.sqrt(2.0),
        }
