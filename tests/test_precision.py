"""Mixed precision (`runtime.precision`): bf16 training on the CPU, float32 losses under autocast, the device
check, and the uid (a new precision is a new uid, the fp32 default keeps every existing one)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import tiny_spec, train_until_interrupted
from test_detach import batch, detach_model, detach_spec  # noqa: F401 - detach_model is a fixture

from detach_framework.cli import main
from detach_framework.engine import trainer as trainer_module
from detach_framework.engine.checkpoint import load_checkpoint
from detach_framework.engine.model import AlignmentModel
from detach_framework.engine.precision import autocast, check_precision, float32
from detach_framework.errors import UserError
from detach_framework.spec import load_spec
from detach_plugins.detach.temporal import TemporalAligner, TemporalParams
from detach_plugins.methods.imu2clip import InfoNceLoss, InfoNceParams

CPU = torch.device("cpu")
BF16 = {"device": "cpu", "progress": "off", "tensorboard": False, "precision": "bf16"}
# `detach validate examples/quickstart.yaml` as if runtime.precision did not exist: the fp32 default must keep it.
# (Pinned since stage 2 took temporal_weight_after_epochs, which entered the uid; 80bde882cb before it, and
# 66ef958b14 before the uid left out the eval section.)
QUICKSTART_UID = "synthetic_kitchen-small_cnn-detach_sensor_spatial-detach_spatial-detach_temporal-48fbef188c"


def write(tmp_path: Path, spec: dict) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


# -- the uid -------------------------------------------------------------------------------------------------


def test_precision_enters_the_uid_and_fp32_keeps_the_old_one(registry):
    path = Path(__file__).parents[1] / "examples" / "quickstart.yaml"
    quickstart = load_spec(path, registry)
    assert quickstart.runtime.precision == "fp32" and quickstart.uid == QUICKSTART_UID
    explicit = load_spec(path, registry, ["runtime.precision=fp32"])
    assert explicit.uid == QUICKSTART_UID
    uids = {p: load_spec(tiny_spec(), registry, [f"runtime.precision={p}"]).uid for p in ("fp32", "bf16", "fp16")}
    assert len(set(uids.values())) == 3
    assert uids["fp32"] == load_spec(tiny_spec(), registry).uid


# -- what the device supports -----------------------------------------------------------------------------------


def test_fp16_on_cpu_is_one_line_naming_the_field_before_anything_is_built(tmp_path, capsys):
    spec = tiny_spec(runtime={**BF16, "precision": "fp16"})
    run = tmp_path / "run"
    assert main(["train", write(tmp_path, spec), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "runtime.precision: fp16" in err and "cpu" in err and "fp32 or bf16" in err
    assert not run.exists()  # refused before a run directory (or any data) was made


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    with pytest.raises(UserError, match=r"runtime.precision: bf16 .* cuda.*fp32 or fp16"):
        check_precision("bf16", torch.device("cuda"))
    check_precision("fp16", torch.device("cuda"))
    check_precision("bf16", CPU)


# -- float32 where it matters ------------------------------------------------------------------------------------


def test_float32_functions_compute_in_float32_under_autocast():
    @float32
    def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b.T

    a, b = torch.randn(5, 8), torch.randn(6, 8)
    with autocast("bf16", CPU):
        assert (a @ b.T).dtype == torch.bfloat16  # what autocast would do without the decorator
        assert similarity(a, b).dtype == torch.float32
        assert similarity(a.bfloat16(), b).dtype == torch.float32  # low-precision inputs come in as float32
    assert torch.equal(similarity(a, b), a @ b.T)


def test_stage2_loss_under_bf16_autocast_equals_the_fp32_loss(detach_model):  # noqa: F811 - the fixture
    loss = InfoNceLoss(InfoNceParams(temperature=0.1, learnable=False))
    aligner = TemporalAligner(TemporalParams(), detach_model, loss).eval()
    detach_model.eval()
    b = batch()
    with torch.no_grad():
        fp32 = aligner(detach_model, b)["loss"]
        with autocast("bf16", CPU):
            bf16 = aligner(detach_model, b)["loss"]  # encoders in bf16, W and the loss in float32
        assert bf16.dtype == torch.float32
        assert bf16.item() == pytest.approx(fp32.item(), rel=1e-3)
        # On the same embeddings, W and the loss are the float32 computation itself.
        embeddings = (
            detach_model.encode_video(b),
            detach_model.encode_sensor(b),
            aligner.momentum_video(detach_model.video_temporal_input(b)),
            aligner.momentum_sensor(b["sensor"]),
            detach_model.encode_video_temporal(b),
            detach_model.encode_sensor_temporal(b),
        )
        expected_loss, expected_w = aligner.weighted_loss(*embeddings)
        with autocast("bf16", CPU):
            got_loss, got_w = aligner.weighted_loss(*embeddings)
        assert got_w.dtype == torch.float32 and torch.allclose(got_w, expected_w, atol=1e-6)
        assert got_loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("aligner", "loss"),
    [
        ({"name": "global_contrastive"}, {"name": "infonce"}),
        ({"name": "primus", "queue_size": 8}, {"name": "infonce"}),
        ({"name": "comodo"}, None),
        ({"name": "supervised"}, None),
    ],
    ids=["imu2clip", "primus", "comodo", "supervised"],  # evi_mae's own encoder: tests/test_evi_mae.py
)
def test_every_method_loss_is_float32_and_close_under_bf16(registry, aligner, loss):
    stage = {"name": "align", "epochs": 1, "aligner": aligner, "loss": loss}
    spec = load_spec(tiny_spec(stages=[stage]), registry)
    source = SimpleNamespace(channel_names=["a", "b", "c"], class_names=["x", "y", "z"])
    torch.manual_seed(0)
    model = AlignmentModel(spec.model, registry, source, 32, num_train=8)
    stage_loss = registry.build("loss", spec.stages[0].loss) if loss else None
    built = registry.build("aligner", spec.stages[0].aligner, model=model, loss=stage_loss)
    model.eval()
    built.eval()
    torch.manual_seed(1)
    fp32 = built(model, batch())["loss"]
    torch.manual_seed(1)  # the same masks and augmentations
    with autocast("bf16", CPU):
        bf16 = built(model, batch())["loss"]
    assert bf16.dtype == torch.float32 and math.isfinite(bf16.item())
    assert bf16.item() == pytest.approx(fp32.item(), rel=2e-2)  # only the encoders' bf16 rounding differs
    bf16.backward()


# -- end to end ----------------------------------------------------------------------------------------------------


def test_tiny_detach_run_trains_in_bf16_on_the_cpu(tmp_path, registry):
    spec = detach_spec(runtime=BF16)
    run = tmp_path / "run"
    assert main(["train", write(tmp_path, spec), "--run-dir", str(run)]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["stage"] for r in epochs] == ["spatial"] * 3 + ["temporal"] * 2
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in epochs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["uid"] == load_spec(spec, registry).uid
    assert all(math.isfinite(v) for v in summary["metrics"].values())
    reference = tmp_path / "fp32"
    assert main(["train", write(tmp_path, detach_spec()), "--run-dir", str(reference)]) == 0
    lines = (reference / "metrics.jsonl").read_text().splitlines()
    first = next(r for r in map(json.loads, lines) if r["kind"] == "epoch")
    assert first["train_loss"] != epochs[0]["train_loss"]  # autocast was on
    assert first["train_loss"] == pytest.approx(epochs[0]["train_loss"], rel=5e-2)


def test_loss_scaling_clips_unscaled_gradients_and_resumes_exactly(tmp_path, monkeypatch):
    # fp16 loss scaling needs CUDA; the CPU's own GradScaler drives the same trainer code here. A short growth
    # interval makes the scale change during the run, so a resume that lost the scaler's state would show.
    monkeypatch.setattr(
        trainer_module, "grad_scaler", lambda precision, device: torch.amp.GradScaler("cpu", 256.0, growth_interval=2)
    )
    stages = [{**tiny_spec()["stages"][0], "optimizer": {"lr": 1e-3, "grad_clip": 0.5}}]
    spec = write(tmp_path, tiny_spec(deterministic=True, stages=stages))
    straight = tmp_path / "straight"
    assert main(["train", spec, "--run-dir", str(straight)]) == 0
    resumed = tmp_path / "resumed"
    train_until_interrupted(monkeypatch, spec, resumed, at_epoch=2)
    assert main(["train", spec, "--run-dir", str(resumed), "--resume"]) == 0
    x = load_checkpoint(straight / "checkpoints" / "last.pt")
    y = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert x["scaler"]["scale"] > 256.0 and x["scaler"] == y["scaler"]
    for key in x["model"]:
        assert torch.equal(x["model"][key], y["model"][key]), key
