"""How many intra-op threads a training process uses (`runtime.threads`), chosen once before any work.

torch starts one intra-op thread per core it sees. Two things oversubscribe the cores: DataLoader workers
(each a process rendering or decoding samples; torch gives each worker one thread) and several torchrun
processes on one node. `auto` gives the training process the cores that are left, at least one, and never
more threads than the process already runs with: a caller (or a parent before a fork) that lowered the
count keeps it, and a forked child never starts a new OpenMP thread team, which can deadlock after fork.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_threads(requested: int | str, data_workers: int, cores: int, local_processes: int, current: int) -> int:
    """The intra-op thread count for `runtime.threads` (see the module docstring)."""
    if requested != "auto":
        return int(requested)
    return max(1, min(current, cores // max(local_processes, 1) - data_workers))


CACHE_BUILD_WORKERS_MAX = 4  # rendering scales with processes; beyond a few they mostly wait on the LMDB writer


def cache_build_workers(requested: int | str, data_workers: int, cores: int) -> int:
    """The DataLoader workers a cache build loads samples with (`cache.build_workers`): auto is data.num_workers
    when set, else one per core, at most CACHE_BUILD_WORKERS_MAX. Rendering a window's frames is single-threaded
    numpy, so on a fresh cache it is most of the wait, and who renders a sample never changes it."""
    if requested != "auto":
        return int(requested)
    return data_workers or min(cores, CACHE_BUILD_WORKERS_MAX)


def configure_threads(threads: int | str, data_workers: int) -> dict[str, Any]:
    """Set torch's intra-op thread count for `runtime.threads` and return what was chosen, for env.json."""
    cores = usable_cores()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    chosen = choose_threads(threads, data_workers, cores, local_processes, torch.get_num_threads())
    if chosen != torch.get_num_threads():
        torch.set_num_threads(chosen)
    return {
        "requested": threads,
        "intra_op": torch.get_num_threads(),
        "inter_op": torch.get_num_interop_threads(),
        "usable_cores": cores,
        "data_workers": data_workers,
        "local_processes": local_processes,
    }
