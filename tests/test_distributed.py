"""Two gloo processes on the CPU: one step with per-rank batch B equals one process with batch 2B."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))

from conftest import tiny_spec  # noqa: E402
from test_detach import DETACH_MODEL  # noqa: E402

B = 4  # per-rank batch


def build(method: str):
    from detach_framework.engine.model import AlignmentModel
    from detach_framework.plugins import load_plugins
    from detach_framework.spec import load_spec

    registry = load_plugins().registry
    spec = load_spec(tiny_spec(model=DETACH_MODEL), registry)
    torch.manual_seed(0)
    model = AlignmentModel(
        spec.model, registry, SimpleNamespace(channel_names=["a", "b", "c"], class_names=[]), 32, num_train=2 * B
    )
    loss = registry.build("loss", SimpleNamespace(name="infonce", temperature=0.1, learnable=method == "infonce"))
    if method == "infonce":
        aligner = registry.build("aligner", SimpleNamespace(name="global_contrastive"), model=model, loss=loss)
        trainable = [model.video_backbone, model.video_head, model.sensor_encoder]
    else:
        aligner = registry.build(
            "aligner",
            SimpleNamespace(
                name="detach_temporal",
                momentum=0.999,
                lambda_hard=3.0,
                spatial_weight=True,
                temporal_weight=True,
                temporal_similarity="cross_modal",
            ),
            model=model,
            loss=loss,
        )
        trainable = aligner.trainable_modules(model)
    model.eval()  # batch-norm in eval: its batch statistics would differ between B and 2B by design
    aligner.eval()
    return model, aligner, trainable


def global_batch():
    generator = torch.Generator().manual_seed(1)
    return {
        "video": torch.randint(0, 255, (2 * B, 4, 3, 32, 32), dtype=torch.uint8, generator=generator),
        "sensor": torch.randn(2 * B, 3, 32, generator=generator),
        "label": torch.tensor([1, 1, 2, 0, 3, 1, 2, 4]),
        "fixture": torch.tensor([0, 0, 0, -1, 1, 0, 0, 2]),
        "index": torch.arange(2 * B),
    }


def one_step(model, aligner, trainable, batch, step_module=None):
    out = (step_module or (lambda b: aligner(model, b)))(batch)
    out["loss"].backward()
    grads = {
        f"{i}.{name}": p.grad.clone()
        for i, m in enumerate(trainable)
        for name, p in m.named_parameters()
        if p.grad is not None
    }
    return float(out["loss"].detach()), grads


def worker(rank: int, world: int, init_file: str, method: str, out_dir: str) -> None:
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from detach_framework.engine.distributed import wrap_step

    model, aligner, trainable = build(method)
    step = wrap_step(model, aligner, torch.device("cpu"))
    local = {k: v[rank * B : (rank + 1) * B] for k, v in global_batch().items()}
    loss, grads = one_step(model, aligner, trainable, local, step)
    torch.save({"loss": loss, "grads": grads}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("method", ["infonce", "stage2_weighted"])
def test_two_processes_equal_one_process_on_the_global_batch(tmp_path, method):
    mp.start_processes(worker, args=(2, str(tmp_path / "init"), method, str(tmp_path)), nprocs=2, start_method="spawn")
    model, aligner, trainable = build(method)
    loss, grads = one_step(model, aligner, trainable, global_batch())
    assert grads
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["loss"] == pytest.approx(loss, abs=1e-5)
        assert result["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            assert torch.allclose(result["grads"][name], grad, atol=1e-5), name


TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node=2",
    "-m",
    "detach_framework",
]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=timeout, env=ONE_THREAD)


def test_two_process_detach_run_keeps_ranks_in_sync_and_resumes(tmp_path):
    import json
    import signal
    import time

    import yaml
    from test_detach import detach_spec

    spec = detach_spec()
    spec["stages"][0]["epochs"] = 3
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = tmp_path / "run"
    # Start, kill the whole launcher once the first epoch is checkpointed, then resume.
    command = [*TORCHRUN, "train", str(path), "--run-dir", str(run)]
    process = subprocess.Popen(
        command,
        env=ONE_THREAD,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not (run / "checkpoints" / "last.pt").is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (run / "checkpoints" / "last.pt").is_file()
    assert not (run / "summary.json").is_file()
    result = torchrun("train", str(path), "--run-dir", str(run), "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert [(r["stage"], r["epoch"]) for r in epochs] == [
        ("spatial", 1),
        ("spatial", 2),
        ("spatial", 3),
        ("temporal", 1),
        ("temporal", 2),
    ]
    # After every ODC epoch the bank, labels, centroids and parameters are identical on both ranks.
    assert all(r["world_size"] == 2 and r["ranks_agree"] for r in epochs)
    assert (run / "summary.json").is_file()
