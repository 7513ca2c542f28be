"""Adapted baselines (PRIMUS, COMODO) and the reference rows against hand computations, plus one tiny
end-to-end training of each through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import tiny_spec, train_until_interrupted
from torch import nn

from detach_framework.cli import main
from detach_framework.engine.checkpoint import load_checkpoint
from detach_framework.engine.rundir import RunDirectory
from detach_framework.engine.session import Session
from detach_framework.engine.trainer import Trainer
from detach_framework.spec import load_spec
from detach_plugins.methods.comodo import ComodoAligner, ComodoParams, distillation_loss
from detach_plugins.methods.primus import PrimusAligner, PrimusParams, nearest_neighbours, nnclr_loss, nt_xent
from detach_plugins.methods.queues import FeatureQueue


def write(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def cross_entropy(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(x) for x in logits)) - logits[target]


# -- the queue -----------------------------------------------------------------------------------------


def test_queue_is_fifo_of_fixed_size_and_resizes_on_load():
    queue = FeatureQueue(4, 2)
    assert queue.valid().shape == (0, 2)
    rows = torch.arange(14.0).view(7, 2)
    queue.push(rows[:3])
    assert torch.equal(queue.valid(), rows[:3]) and int(queue.filled) == 3
    queue.push(rows[3:5])  # 5 pushed into 4 places: the oldest (row 0) leaves
    assert torch.equal(queue.valid(), rows[1:5]) and queue.size == 4
    queue.push(torch.cat([rows, rows[:1]]))  # more than the size at once: only the newest 4 stay
    assert torch.equal(queue.valid(), torch.cat([rows[4:], rows[:1]]))
    other = FeatureQueue(1, 2)  # e.g. COMODO's placeholder before the training set size is known
    other.load_state_dict(queue.state_dict())
    assert other.size == 4 and torch.equal(other.valid(), queue.valid())
    other.reset(3, rows[:2])
    assert other.size == 3 and torch.equal(other.valid(), rows[:2])


# -- PRIMUS ----------------------------------------------------------------------------------------------


def test_nt_xent_hand_computation():
    a = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
    b = [[0.8, 0.6], [0.0, 1.0], [-1.0, 0.5]]
    tau = 0.5
    z = [unit(v) for v in a + b]
    n = len(a)
    losses = []
    for i in range(2 * n):
        others = [j for j in range(2 * n) if j != i]
        logits = [dot(z[i], z[j]) / tau for j in others]
        losses.append(cross_entropy(logits, others.index((i + n) % (2 * n))))
    expected = sum(losses) / len(losses)
    assert float(nt_xent(torch.tensor(a), torch.tensor(b), tau)) == pytest.approx(expected, rel=1e-5)


def test_nearest_neighbour_positive_selection_uses_cosine():
    support = [[10.0, 0.0], [0.0, 1.0], [0.6, 0.8]]  # row 0's large norm must not matter
    queries = [[0.5, 0.6], [1.0, 0.1], [-0.1, 1.0]]
    picked = nearest_neighbours(torch.tensor(queries), torch.tensor(support))
    assert torch.allclose(picked, torch.tensor([unit(support[i]) for i in (2, 0, 1)]))
    empty = nearest_neighbours(torch.tensor(queries), torch.zeros(0, 2))  # first step: the view itself
    assert torch.allclose(empty, torch.tensor([unit(q) for q in queries]))


def test_nnclr_loss_hand_computation():
    support = [[10.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, -1.0]]
    a = [[0.5, 0.6], [1.0, 0.1], [-0.1, 1.0]]  # neighbours 2, 0, 1
    b = [[0.9, 0.1], [0.2, 1.0], [-0.9, -1.0]]  # neighbours 0, 1, 3
    tau = 0.2
    nn_a = [unit(support[i]) for i in (2, 0, 1)]
    nn_b = [unit(support[i]) for i in (0, 1, 3)]
    ua, ub = [unit(v) for v in a], [unit(v) for v in b]
    forward = sum(cross_entropy([dot(nn_a[i], ub[j]) / tau for j in range(3)], i) for i in range(3)) / 3
    backward = sum(cross_entropy([dot(nn_b[i], ua[j]) / tau for j in range(3)], i) for i in range(3)) / 3
    got = nnclr_loss(torch.tensor(a), torch.tensor(b), torch.tensor(support), tau)
    assert float(got) == pytest.approx(0.5 * (forward + backward), rel=1e-5)


class FlatSensor(nn.Module):
    def __init__(self, channels: int, length: int, dim: int) -> None:
        super().__init__()
        self.out_dim = dim
        self.linear = nn.Linear(channels * length, dim)

    def forward(self, sensor: torch.Tensor) -> torch.Tensor:
        return self.linear(sensor.flatten(1))


def test_primus_fills_its_queue_only_in_training():
    sensor = FlatSensor(2, 8, 4)
    model = SimpleNamespace(
        video_head=SimpleNamespace(out_dim=4),
        sensor_encoder=sensor,
        encode_video=lambda batch: batch["v"],
        encode_sensor=lambda batch: sensor(batch["sensor"]),
    )
    aligner = PrimusAligner(PrimusParams(queue_size=5, projection_dim=3), model, nn.MSELoss())  # any cross term
    batch = {"v": torch.randn(3, 4), "sensor": torch.randn(3, 2, 8)}
    out = aligner(model, batch)
    assert int(aligner.queue.filled) == 3 and {"cross", "ssl", "nn"} <= set(out)
    assert torch.allclose(aligner.queue.valid().norm(dim=1), torch.ones(3))
    aligner.eval()
    aligner(model, batch)
    assert int(aligner.queue.filled) == 3
    aligner.train()
    aligner(model, batch)
    assert int(aligner.queue.filled) == 5


# -- COMODO ----------------------------------------------------------------------------------------------


def test_comodo_distillation_loss_hand_computation_with_two_temperatures():
    teacher = [[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]]
    student = [[0.8, 0.6], [1.0, 1.0], [-0.5, 1.0]]
    bank = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2], [0.7, 0.7]]
    tau_t, tau_s = 0.1, 0.05
    ub = [unit(q) for q in bank]
    total = 0.0
    for t, s in zip(teacher, student, strict=True):
        lt = [dot(unit(t), q) / tau_t for q in ub]
        ls = [dot(unit(s), q) / tau_s for q in ub]
        pt = [math.exp(x) / sum(math.exp(y) for y in lt) for x in lt]
        log_ps = [x - math.log(sum(math.exp(y) for y in ls)) for x in ls]
        total -= sum(p * q for p, q in zip(pt, log_ps, strict=True))
    got = distillation_loss(torch.tensor(teacher), torch.tensor(student), torch.tensor(bank), tau_t, tau_s)
    assert float(got) == pytest.approx(total / 3, rel=1e-5)
    swapped = distillation_loss(torch.tensor(teacher), torch.tensor(student), torch.tensor(bank), tau_s, tau_t)
    assert float(swapped) != pytest.approx(total / 3, rel=1e-3)


def test_comodo_bank_is_queue_plus_batch_and_queue_is_fifo():
    model = SimpleNamespace(
        video_head=SimpleNamespace(out_dim=2),
        sensor_encoder=SimpleNamespace(out_dim=2),
        encode_video=lambda batch: batch["v"],
        encode_sensor=lambda batch: batch["s"],
    )
    aligner = ComodoAligner(ComodoParams(), model, None)
    queued = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    aligner.queue.reset(2, queued)
    batch = {"v": torch.tensor([[3.0, 4.0], [-1.0, 0.0], [1.0, 1.0]]), "s": torch.randn(3, 2)}
    target = torch.nn.functional.normalize(batch["v"], dim=1)
    aligner.eval()  # validation: the loss reads the queue but does not fill it
    expected = distillation_loss(target, batch["s"], torch.cat([queued, target]), 0.1, 0.05)
    assert float(aligner(model, batch)["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert torch.equal(aligner.queue.valid(), queued)
    aligner.train()
    aligner(model, batch)
    assert torch.allclose(aligner.queue.valid(), target[1:])  # newest 2 of the 5, oldest first
    centred = ComodoAligner(ComodoParams(center_teacher=True), model, None).eval()
    centred.queue.reset(2, queued)
    bank = torch.cat([queued, target])
    mean = bank.mean(dim=0, keepdim=True)
    expected = distillation_loss(target - mean, batch["s"], bank - mean, 0.1, 0.05)  # the loss normalises
    assert float(centred(model, batch)["loss"]) == pytest.approx(float(expected), rel=1e-6)


COMODO_STAGE = {
    "name": "distill",
    "epochs": 2,
    "aligner": {"name": "comodo", "queue_ratio": 0.1},
    "optimizer": {"lr": 3e-4, "warmup_fraction": 0.5},
}


def test_comodo_teacher_stays_frozen_and_warmup_and_queue_are_checkpointed(tmp_path, host):
    spec = load_spec(tiny_spec(stages=[COMODO_STAGE]), host.registry)
    trainer = Trainer(Session.from_spec(spec, host), RunDirectory.prepare(tmp_path / "run"))
    teacher = ("video_backbone.", "video_head.")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    frozen = [k for k in before if k.startswith(teacher)]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen), "the teacher changed"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("sensor_encoder."))
    state = load_checkpoint(trainer.run.checkpoints / "last.pt")
    size = round(0.1 * len(trainer.train_set))
    assert state["aligner"]["queue.features"].shape[0] == size and int(state["aligner"]["queue.filled"]) == size
    steps = state["global_step"]
    assert steps == 2 * (len(trainer.train_set) // 16) and state["scheduler"]["last_epoch"] == steps
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-4)  # warm-up over by now
    # The warm-up itself: half of the stage's steps, linear from lr / W up to lr.
    _, optimizer, _ = trainer.build_stage(0)
    warmup = round(0.5 * steps)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        trainer.scheduler.step()
    assert seen == pytest.approx([3e-4 * min(1.0, (k + 1) / warmup) for k in range(steps)])


# -- end to end through the CLI -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stages",
    [
        [{"name": "align", "epochs": 1, "aligner": {"name": "primus", "queue_size": 64}, "loss": {"name": "infonce"}}],
        [{"name": "ceiling", "epochs": 1, "aligner": {"name": "supervised"}}],
        [],
    ],
    ids=["primus", "supervised", "floor"],
)
def test_method_trains_and_evaluates_through_the_cli(tmp_path, stages):
    spec = tiny_spec(stages=stages)
    run = tmp_path / "run"
    assert main(["train", write(tmp_path, spec), "--run-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["metrics"]["weighted_f1"] <= 1
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    if not stages:  # the floor: the initial weights were checkpointed and evaluated
        assert state["stage"] is None and summary["checkpoint"] == "last.pt"
    else:
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1]


def test_comodo_through_the_cli_resumes_exactly(tmp_path, monkeypatch):
    spec = write(tmp_path, tiny_spec(deterministic=True, stages=[COMODO_STAGE]))
    straight = tmp_path / "straight"
    assert main(["train", spec, "--run-dir", str(straight)]) == 0
    resumed = tmp_path / "resumed"
    train_until_interrupted(monkeypatch, spec, resumed, at_epoch=2)
    assert main(["train", spec, "--run-dir", str(resumed), "--resume"]) == 0
    x = load_checkpoint(straight / "checkpoints" / "last.pt")
    y = load_checkpoint(resumed / "checkpoints" / "last.pt")
    for part in ("model", "aligner"):
        for key in x[part]:
            assert torch.equal(x[part][key], y[part][key]), (part, key)
    assert x["scheduler"]["last_epoch"] == y["scheduler"]["last_epoch"]
