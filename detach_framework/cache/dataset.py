"""The cache-backed split training reads, and `split_from_context`, which puts it in place (`Session.split`)."""

from __future__ import annotations

import atexit
import os
import time
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, get_worker_info

from detach_framework.cache.build import ensure_store
from detach_framework.cache.keys import CacheContext, CachePlan, frames_needed, module_digest, plan_cache
from detach_framework.cache.store import LAST_RUN, StoreReader, decode_record, write_marker
from detach_framework.errors import UserError

_SLOTS = 65  # counter rows: the main process and up to 64 DataLoader workers (data.num_workers <= 64)


class CachedSplit(Dataset):
    """One split served from a complete store: every sample field in one LMDB read.

    Cached features come as stored (float16 by default); `AlignmentModel.video_maps` restores float32 on
    the device, so host memory and transfers stay half size. Each entry's checksum is verified the first
    time any process of this run reads it (the flags live in shared memory, so DataLoader workers of later
    epochs skip it); a mismatch raises an error naming the key. The base split is only read for what the
    store lacks: frames a model needs but the cache does not hold, or everything while the backbone's
    weights no longer match the cached features (`use_features` off).
    """

    def __init__(self, plan: CachePlan, split: str, base: Dataset, *, need_frames: bool) -> None:
        self.plan_uid = plan.uid
        self.path = plan.path
        self.split = split
        self.base = base
        self.has_features = plan.features
        self.has_frames = plan.frames
        self.need_frames = need_frames
        self.use_features = plan.features
        self.length = plan.split_sizes[split]
        self.reader = StoreReader(plan.path)
        self._prefix = f"{plan.uid}/{split}/".encode()  # + the 9-digit index: keys.sample_key, prebuilt
        # Shared memory: written by DataLoader workers, read by the main process.
        self.counts = torch.zeros(_SLOTS, 2, dtype=torch.int64).share_memory_()  # [slot] -> hits, misses
        self.checked = torch.zeros(max(self.length, 1), dtype=torch.uint8).share_memory_()
        self._views()
        # Counts outlive the split (a finished Trainer is garbage): fold them into the process totals then.
        self._finalizer = weakref.finalize(self, _retire, str(self.path), self._counts, os.getpid())
        _LIVE.add(self)

    def _views(self) -> None:
        # numpy views of the shared tensors: item access without a torch op per sample.
        self._counts = self.counts.numpy()
        self._checked = self.checked.numpy()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_counts"], state["_checked"], state["_finalizer"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._views()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = range(self.length)[index]
        info = get_worker_info()
        slot = 0 if info is None else info.id + 1
        if not (self.use_features or self.has_frames):
            self._counts[slot, 1] += 1
            return self.base[index]
        key = self._prefix + b"%09d" % index
        value = self.reader.get(key)
        if value is None:
            raise UserError(f"cache {self.path}: entry '{key.decode()}' is missing; run `detach cache verify`")
        check = not self._checked[index]
        sample = decode_record(value, key, check=check)
        if check:
            self._checked[index] = 1
        if not self.use_features:
            sample.pop("video_maps", None)
        if (self.need_frames or not self.use_features) and "video" not in sample:
            sample["video"] = self.base[index]["video"]  # frames computed: this sample is a miss
            self._counts[slot, 1] += 1
        else:
            self._counts[slot, 0] += 1
        return sample

    def stats(self) -> dict[str, int]:
        hits, misses = (int(v) for v in self._counts.sum(axis=0))
        return {"hits": hits, "misses": misses}


# ----------------------------------------------------------------------------------------------
# The split a session reads


def split_from_context(context: CacheContext, name: str) -> Dataset:
    base = context.source.split(name)
    plan = plan_cache(context)
    if plan is None:
        return base
    built = ensure_store(plan, context)
    _BUILT[str(plan.path)] = _BUILT.get(str(plan.path), 0) + built
    need_frames = not plan.features or frames_needed(context.model)
    split = CachedSplit(plan, name, base, need_frames=need_frames)
    if plan.features:
        _bind(context.model.video_backbone, plan.payload["features"]["weights"], split)
    return split


class _WeightsWatch:
    """load_state_dict post-hook on a frozen backbone: cached features are only served while its weights
    are the ones they were computed from (an `init_from` checkpoint may bring others)."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.splits: weakref.WeakSet[CachedSplit] = weakref.WeakSet()

    def __call__(self, module: nn.Module, incompatible_keys: Any) -> None:
        matches = module_digest(module) == self.digest
        if not matches and any(s.use_features for s in self.splits):
            warnings.warn(
                "the video backbone's loaded weights differ from those the feature cache was built with: "
                "computing features instead of reading them",
                stacklevel=2,
            )
        for split in self.splits:
            split.use_features = matches and split.has_features


_WATCHES: weakref.WeakKeyDictionary[nn.Module, _WeightsWatch] = weakref.WeakKeyDictionary()


def _bind(backbone: nn.Module, digest: str, split: CachedSplit) -> None:
    watch = _WATCHES.get(backbone)
    if watch is None or watch.digest != digest:
        watch = _WeightsWatch(digest)
        backbone.register_load_state_dict_post_hook(watch)
        _WATCHES[backbone] = watch
    watch.splits.add(split)


# ----------------------------------------------------------------------------------------------
# Statistics of the last run (`detach cache info`)

_LIVE: weakref.WeakSet[CachedSplit] = weakref.WeakSet()
_BUILT: dict[str, int] = {}
_RETIRED: dict[str, list[int]] = {}  # store path -> [hits, misses] of splits already garbage collected


def _retire(path: str, counts: Any, pid: int) -> None:
    if pid != os.getpid():  # a worker's copy: its counts live in shared memory, the main process owns them
        return
    hits, misses = (int(v) for v in counts.sum(axis=0))
    total = _RETIRED.setdefault(path, [0, 0])
    total[0] += hits
    total[1] += misses


def run_stats() -> dict[str, dict[str, Any]]:
    """Per store path: entries built, samples read from the cache (hits) and computed (misses) so far."""
    out: dict[str, dict[str, Any]] = {}
    for path in set(_RETIRED) | set(_BUILT) | {str(split.path) for split in list(_LIVE)}:
        hits, misses = _RETIRED.get(path, [0, 0])
        out[path] = {"built": _BUILT.get(path, 0), "hits": hits, "misses": misses}
    for split in list(_LIVE):
        if not split._finalizer.alive:  # retired at exit already: counted in _RETIRED
            continue
        for key, value in split.stats().items():
            out[str(split.path)][key] += value
    return out


def flush_run_stats() -> None:
    """Write each read store's statistics into its last_run.json (also done at interpreter exit)."""
    for path, entry in run_stats().items():
        reads = entry["hits"] + entry["misses"]
        if not reads or not Path(path).is_dir():
            continue
        entry["hit_rate"] = round(entry["hits"] / reads, 6)
        entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        try:
            write_marker(Path(path) / LAST_RUN, entry)
        except OSError:  # a read-only or vanished cache directory: statistics are best effort
            pass


atexit.register(flush_run_stats)

__all__ = ["CachedSplit", "flush_run_stats", "run_stats", "split_from_context"]
