"""video_ssl: the video-only contrastive stage that trains COMODO's teacher, against hand computations, plus a
tiny two-stage COMODO run (teacher stage, then distillation) through the trainer."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_spec

from detach_framework.engine.checkpoint import load_checkpoint
from detach_framework.engine.rundir import RunDirectory
from detach_framework.engine.session import Session, make_loader, to_device
from detach_framework.engine.trainer import Trainer
from detach_framework.errors import UserError
from detach_framework.spec import load_spec
from detach_plugins.methods.video_ssl import VideoSslAligner, VideoSslParams, augment_clips

NOTHING = dict(
    crop_min_scale=1.0, crop_max_aspect=1.0, flip_probability=0.0, brightness=0.0, contrast=0.0, temporal_shift=0
)


def only(**augmentations) -> VideoSslParams:
    """Params with every augmentation off except those given."""
    return VideoSslParams(**{**NOTHING, **augmentations})


def left_half_colour(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A stand-in video encoder that is not mirror-symmetric: the mean colour of the frames' left half."""
    video = batch["video"].float()
    return video[..., : video.shape[-1] // 2].mean(dim=(1, 3, 4))


def fake_model(dim: int = 3) -> SimpleNamespace:
    return SimpleNamespace(video_head=SimpleNamespace(out_dim=dim), encode_video=left_half_colour)


def test_loss_on_a_hand_built_batch_equals_the_hand_computation():
    # Three clips of 2 frames, 2x4 pixels; left and right halves have different colours, and the mirrored
    # views (flip probability 1) must be encoded from the original right halves.
    right = [[200.0, 10.0, 30.0], [20.0, 150.0, 90.0], [60.0, 60.0, 250.0]]
    left = [[0.0, 0.0, 0.0], [255.0, 255.0, 255.0], [9.0, 99.0, 199.0]]
    video = torch.zeros(3, 2, 3, 2, 4)
    for i in range(3):
        video[i, :, :, :, :2] = torch.tensor(left[i]).view(3, 1, 1)
        video[i, :, :, :, 2:] = torch.tensor(right[i]).view(3, 1, 1)
    tau = 0.2
    aligner = VideoSslAligner(only(temperature=tau, flip_probability=1.0), fake_model(), None)
    out = aligner(fake_model(), {"video": video.to(torch.uint8)})

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    views = [unit(v) for v in right + right]  # view 1 then view 2 of each clip: both mirrored
    total = 0.0
    for i in range(6):
        logits = [sum(a * b for a, b in zip(views[i], views[j], strict=True)) / tau for j in range(6) if j != i]
        positive = (i + 3) % 6
        total += math.log(sum(math.exp(x) for x in logits)) - logits[positive - (positive > i)]
    assert float(out["loss"]) == pytest.approx(total / 6, rel=1e-5)
    cosines = [
        sum(a * b for a, b in zip(views[i], views[j], strict=True)) for i in range(3) for j in range(3) if i != j
    ]
    assert float(out["clip_cosine"]) == pytest.approx(sum(cosines) / 6, rel=1e-5)


def test_each_augmentation_by_hand():
    torch.manual_seed(0)
    video = torch.randint(0, 256, (4, 5, 3, 8, 8), dtype=torch.uint8)
    flipped = augment_clips(video, only(flip_probability=1.0))
    assert torch.equal(flipped, video.float().flip(-1))  # an exact mirror: the grid hits pixel centres
    shifted = augment_clips(video, only(temporal_shift=2))
    for clip in range(4):  # each clip's frames are its own, shifted by one offset in [-2, 2], edges repeated
        offsets = [
            s
            for s in range(-2, 3)
            if torch.equal(shifted[clip], video[clip, (torch.arange(5) + s).clamp(0, 4)].float())
        ]
        assert offsets, clip
    ramp = (10 * torch.arange(16.0)).expand(6, 3, 3, 16, 16)  # brightness grows left to right
    cropped = augment_clips(ramp, only(crop_min_scale=0.2, crop_max_aspect=2.0))
    assert torch.allclose(
        cropped, cropped[:, :1, :1, :1].expand_as(cropped), atol=1e-4
    )  # one crop for every frame, channel, row
    rows = cropped[:, 0, 0, 0]
    assert (rows.diff(dim=1) >= 0).all() and not torch.equal(rows, ramp[:, 0, 0, 0])  # zoomed in, never mirrored
    toned = augment_clips(video, only(brightness=0.3, contrast=0.2))
    for clip in range(4):  # ((x - mean) * c + mean) * b: an affine map of the clip with slope b * c
        x, y = video[clip].float(), toned[clip]
        inside = (y > 0) & (y < 255)
        dx, dy = x[inside] - x[inside].mean(), y[inside] - y[inside].mean()
        slope = (dx * dy).sum() / (dx * dx).sum()
        assert 0.7 * 0.8 - 1e-4 <= float(slope) <= 1.3 * 1.2 + 1e-4
        assert torch.allclose(dy, slope * dx, atol=1e-3)  # exactly affine where nothing was clamped


def test_views_follow_torch_seed_and_validation_is_fixed():
    video = torch.randint(0, 256, (4, 3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    params = VideoSslParams(flip_probability=0.5)
    torch.manual_seed(3)
    first = augment_clips(video, params)
    torch.manual_seed(3)
    assert torch.equal(first, augment_clips(video, params))
    assert not torch.equal(first, augment_clips(video, params))
    model = SimpleNamespace(
        video_head=SimpleNamespace(out_dim=3), encode_video=lambda b: b["video"].mean(dim=(1, 3, 4))
    )
    aligner = VideoSslAligner(params, model, None).eval()
    state = torch.get_rng_state()
    losses = [float(aligner(model, {"video": video})["loss"]) for _ in range(2)]
    assert losses[0] == losses[1] and torch.equal(state, torch.get_rng_state())


def test_bad_params_and_batches_are_user_errors(registry):
    with pytest.raises(UserError, match="identical"):
        load_spec(tiny_spec(stages=[{"name": "t", "epochs": 1, "aligner": {"name": "video_ssl", **NOTHING}}]), registry)
    aligner = VideoSslAligner(VideoSslParams(), fake_model(), None)
    with pytest.raises(UserError, match="cache.frames"):
        aligner(fake_model(), {"video_maps": torch.zeros(2, 1, 3, 1, 1)})
    with pytest.raises(UserError, match="loss"):
        VideoSslAligner(VideoSslParams(), fake_model(), torch.nn.Identity())


TEACHER_STAGE = {
    "name": "teacher",
    "epochs": 3,
    "aligner": {"name": "video_ssl", "temperature": 0.2},
    "optimizer": {"lr": 3e-3},
}
COMODO_STAGE = {"name": "distill", "epochs": 1, "aligner": {"name": "comodo", "queue_ratio": 0.2}}
SMALL_DATA = {
    "dataset": {"name": "synthetic_kitchen", "preset": "tiny"},
    "frames": 2,
    "frame_size": 16,
    "sensor_length": 32,
    "batch_size": 16,
}


def test_trains_the_video_side_only(tmp_path, host):
    spec = load_spec(tiny_spec(data=SMALL_DATA, stages=[TEACHER_STAGE]), host.registry)
    trainer = Trainer(Session.from_spec(spec, host), RunDirectory.prepare(tmp_path / "run"))
    _, optimizer, trainable = trainer.build_stage(0)
    model = trainer.model
    assert trainable == [model.video_backbone, model.video_head]
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised or p.requires_grad for p in model.sensor_encoder.parameters())
    frozen = tiny_spec(data=SMALL_DATA, stages=[TEACHER_STAGE])
    frozen["model"]["video_backbone"]["frozen"] = True  # e.g. a pretrained timm backbone: only the head trains
    frozen["cache"] = {"mode": "off"}  # no feature cache written by a unit test
    trainer = Trainer(
        Session.from_spec(load_spec(frozen, host.registry), host), RunDirectory.prepare(tmp_path / "frozen")
    )
    assert trainer.build_stage(0)[2] == [trainer.model.video_head]


@torch.no_grad()
def mean_clip_cosine(trainer: Trainer) -> float:
    trainer.model.eval()
    vectors = torch.cat(
        [
            trainer.model.encode_video(to_device(b, trainer.device))
            for b in make_loader(trainer.train_set, trainer.spec, shuffle=False)
        ]
    )
    unit = F.normalize(vectors, dim=-1)
    n = len(unit)
    return float(((unit @ unit.T).sum() - n) / (n * (n - 1)))


def test_two_stage_comodo_distils_the_trained_frozen_teacher(tmp_path, host):
    spec = load_spec(tiny_spec(data=SMALL_DATA, stages=[TEACHER_STAGE, COMODO_STAGE]), host.registry)
    trainer = Trainer(Session.from_spec(spec, host), RunDirectory.prepare(tmp_path / "run"))
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    before = mean_clip_cosine(trainer)
    trainer.fit()
    after = mean_clip_cosine(trainer)
    assert after < before - 0.05, (before, after)  # the untrained teacher's clip vectors are nearly all alike
    taught = load_checkpoint(trainer.run.checkpoints / "stage_teacher.pt")["model"]
    final = load_checkpoint(trainer.run.checkpoints / "last.pt")["model"]
    video = [k for k in final if k.startswith(("video_backbone.", "video_head."))]
    sensor = [k for k in final if k.startswith("sensor_encoder.")]
    assert any(not torch.equal(initial[k], taught[k]) for k in video), "the teacher stage trained nothing"
    assert all(torch.equal(initial[k], taught[k]) for k in sensor), "the teacher stage touched the sensor encoder"
    assert all(torch.equal(taught[k], final[k]) for k in video), "COMODO changed its teacher"
    assert any(not torch.equal(taught[k], final[k]) for k in sensor), "COMODO trained no student"


def test_loss_is_float32_and_close_under_bf16(registry):
    from detach_framework.engine.model import AlignmentModel
    from detach_framework.engine.precision import autocast

    spec = load_spec(tiny_spec(stages=[TEACHER_STAGE]), registry)
    source = SimpleNamespace(channel_names=["a", "b", "c"], class_names=["x", "y", "z"])
    torch.manual_seed(0)
    model = AlignmentModel(spec.model, registry, source, 32, num_train=8)
    aligner = registry.build("aligner", spec.stages[0].aligner, model=model, loss=None)
    model.eval()
    aligner.eval()  # validation's fixed draws: both passes see the same views
    batch = {"video": torch.randint(0, 256, (6, 4, 3, 32, 32), dtype=torch.uint8)}
    fp32 = aligner(model, batch)["loss"]
    with autocast("bf16", torch.device("cpu")):
        bf16 = aligner(model, batch)["loss"]
    assert bf16.dtype == torch.float32 and bf16.item() == pytest.approx(fp32.item(), rel=2e-2)
