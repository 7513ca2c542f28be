"""EVI-MAE adapted: masking, the patch encoder that sees visible tokens only, the masked-patch reconstruction
loss against hand computations, and a tiny end-to-end run through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import tiny_spec
from torch import nn

from detach_framework.cli import main
from detach_framework.engine.model import AlignmentModel
from detach_framework.engine.precision import autocast
from detach_framework.errors import UserError
from detach_framework.spec import load_spec
from detach_plugins.methods.evi_mae import (
    EviMaeAligner,
    EviMaeParams,
    EviMaeSensorEncoder,
    EviMaeSensorParams,
    masked_mse,
    patchify_sensor,
    random_mask,
    video_patch_targets,
    visible_indices,
)

# A patch encoder small enough for the tiny spec (sensor_length 32: 4 patches of 8 steps).
TINY_ENCODER = {"name": "evi_mae_sensor", "dim": 16, "patch": 8, "width": 16, "depth": 1, "heads": 2}
TINY_STAGE = {
    "name": "align",
    "epochs": 2,
    "aligner": {"name": "evi_mae", "video_patch": 8, "decoder_width": 16, "decoder_depth": 1},
    "loss": {"name": "infonce"},
}


def tiny_evi_mae_spec() -> dict:
    spec = tiny_spec(stages=[TINY_STAGE])
    spec["model"]["sensor_encoder"] = dict(TINY_ENCODER)
    return spec


# -- masking and the loss, by hand ----------------------------------------------------------------------------


def test_random_mask_masks_exactly_the_ratio_per_row():
    for tokens, ratio, count in ((16, 0.75, 12), (4, 0.75, 3), (10, 0.75, 8), (8, 0.5, 4), (4, 0.01, 1)):
        mask = random_mask(5, tokens, ratio)
        assert mask.dtype == torch.bool and mask.sum(dim=1).tolist() == [count] * 5
        visible = visible_indices(mask)
        assert visible.shape == (5, tokens - count)
        assert not mask.gather(1, visible).any()  # the visible positions are exactly the unmasked ones
    assert not torch.equal(random_mask(1, 64, 0.75), random_mask(1, 64, 0.75))  # random positions


def test_visible_indices_by_hand():
    mask = torch.tensor([[True, False, True, False], [False, True, True, True]])
    with pytest.raises(RuntimeError):  # rows with different counts cannot be one tensor of positions
        visible_indices(mask)
    mask[1] = torch.tensor([True, True, False, False])
    assert visible_indices(mask).tolist() == [[1, 3], [2, 3]]


def test_masked_mse_counts_masked_tokens_only():
    pred = torch.tensor([[[1.0, 2.0], [5.0, 5.0], [0.0, 1.0], [9.0, -9.0]]])
    target = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [2.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, True, False]])
    expected = ((1 + 4) / 2 + 0 + (4 + 0) / 2) / 3  # token 3 is visible: its error does not count
    assert float(masked_mse(pred, target, mask)) == pytest.approx(expected)
    pred[0, 3] = 1e6
    assert float(masked_mse(pred, target, mask)) == pytest.approx(expected)


def test_patch_layouts():
    sensor = torch.arange(16.0).view(1, 2, 8)  # channels [0..7] and [8..15]
    tokens = patchify_sensor(sensor, 4)
    assert tokens.tolist() == [[[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]]]
    frames = torch.zeros(1, 1, 3, 4, 4)
    frames[0, 0, :, :2, 2:] = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)  # the top-right 2x2 token
    targets = video_patch_targets(frames, (2, 2), 1)
    assert targets.shape == (1, 1, 2, 2, 3)
    assert targets[0, 0, 0, 1].tolist() == [1.0, 2.0, 3.0] and float(targets[0, 0, 0, 0].abs().sum()) == 0


# -- the patch encoder ------------------------------------------------------------------------------------------


def tiny_encoder(channels: int = 2, length: int = 8, **changes) -> EviMaeSensorEncoder:
    params = {"dim": 6, "patch": 2, "width": 8, "depth": 2, "heads": 2, **changes}
    torch.manual_seed(0)
    return EviMaeSensorEncoder(EviMaeSensorParams(**params), channels, length).eval()


def test_encoder_sees_only_the_visible_patches():
    encoder = tiny_encoder()
    sensor = torch.randn(3, 2, 8)
    visible = torch.tensor([[0], [2], [3]])  # one of the 4 patches per window
    tokens = encoder.encode_tokens(sensor, visible)
    assert tokens.shape == (3, 1, 8)
    changed = sensor.clone()
    for row, keep in enumerate(visible[:, 0].tolist()):
        others = [k for k in range(4) if k != keep]
        for k in others:  # rewrite every masked patch: the visible tokens must not move
            changed[row, :, 2 * k : 2 * k + 2] = 100.0
    assert torch.allclose(encoder.encode_tokens(changed, visible), tokens)
    # Evaluation: the slot's forward pools the tokens of every patch of the unmasked window.
    assert torch.allclose(encoder(sensor), encoder.pool(encoder.encode_tokens(sensor)))
    assert encoder(sensor).shape == (3, 6) and not torch.allclose(encoder(changed), encoder(sensor))


def test_encoder_position_codes_tell_patches_apart():
    encoder = tiny_encoder()
    sensor = torch.zeros(1, 2, 8)  # every patch has the same values: only the positions differ
    tokens = encoder.encode_tokens(sensor)
    assert not torch.allclose(tokens[0, 0], tokens[0, 1])


class StubDecoder(nn.Module):
    """Returns a fixed prediction and remembers what it was given."""

    def __init__(self, prediction: torch.Tensor) -> None:
        super().__init__()
        self.prediction = prediction

    def forward(self, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        self.tokens, self.visible = tokens, visible
        return self.prediction


def test_sensor_branch_reconstruction_loss_by_hand():
    """A stub decoder returns the targets plus a known error per patch: the loss is the mean squared error of
    the masked patches alone, and the encoder and decoder see the same visible positions."""
    encoder = tiny_encoder()  # 2 channels x 8 steps: 4 patches of 2 steps, 4 values each
    model = SimpleNamespace(sensor_encoder=encoder)
    aligner = EviMaeAligner(
        EviMaeParams(contrastive_weight=0, video_weight=0, decoder_width=8, decoder_heads=2),
        evi_mae_model(sensor_encoder=encoder),
        None,
    )
    sensor = torch.randn(2, 2, 8)
    errors = torch.tensor([1.0, 2.0, 3.0, 4.0])  # added to every value of patch k
    aligner.sensor_decoder = StubDecoder(patchify_sensor(sensor, 2) + errors.view(1, 4, 1))
    loss, vector = aligner.sensor_branch(model, {"sensor": sensor})
    visible = aligner.sensor_decoder.visible
    assert visible.shape == (2, 1) and aligner.sensor_decoder.tokens.shape == (2, 1, 8)  # 3 of 4 patches masked
    squared = errors.pow(2)  # [1, 4, 9, 16]: the visible patch of each window does not count
    expected = sum(float(squared.sum() - squared[v]) for v in visible[:, 0].tolist()) / 6
    assert float(loss) == pytest.approx(expected)
    assert torch.allclose(vector, encoder.pool(encoder.encode_tokens(sensor, visible)))


def test_decoder_predicts_every_patch_and_trains_its_mask_token():
    encoder = tiny_encoder()
    aligner = EviMaeAligner(
        EviMaeParams(contrastive_weight=0, video_weight=0, decoder_width=8, decoder_heads=2),
        evi_mae_model(sensor_encoder=encoder),
        None,
    )
    visible = torch.tensor([[1], [3]])
    pred = aligner.sensor_decoder(torch.randn(2, 1, 8), visible)
    assert pred.shape == (2, 4, 4)  # every patch of 2 channels x 2 steps
    pred.pow(2).sum().backward()
    assert aligner.sensor_decoder.mask_token.grad.abs().sum() > 0


# -- the aligner ------------------------------------------------------------------------------------------------


class Recorder(nn.Module):
    """Stands in for the video side: remembers its input."""

    def __init__(self, out_dim: int, maps: bool = False) -> None:
        super().__init__()
        self.out_dim = self.feature_dim = out_dim
        self.maps = maps
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().clone()
        if self.maps:  # [B, T, 3, H, W] -> [B, T, D, H/2, W/2]
            pooled = nn.functional.avg_pool2d(x.flatten(0, 1), 2)
            return pooled.mean(1, keepdim=True).expand(-1, self.out_dim, -1, -1).unflatten(0, x.shape[:2])
        return x.flatten(1)[:, : self.out_dim] * self.weight


class SquaredGap(nn.Module):
    """Stands in for the stage loss: any scalar of the two embeddings."""

    def forward(self, video: torch.Tensor, sensor: torch.Tensor) -> torch.Tensor:
        return (video - sensor).pow(2).mean()


def evi_mae_model(**changes) -> SimpleNamespace:
    model = SimpleNamespace(
        video_head=Recorder(6),
        sensor_encoder=tiny_encoder(channels=2, length=16),
        video_backbone=Recorder(5, maps=True),
        backbone_frozen=False,
        sensor_channels=2,
        sensor_length=16,
        normalise_video=lambda video: video.float(),
    )
    model.__dict__.update(changes)
    return model


def test_video_branch_masks_three_quarters_of_the_tokens():
    model = evi_mae_model()
    aligner = EviMaeAligner(EviMaeParams(video_patch=4, contrastive_weight=0), model, None)
    video = torch.full((2, 3, 3, 8, 8), 7.0)  # 3 frames of a 2x2 token grid: 12 tokens, 9 masked
    video_loss, vector = aligner.video_branch(model, {"video": video})
    dark = (model.video_backbone.seen == 0).all(dim=2)  # [B, T, H, W]
    assert dark.flatten(1).float().mean(dim=1).tolist() == [0.75, 0.75] and vector.shape == (2, 6)
    assert video_loss.item() > 0


def test_forward_returns_every_loss_term():
    model = evi_mae_model()
    aligner = EviMaeAligner(EviMaeParams(video_patch=4, decoder_width=8, decoder_heads=2), model, SquaredGap())
    out = aligner(model, {"video": torch.rand(2, 3, 3, 8, 8), "sensor": torch.randn(2, 2, 16)})
    assert set(out) == {"loss", "video_rec", "sensor_rec", "contrast"}
    assert all(v.dim() == 0 and math.isfinite(float(v.detach())) for v in out.values())
    total = out["video_rec"] + out["sensor_rec"] + 0.01 * out["contrast"]
    assert float(out["loss"].detach()) == pytest.approx(float(total))


def test_evi_mae_refuses_what_it_cannot_train(registry):
    with pytest.raises(UserError, match="needs a stage loss"):
        EviMaeAligner(EviMaeParams(), evi_mae_model(), None)
    with pytest.raises(UserError, match="unfreeze"):
        EviMaeAligner(EviMaeParams(), evi_mae_model(backbone_frozen=True), nn.Identity())
    with pytest.raises(UserError, match=r"model.sensor_encoder is Recorder, expected a patch-token encoder"):
        EviMaeAligner(EviMaeParams(), evi_mae_model(sensor_encoder=Recorder(6)), nn.Identity())
    with pytest.raises(UserError, match="model.sensor_encoder.patch 5 must divide data.sensor_length 32"):
        EviMaeSensorEncoder(EviMaeSensorParams(patch=5), 3, 32)
    spec = tiny_evi_mae_spec()
    spec["model"]["sensor_encoder"]["heads"] = 3
    with pytest.raises(UserError, match="width 16 must be a multiple of its heads 3"):
        load_spec(spec, registry)
    spec = tiny_evi_mae_spec()
    spec["stages"][0]["aligner"]["decoder_heads"] = 5
    with pytest.raises(UserError, match="sensor decoder's width 16 must be a multiple of its heads 5"):
        load_spec(spec, registry)


def test_loss_is_float32_and_close_under_bf16(registry):
    spec = load_spec(tiny_evi_mae_spec(), registry)
    source = SimpleNamespace(channel_names=["a", "b", "c"], class_names=["x", "y", "z"])
    torch.manual_seed(0)
    model = AlignmentModel(spec.model, registry, source, 32, num_train=8)
    aligner = registry.build(
        "aligner", spec.stages[0].aligner, model=model, loss=registry.build("loss", spec.stages[0].loss)
    )
    model.eval()
    aligner.eval()
    generator = torch.Generator().manual_seed(3)
    batch = {
        "video": torch.randint(0, 256, (4, 4, 3, 32, 32), dtype=torch.uint8, generator=generator),
        "sensor": torch.randn(4, 3, 32, generator=generator),
    }
    torch.manual_seed(1)
    fp32 = aligner(model, batch)["loss"]
    torch.manual_seed(1)  # the same masks
    with autocast("bf16", torch.device("cpu")):
        bf16 = aligner(model, batch)["loss"]
    assert bf16.dtype == torch.float32 and math.isfinite(bf16.item())
    assert bf16.item() == pytest.approx(fp32.item(), rel=2e-2)
    bf16.backward()


# -- end to end -------------------------------------------------------------------------------------------------


def test_tiny_run_trains_with_finite_losses(tmp_path: Path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_evi_mae_spec()))
    run = tmp_path / "run"
    assert main(["train", str(spec_path), "--run-dir", str(run)]) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for record in epochs:  # every loss term is logged per epoch, and finite
        for key in ("train_loss", "train_video_rec", "train_sensor_rec", "train_contrast", "val_loss"):
            assert math.isfinite(record[key]), (key, record)
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["metrics"]["weighted_f1"] <= 1
