"""Benchmarks of the LMDB feature cache and the training loop, each printing measured ratios side by side.

    .venv/bin/python benchmarks/cache_bench.py            # every section (about 5 minutes on 2 CPU cores)
    .venv/bin/python benchmarks/cache_bench.py --only read,loader
    .venv/bin/python benchmarks/cache_bench.py --smoke    # every section at toy sizes, one round (the tests run it)

Sections and targets:
  epoch   `Trainer.fit()` of a one-epoch spec (train epoch, validation pass, checkpoints) reading a frozen
          backbone's cached features vs recomputing frames and backbone every epoch (cache.mode off)
                                                                                         target >= 10x
  read    CachedSplit[i] over a split vs a bare loop over the same store and read transaction
          (StoreReader.get, one copy, tensors at precomputed offsets)                  target >= 0.8x
  step    `Trainer.fit()` of a one-epoch spec vs a hand-written loop doing the same work: the modules and
          optimizer of `Trainer.build_stage`, `make_loader` over the same split, a validation pass and the
          same checkpoint files (`save_checkpoint`); a run's time per training step    target <= 1.05x
  rss     peak RSS of `Trainer.fit()` of one epoch at 1x and 4x dataset size (fresh process each)
                                                                                         target growth <= 10%
  loader  DataLoader (`make_loader`) throughput over the cached split at num_workers 0, 1, 2
Only public entry points of the framework are used, so a change that breaks one breaks this script, and
`tests/test_benchmarks.py` runs it with --smoke. Timings are the minimum over alternating repeats: other
processes share the CPU, and the minimum is the run they disturbed least.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detach_framework.cache import CachedSplit, plan_cache  # noqa: E402
from detach_framework.cache.build import ensure_store  # noqa: E402
from detach_framework.cache.keys import sample_key  # noqa: E402
from detach_framework.cache.store import StoreReader, decode_record  # noqa: E402
from detach_framework.engine.checkpoint import save_checkpoint  # noqa: E402
from detach_framework.engine.rundir import RunDirectory  # noqa: E402
from detach_framework.engine.session import Session, make_loader, to_device  # noqa: E402
from detach_framework.engine.trainer import Trainer  # noqa: E402
from detach_framework.plugins import load_plugins  # noqa: E402
from detach_framework.spec import load_spec  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    dataset: dict[str, Any]
    frames: int
    frame_size: int  # of the main trainer (epoch, read, step, loader)
    small_frame_size: int  # of the read section's second store and the rss section
    sensor_length: int
    batch_size: int
    backbone: dict[str, Any]
    small_backbone: dict[str, Any]


# A kitchen of 5 subjects x 2 recordings x 40 s: 234 train / 78 val / 78 test windows ("1x").
FULL = Sizes(
    dataset={
        "name": "synthetic_kitchen",
        "preset": "quickstart",
        "subjects": 5,
        "recordings_per_subject": 2,
        "recording_seconds": 40.0,
    },
    frames=8,
    frame_size=112,
    small_frame_size=64,
    sensor_length=128,
    batch_size=32,
    backbone={"name": "timm", "model": "resnet18", "frozen": True},  # a typical frozen backbone (random init)
    small_backbone={"name": "small_cnn", "channels": [32, 64, 128, 128], "frozen": True},
)
# --smoke: every section runs its code in seconds (3 subjects x 1 recording x 12 s: 11 windows per split).
SMOKE = Sizes(
    dataset={
        "name": "synthetic_kitchen",
        "preset": "tiny",
        "subjects": 3,
        "recordings_per_subject": 1,
        "recording_seconds": 12.0,
    },
    frames=2,
    frame_size=16,
    small_frame_size=16,
    sensor_length=16,
    batch_size=8,
    backbone={"name": "small_cnn", "channels": [4, 4, 8, 8], "frozen": True},
    small_backbone={"name": "small_cnn", "channels": [4, 8, 8, 8], "frozen": True},
)


def bench_spec(cache_dir: Path, sizes: Sizes, *, small: bool = False, mode: str = "auto", scale: int = 1) -> dict:
    """A one-epoch spec: frozen backbone (cached when `mode` allows), pooled head, IMU2CLIP sensor encoder."""
    dataset = dict(sizes.dataset, recordings_per_subject=sizes.dataset["recordings_per_subject"] * scale)
    data = {
        "dataset": dataset,
        "frames": sizes.frames,
        "frame_size": sizes.small_frame_size if small else sizes.frame_size,
        "sensor_length": sizes.sensor_length,
        "batch_size": sizes.batch_size,
    }
    return {
        "name": "bench",
        "seed": 0,
        "data": data,
        "model": {
            "video_backbone": sizes.small_backbone if small else sizes.backbone,
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
    session = Session.from_spec(load_spec(spec, host.registry), host)
    return Trainer(session, RunDirectory.prepare(run_dir, overwrite=True))


def timed_fit(trainer: Trainer) -> float:
    """Seconds of `fit()`: the spec's one epoch, its validation pass and its checkpoints (again on each call)."""
    started = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - started


