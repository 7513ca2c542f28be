"""Benchmarks of the LMDB feature cache and the training loop, each printing measured ratios side by side.

    .venv/bin/python benchmarks/cache_bench.py            # every section (about 5 minutes on 2 CPU cores)
    .venv/bin/python benchmarks/cache_bench.py --only read,loader

Sections and targets:
  epoch   one training epoch (train + validation) reading a frozen backbone's cached features vs recomputing
          frames and backbone every epoch (cache.mode off)                               target >= 10x
  read    CachedSplit[i] over a split vs a bare lmdb loop decoding the same values       target >= 0.8x
  step    Trainer._train_epoch vs a hand-written loop (same modules, loader and data)   target <= 1.05x
  rss     peak RSS of a training epoch at 1x and 4x dataset size (fresh process each)   target growth <= 10%
  loader  DataLoader throughput over the cached split at num_workers 0, 1, 2
Timings are the minimum over alternating repeats: other processes share the CPU, and the minimum is the
run they disturbed least.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detach_framework.cache.build import ensure_store  # noqa: E402
from detach_framework.cache.commands import context_from_spec  # noqa: E402
from detach_framework.cache.dataset import CachedSplit  # noqa: E402
from detach_framework.cache.keys import plan_cache  # noqa: E402
from detach_framework.cache.store import _READERS, _layout  # noqa: E402
from detach_framework.engine.rundir import RunDirectory  # noqa: E402
from detach_framework.engine.trainer import Position, Trainer, make_loader, to_device  # noqa: E402
from detach_framework.plugins import load_plugins  # noqa: E402
from detach_framework.spec import load_spec  # noqa: E402

# A kitchen of 5 subjects x 2 recordings x 40 s: 234 train / 78 val / 78 test windows ("1x").
DATASET = {"name": "synthetic_kitchen", "preset": "quickstart", "subjects": 5, "recordings_per_subject": 2}
DATASET["recording_seconds"] = 40.0
RESNET = {"name": "timm", "model": "resnet18", "frozen": True}  # a typical frozen backbone (random init)
SMALL_CNN = {"name": "small_cnn", "channels": [32, 64, 128, 128], "frozen": True}


def bench_spec(
    cache_dir: Path, backbone: dict[str, Any], *, mode: str = "auto", scale: int = 1, frame_size: int = 112
) -> dict[str, Any]:
    dataset = dict(DATASET, recordings_per_subject=DATASET["recordings_per_subject"] * scale)
    data = {"dataset": dataset, "frames": 8, "frame_size": frame_size, "sensor_length": 128, "batch_size": 32}
    return {
        "name": "bench",
        "seed": 0,
        "data": data,
        "model": {
            "video_backbone": backbone,
            "video_head": {"name": "pooled_projection", "dim": 128},
            "sensor_encoder": {"name": "imu2clip_sensor", "dim": 128},
        },
        "stages": [
            {"name": "align", "epochs": 1, "aligner": {"name": "global_contrastive"}, "loss": {"name": "infonce"}}
        ],
        "runtime": {"device": "cpu", "progress": "off", "tensorboard": False, "log_every": 10},
        "cache": {"dir": str(cache_dir), "mode": mode},
    }


def trainer_for(spec: dict[str, Any], host: Any, run_dir: Path) -> Trainer:
    return Trainer(load_spec(spec, host.registry), host, RunDirectory.prepare(run_dir, overwrite=True))


def timed_epoch(trainer: Trainer, stage: tuple[Any, Any, Any]) -> float:
    started = time.perf_counter()
    trainer._train_epoch(Position(), *stage)
    return time.perf_counter() - started


def line(name: str, left: str, right: str, ratio: float, target: str, ok: bool | None) -> None:
    verdict = "" if ok is None else f"target {target:<8} {'met' if ok else 'MISSED'}"
    print(f"{name:<8} {left:<44} {right:<44} ratio {ratio:7.2f}x  {verdict}".rstrip())


# ---- sections --------------------------------------------------------------------------------------


def epoch_section(host: Any, work: Path, rounds: int) -> Trainer:
    started = time.perf_counter()
    cached = trainer_for(bench_spec(work / "cache", RESNET), host, work / "run_cached")
    print(f"build    cache of {cached.train_set.path.name}: {time.perf_counter() - started:.1f} s (one time)")
    plain = trainer_for(bench_spec(work / "cache", RESNET, mode="off"), host, work / "run_plain")
    assert isinstance(cached.train_set, CachedSplit) and not isinstance(plain.train_set, CachedSplit)
    stage_c, stage_p = cached.build_stage(0), plain.build_stage(0)
    first = timed_epoch(cached, stage_c)  # entries are checksummed on their first read
    warm = min(timed_epoch(cached, stage_c) for _ in range(rounds))
    recompute = timed_epoch(plain, stage_p)
    samples = len(cached.train_set) + len(cached.val_set)
    left = f"recompute {recompute:6.2f} s/epoch"
    line("epoch", left, f"cached {warm:6.3f} s (1st {first:.3f} s)", recompute / warm, ">= 10x", recompute / warm >= 10)
    print(f"         ({samples} samples per epoch; first cached epoch ratio {recompute / first:.1f}x)")
    return cached


def read_section(trainer: Trainer, rounds: int) -> None:
    """Both loops read through the same open environment (one per file and process), alternating."""
    split = trainer.train_set
    backbone = trainer.spec.model.video_backbone
    label = f"{getattr(backbone, 'model', backbone.name)} at {trainer.spec.data.frame_size} px"
    keys = [f"{split.plan_uid}/{split.split}/{i:09d}".encode() for i in range(len(split))]
    split[0]  # opens this process's reader
    txn = _READERS[split.reader._key][2]
    first = txn.get(keys[0])
    fields, _ = _layout(bytes(first[8 : 12 + int.from_bytes(first[10:12], "little")]))
    size, passes = len(first), 1

    def bare() -> float:
        started = time.perf_counter()
        for _ in range(passes):
            for key in keys:
                data = bytearray(txn.get(key))
                {name: torch.from_numpy(np.frombuffer(data, dt, n, o).reshape(s)) for name, dt, s, o, n in fields}
        return time.perf_counter() - started

    def ours(cold: bool) -> float:
        started = time.perf_counter()
        for _ in range(passes):
            if cold:
                split._checked[:] = 0  # as on a first read: every entry's crc32 is verified
            for i in range(len(split)):
                split[i]
        return time.perf_counter() - started

    # Many short alternating timings: single passes fall into a few speed modes (page faults, allocator
    # state, other processes), so both the min and the median of each loop are shown.
    bare_t, warm_t, cold_t = [], [], []
    for r in range(20 * rounds):
        for name in ("bare", "warm", "cold") if r % 2 else ("cold", "warm", "bare"):
            {"bare": bare_t, "warm": warm_t, "cold": cold_t}[name].append(
                bare() if name == "bare" else ours(name == "cold")
            )
    n = len(keys) * passes

    def rate(t: float) -> str:
        return f"{n / t:8.0f} samples/s ({n * size / t / 2**20:6.0f} MiB/s)"

    for stat, pick in (("min", min), ("median", statistics.median)):
        b, w, c = pick(bare_t), pick(warm_t), pick(cold_t)
        line(f"read {stat[:3]}", f"bare lmdb {rate(b)}", f"cached   {rate(w)}", b / w, ">= 0.8x", b / w >= 0.8)
        line(f"read {stat[:3]}", f"bare lmdb {rate(b)}", f"1st read {rate(c)}", b / c, "", None)
    print(f"         ({label}: {len(keys)} values of {size / 1024:.1f} KiB; 1st read = with the per-entry crc32 check)")


def step_section(trainer: Trainer, rounds: int) -> None:
    """Alternating order; wall and process CPU time (CPU time is less disturbed by other processes)."""
    spec = trainer.spec
    aligner, optimizer, trainable = trainer.build_stage(0)
    trainer.val_set = []  # training steps only, in both loops
    model = trainer.model

    def hand_written() -> None:
        loader = make_loader(trainer.train_set, spec, shuffle=True, epoch=1)
        model.eval()
        aligner.train()
        for module in trainable:
            module.train()
        for batch in loader:
            out = aligner(model, to_device(batch, trainer.device))
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()

    def framework() -> None:
        trainer._train_epoch(Position(), aligner, optimizer, trainable)

    times: dict[str, list[tuple[float, float]]] = {"framework": [], "hand": []}
    for r in range(3 * rounds):
        for name in ("framework", "hand") if r % 2 else ("hand", "framework"):
            wall, cpu = time.perf_counter(), time.process_time()
            framework() if name == "framework" else hand_written()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    steps = len(trainer.train_set) // spec.data.batch_size
    f_wall, h_wall = (min(t[0] for t in times[k]) for k in ("framework", "hand"))
    f_cpu, h_cpu = (min(t[1] for t in times[k]) for k in ("framework", "hand"))
    left = f"hand-written {h_wall / steps * 1000:6.2f} ms/step"
    line(
        "step",
        left,
        f"Trainer {f_wall / steps * 1000:6.2f} ms/step",
        f_wall / h_wall,
        "<= 1.05x",
        f_wall / h_wall <= 1.05,
    )
    left = f"hand-written {h_cpu / steps * 1000:6.2f} ms CPU/step"
    line(
        "step",
        left,
        f"Trainer {f_cpu / steps * 1000:6.2f} ms CPU/step",
        f_cpu / h_cpu,
        "<= 1.05x",
        f_cpu / h_cpu <= 1.05,
    )
    print(f"         ({steps} steps of batch {spec.data.batch_size} per epoch, min of {3 * rounds} epochs each)")


def rss_section(host: Any, work: Path) -> None:
    sizes = {}
    for scale in (1, 4):
        spec = bench_spec(work / "cache", SMALL_CNN, scale=scale, frame_size=64)
        context = context_from_spec(load_spec(spec, host.registry), host)
        ensure_store(plan_cache(context), context)  # built here, so the measured process only reads
        path = work / f"rss_{scale}.json"
        path.write_text(json.dumps(spec))
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(path), "--threads", str(torch.get_num_threads())],
            check=True,
            capture_output=True,
            text=True,
        )
        sizes[scale] = json.loads(out.stdout.strip().splitlines()[-1])
    one, four = sizes[1], sizes[4]
    growth = four["peak_mib"] / one["peak_mib"] - 1

    def show(r: dict[str, Any], scale: int) -> str:
        return f"{scale}x ({r['train']} train) peak {r['peak_mib']:6.0f} MiB"

    line("rss", show(one, 1), show(four, 4), four["peak_mib"] / one["peak_mib"], "<= 1.10x", growth <= 0.10)
    for scale, r in sizes.items():
        print(
            f"         {scale}x: before the epoch {r['before_mib']:.0f} MiB (anon {r['anon_mib']:.0f}, "
            f"file {r['file_mib']:.0f}); store {r['store_mib']:.0f} MiB"
        )


def rss_child(spec_path: Path) -> None:
    host = load_plugins()
    spec = json.loads(spec_path.read_text())
    trainer = trainer_for(spec, host, spec_path.parent / f"run_{spec_path.stem}")
    stage = trainer.build_stage(0)
    status = _status()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak: measure the epoch, not the imports
    trainer._train_epoch(Position(), *stage)
    after = _status()
    store = sum(f.stat().st_size for f in Path(trainer.train_set.path).glob("*.mdb"))
    result = {
        "train": len(trainer.train_set),
        "before_mib": status["VmRSS"] / 1024,
        "anon_mib": status["RssAnon"] / 1024,
        "file_mib": status["RssFile"] / 1024,
        "peak_mib": after["VmHWM"] / 1024,
        "store_mib": store / 2**20,
    }
    print(json.dumps(result))


def _status() -> dict[str, int]:
    values = {}
    for row in Path("/proc/self/status").read_text().splitlines():
        name, _, value = row.partition(":")
        if value.strip().endswith("kB"):
            values[name] = int(value.split()[0])
    return values


def loader_section(trainer: Trainer, rounds: int) -> None:
    """Samples/s per epoch (workers start every epoch: persistent_workers is off) and after the first batch."""
    shown = []
    for workers in (0, 1, 2):
        spec = trainer.spec.model_copy(update={"data": trainer.spec.data.model_copy(update={"num_workers": workers})})
        epoch_best = steady_best = 0.0
        for r in range(rounds):
            started = time.perf_counter()
            iterator = iter(make_loader(trainer.train_set, spec, shuffle=True, epoch=r))
            first = next(iterator)
            warm = time.perf_counter()
            count = sum(len(b["label"]) for b in iterator)
            ended = time.perf_counter()
            epoch_best = max(epoch_best, (count + len(first["label"])) / (ended - started))
            steady_best = max(steady_best, count / (ended - warm))
        shown.append(f"workers {workers}: {epoch_best:6.0f} /s per epoch, {steady_best:6.0f} /s after the 1st batch")
    print("loader   " + "\n         ".join(shown))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="epoch,read,step,rss,loader")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, help="keep the stores here between runs (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared CPU)")
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args.rss_child)
        return
    only = set(args.only.split(","))
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    host = load_plugins()
    with tempfile.TemporaryDirectory(prefix="detach-bench-") as tmp:
        work = Path(tmp)
        if args.cache_dir is not None:
            (work / "cache").symlink_to(args.cache_dir.resolve(), target_is_directory=True)
        trainer = None
        if "epoch" in only:
            trainer = epoch_section(host, work, args.rounds)
        if only & {"read", "step", "loader"} and trainer is None:
            trainer = trainer_for(bench_spec(work / "cache", RESNET), host, work / "run_cached")
        if "read" in only:
            read_section(trainer, args.rounds)
            small = trainer_for(bench_spec(work / "cache", SMALL_CNN, frame_size=64), host, work / "run_small")
            read_section(small, args.rounds)  # smaller values: the per-sample overhead weighs more
        if "loader" in only:
            loader_section(trainer, max(2, args.rounds // 2))
        if "step" in only:
            step_section(copy.copy(trainer), args.rounds)
        if "rss" in only:
            rss_section(host, work)


if __name__ == "__main__":
    main()
