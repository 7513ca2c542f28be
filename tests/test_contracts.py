"""Every registered component honours its kind's contract: builds from defaults, runs a dummy CPU batch
with the right shapes, and round-trips its state_dict (like timm's test_models, over all components)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_spec
from test_detach import DETACH_MODEL
from torch import nn

from detach_framework.contracts import (
    SAMPLE_KEYS,
    AlignerBase,
    Clusterer,
    ContrastiveLoss,
    DatasetSource,
    DistillationLoss,
    EmbeddingSet,
    EvalContext,
    EvalResult,
    Evaluator,
    FrameInputHead,
    PreprocessingRestoreSource,
    PreprocessingStateSource,
    ReconstructionLoss,
    SensorEncoder,
    SensorLayout,
    SensorLayoutSource,
    ShiftedSensorSource,
    VideoBackbone,
    VideoHead,
    ViewLoss,
)
from detach_framework.data.settings import DataSettings
from detach_framework.engine.model import AlignmentModel, reads_frames
from detach_framework.engine.session import build_source
from detach_framework.errors import PluginError, UserError
from detach_framework.plugins import load_plugins
from detach_framework.registry import ComponentParams
from detach_framework.report import SECTIONS, ReportContext, Section
from detach_framework.spec import load_spec

HOST = load_plugins()
REGISTRY = HOST.registry


class Empty(ComponentParams):
    pass


def components(kind: str):
    found = REGISTRY.components(kind)
    return [pytest.param(c, id=c.name) for c in found] or [pytest.param(None, id="none-registered")]


def build_default(component, **context):
    if component is None:
        pytest.skip("no component of this kind is registered")
    return component.factory(component.params(), **context)


def assert_state_dict_round_trip(make, inputs):
    torch.manual_seed(1)
    first = make().eval()
    torch.manual_seed(2)
    second = make().eval()
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        assert torch.allclose(first(*inputs), second(*inputs), atol=1e-6)


@pytest.mark.parametrize("component", components("dataset"))
def test_dataset_contract(component, tmp_path: Path):
    settings = DataSettings(frames=3, frame_size=32, sensor_length=24)
    if component is not None and "fixture" in component.tools:  # a real dataset reads a tiny root in its format
        root = component.tools["fixture"](tmp_path / "root")
        values = component.tools.get("fixture_params", lambda r: {"root": str(r)})(root)
        source = component.factory(component.params.model_validate(values), data=settings)
    else:
        source = build_default(component, data=settings)
    assert source.class_names and source.channel_names
    for split in ("train", "val", "test"):
        dataset = source.split(split)
        assert len(dataset) > 0, split
    sample = source.split("train")[0]
    assert set(SAMPLE_KEYS) <= set(sample)
    assert sample["video"].dtype == torch.uint8 and tuple(sample["video"].shape) == (3, 3, 32, 32)
    assert sample["sensor"].dtype == torch.float32
    assert tuple(sample["sensor"].shape) == (len(source.channel_names), 24)
    assert torch.isfinite(sample["sensor"]).all()
    assert 0 <= int(sample["label"]) < len(source.class_names)
    assert -1 <= int(sample["fixture"]) < len(source.fixture_names)
    if isinstance(source, SensorLayoutSource):  # optional: what the robustness evaluator perturbs
        layout = source.sensor_layout()
        assert isinstance(layout, SensorLayout) and layout.problem(len(source.channel_names)) is None
        assert set(layout.fixture_channels) <= set(source.fixture_names)
    if isinstance(source, ShiftedSensorSource):  # optional: the robustness evaluator's offset reads these
        test = source.split("test")
        here = np.stack([test[i]["sensor"].numpy() for i in range(len(test))])
        assert np.array_equal(source.shifted_sensor_windows("test", 0.0), here)  # 0 s: the split's own windows
        later = source.shifted_sensor_windows("test", 0.5)
        assert later.dtype == np.float32 and later.shape == here.shape and np.isfinite(later).all()
    assert isinstance(source, DatasetSource)
    if isinstance(source, PreprocessingStateSource):  # optional: written to the run directory as JSON
        state = source.preprocessing_state()
        assert isinstance(state, dict) and json.loads(json.dumps(state)) == state
        if isinstance(source, PreprocessingRestoreSource):  # optional: its own state restores cleanly
            source.load_preprocessing_state(state, "preprocessing.json")
            assert source.preprocessing_state() == state


def test_a_dataset_returning_no_source_is_refused_naming_it():
    spec = load_spec(tiny_spec(), REGISTRY)
    half_a_source = SimpleNamespace(class_names=["a"], channel_names=["c"], fixture_names=[])  # no split()
    host = SimpleNamespace(registry=SimpleNamespace(build=lambda *args, **kwargs: half_a_source))
    with pytest.raises(PluginError, match="dataset 'synthetic_kitchen' returned a SimpleNamespace, expected a Data"):
        build_source(spec, host)


@pytest.mark.parametrize("component", components("video_backbone"))
def test_video_backbone_contract(component):
    backbone = build_default(component)
    assert isinstance(backbone, nn.Module) and isinstance(backbone, VideoBackbone)
    assert len(backbone.mean) == 3 and len(backbone.std) == 3
    video = torch.randn(2, 2, 3, 64, 64)
    maps = backbone.eval()(video)
    assert maps.shape[:3] == (2, 2, backbone.feature_dim) and maps.dim() == 5
    assert_state_dict_round_trip(lambda: component.factory(component.params()), (video,))


@pytest.mark.parametrize("component", components("video_head"))
def test_video_head_contract(component):
    head = build_default(component, in_dim=12)
    assert isinstance(head, nn.Module) and isinstance(head, VideoHead)
    # A head declaring input_kind "frames" (FrameInputHead) consumes normalised frames instead of backbone maps.
    maps = torch.randn(3, 4, 3, 16, 16) if reads_frames(head) else torch.randn(3, 4, 12, 2, 2)
    assert head.eval()(maps).shape == (3, head.out_dim)
    assert_state_dict_round_trip(lambda: component.factory(component.params(), in_dim=12), (maps,))


def test_a_head_declaring_an_unknown_input_kind_is_refused_naming_it():
    class PixelHead(nn.Module):
        input_kind = "pixels"

    class MapHead(nn.Module):
        pass

    assert isinstance(PixelHead(), FrameInputHead) and not isinstance(MapHead(), FrameInputHead)
    assert not reads_frames(MapHead())
    with pytest.raises(PluginError, match="video head PixelHead declares input_kind 'pixels'; expected one of: maps"):
        reads_frames(PixelHead())


@pytest.mark.parametrize("component", components("sensor_encoder"))
def test_sensor_encoder_contract(component):
    encoder = build_default(component, in_channels=5, length=32)
    assert isinstance(encoder, nn.Module) and isinstance(encoder, SensorEncoder)
    sensor = torch.randn(3, 5, 32)
    assert encoder.eval()(sensor).shape == (3, encoder.out_dim)
    assert_state_dict_round_trip(lambda: component.factory(component.params(), in_channels=5, length=32), (sensor,))


class WidthlessHead(nn.Module):
    """A video head that does not say its width (no `out_dim`): contracts.VideoHead refuses it."""

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return maps.mean(dim=(1, 3, 4))


def test_an_embedding_part_without_out_dim_is_refused_naming_its_slot():
    host = load_plugins()
    host.registry.add(kind="video_head", name="widthless", factory=lambda p, in_dim: WidthlessHead(), params=Empty)
    model = {**tiny_spec()["model"], "video_head": {"name": "widthless"}}
    spec = load_spec(tiny_spec(model=model), host.registry)
    source = SimpleNamespace(channel_names=["a", "b"], class_names=["Null", "a"])
    with pytest.raises(PluginError, match="model.video_head 'widthless' must be an nn.Module with `out_dim`"):
        AlignmentModel(spec.model, host.registry, source, sensor_length=32)


# A batch of inputs for each calling convention of contracts.Loss; the first input is the one checked for a gradient.
LOSS_INPUTS = {
    ContrastiveLoss: lambda: (torch.randn(4, 8), torch.randn(4, 8), torch.ones(4, 4) - torch.eye(4)),
    ViewLoss: lambda: (torch.randn(4, 8), torch.randn(4, 8), torch.randn(6, 8)),
    DistillationLoss: lambda: (torch.randn(4, 8), torch.randn(4, 8), torch.randn(6, 8)),
    ReconstructionLoss: lambda: (torch.randn(4, 5, 8), torch.randn(4, 5, 8), torch.arange(20).view(4, 5) % 4 > 0),
}


@pytest.mark.parametrize("component", components("loss"))
def test_loss_contract(component):
    loss = build_default(component)
    conventions = [convention for convention in LOSS_INPUTS if isinstance(loss, convention)]
    assert conventions, f"{type(loss).__name__} derives from none of the calling conventions of contracts.Loss"
    first, *rest = LOSS_INPUTS[conventions[0]]()
    first.requires_grad_(True)
    value = loss(first, *rest)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert first.grad is not None and torch.isfinite(first.grad).all()
    assert_state_dict_round_trip(lambda: component.factory(component.params()), (first.detach(), *rest))


# Aligners that train one particular component get it in their slot (EVI-MAE reads per-patch tokens).
REQUIRED_SLOTS = {"evi_mae": {"sensor_encoder": {"name": "evi_mae_sensor", "dim": 16}}}


def tiny_model(aligner: str | None = None):
    """A model with every slot filled (decomposed, with a clusterer), so any aligner finds its parts."""
    spec = load_spec(tiny_spec(model={**DETACH_MODEL, **REQUIRED_SLOTS.get(aligner, {})}), REGISTRY)
    source = SimpleNamespace(channel_names=[f"c{i}" for i in range(5)], class_names=["Null", "a", "b", "c"])
    return AlignmentModel(spec.model, REGISTRY, source, sensor_length=32, num_train=4)


def build_aligner(component, model):
    """With the stage loss an aligner takes; aligners that compute their own refuse one (a UserError)."""
    try:
        return build_default(component, model=model, loss=REGISTRY.build("loss", SimpleNamespace(name="infonce")))
    except UserError:
        return build_default(component, model=model, loss=None)


@pytest.mark.parametrize("component", components("aligner"))
def test_aligner_contract(component):
    model = tiny_model(component.name)
    aligner = build_aligner(component, model)
    assert isinstance(aligner, AlignerBase)  # the trainer refuses anything else
    assert not any(p is q for p in aligner.parameters() for q in model.parameters()), "model is not a submodule"
    batch = {
        "video": torch.randint(0, 255, (4, 4, 3, 32, 32), dtype=torch.uint8),
        "sensor": torch.randn(4, 5, 32),
        "label": torch.arange(4),
        "subject": torch.zeros(4, dtype=torch.long),
        "fixture": torch.full((4,), -1),
        "index": torch.arange(4),
    }
    out = aligner(model, batch)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    trained = aligner.trainable_modules(model)
    assert trained and all(isinstance(m, nn.Module) for m in trained)
    assert any(p.grad is not None for m in trained for p in m.parameters())
    assert set(aligner.state_dict()) == set(build_aligner(component, model).state_dict())


@pytest.mark.parametrize("component", components("evaluator"))
def test_evaluator_contract(component, tmp_path: Path):
    rng = np.random.default_rng(0)

    def split(n):
        labels = np.arange(n) % 3
        video = rng.normal(size=(n, 6)).astype(np.float32)
        video /= np.linalg.norm(video, axis=1, keepdims=True)
        return EmbeddingSet(
            probe=rng.normal(size=(n, 8)).astype(np.float32),
            video=video,
            sensor=video.copy(),
            labels=labels,
            subjects=np.zeros(n, int),
            fixtures=labels.copy(),
            recordings=np.arange(n),  # one window per recording
        )

    evaluator = build_default(component)
    assert isinstance(evaluator, Evaluator)
    result = evaluator.evaluate(split(30), split(12), EvalContext(["a", "b", "c"], tmp_path, seed=0))
    assert isinstance(result, EvalResult) and result.metrics
    assert all(np.isfinite(v) for v in result.metrics.values())
    assert all(Path(p).is_file() for p in result.plots)


@pytest.mark.parametrize("component", components("clusterer"))
def test_clusterer_contract(component):
    """Every member stage 1 uses (contracts.Clusterer), in its order of use, then a state_dict round trip."""
    clusterer = build_default(component, num_samples=20, dim=8)
    assert isinstance(clusterer, nn.Module) and isinstance(clusterer, Clusterer)
    labels = clusterer.assign(torch.randn(5, 8))
    assert labels.shape == (5,) and labels.dtype == torch.int64
    k = clusterer.k
    clusterer.initialize(torch.randn(20, 8, generator=torch.Generator().manual_seed(0)), seed=0)
    assert clusterer.bank.shape == (20, 8) and clusterer.labels.shape == (20,) and clusterer.centroids.shape == (k, 8)
    sensor = torch.randn(3, 5, 32)
    assert clusterer.augment(sensor, torch.Generator().manual_seed(0)).shape == sensor.shape
    features = torch.randn(5, 8)
    assert clusterer.logits(features).shape == (5, k)
    weights = clusterer.class_weights()
    assert weights.shape == (k,) and torch.isfinite(weights).all() and (weights > 0).all()
    changed = clusterer.update_bank(torch.arange(5), features)
    assert isinstance(changed, float) and 0 <= changed <= 1
    clusterer.update_centroids()
    sizes = clusterer.sizes()
    assert sizes.shape == (k,) and int(sizes.sum()) == 20  # (a label >= k would lengthen the bincount)
    confident = clusterer.confidence(0.75)
    assert confident.shape == (20,) and confident.dtype == torch.bool
    restored = build_default(component, num_samples=20, dim=8)
    restored.load_state_dict(clusterer.state_dict())
    assert torch.equal(restored.logits(features), clusterer.logits(features))
    assert torch.equal(restored.labels, clusterer.labels)


def report_hooks():
    found = HOST.manager.hook.detach_report_sections.get_hookimpls()
    return [pytest.param(impl, id=impl.plugin_name) for impl in found] or [pytest.param(None, id="none-implemented")]


@pytest.mark.parametrize("impl", report_hooks())
def test_report_sections_contract(impl, tmp_path: Path):
    """A plugin's `detach_report_sections` on a run with nothing (no records, no summary): a list of Sections
    that render, under keys of their own (neither the core's nor repeated)."""
    if impl is None:
        pytest.skip("no plugin implements detach_report_sections")
    context = ReportContext(records=[], summary={}, run_path=tmp_path, out=tmp_path / "plots" / "report")
    sections = impl.function(context=context)
    assert isinstance(sections, list) and all(isinstance(s, Section) for s in sections)
    keys = [s.key for s in sections]
    assert len(set(keys)) == len(keys) and not set(keys) & {key for key, _ in SECTIONS}
    assert all(s.render().startswith("<section id=") for s in sections)
