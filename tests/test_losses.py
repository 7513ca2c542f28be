"""The losses of detach_plugins.losses: each equals, bit for bit, the formula its aligner computed inline before
the losses became components; each gathers what it compares across processes; aligners refuse a stage loss of
another calling convention in one line naming the stage and the loss."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import tiny_spec
from test_baselines import FlatSensor
from torch import nn

from detach_framework.cli import main
from detach_framework.contracts import UnusableLoss
from detach_plugins.detach import temporal
from detach_plugins.detach.temporal import TemporalAligner, TemporalParams, negative_weights
from detach_plugins.losses import (
    ComodoDistillationLoss,
    ComodoDistillationParams,
    InfoNceLoss,
    InfoNceParams,
    MaskedReconstructionLoss,
    MaskedReconstructionParams,
    PrimusSslLoss,
    PrimusSslParams,
    infonce,
    require_contrastive,
)
from detach_plugins.methods.comodo import ComodoAligner, ComodoParams
from detach_plugins.methods.imu2clip import GlobalContrastiveAligner, GlobalContrastiveParams
from detach_plugins.methods.primus import PrimusAligner, PrimusParams, augment

# -- the former formulas, as the aligners computed them before (copied, not imported) ----------------------------


def former_weighted_nce(logits, weights):
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    if weights is None:
        return F.cross_entropy(logits, torch.arange(n))
    log_w = torch.where(eye, torch.zeros_like(logits), torch.log(weights.clamp(min=0)))
    return (torch.logsumexp(logits + log_w, dim=1) - logits.diagonal()).mean()


def former_infonce(log_scale, max_log_scale, video, sensor, weights=None, s2v_weights=None):
    video, sensor = F.normalize(video, dim=-1), F.normalize(sensor, dim=-1)
    logits = log_scale.clamp(max=max_log_scale).exp() * video @ sensor.T
    s2v = weights if s2v_weights is None else s2v_weights
    return 0.5 * (former_weighted_nce(logits, weights) + former_weighted_nce(logits.T, s2v))


def former_nt_xent(a, b, temperature):
    z = torch.cat([F.normalize(a, dim=-1), F.normalize(b, dim=-1)])
    logits = (z @ z.T / temperature).masked_fill(torch.eye(len(z), dtype=torch.bool), float("-inf"))
    n = len(a)
    return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))


def former_nnclr(a, b, support, temperature):
    def neighbours(queries):
        queries = F.normalize(queries, dim=-1)
        if len(support) == 0:
            return queries.detach()
        bank = F.normalize(support, dim=-1)
        return bank[(queries @ bank.T).argmax(dim=1)].detach()

    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    targets = torch.arange(len(a))
    forward = F.cross_entropy(neighbours(a) @ b.T / temperature, targets)
    backward = F.cross_entropy(neighbours(b) @ a.T / temperature, targets)
    return 0.5 * (forward + backward)


def former_distillation(teacher, student, bank, teacher_tau, student_tau):
    teacher, student = F.normalize(teacher, dim=-1), F.normalize(student, dim=-1)
    bank = F.normalize(bank, dim=-1).detach()
    target = F.softmax(teacher @ bank.T / teacher_tau, dim=1)
    return -(target * F.log_softmax(student @ bank.T / student_tau, dim=1)).sum(dim=1).mean()


def former_masked_mse(pred, target, mask):
    per_token = (pred - target).pow(2).mean(dim=-1)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1)


def randn(*shape, seed=0, grad=False):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(grad)


def assert_same_value_and_grad(new, old, leaves):
    """Exactly the same value and exactly the same gradients on `leaves`."""
    assert torch.equal(new, old)
    for leaf, new_grad, old_grad in zip(
        leaves, torch.autograd.grad(new, leaves), torch.autograd.grad(old, leaves), strict=True
    ):
        assert torch.equal(new_grad, old_grad), leaf.shape


# -- each loss against its former formula ---------------------------------------------------------------------


@pytest.mark.parametrize("learnable", [True, False], ids=["learnable", "fixed"])
@pytest.mark.parametrize("weighting", ["none", "same", "transposed"])
def test_infonce_equals_the_former_formula(learnable, weighting):
    loss = InfoNceLoss(InfoNceParams(temperature=0.1, learnable=learnable))
    video, sensor = randn(6, 8, seed=1, grad=True), randn(6, 8, seed=2, grad=True)
    weights = None if weighting == "none" else randn(6, 6, seed=3).abs().fill_diagonal_(0.0)
    s2v = weights.T if weighting == "transposed" else None
    new = loss(video, sensor, weights) if s2v is None else loss(video, sensor, weights, s2v_weights=s2v)
    old = former_infonce(loss.log_scale, loss.max_log_scale, video, sensor, weights, s2v)
    assert_same_value_and_grad(new, old, [video, sensor] + ([loss.log_scale] if learnable else []))


@pytest.mark.parametrize("support_rows", [0, 5])
@pytest.mark.parametrize("nearest_neighbour", [True, False], ids=["nnclr", "simclr"])
def test_primus_ssl_terms_equal_the_former_nt_xent_and_nnclr(support_rows, nearest_neighbour):
    loss = PrimusSslLoss(PrimusSslParams(temperature=0.2, nearest_neighbour=nearest_neighbour))
    first, second, support = randn(4, 3, seed=1, grad=True), randn(4, 3, seed=2, grad=True), randn(support_rows, 3)
    terms = loss.terms(first, second, support)
    assert set(terms) == ({"ssl", "nn"} if nearest_neighbour else {"ssl"})
    assert_same_value_and_grad(terms["ssl"], former_nt_xent(first, second, 0.2), [first, second])
    if nearest_neighbour:
        assert_same_value_and_grad(terms["nn"], former_nnclr(first, second, support, 0.2), [first, second])
    assert torch.equal(loss(first, second, support), sum(terms.values()))


def test_comodo_distillation_equals_the_former_formula():
    loss = ComodoDistillationLoss(ComodoDistillationParams(teacher_temperature=0.2, student_temperature=0.07))
    teacher, student, bank = randn(4, 6, seed=1), randn(4, 6, seed=2, grad=True), randn(9, 6, seed=3)
    old = former_distillation(teacher, student, bank, 0.2, 0.07)
    assert_same_value_and_grad(loss(teacher, student, bank), old, [student])
    assert ComodoDistillationLoss(ComodoDistillationParams()).teacher_temperature == ComodoParams().teacher_temperature


def test_masked_reconstruction_equals_the_former_formula():
    loss = MaskedReconstructionLoss(MaskedReconstructionParams())
    pred, target = randn(2, 3, 5, 4, seed=1, grad=True), randn(2, 3, 5, 4, seed=2)
    mask = randn(2, 3, 5, seed=3) > 0.3
    assert_same_value_and_grad(loss(pred, target, mask), former_masked_mse(pred, target, mask), [pred])


# -- the aligners compute what they computed before ------------------------------------------------------------


def flat_model(dim: int = 4) -> SimpleNamespace:
    torch.manual_seed(0)
    video, sensor = nn.Linear(6, dim), FlatSensor(2, 8, dim)
    return SimpleNamespace(
        video_head=SimpleNamespace(out_dim=dim),
        sensor_encoder=sensor,
        encode_video=lambda batch: video(batch["v"]),
        encode_sensor=lambda batch: sensor(batch["sensor"]),
    )


FLAT_BATCH = {"v": randn(5, 6, seed=7), "sensor": randn(5, 2, 8, seed=8)}


def test_global_contrastive_loss_is_the_former_one():
    model, loss = flat_model(), InfoNceLoss(InfoNceParams())
    out = GlobalContrastiveAligner(GlobalContrastiveParams(), model, loss)(model, FLAT_BATCH)
    old = former_infonce(
        loss.log_scale, loss.max_log_scale, model.encode_video(FLAT_BATCH), model.encode_sensor(FLAT_BATCH)
    )
    assert torch.equal(out["loss"], old) and torch.equal(out["temperature"], 1.0 / loss.logit_scale().detach())


def test_primus_total_is_the_former_one():
    model, params = flat_model(), PrimusParams(queue_size=6, projection_dim=3, ssl_temperature=0.2)
    aligner = PrimusAligner(params, model, InfoNceLoss(InfoNceParams())).eval()  # eval: the queue stays as it is
    aligner.queue.push(F.normalize(randn(4, 3, seed=9), dim=-1))
    torch.manual_seed(5)
    out = aligner(model, FLAT_BATCH)
    torch.manual_seed(5)  # the same augmentations
    sensor = FLAT_BATCH["sensor"]
    views = [sensor] + [augment(sensor, params.noise_std, params.scale_std) for _ in range(2)]
    clean, view1, view2 = model.sensor_encoder(torch.cat(views)).split(len(sensor))
    cross = former_infonce(aligner.loss.log_scale, aligner.loss.max_log_scale, model.encode_video(FLAT_BATCH), clean)
    view1, view2 = aligner.projector(view1), aligner.projector(view2)
    total = cross + params.ssl_weight * former_nt_xent(view1, view2, 0.2)
    total = total + params.ssl_weight * former_nnclr(view1, view2, aligner.queue.valid(), 0.2)
    assert torch.equal(out["loss"], total)


@pytest.mark.parametrize("center_teacher", [False, True], ids=["plain", "centred"])
def test_comodo_loss_is_the_former_one(center_teacher):
    model = flat_model()
    aligner = ComodoAligner(ComodoParams(center_teacher=center_teacher), model, None).eval()
    aligner.queue.reset(3, F.normalize(randn(3, 4, seed=9), dim=-1))
    out = aligner(model, FLAT_BATCH)
    teacher = F.normalize(model.encode_video(FLAT_BATCH), dim=-1).detach()
    bank = torch.cat([aligner.queue.valid(), teacher])
    if center_teacher:
        centre = bank.mean(dim=0, keepdim=True)
        teacher, bank = F.normalize(teacher - centre, dim=-1), F.normalize(bank - centre, dim=-1)
    assert torch.equal(out["loss"], former_distillation(teacher, model.encode_sensor(FLAT_BATCH), bank, 0.1, 0.05))


def former_stage2_loss(aligner, z_v, z_s, hm_v, hm_s, h_v, h_s):
    """TemporalAligner.weighted_loss before the loss gathered: every input already the global batch."""
    p = aligner.params
    flags = {"spatial_weight": p.spatial_weight, "temporal_weight": p.temporal_weight}
    weights = negative_weights(z_v, z_s, hm_v, hm_s, lambda_hard=p.lambda_hard, **flags)
    u_v = torch.cat([F.normalize(z_v, dim=-1), F.normalize(h_v, dim=-1)], dim=-1)
    u_s = torch.cat([F.normalize(z_s, dim=-1), F.normalize(h_s, dim=-1)], dim=-1)
    s2v = weights.T if p.s2v_weights == "transposed" else None
    return former_infonce(aligner.loss.log_scale, aligner.loss.max_log_scale, u_v, u_s, weights, s2v), weights


def stage2_embeddings(n: int = 5):
    return [randn(n, 6, seed=seed, grad=seed >= 4) for seed in range(6)]  # z_v, z_s, hm_v, hm_s, h_v, h_s


def stage2_aligner(s2v_weights: str) -> TemporalAligner:
    model = SimpleNamespace(decomposed=True, video_temporal_head=nn.Identity(), sensor_temporal_encoder=nn.Identity())
    loss = InfoNceLoss(InfoNceParams(temperature=0.1, learnable=False))
    return TemporalAligner(TemporalParams(s2v_weights=s2v_weights), model, loss)


@pytest.mark.parametrize("s2v_weights", ["same", "transposed"])
def test_stage2_weighted_loss_is_the_former_one(s2v_weights):
    aligner, embeddings = stage2_aligner(s2v_weights), stage2_embeddings()
    new, new_weights = aligner.weighted_loss(*embeddings)
    old, old_weights = former_stage2_loss(aligner, *embeddings)
    assert torch.equal(new_weights, old_weights)
    assert_same_value_and_grad(new, old, embeddings[4:])


# -- each loss gathers what it compares -----------------------------------------------------------------------


def two_processes(tensor: torch.Tensor) -> torch.Tensor:
    """A stand-in for the all-gather of two processes: the other process holds this one's rows in reverse
    order, so row-wise steps (normalising, concatenating) give the same rows whether before or after it."""
    return torch.cat([tensor, tensor.flip(0)])


@pytest.mark.parametrize("s2v_weights", ["same", "transposed"])
def test_losses_gather_the_global_batch_and_stage2_weights_it(monkeypatch, s2v_weights):
    monkeypatch.setattr(infonce, "gather_with_grad", two_processes)
    monkeypatch.setattr(temporal, "gather", lambda tensor: two_processes(tensor).detach())
    loss = InfoNceLoss(InfoNceParams())
    video, sensor = randn(4, 8, seed=1), randn(4, 8, seed=2)
    global_video, global_sensor = two_processes(video), two_processes(sensor)
    old = former_infonce(loss.log_scale, loss.max_log_scale, global_video, global_sensor)
    assert torch.equal(loss(video, sensor), old)
    aligner, embeddings = stage2_aligner(s2v_weights), stage2_embeddings(4)
    new, weights = aligner.weighted_loss(*embeddings)
    old, global_weights = former_stage2_loss(aligner, *(two_processes(e) for e in embeddings))
    assert weights.shape == (8, 8) and torch.equal(weights, global_weights)
    assert torch.equal(new, old)


# -- a stage loss the aligner cannot use ----------------------------------------------------------------------


def test_pair_aligners_refuse_a_loss_of_another_convention_and_trust_plain_modules():
    require_contrastive("primus", nn.MSELoss())  # any module of the contrastive call, as before
    require_contrastive("primus", InfoNceLoss(InfoNceParams()))
    with pytest.raises(UnusableLoss, match="aligner primus calls its stage loss on paired video and sensor"):
        require_contrastive("primus", MaskedReconstructionLoss(MaskedReconstructionParams()))
    with pytest.raises(UnusableLoss, match="ComodoDistillationLoss does not take"):
        PrimusAligner(PrimusParams(), flat_model(), ComodoDistillationLoss(ComodoDistillationParams()))


def test_comodo_takes_a_distillation_stage_loss_or_builds_one_at_its_temperatures():
    model = flat_model()
    built = ComodoAligner(ComodoParams(teacher_temperature=0.3, student_temperature=0.02), model, None).loss
    assert isinstance(built, ComodoDistillationLoss)
    assert (built.teacher_temperature, built.student_temperature) == (0.3, 0.02)
    stage_loss = ComodoDistillationLoss(ComodoDistillationParams(teacher_temperature=0.2))
    assert ComodoAligner(ComodoParams(), model, stage_loss).loss is stage_loss
    with pytest.raises(UnusableLoss, match="comodo's teacher_temperature 0.3 would be ignored: set it in the stage"):
        ComodoAligner(ComodoParams(teacher_temperature=0.3), model, stage_loss)
    with pytest.raises(UnusableLoss, match="InfoNceLoss does not take: use a distillation loss"):
        ComodoAligner(ComodoParams(), model, InfoNceLoss(InfoNceParams()))


COMODO_STAGE = {"name": "distill", "epochs": 1, "aligner": {"name": "comodo"}, "optimizer": {"lr": 3e-4}}
GLOBAL_STAGE = {"name": "align", "epochs": 1, "aligner": {"name": "global_contrastive"}, "optimizer": {"lr": 1e-3}}


@pytest.mark.parametrize(
    ("stage", "loss", "message"),
    [
        (GLOBAL_STAGE, "comodo_distillation", "aligner global_contrastive calls its stage loss on paired video"),
        (COMODO_STAGE, "infonce", "aligner comodo distils the teacher's similarities, which InfoNceLoss does not"),
        (COMODO_STAGE, "primus_ssl", "aligner comodo distils the teacher's similarities, which PrimusSslLoss"),
    ],
    ids=["global_contrastive-comodo_distillation", "comodo-infonce", "comodo-primus_ssl"],
)
def test_a_stage_loss_the_aligner_cannot_use_is_one_line_naming_stage_and_loss(
    tmp_path: Path, capsys, stage, loss, message
):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(stages=[{**stage, "loss": {"name": loss}}])))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"detach train: error: stages.0.loss '{loss}' of stage '{stage['name']}': {message}")


def test_comodo_trains_with_its_loss_named_in_the_stage(tmp_path: Path):
    stage = {**COMODO_STAGE, "loss": {"name": "comodo_distillation", "teacher_temperature": 0.2}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(stages=[stage], eval={"evaluators": [{"name": "retrieval"}]})))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 0
