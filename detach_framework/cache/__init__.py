"""LMDB cache of frozen computation: a frozen backbone's per-frame features and decoded frames.

keys (uids, keys, plans) -> store (codec, writer, reader) -> build (resumable builder) -> dataset (the split
training reads) -> commands (`detach cache build|info|verify|clear`).
"""

from detach_framework.cache.dataset import CachedSplit, flush_run_stats, run_stats, split_from_context
from detach_framework.cache.keys import CacheContext, CachePlan, plan_cache

__all__ = [
    "CacheContext",
    "CachePlan",
    "CachedSplit",
    "flush_run_stats",
    "plan_cache",
    "run_stats",
    "split_from_context",
]
