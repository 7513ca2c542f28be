"""DETACH against hand computations: ODC mechanics, stage-1 losses, stage-2 weights, freezing and EMA."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import tiny_spec, train_until_interrupted
from torch import nn

from detach_framework.cli import main
from detach_framework.engine.checkpoint import load_checkpoint
from detach_framework.engine.model import AlignmentModel
from detach_framework.errors import PluginError
from detach_framework.spec import load_spec
from detach_plugins.detach.odc import OdcParams, OnlineDeepClustering
from detach_plugins.detach.spatial import SpatialAligner, SpatialParams, weighted_cluster_loss
from detach_plugins.detach.temporal import TemporalAligner, TemporalParams, negative_types, negative_weights
from detach_plugins.methods.imu2clip import InfoNceLoss, InfoNceParams

DETACH_MODEL = {
    "video_backbone": {"name": "small_cnn", "channels": [8, 8, 16, 16]},
    "video_head": {"name": "detach_spatial_head", "dim": 16, "head_channels": 8},
    "sensor_encoder": {"name": "detach_sensor_spatial", "dim": 16},
    "video_temporal_head": {"name": "detach_temporal_head", "dim": 16, "channels": [4, 8, 8]},
    "sensor_temporal_encoder": {"name": "detach_sensor_temporal", "dim": 16, "gru_hidden": 8},
    "clusterer": {"name": "odc", "k": 3, "min_cluster_size": 2},
}
DETACH_STAGES = [
    {
        "name": "spatial",
        "epochs": 3,
        "optimizer": {"lr": 1e-3},
        "aligner": {"name": "detach_spatial", "warmup_epochs": 1, "joint_epochs": 1, "refine_epochs": 1},
    },
    {
        "name": "temporal",
        "epochs": 2,
        "optimizer": {"lr": 1e-3},
        "aligner": {"name": "detach_temporal"},
        "loss": {"name": "infonce", "temperature": 0.1, "learnable": False},
    },
]


def detach_spec(**changes):
    return tiny_spec(model=DETACH_MODEL, stages=DETACH_STAGES, **changes)


def odc(n=12, dim=4, **params):
    return OnlineDeepClustering(OdcParams(**{"k": 3, "min_cluster_size": 2, **params}), n, dim)


# -- ODC ----------------------------------------------------------------------------------------------


def test_class_weights_formula_and_renormalisation():
    # The raising of small weights and empty clusters: tests/test_faithful_formulas.py.
    clusterer = odc(n=130, k=3)
    clusterer.labels.copy_(torch.tensor([0] * 100 + [1] * 25 + [2] * 5))
    raw = [100**-0.5, 25**-0.5, 5**-0.5]  # 0.1, 0.2, 0.447: max/min 4.47 <= 10, nothing raised
    expected = [w * 3 / sum(raw) for w in raw]
    assert clusterer.class_weights().tolist() == pytest.approx(expected, rel=1e-6)
    clusterer.labels.copy_(torch.tensor([0] * 129 + [2]))  # ratio 11.4 > 10: the small weight is raised
    weights = clusterer.class_weights()
    assert float(weights.max() / weights.min()) == pytest.approx(10.0)
    assert float(weights.sum()) == pytest.approx(3.0)


def test_weighted_cluster_loss_hand_computation():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    weights = torch.tensor([0.5, 1.0, 2.0])
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = 1 / (2 + math.e)
    expected = -(0.5 * math.log(p0) + 2.0 * math.log(p1)) / 2
    assert weighted_cluster_loss(logits, labels, weights).item() == pytest.approx(expected, rel=1e-6)


def test_kmeans_init_is_seeded_and_bank_update_follows_formula():
    features = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    a, b, c = odc(n=30), odc(n=30), odc(n=30)
    a.initialize(features, seed=5)
    b.initialize(features, seed=5)
    c.initialize(features, seed=6)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    assert torch.allclose(a.bank, F.normalize(features, dim=1))
    new = torch.randn(2, 4)
    old = a.bank[[3, 7]].clone()
    a.update_bank(torch.tensor([3, 7]), new)
    expected = F.normalize(0.1 * old + 0.9 * F.normalize(new, dim=1), dim=1)
    assert torch.allclose(a.bank[[3, 7]], expected, atol=1e-6)
    cos = expected @ F.normalize(a.centroids, dim=1).T
    assert a.labels[[3, 7]].tolist() == cos.argmax(dim=1).tolist()


def test_dissolve_and_split_leave_k_non_empty_clusters():
    clusterer = odc(n=40, dim=2, k=3, min_cluster_size=5)
    angles = torch.cat([torch.full((36,), 0.0) + torch.linspace(-0.5, 0.5, 36), torch.full((4,), 2.0)])
    clusterer.bank.copy_(torch.stack([angles.cos(), angles.sin()], dim=1))
    clusterer.labels.copy_(torch.tensor([0] * 36 + [1] * 4))  # cluster 1 too small, cluster 2 empty
    clusterer.update_centroids()
    sizes = clusterer.sizes().tolist()
    assert all(size > 0 for size in sizes) and sum(sizes) == 40
    # The dissolved samples went to the nearest other centroid and empty clusters took farthest halves.
    assert sizes[0] >= 10


def test_confidence_matches_direct_per_cluster_quantile():
    clusterer = odc(n=50, dim=3)
    generator = torch.Generator().manual_seed(1)
    clusterer.bank.copy_(F.normalize(torch.randn(50, 3, generator=generator), dim=1))
    clusterer.labels.copy_(torch.randint(0, 3, (50,), generator=generator))
    clusterer.centroids.copy_(F.normalize(torch.randn(3, 3, generator=generator), dim=1))
    confident = clusterer.confidence(0.75).numpy()
    bank, labels, centroids = clusterer.bank.numpy(), clusterer.labels.numpy(), clusterer.centroids.numpy()
    for k in range(3):
        members = labels == k
        distance = 1 - bank[members] @ centroids[k]
        assert (confident[members] == (distance < np.quantile(distance, 0.75))).all()


def test_time_warp_identity_at_zero_and_keeps_shape():
    clusterer = odc(time_warp=0.2)
    x = torch.randn(3, 2, 16)
    warped = clusterer.augment(x, torch.Generator().manual_seed(0))
    assert warped.shape == x.shape and not torch.allclose(warped, x)
    assert torch.equal(odc(time_warp=0.0).augment(x), x)
    # On a ramp x[t] = t, linear interpolation returns the warped position itself.
    ramp = torch.arange(16.0).expand(1, 1, 16)
    fraction = torch.rand(1, 1, generator=torch.Generator().manual_seed(4))
    offset = 0.2 * 16 * torch.sin(torch.linspace(0, 4 * math.pi, 16))
    expected = (torch.arange(16.0) + fraction * offset).clamp(0, 15)
    assert torch.allclose(clusterer.augment(ramp, torch.Generator().manual_seed(4))[0], expected, atol=1e-5)


# -- stage 2 weights and loss ---------------------------------------------------------------------------


def test_negative_weights_hand_computation():
    z_v = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    z_s = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    hm_v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    hm_s = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, -1.0]])
    w = negative_weights(z_v, z_s, hm_v, hm_s, lambda_hard=3.0)
    # (0, 1): S_sp = max(relu(0.6), relu(1.0)) = 1; W_sp = 3; S_tm = relu(cos(hm_v0, hm_s1)) = 1; W_tm = 0.
    assert w[0, 1].item() == pytest.approx(0.0, abs=1e-6)
    # (1, 0): S_sp = 1; S_tm = relu(cos(hm_v1, hm_s0)) = 0.6 -> W = 3 * (1 - 0.6) = 1.2
    assert w[1, 0].item() == pytest.approx(1.2, rel=1e-6)
    # (0, 2): S_sp = max(relu(0), relu(-1)) = 0 -> W = 1 (easy negative)
    assert w[0, 2].item() == pytest.approx(1.0, rel=1e-6)
    # (1, 2): S_sp = max(0.8, 0) = 0.8; W_sp = 2.6; S_tm = relu(cos(hm_v1, hm_s2)) = relu(-1) = 0 -> 2.6
    assert w[1, 2].item() == pytest.approx(2.6, rel=1e-6)
    assert torch.all(w.diagonal() == 0)
    intra = negative_weights(z_v, z_s, hm_v, hm_s, lambda_hard=3.0, temporal_similarity="intra_modal")
    # (1, 0): S_tm = relu((cos(hm_v1, hm_v0) + cos(hm_s1, hm_s0)) / 2) = (0 + 0.8) / 2 = 0.4 -> 3 * 0.6
    assert intra[1, 0].item() == pytest.approx(1.8, rel=1e-6)
    no_sp = negative_weights(z_v, z_s, hm_v, hm_s, lambda_hard=3.0, spatial_weight=False)
    assert no_sp[1, 0].item() == pytest.approx(1 - 0.6, rel=1e-6)
    no_tm = negative_weights(z_v, z_s, hm_v, hm_s, lambda_hard=3.0, temporal_weight=False)
    assert no_tm[0, 1].item() == pytest.approx(3.0, rel=1e-6)
    plain = negative_weights(z_v, z_s, hm_v, hm_s, lambda_hard=3.0, spatial_weight=False, temporal_weight=False)
    assert torch.equal(plain, torch.ones(3, 3).fill_diagonal_(0))


def test_negative_types():
    labels = torch.tensor([1, 1, 2, 3, 0])
    fixtures = torch.tensor([0, 0, 0, 1, -1])
    types = negative_types(labels, fixtures)
    assert types["false"][0, 1] and types["hard"][0, 2] and types["easy"][0, 3]
    assert not any(t[4].any() or t[:, 4].any() for t in types.values())  # Null windows are untyped


@pytest.fixture(scope="module")
def detach_model(registry):
    spec = load_spec(detach_spec(), registry)
    torch.manual_seed(0)
    model = AlignmentModel(
        spec.model, registry, SimpleNamespace(channel_names=["a", "b", "c"], class_names=[]), 32, num_train=8
    )
    return model


def batch(n=4):
    generator = torch.Generator().manual_seed(3)
    return {
        "video": torch.randint(0, 255, (n, 4, 3, 32, 32), dtype=torch.uint8, generator=generator),
        "sensor": torch.randn(n, 3, 32, generator=generator),
        "label": torch.tensor([1, 1, 2, 0])[:n],
        "fixture": torch.tensor([0, 0, 0, -1])[:n],
        "index": torch.arange(n),
    }


def test_stage2_without_weights_equals_symmetric_infonce(detach_model):
    loss = InfoNceLoss(InfoNceParams(temperature=0.1, learnable=False))
    plain = TemporalAligner(TemporalParams(spatial_weight=False, temporal_weight=False), detach_model, loss)
    detach_model.eval()
    plain.eval()
    b = batch()
    out = plain(detach_model, b)["loss"]
    with torch.no_grad():
        u_v = torch.cat(
            [
                F.normalize(detach_model.encode_video(b), dim=-1),
                F.normalize(detach_model.encode_video_temporal(b), dim=-1),
            ],
            dim=-1,
        )
        u_s = torch.cat(
            [
                F.normalize(detach_model.encode_sensor(b), dim=-1),
                F.normalize(detach_model.encode_sensor_temporal(b), dim=-1),
            ],
            dim=-1,
        )
        logits = F.normalize(u_v, dim=-1) @ F.normalize(u_s, dim=-1).T / 0.1
        target = torch.arange(4)
        expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert out.item() == pytest.approx(expected.item(), rel=1e-5)


def test_temporal_weight_after_epochs_trains_plain_infonce_first(detach_model):
    loss = InfoNceLoss(InfoNceParams(temperature=0.1, learnable=False))
    late = TemporalAligner(TemporalParams(temporal_weight_after_epochs=1), detach_model, loss)
    paper = TemporalAligner(TemporalParams(), detach_model, loss)
    plain = TemporalAligner(TemporalParams(spatial_weight=False, temporal_weight=False), detach_model, loss)
    detach_model.eval()
    b = batch()
    for aligner in (late, paper, plain):
        aligner.eval()
        aligner.on_epoch_start(1)
    first = late(detach_model, b)
    assert first["w_mean"].item() == 1.0 and first["loss"].item() == plain(detach_model, b)["loss"].item()
    late.on_epoch_start(2)
    weighted, reference = late(detach_model, b), paper(detach_model, b)
    assert weighted["w_mean"].item() != 1.0
    assert weighted["loss"].item() == reference["loss"].item() and weighted["w_mean"] == reference["w_mean"]


def test_stage2_logs_mean_s_tm_per_negative_type(detach_model):
    """S_tm of the momentum encoders, averaged per ground-truth negative type: the analysis of whether S_tm tells
    false negatives (same fixture, same action) from hard ones (same fixture, other action)."""
    aligner = TemporalAligner(TemporalParams(), detach_model, InfoNceLoss(InfoNceParams(temperature=0.1)))
    aligner.train()
    aligner.on_epoch_start(1)
    b = batch()  # labels [1, 1, 2, 0], fixtures [0, 0, 0, unknown]
    aligner(detach_model, b)
    record = aligner.on_epoch_end(detach_model)
    with torch.no_grad():
        hm_v = F.normalize(aligner.momentum_video(detach_model.video_temporal_input(b)), dim=-1)
        hm_s = F.normalize(aligner.momentum_sensor(b["sensor"]), dim=-1)
        s_tm = (hm_v @ hm_s.T).relu()
    assert record["s_tm_false"] == pytest.approx(float(s_tm[0, 1] + s_tm[1, 0]) / 2, abs=1e-6)
    hard = [s_tm[0, 2], s_tm[2, 0], s_tm[1, 2], s_tm[2, 1]]
    assert record["s_tm_hard"] == pytest.approx(float(sum(hard)) / 4, abs=1e-6)
    assert "s_tm_easy" not in record and "w_easy" not in record  # the unknown fixture makes no easy pair


def test_ema_formula_after_one_step(detach_model):
    model = copy.deepcopy(detach_model)
    loss = InfoNceLoss(InfoNceParams(temperature=0.1, learnable=False))
    aligner = TemporalAligner(TemporalParams(momentum=0.9), model, loss)
    before = [p.clone() for p in aligner.momentum_video.parameters()]
    with torch.no_grad():
        for p in model.video_temporal_head.parameters():
            p.add_(1.0)
    aligner.after_optimizer_step(model)
    for old, ema, online in zip(
        before, aligner.momentum_video.parameters(), model.video_temporal_head.parameters(), strict=True
    ):
        assert torch.allclose(ema, 0.9 * old + 0.1 * online, atol=1e-6)


def test_stage1_loss_uses_labels_from_before_the_update(detach_model):
    model = copy.deepcopy(detach_model)
    aligner = SpatialAligner(SpatialParams(warmup_epochs=1, joint_epochs=0, refine_epochs=0), model, None)
    model.clusterer.initialize(torch.randn(8, 16), seed=0)
    aligner.train()
    b = batch()
    labels_before = model.clusterer.labels[b["index"]].clone()
    out = aligner(model, b)
    z_s = model.sensor_encoder(b["sensor"])
    expected = weighted_cluster_loss(model.clusterer.logits(z_s), labels_before, model.clusterer.class_weights())
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    bank_before = model.clusterer.bank.clone()
    aligner.after_optimizer_step(model)
    assert not torch.equal(model.clusterer.bank[:4], bank_before[:4])  # updated only after the step
    assert torch.equal(model.clusterer.bank[4:], bank_before[4:])


def test_stage1_refuses_a_clusterer_lacking_what_it_uses(detach_model):
    class AssignOnly(nn.Module):  # all that contracts.Clusterer declared before stage 1's needs were written down
        k = 3

        def assign(self, features):
            return features.argmax(dim=-1)

    model = copy.deepcopy(detach_model)
    model.clusterer = AssignOnly()
    with pytest.raises(PluginError, match=r"model.clusterer \(AssignOnly\) lacks members of .*contracts.Clusterer"):
        SpatialAligner(SpatialParams(), model, None)


# -- end to end ---------------------------------------------------------------------------------------


def write(tmp_path, spec, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_detach_trains_end_to_end_and_stage2_freezes_spatial(tmp_path):
    run = tmp_path / "run"
    assert main(["train", write(tmp_path, detach_spec()), "--run-dir", str(run)]) == 0
    stage1 = load_checkpoint(run / "checkpoints" / "stage_spatial.pt")["model"]
    final = load_checkpoint(run / "checkpoints" / "stage_temporal.pt")["model"]
    spatial = [k for k in stage1 if k.split(".")[0] in {"video_backbone", "video_head", "sensor_encoder", "clusterer"}]
    temporal = [k for k in stage1 if k.split(".")[0] in {"video_temporal_head", "sensor_temporal_encoder"}]
    assert spatial and temporal
    assert all(torch.equal(stage1[k], final[k]) for k in spatial), "stage 2 changed a spatial tensor"
    assert any(not torch.equal(stage1[k], final[k]) for k in temporal)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["phase"] for r in epochs if r["stage"] == "spatial"] == ["warmup", "joint", "refine"]
    assert all("cluster_sizes" in r and "odc_label_change" in r for r in epochs if r["stage"] == "spatial")
    assert all("w_mean" in str(r) for r in epochs if r["stage"] == "temporal")
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["metrics"]["weighted_f1"] <= 1


def test_init_from_reuses_stage1_and_resume_is_exact(tmp_path, monkeypatch):
    spec = detach_spec(deterministic=True)
    first = tmp_path / "first"
    assert main(["train", write(tmp_path, spec), "--run-dir", str(first)]) == 0
    # A stage-2 ablation that takes stage 1 from the first run instead of retraining it.
    ablation = copy.deepcopy(spec)
    ablation["stages"][0]["init_from"] = str(first)
    ablation["stages"][1]["aligner"]["temporal_weight"] = False
    second = tmp_path / "second"
    assert main(["train", write(tmp_path, ablation, "ablation.yaml"), "--run-dir", str(second)]) == 0
    a = load_checkpoint(first / "checkpoints" / "stage_spatial.pt")["model"]
    b = load_checkpoint(second / "checkpoints" / "stage_spatial.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(x) for x in (second / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["kind"] == "init_from" and not any(
        r.get("stage") == "spatial" and r["kind"] == "epoch" for r in records
    )

    # Interrupt stage 1 mid-way (after its second epoch) and resume: identical final weights.
    resumed = tmp_path / "resumed"
    path = write(tmp_path, spec)
    train_until_interrupted(monkeypatch, path, resumed, at_epoch=3)
    assert main(["train", path, "--run-dir", str(resumed), "--resume"]) == 0
    x = load_checkpoint(first / "checkpoints" / "last.pt")
    y = load_checkpoint(resumed / "checkpoints" / "last.pt")
    for key in x["model"]:
        assert torch.equal(x["model"][key], y["model"][key]), key
    for key in x["aligner"]:
        assert torch.equal(x["aligner"][key], y["aligner"][key]), key
