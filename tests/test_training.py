"""End to end: train the tiny spec through the CLI, resume an interrupted run exactly, use a third-party plugin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_spec, train_until_interrupted

from detach_framework.cli import main
from detach_framework.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def write_spec(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_train_writes_complete_run_directory(tmp_path, capsys):
    spec = write_spec(tmp_path, tiny_spec())
    run = tmp_path / "run"
    assert main(["train", spec, "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "weighted_f1" in out and "v2s_R@1" in out
    for name in (
        "spec.yaml",
        "env.json",
        "metrics.jsonl",
        "summary.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "checkpoints/stage_align.pt",
        "plots/confusion_matrix.png",
    ):
        assert (run / name).is_file(), name
    threads = json.loads((run / "env.json").read_text())["threads"]
    assert threads["requested"] == "auto" and threads["intra_op"] >= 1 and threads["data_workers"] == 0
    summary = json.loads((run / "summary.json").read_text())
    for key in ("weighted_f1", "macro_map", "accuracy", "v2s_R@1", "v2s_R@5", "v2s_R@10", "s2v_R@10"):
        assert 0.0 <= summary["metrics"][key] <= 1.0, key
    assert summary["tables"]["per_class"][0]["class"] == "Null"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [1, 2]
    assert all("val_loss" in r and "train_loss" in r for r in epochs if r["kind"] == "epoch")
    # The saved spec is the resolved one and validates again: `detach eval` re-evaluates the run.
    assert main(["eval", str(run)]) == 0
    again = json.loads((run / "summary.json").read_text())
    assert again["metrics"] == pytest.approx(summary["metrics"])


def test_interrupted_run_resumes_to_identical_weights(tmp_path, monkeypatch):
    spec = write_spec(
        tmp_path,
        tiny_spec(
            deterministic=True,
            stages=[
                {
                    "name": "align",
                    "epochs": 3,
                    "aligner": {"name": "global_contrastive"},
                    "loss": {"name": "infonce"},
                    "optimizer": {"lr": 1e-3},
                }
            ],
        ),
    )
    straight = tmp_path / "straight"
    assert main(["train", spec, "--run-dir", str(straight)]) == 0

    resumed = tmp_path / "resumed"
    train_until_interrupted(monkeypatch, spec, resumed, at_epoch=2)  # as if killed during the second epoch
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["epochs_done"] == 1
    assert main(["train", spec, "--run-dir", str(resumed), "--resume"]) == 0

    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["epochs_done"] == b["epochs_done"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    epochs = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [1, 2, 3]
    assert json.loads((resumed / "summary.json").read_text())["metrics"] == pytest.approx(
        json.loads((straight / "summary.json").read_text())["metrics"]
    )


def test_resume_with_a_different_spec_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", write_spec(tmp_path, tiny_spec()), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    other = tiny_spec(seed=99)
    assert main(["train", write_spec(tmp_path, other, "other.yaml"), "--run-dir", str(run), "--resume"]) == 2
    assert "resume with the run's own spec.yaml" in capsys.readouterr().err


def test_third_party_plugin_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "third_party_plugin" / "src"))
    spec = tiny_spec()
    spec["model"]["sensor_encoder"] = {"name": "example_tcn", "dim": 16, "width": 8}
    spec["stages"][0]["epochs"] = 1
    path = write_spec(tmp_path, spec)
    assert main(["--plugin", "detach_example_plugin", "components", "sensor_encoder"]) == 0
    assert "example_tcn" in capsys.readouterr().out
    assert main(["--plugin", "detach_example_plugin", "train", path, "--run-dir", str(tmp_path / "run")]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "spec.yaml").read_text())
    assert saved["model"]["sensor_encoder"]["name"] == "example_tcn"
    assert (tmp_path / "run" / "summary.json").is_file()
