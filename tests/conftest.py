"""Shared fixtures: the plugin host and a tiny spec that trains in seconds on the CPU."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from detach_framework.plugins import load_plugins

# Synthetic-kitchen knobs that silence every sensor nuisance, so a test sees one mechanism alone.
QUIET = dict(
    sensor_noise_std=0.0,
    crosstalk_gain=0.0,
    walking_vibration_gain=0.0,
    nan_burst_rate=0.0,
    amplitude_spread=0.0,
)

TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "seed": 7,
    "data": {
        "dataset": {"name": "synthetic_kitchen", "preset": "tiny"},
        "frames": 4,
        "frame_size": 32,
        "sensor_length": 32,
        "batch_size": 16,
    },
    "model": {
        "video_backbone": {"name": "small_cnn", "channels": [8, 8, 16, 16]},
        "video_head": {"name": "pooled_projection", "dim": 16},
        "sensor_encoder": {"name": "imu2clip_sensor", "dim": 16, "channels": [8, 16, 16], "gru_hidden": 16},
    },
    "stages": [
        {
            "name": "align",
            "epochs": 2,
            "aligner": {"name": "global_contrastive"},
            "loss": {"name": "infonce"},
            "optimizer": {"lr": 1e-3},
        }
    ],
    "eval": {"evaluators": [{"name": "linear_probe", "epochs": 5}, {"name": "retrieval"}]},
    "runtime": {"device": "cpu", "progress": "off", "tensorboard": False},
}


def tiny_spec(**changes: Any) -> dict[str, Any]:
    """A deep copy of the tiny spec with top-level sections replaced."""
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(copy.deepcopy(changes))
    return spec


@pytest.fixture(scope="session")
def host():
    return load_plugins()


@pytest.fixture(scope="session")
def registry(host):
    return host.registry


def train_until_interrupted(monkeypatch, spec: str, run_dir: Path, at_epoch: int) -> None:
    """`detach train SPEC --run-dir RUN_DIR`, with Ctrl-C as the trainer starts its `at_epoch`-th epoch (counted
    over all stages): the run must exit 130, leaving a resumable run directory."""
    from detach_framework.cli import main
    from detach_framework.engine import trainer as trainer_module

    original = trainer_module.Trainer._train_epoch
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_epoch:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", interrupted)
    try:
        assert main(["train", spec, "--run-dir", str(run_dir)]) == 130
    finally:
        monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", original)
