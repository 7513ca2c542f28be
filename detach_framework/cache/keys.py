"""Cache uids and entry keys.

An entry's key is the uid of everything that changes its value plus the sample id (split, index). The uid
hashes: the dataset's params and the data settings (not batch size or workers), the seed the dataset
receives, what is stored (frames, features), and for features the backbone's name and params, a digest of
its loaded weights (the content of a weights file, and a seeded random init alike), its pixel normalisation
and the storage dtype; plus the code: the cache format, the framework version and a digest of the
dataset's and the backbone's source files. Device, batch size and workers never enter it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detach_framework import __version__
from detach_framework.contracts import SPLITS, DatasetSource
from detach_framework.spec import Experiment

# Bump when the cached computation or the value layout changes: every older cache then reads as another uid.
CACHE_FORMAT = 1


@dataclass
class CacheContext:
    """What a cache is derived from: the spec, its dataset source and the built model (for the backbone); and
    how many DataLoader workers load the samples while it is built (`cache.build_workers`, resolved)."""

    spec: Experiment
    source: DatasetSource
    model: nn.Module
    device: torch.device
    progress: bool = False
    build_workers: int = 0


@dataclass
class CachePlan:
    """What a spec caches, where, and under which uid."""

    uid: str
    root: Path
    features: bool
    frames: bool
    features_dtype: str
    split_sizes: dict[str, int]
    payload: dict[str, Any] = field(repr=False)

    @property
    def path(self) -> Path:
        """The complete store (renamed here once its build finished)."""
        return self.root / self.uid

    @property
    def partial_path(self) -> Path:
        """Where the store is built; an interrupted build leaves it behind and the next build resumes it."""
        return self.root / f"{self.uid}.partial"

    @property
    def lock_path(self) -> Path:
        return self.root / f"{self.uid}.lock"

    @property
    def entries(self) -> int:
        return sum(self.split_sizes.values())

    def key(self, split: str, index: int) -> bytes:
        return sample_key(self.uid, split, index)


def sample_key(uid: str, split: str, index: int) -> bytes:
    return f"{uid}/{split}/{index:09d}".encode()


def module_digest(module: nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes, values): what its outputs depend on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        # Viewed as bytes: numpy has no bfloat16, and the raw bits are what matter.
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def source_digest(*classes: type) -> str:
    """sha256 of the Python files beside each class's module: its code version (over-invalidating on purpose:
    a needless rebuild costs minutes, a stale cache silently wrong results)."""
    digest = hashlib.sha256()
    folders = set()
    for cls in classes:
        path = inspect.getsourcefile(cls)
        if path is not None:
            folders.add(Path(path).parent)
    for folder in sorted(folders):
        for file in sorted(folder.glob("*.py")):
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def frames_needed(model: nn.Module) -> bool:
    """Whether the model reads raw frames even when backbone maps are cached (AlignmentModel.reads_raw_frames)."""
    return bool(model.reads_raw_frames)


def plan_cache(context: CacheContext) -> CachePlan | None:
    """The cache this spec uses, or None when it caches nothing (mode off, or nothing frozen to cache)."""
    spec, model = context.spec, context.model
    settings = spec.cache
    if settings.mode == "off":
        return None
    features = bool(model.backbone_frozen)
    frames = settings.frames == "on" or (settings.frames == "auto" and features and frames_needed(model))
    if not (features or frames):
        return None
    payload: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "framework": __version__,
        "dataset": spec.data.dataset.model_dump(mode="json"),
        "data": spec.data.model_dump(mode="json", exclude={"dataset", "batch_size", "num_workers"}),
        "seed": spec.seed,
        "frames": frames,
        "features": None,
        # No version number moves while a plugin is being edited: hash the code that renders the samples.
        "code": source_digest(type(context.source), type(context.source.split("train"))),
    }
    if features:
        backbone = model.video_backbone
        payload["features"] = {
            "backbone": spec.model.video_backbone.model_dump(mode="json", exclude={"frozen"}),
            "weights": module_digest(backbone),
            "mean": [float(v) for v in backbone.mean],
            "std": [float(v) for v in backbone.std],
            "dtype": settings.features_dtype,
            "code": source_digest(type(backbone)),
        }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    what = spec.model.video_backbone.name if features else "frames"
    uid = f"{spec.data.dataset.name}-{what}-{digest}"
    sizes = {name: len(context.source.split(name)) for name in SPLITS}
    return CachePlan(uid, Path(settings.dir), features, frames, settings.features_dtype, sizes, payload)


def payload_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two uid payloads differ: says why a cache is stale."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}.{key}" if prefix else str(key)
            out += payload_differences(old.get(key), new.get(key), path)
        return out
    return [] if old == new else [prefix or "<all>"]
