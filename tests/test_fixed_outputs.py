"""Stage 2 runs the frozen spatial branch once per window, not once per step (engine/fixed_outputs.py), and
this removes repeated work only: the trained weights match a run that recomputes z_v and z_s at every step."""

from __future__ import annotations

from collections import Counter

import torch
import yaml
from test_detach import detach_spec

from detach_framework.cli import main
from detach_framework.engine import model as model_module
from detach_framework.engine import trainer as trainer_module
from detach_framework.engine.checkpoint import load_checkpoint
from detach_plugins.detach.temporal import TemporalAligner

FROZEN = ("video_backbone", "video_head", "sensor_encoder")


def train(tmp_path, name, monkeypatch, *, precompute: bool) -> tuple[dict, Counter]:
    """A tiny DETACH run; counts the frozen spatial modules' forward calls inside stage-2 epochs."""
    calls: Counter = Counter()
    in_stage2_epoch = {"on": False}
    original_epoch = trainer_module.Trainer._train_epoch
    original_init = model_module.AlignmentModel.__init__

    def counting_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        for slot in FROZEN:
            getattr(self, slot).register_forward_hook(
                lambda *a, slot=slot: calls.update([slot]) if in_stage2_epoch["on"] else None
            )

    def epoch(self, pos, *args, **kwargs):
        in_stage2_epoch["on"] = pos.stage_index == 1
        try:
            return original_epoch(self, pos, *args, **kwargs)
        finally:
            in_stage2_epoch["on"] = False

    monkeypatch.setattr(model_module.AlignmentModel, "__init__", counting_init)
    monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", epoch)
    if not precompute:
        monkeypatch.setattr(TemporalAligner, "fixed_outputs", lambda self, model: {})
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(yaml.safe_dump(detach_spec(deterministic=True)))
    run = tmp_path / name
    # one intra-op thread: the two runs' float reductions then happen in the same order
    assert main(["train", str(spec), "runtime.threads=1", "--run-dir", str(run)]) == 0
    monkeypatch.undo()
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"], calls


def test_stage2_never_calls_the_frozen_modules_and_trains_the_same_weights(tmp_path, monkeypatch):
    fast, fast_calls = train(tmp_path, "fixed", monkeypatch, precompute=True)
    slow, slow_calls = train(tmp_path, "recomputed", monkeypatch, precompute=False)
    assert all(slow_calls[slot] > 0 for slot in FROZEN)  # the count can see the calls it removes
    assert sum(fast_calls.values()) == 0, fast_calls  # training and validation steps alike
    assert fast.keys() == slow.keys()
    for key in fast:
        if fast[key].is_floating_point():
            torch.testing.assert_close(fast[key], slow[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(fast[key], slow[key]), key
