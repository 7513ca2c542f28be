"""One short GPU check: the CUDA path end to end, and step speed at the paper's scale.

    python benchmarks/gpu_check.py --out gpu_check.json            # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --small            # a dry run of the same code here
    python benchmarks/gpu_check.py --device cpu --smoke            # the smallest dry run (the tests run it)

1. CUDA path: trains a tiny DETACH spec through the CLI with runtime.device=cuda (stage 1 with ODC,
   stage 2 with EMA, evaluation) and checks the run directory.
2. Speed at paper scale (examples/detach_paper.yaml's model: 20 frames at 224x224, 256-d): the time of one
   optimizer step of DETACH stage 1 (joint phase), DETACH stage 2 and IMU2CLIP, measured side by side on the
   same random batch, at several batch sizes (an out-of-memory size is reported, not fatal); peak memory.
3. Data: synthetic-kitchen windows per second at 20 x 224 x 224 through a DataLoader with 0 and 8 workers,
   to compare with the model's samples per second.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def cuda_path(device: str, smoke: bool = False) -> dict:
    from conftest import tiny_spec  # the test suite's tiny spec
    from test_detach import DETACH_MODEL, DETACH_STAGES

    spec = tiny_spec(model=DETACH_MODEL, stages=DETACH_STAGES)
    spec["runtime"]["device"] = device
    if smoke:
        spec["data"].update(frames=2, frame_size=16, sensor_length=16)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "detach_framework", "train", str(path), "--run-dir", f"{tmp}/run"],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
        summary_file = Path(tmp) / "run" / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    return {
        "returncode": result.returncode,
        "seconds": round(seconds, 2),
        "stderr_tail": result.stderr[-800:],
        "metrics": summary["metrics"] if summary else None,
    }


def paper_model(registry, small: bool):
    from detach_framework.engine.model import AlignmentModel
    from detach_framework.spec import load_spec

    spec = load_spec(ROOT / "examples" / "detach_paper.yaml", registry)
    channels = 37  # Opportunity++'s ambient channels
    num_train = 4096
    model = AlignmentModel(
        spec.model, registry, SimpleNamespace(channel_names=list(range(channels)), class_names=[]), 128, num_train
    )
    return spec, model, channels, num_train


def time_steps(fn, steps: int, device: torch.device) -> float:
    fn()  # warm-up (cuDNN autotuning, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def step_speed(device: torch.device, small: bool, batches: list[int]) -> list[dict]:
    from detach_framework.plugins import load_plugins

    registry = load_plugins().registry
    spec, base, channels, num_train = paper_model(registry, small)
    frames, size = (4, 64) if small else (20, 224)
    rows = []
    for batch_size in batches:
        row: dict = {"batch": batch_size, "frames": frames, "size": size}
        try:
            generator = torch.Generator(device=device).manual_seed(0)
            batch = {
                "video": torch.randint(
                    0, 255, (batch_size, frames, 3, size, size), dtype=torch.uint8, device=device, generator=generator
                ),
                "sensor": torch.randn(batch_size, channels, 128, device=device, generator=generator),
                "label": torch.randint(0, 15, (batch_size,), device=device, generator=generator),
                "fixture": torch.randint(-1, 7, (batch_size,), device=device, generator=generator),
                "index": torch.arange(batch_size, device=device),
            }
            for method in ("detach_stage1_joint", "detach_stage2", "imu2clip"):
                model = copy.deepcopy(base).to(device)
                aligner, trainable = build_aligner(registry, spec, model, method, device)
                params = [p for m in trainable for p in m.parameters()] + list(aligner.parameters())
                optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4)

                def step(model=model, aligner=aligner, optimizer=optimizer, batch=batch):
                    out = aligner(model, batch)
                    optimizer.zero_grad(set_to_none=True)
                    out["loss"].backward()
                    optimizer.step()
                    aligner.after_optimizer_step(model)  # declared by AlignerBase (a no-op where unused)

                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                seconds = time_steps(step, 2 if small else 5, device)
                row[f"{method}_ms"] = round(seconds * 1000, 1)
                row[f"{method}_samples_per_s"] = round(batch_size / seconds, 1)
                if device.type == "cuda":
                    row[f"{method}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                del model, aligner, optimizer, step  # free this method's memory before the next one
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        except torch.OutOfMemoryError:
            row["error"] = "out of memory"
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def build_aligner(registry, spec, model, method: str, device: torch.device):
    from detach_plugins.detach.spatial import SpatialAligner, SpatialParams
    from detach_plugins.detach.temporal import TemporalAligner, TemporalParams
    from detach_plugins.methods.imu2clip import (
        GlobalContrastiveAligner,
        GlobalContrastiveParams,
        InfoNceLoss,
        InfoNceParams,
    )

    model.train()
    if method == "detach_stage1_joint":
        aligner = SpatialAligner(SpatialParams(warmup_epochs=0, joint_epochs=1, refine_epochs=0), model, None)
        model.clusterer.initialize(torch.randn_like(model.clusterer.bank), seed=0)
        aligner.on_epoch_start(2)  # joint phase, time warp on
    elif method == "detach_stage2":
        loss = InfoNceLoss(InfoNceParams(temperature=0.1, learnable=False))
        aligner = TemporalAligner(TemporalParams(), model, loss)
        model.requires_grad_(False)
        model.eval()
        for module in aligner.trainable_modules(model):
            module.requires_grad_(True).train()
    else:  # IMU2CLIP-style global alignment on the same backbone: a pooled head and the same sensor branch
        from detach_plugins.methods.imu2clip import PooledProjectionHead, PooledProjectionParams

        model.video_head = PooledProjectionHead(PooledProjectionParams(dim=256), model.video_backbone.feature_dim)
        aligner = GlobalContrastiveAligner(GlobalContrastiveParams(), model, InfoNceLoss(InfoNceParams()))
    model.to(device)
    aligner.to(device).train()
    return aligner, aligner.trainable_modules(model)


def data_speed(small: bool, workers: list[int], preset: str = "benchmark") -> list[dict]:
    from torch.utils.data import DataLoader

    from detach_framework.data.settings import DataSettings
    from detach_plugins.datasets.synthetic_kitchen import SyntheticKitchenParams, build_synthetic_kitchen

    frames, size = (4, 64) if small else (20, 224)
    source = build_synthetic_kitchen(
        SyntheticKitchenParams(preset=preset), DataSettings(frames=frames, frame_size=size)
    )
    dataset = source.split("train")
    rows = []
    for num_workers in workers:
        loader = DataLoader(dataset, batch_size=64, shuffle=True, num_workers=num_workers)
        started, seen = time.perf_counter(), 0
        for i, batch in enumerate(loader):
            seen += len(batch["label"])
            if i == 7:
                break
        rows.append({"workers": num_workers, "windows_per_s": round(seen / (time.perf_counter() - started), 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes, for a dry run on the CPU")
    parser.add_argument("--batches", default="32,64,128,256")
    parser.add_argument("--data-workers", default="0,8", help="DataLoader workers to time (empty: skip)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--smoke", action="store_true", help="--small, one batch of 2, tiny data: every part's code in seconds"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.small, args.batches, args.data_workers = True, "2", "0"
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    report = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
    }
    print(json.dumps(report), flush=True)
    report["cuda_path"] = cuda_path(args.device, args.smoke)
    print(json.dumps({"cuda_path": report["cuda_path"]}), flush=True)
    report["steps"] = step_speed(device, args.small, [int(b) for b in args.batches.split(",")])
    workers = [int(w) for w in args.data_workers.split(",") if w.strip()]
    report["data"] = data_speed(args.small, workers, "tiny" if args.smoke else "benchmark") if workers else []
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
