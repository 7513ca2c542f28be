"""The temporal encoders' `segments` (order-aware pooling) and the direction diagnosis of stage 2
(benchmarks/temporal_direction.py)."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_spec
from test_detach import DETACH_MODEL, DETACH_STAGES

from detach_framework.cli import main
from detach_framework.spec import load_spec
from detach_plugins.detach.encoders import (
    SensorTemporalEncoder,
    SensorTemporalParams,
    TemporalHeadParams,
    VideoTemporalHead,
    pool_over_time,
)

ROOT = Path(__file__).resolve().parents[1]


def test_pool_over_time_by_hand():
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 2.0, 2.0]]])  # [B=1, C=2, T=4]
    assert torch.equal(pool_over_time(x, 1, time_dim=2), torch.tensor([[2.5, 1.0]]))
    # segment-major: (segment 1: c0, c1), (segment 2: c0, c1)
    assert torch.equal(pool_over_time(x, 2, time_dim=2), torch.tensor([[1.5, 0.0, 3.5, 2.0]]))
    assert torch.equal(pool_over_time(x.transpose(1, 2), 2, time_dim=1), torch.tensor([[1.5, 0.0, 3.5, 2.0]]))
    backwards = x.flip(-1)  # the mean cannot tell a window from itself played backwards; segments can
    assert torch.equal(pool_over_time(backwards, 1, time_dim=2), pool_over_time(x, 1, time_dim=2))
    assert torch.equal(pool_over_time(backwards, 2, time_dim=2), torch.tensor([[3.5, 2.0, 1.5, 0.0]]))


def test_one_segment_is_the_papers_mean_bit_for_bit():
    torch.manual_seed(0)
    head = VideoTemporalHead(TemporalHeadParams(dim=8, channels=[4, 4, 8]), in_dim=3).eval()
    video = torch.randn(2, 5, 3, 16, 16)
    with torch.no_grad():
        diffs = (video[:, 1:] - video[:, :-1]).transpose(1, 2)
        expected = head.project(head.convs(diffs).mean(dim=(3, 4)).mean(dim=2))
        assert torch.equal(head(video), expected)
    sensor_encoder = SensorTemporalEncoder(SensorTemporalParams(dim=8, gru_hidden=8), 3, 32).eval()
    sensor = torch.randn(2, 3, 32)
    with torch.no_grad():
        x, _ = sensor_encoder.gru(sensor_encoder.cnn(sensor).transpose(1, 2))
        attended, _ = sensor_encoder.attention(x, x, x, need_weights=False)
        assert torch.equal(sensor_encoder(sensor), sensor_encoder.project(attended.mean(dim=1)))


def test_segments_default_leaves_the_uid_alone(registry):
    quickstart = ROOT / "examples" / "quickstart.yaml"
    base = load_spec(quickstart, registry)
    ones = ["model.video_temporal_head.segments=1", "model.sensor_temporal_encoder.segments=1"]
    assert load_spec(quickstart, registry, ones).uid == base.uid
    assert load_spec(quickstart, registry, ["model.sensor_temporal_encoder.segments=2"]).uid != base.uid


def detach_tiny_spec(**temporal) -> dict:
    model = copy.deepcopy(DETACH_MODEL)
    model["video_temporal_head"] |= temporal
    model["sensor_temporal_encoder"] |= temporal
    stages = copy.deepcopy(DETACH_STAGES)
    stages[0] |= {
        "epochs": 1,
        "aligner": {"name": "detach_spatial", "warmup_epochs": 1, "joint_epochs": 0, "refine_epochs": 0},
    }
    stages[1]["epochs"] = 1
    return tiny_spec(model=model, stages=stages, eval={"evaluators": [{"name": "linear_probe", "epochs": 2}]})


@pytest.fixture(scope="module")
def ordered_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ordered")
    (root / "spec.yaml").write_text(yaml.safe_dump(detach_tiny_spec(segments=2)))
    assert main(["train", str(root / "spec.yaml"), "--run-dir", str(root / "run")]) == 0
    return root / "run"


def test_direction_diagnosis_runs_on_a_trained_detach_run(ordered_run, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("temporal_direction", ROOT / "benchmarks" / "temporal_direction.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out = tmp_path / "direction.json"
    assert module.main([str(ordered_run), "--split", "val", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "auc_false_vs_hard" in printed and "reversal_cos" in printed
    result = json.loads(out.read_text())
    for mode in ("cross_modal", "intra_modal"):
        assert 0.0 <= result[mode]["auc_false_vs_hard"] <= 1.0
    for modality in ("h_v", "h_s"):
        # two segments see the order of time: no embedding equals its reversed window's
        assert -1.0 <= result[modality]["reversal_cos"] < 0.9999
