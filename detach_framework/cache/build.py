"""Building a store: one writer (a lock file), batched commits, resumable, renamed into place when complete."""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from detach_framework.cache.keys import CacheContext, CachePlan
from detach_framework.cache.store import (
    BUILDING,
    COMPLETE,
    DEFAULT_MAP_SIZE,
    DamagedStoreError,
    StoreWriter,
    encode_record,
    inspect_store,
    read_marker,
    remove_store,
    write_marker,
)
from detach_framework.errors import UserError

COMMIT_BYTES = 32 << 20  # one LMDB transaction per ~32 MiB of values


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """One writer per store, across processes (parallel runs of one spec wait for the first build)."""
    root = lock_path.parent  # cache.dir: the lock is the first thing a build writes there
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+b")
    except OSError as exc:
        raise UserError(
            f"cache.dir {root}: cannot write there ({exc.strerror or exc}); set cache.dir to a writable directory "
            "or cache.mode: off"
        ) from None
    with handle:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): single-process use only
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_store(plan: CachePlan, context: CacheContext, *, map_size: int = DEFAULT_MAP_SIZE) -> int:
    """Make the plan's store complete (building or resuming it); returns how many entries this call wrote."""
    state = inspect_store(plan.uid, plan.path, plan.partial_path)
    if state.state == "complete":
        return 0
    if state.state in ("missing", "partial", "damaged"):
        return build_store(plan, context, map_size=map_size)
    raise UserError(state.message)


def build_store(plan: CachePlan, context: CacheContext, *, map_size: int = DEFAULT_MAP_SIZE) -> int:
    root = plan.root
    if root.exists() and not root.is_dir():
        raise UserError(f"cache.dir {root} is not a directory")
    with exclusive(plan.lock_path):
        state = inspect_store(plan.uid, plan.path, plan.partial_path)  # again: another process may have built it
        if state.state == "complete":
            return 0
        if state.damage is not None:
            _discard_damaged(state.damage)
            state = inspect_store(plan.uid, plan.path, plan.partial_path)
        if state.state not in ("missing", "partial"):
            raise UserError(state.message)
        try:
            writer = StoreWriter(plan.partial_path, map_size)
        except DamagedStoreError as exc:  # a partial store cut short: its committed entries cannot be trusted
            _discard_damaged(exc)
            writer = StoreWriter(plan.partial_path, map_size)
        try:
            if read_marker(plan.partial_path / BUILDING) is None:
                write_marker(plan.partial_path / BUILDING, {"uid": plan.uid, "payload": plan.payload})
            written = _write_missing(plan, context, writer)
            stored = writer.env.stat()["entries"]
            if stored != plan.entries:
                raise UserError(f"cache {plan.partial_path}: {stored} entries after the build, expected {plan.entries}")
            marker = {
                "uid": plan.uid,
                "entries": stored,
                "splits": plan.split_sizes,
                "features": plan.features,
                "frames": plan.frames,
                "features_dtype": plan.features_dtype,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "payload": plan.payload,
            }
        finally:
            writer.close()
        write_marker(plan.partial_path / COMPLETE, marker)
        (plan.partial_path / BUILDING).unlink(missing_ok=True)
        os.rename(plan.partial_path, plan.path)
        return written


def _discard_damaged(damage: DamagedStoreError) -> None:
    """Remove a damaged store of ours so it is built again (remove_store refuses a folder holding other files)."""
    try:
        remove_store(damage.path)
    except UserError as exc:
        raise UserError(f"cache {damage.path} is damaged ({damage.reason}); {exc}") from None
    warnings.warn(f"cache {damage.path} is damaged ({damage.reason}): removed it, building it again", stacklevel=2)


def _write_missing(plan: CachePlan, context: CacheContext, writer: StoreWriter) -> int:
    present = writer.keys()
    todo = {
        split: [i for i in range(size) if plan.key(split, i) not in present] for split, size in plan.split_sizes.items()
    }
    bar = tqdm(
        total=plan.entries,
        initial=plan.entries - sum(map(len, todo.values())),
        desc=f"cache {plan.uid}",
        unit="sample",
        disable=not context.progress,
    )
    written = 0
    with bar:
        for split, indices in todo.items():
            if not indices:
                continue
            loader = DataLoader(
                Subset(context.source.split(split), indices),
                batch_size=max(context.spec.data.batch_size, 1),
                num_workers=context.build_workers,
                shuffle=False,
                # Its own generator: drawing the loader's base seed from the global RNG would shift training's.
                generator=torch.Generator().manual_seed(0),
            )
            pending: list[tuple[bytes, bytes]] = []
            pending_bytes = 0
            position = 0
            for batch in loader:
                for record in _records(plan, context, batch):
                    value = encode_record(record)
                    pending.append((plan.key(split, indices[position]), value))
                    pending_bytes += len(value)
                    position += 1
                if pending_bytes >= COMMIT_BYTES:
                    writer.put_batch(pending)
                    written += len(pending)
                    pending, pending_bytes = [], 0
                bar.update(len(batch["video"]))
            if pending:
                writer.put_batch(pending)
                written += len(pending)
    return written


def _records(plan: CachePlan, context: CacheContext, batch: dict) -> list[dict[str, torch.Tensor]]:
    for name, value in batch.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"cache: the dataset's sample field '{name}' is not a tensor; set cache.mode: off")
    fields = {name: value for name, value in batch.items() if name != "video"}
    if plan.frames:
        fields["video"] = batch["video"]
    if plan.features:
        maps = backbone_maps(context, batch["video"])
        stored = maps.to(getattr(torch, plan.features_dtype))
        if not torch.isfinite(stored).all() and torch.isfinite(maps).all():
            raise UserError(
                f"cache: backbone features overflow {plan.features_dtype} (max |x| {maps.abs().max():.3g}); "
                "set cache.features_dtype: float32"
            )
        fields["video_maps"] = stored
    count = len(batch["video"])
    return [{name: value[j] for name, value in fields.items()} for j in range(count)]


@torch.no_grad()
def backbone_maps(context: CacheContext, video: torch.Tensor) -> torch.Tensor:
    """The frozen backbone's maps exactly as training computes them (the model's own normalisation)."""
    model = context.model
    backbone = model.video_backbone
    was_training = backbone.training
    backbone.eval()
    try:
        return model.video_maps({"video": video.to(context.device)}).cpu()
    finally:
        backbone.train(was_training)
