"""The plain k-means clusterer (plugins/detach/kmeans.py): re-fitted once per epoch, and enough for stage 1."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import tiny_spec
from test_detach import DETACH_MODEL

from detach_framework.cli import main
from detach_framework.engine.checkpoint import load_checkpoint
from detach_plugins.detach.kmeans import KMeansClusterer, KMeansParams


def two_blobs(n: int = 20) -> torch.Tensor:
    """n features in 3-d: the first half near the x axis, the second near the y axis."""
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).repeat_interleave(n // 2, dim=0)
    return centres + 0.05 * torch.randn(n, 3, generator=torch.Generator().manual_seed(0))


def test_labels_move_only_at_the_refit_and_keep_their_cluster_ids():
    clusterer = KMeansClusterer(KMeansParams(k=2), num_samples=20, dim=3)
    clusterer.initialize(two_blobs(), seed=0)
    first = clusterer.labels.clone()
    assert len(set(first[:10].tolist())) == 1 and len(set(first[10:].tolist())) == 1 and first[0] != first[10]
    moved = two_blobs()[10:13]  # samples 0-2 of the first blob now look like the second blob
    assert clusterer.update_bank(torch.arange(3), moved) == 0.0
    assert torch.equal(clusterer.bank[:3], F.normalize(moved, dim=1))
    assert torch.equal(clusterer.labels, first), "no label moves online"
    clusterer.update_centroids()
    expected = first.clone()
    expected[:3] = first[10]
    assert torch.equal(clusterer.labels, expected), "the re-fit moves them, and cluster k stays cluster k"
    for k in range(2):
        centroid = F.normalize(clusterer.bank[clusterer.labels == k].mean(dim=0), dim=0)
        assert torch.allclose(clusterer.centroids[k], centroid, atol=1e-5)


def test_a_diverged_bank_is_left_for_the_trainer_to_report():
    clusterer = KMeansClusterer(KMeansParams(k=2), num_samples=20, dim=3)
    clusterer.initialize(two_blobs(), seed=0)
    labels, centroids = clusterer.labels.clone(), clusterer.centroids.clone()
    clusterer.update_bank(torch.arange(2), torch.full((2, 3), float("nan")))
    clusterer.update_centroids()  # no scikit-learn "Input contains NaN" traceback mid-epoch
    assert torch.equal(clusterer.labels, labels) and torch.equal(clusterer.centroids, centroids)


def test_class_weights_are_uniform_or_inverse_size():
    labels = torch.tensor([0] * 6 + [1] * 4)  # cluster 2 is empty: it counts as size 1
    uniform = KMeansClusterer(KMeansParams(k=3), num_samples=10, dim=2)
    uniform.labels.copy_(labels)
    assert uniform.class_weights().tolist() == [1.0, 1.0, 1.0]
    inverse = KMeansClusterer(KMeansParams(k=3, weights="inverse_size"), num_samples=10, dim=2)
    inverse.labels.copy_(labels)
    raw = [1 / 6, 1 / 4, 1 / 1]
    assert inverse.class_weights().tolist() == pytest.approx([w * 3 / sum(raw) for w in raw], rel=1e-6)


def test_stage1_trains_one_epoch_with_kmeans(tmp_path):
    spatial = ("video_backbone", "video_head", "sensor_encoder")
    model = {**{slot: DETACH_MODEL[slot] for slot in spatial}, "clusterer": {"name": "odc", "k": 3}}
    stage = {
        "name": "spatial",
        "epochs": 1,
        "optimizer": {"lr": 1e-3},
        "aligner": {"name": "detach_spatial", "warmup_epochs": 0, "joint_epochs": 0, "refine_epochs": 1},
    }
    spec = tiny_spec(model=model, stages=[stage], eval={"evaluators": [{"name": "linear_probe", "epochs": 1}]})
    path, run = tmp_path / "spec.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(spec))
    assert main(["train", str(path), "model.clusterer.name=kmeans", "--run-dir", str(run)]) == 0
    assert yaml.safe_load((run / "spec.yaml").read_text())["model"]["clusterer"]["name"] == "kmeans"
    epochs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    state = load_checkpoint(run / "checkpoints" / "stage_spatial.pt")["model"]
    assert [r["phase"] for r in epochs] == ["refine"]
    assert sum(epochs[0]["cluster_sizes"]) == len(state["clusterer.labels"])
    assert epochs[0]["odc_label_change"] == 0.0  # labels move only at the re-fit
    assert "clusterer.initialized" not in state  # the ODC's own buffer