def line(name: str, left: str, right: str, ratio: float, target: str, ok: bool | None) -> None:
    verdict = "" if ok is None else f"target {target:<8} {'met' if ok else 'MISSED'}"
    print(f"{name:<8} {left:<44} {right:<44} ratio {ratio:7.2f}x  {verdict}".rstrip())


# ---- sections --------------------------------------------------------------------------------------


def epoch_section(host: Any, work: Path, sizes: Sizes, rounds: int) -> Trainer:
    started = time.perf_counter()
    cached = trainer_for(bench_spec(work / "cache", sizes), host, work / "run_cached")
    print(f"build    cache of {cached.train_set.path.name}: {time.perf_counter() - started:.1f} s (one time)")
    plain = trainer_for(bench_spec(work / "cache", sizes, mode="off"), host, work / "run_plain")
    assert isinstance(cached.train_set, CachedSplit) and not isinstance(plain.train_set, CachedSplit)
    first = timed_fit(cached)  # entries are checksummed on their first read
    warm = min(timed_fit(cached) for _ in range(rounds))
    recompute = timed_fit(plain)
    samples = len(cached.train_set) + len(cached.val_set)
    left = f"recompute {recompute:6.2f} s/epoch"
    line("epoch", left, f"cached {warm:6.3f} s (1st {first:.3f} s)", recompute / warm, ">= 10x", recompute / warm >= 10)
    print(
        f"         ({samples} samples per epoch, one-epoch fit() with validation and checkpoints; "
        f"first cached epoch ratio {recompute / first:.1f}x)"
    )
    return cached


def field_layout(value: memoryview, key: bytes) -> list[tuple[str, np.dtype, tuple[int, ...], int, int]]:
    """(name, dtype, shape, byte offset, items) of each field of a stored value, read off `decode_record`'s
    tensors: they share one copy of the value's bytes, and the last field ends where the value ends."""
    sample = decode_record(value, key)
    end = max(t.data_ptr() + t.numel() * t.element_size() for t in sample.values())
    return [
        (name, t.numpy().dtype, tuple(t.shape), len(value) - (end - t.data_ptr()), t.numel())
        for name, t in sample.items()
    ]


def read_section(trainer: Trainer, rounds: int) -> None:
    """Both loops read through the same open environment (one per file and process), alternating."""
    split = trainer.train_set
    assert isinstance(split, CachedSplit)
    backbone = trainer.spec.model.video_backbone
    label = f"{getattr(backbone, 'model', backbone.name)} at {trainer.spec.data.frame_size} px"
    reader = StoreReader(split.path)  # shares the split's environment and long-lived read transaction
    keys = [sample_key(split.plan_uid, split.split, i) for i in range(len(split))]
    first = reader.get(keys[0])
    fields = field_layout(first, keys[0])
    size, passes = len(first), 1

    def bare_sample(key: bytes) -> dict[str, torch.Tensor]:
        data = bytearray(reader.get(key))
        return {name: torch.from_numpy(np.frombuffer(data, dt, n, o).reshape(s)) for name, dt, s, o, n in fields}

    expected = decode_record(first, keys[0])  # the bare loop builds exactly the tensors the split serves
    assert all(torch.equal(t, expected[name]) for name, t in bare_sample(keys[0]).items())

    def bare() -> float:
        started = time.perf_counter()
        for _ in range(passes):
            for key in keys:
                bare_sample(key)
        return time.perf_counter() - started

    def ours(cold: bool) -> float:
        started = time.perf_counter()
        for _ in range(passes):
            if cold:
                split.checked.zero_()  # as on a first read: every entry's crc32 is verified
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


def step_section(trainer: Trainer, work: Path, rounds: int) -> None:
    """Alternating order; wall and process CPU time (CPU time is less disturbed by other processes)."""
    spec, model, device = trainer.spec, trainer.model, trainer.device
    for old in trainer.run.checkpoints.glob("*.pt"):
        old.unlink()
    trainer.fit()  # which checkpoint files one epoch writes: the hand-written loop writes the same ones
    written = sorted(p.name for p in trainer.run.checkpoints.glob("*.pt"))
    folder = work / "hand_written_checkpoints"
    checkpoint_seconds: list[float] = []  # of the hand-written runs: how much of a run is fixed per-epoch work

    def hand_written() -> None:
        aligner, optimizer, trainable = trainer.build_stage(0)  # fit() builds its stage on every call too
        model.eval()
        aligner.train()
        for module in trainable:
            module.train()
        for batch in make_loader(trainer.train_set, spec, shuffle=True, epoch=1):
            out = aligner(model, to_device(batch, device))
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
        aligner.eval()
        with torch.no_grad():
            val_batches = make_loader(trainer.val_set, spec, shuffle=False)
            val_loss = sum(float(aligner(model, to_device(b, device))["loss"]) for b in val_batches)
        state = {"model": model.state_dict(), "aligner": aligner.state_dict(), "optimizer": optimizer.state_dict()}
        started = time.perf_counter()
        for name in written:
            save_checkpoint(folder / name, {**state, "val_loss": val_loss})
        checkpoint_seconds.append(time.perf_counter() - started)

    times: dict[str, list[tuple[float, float]]] = {"framework": [], "hand": []}
    for r in range(3 * rounds):
        for name in ("framework", "hand") if r % 2 else ("hand", "framework"):
            wall, cpu = time.perf_counter(), time.process_time()
            trainer.fit() if name == "framework" else hand_written()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    steps = len(make_loader(trainer.train_set, spec, shuffle=True))
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
    print(
        f"         ({steps} steps of batch {spec.data.batch_size} per epoch, min of {3 * rounds} one-epoch runs "
        f"each; per run both also validate and write {', '.join(written)}: {min(checkpoint_seconds) * 1000:.0f} ms "
        f"of the hand-written run's {h_wall * 1000:.0f} ms)"
    )


def rss_section(host: Any, work: Path, sizes: Sizes) -> None:
    measured = {}
    for scale in (1, 4):
        spec = bench_spec(work / "cache", sizes, small=True, scale=scale)
        context = Session.from_spec(load_spec(spec, host.registry), host).cache_context()
        ensure_store(plan_cache(context), context)  # built here, so the measured process only reads
        path = work / f"rss_{scale}.json"
        path.write_text(json.dumps(spec))
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(path), "--threads", str(torch.get_num_threads())],
            check=True,
            capture_output=True,
            text=True,
        )
        measured[scale] = json.loads(out.stdout.strip().splitlines()[-1])
    one, four = measured[1], measured[4]
    growth = four["peak_mib"] / one["peak_mib"] - 1

    def show(r: dict[str, Any], scale: int) -> str:
        return f"{scale}x ({r['train']} train) peak {r['peak_mib']:6.0f} MiB"

    line("rss", show(one, 1), show(four, 4), four["peak_mib"] / one["peak_mib"], "<= 1.10x", growth <= 0.10)
    for scale, r in measured.items():
        print(
            f"         {scale}x: before the epoch {r['before_mib']:.0f} MiB (anon {r['anon_mib']:.0f}, "
            f"file {r['file_mib']:.0f}); store {r['store_mib']:.0f} MiB"
        )


def rss_child(spec_path: Path) -> None:
    host = load_plugins()
    spec = json.loads(spec_path.read_text())
    trainer = trainer_for(spec, host, spec_path.parent / f"run_{spec_path.stem}")
    status = _status()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak: measure the epoch, not the imports
    trainer.fit()
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
            steady_best = max(steady_best, count / max(ended - warm, 1e-9))  # (one batch: nothing after it)
        shown.append(f"workers {workers}: {epoch_best:6.0f} /s per epoch, {steady_best:6.0f} /s after the 1st batch")
    print("loader   " + "\n         ".join(shown))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="epoch,read,step,rss,loader")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="toy sizes and one round: checks the code, not speed")
    parser.add_argument("--cache-dir", type=Path, help="keep the stores here between runs (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared CPU)")
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args.rss_child)
        return 0
    sizes, rounds = (SMOKE, 1) if args.smoke else (FULL, args.rounds)
    only = set(args.only.split(","))
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    if args.smoke:
        print("--smoke: toy sizes and one round; this checks that every section runs, its numbers mean nothing")
    host = load_plugins()
    with tempfile.TemporaryDirectory(prefix="detach-bench-") as tmp:
        work = Path(tmp)
        if args.cache_dir is not None:
            args.cache_dir.mkdir(parents=True, exist_ok=True)  # (a link to a missing folder cannot hold stores)
            (work / "cache").symlink_to(args.cache_dir.resolve(), target_is_directory=True)
        trainer = None
        if "epoch" in only:
            trainer = epoch_section(host, work, sizes, rounds)
        if only & {"read", "step", "loader"} and trainer is None:
            trainer = trainer_for(bench_spec(work / "cache", sizes), host, work / "run_cached")
        if "read" in only:
            read_section(trainer, rounds)
            small = trainer_for(bench_spec(work / "cache", sizes, small=True), host, work / "run_small")
            read_section(small, rounds)  # smaller values: the per-sample overhead weighs more
        if "loader" in only:
            loader_section(trainer, max(2, rounds // 2))
        if "step" in only:
            step_section(trainer, work, rounds)
        if "rss" in only:
            rss_section(host, work, sizes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
