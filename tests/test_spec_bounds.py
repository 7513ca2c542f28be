"""Spec bounds (issue 12, cases 4, 5 and 7): duplicate YAML keys, sizes that would exhaust memory, floats that
are not finite and embeddings that cannot meet are refused by `detach validate` in one line naming the field,
and a synthetic kitchen too large for the machine is refused before anything is generated."""

from __future__ import annotations

import math
import time
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from detach_framework import cli
from detach_framework.cli import main
from detach_framework.data.settings import DataSettings
from detach_framework.engine.study import load_study
from detach_framework.errors import PluginError, UserError
from detach_framework.registry import ComponentParams, Registry, reachable_models
from detach_framework.spec import build_spec_model, read_yaml
from detach_plugins.datasets import synthetic_kitchen as kitchen_module
from detach_plugins.datasets.synthetic_kitchen import SyntheticKitchenParams, build_synthetic_kitchen
from detach_plugins.datasets.synthetic_kitchen.dataset import estimated_bytes

QUICKSTART = "examples/quickstart.yaml"  # DETACH: both embedding pairs, a clusterer, a stage loss


@pytest.fixture(scope="module", autouse=True)
def shared_host(host):
    """Every CLI call reuses the session's plugin host (the tests measure validation, not plugin imports)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "_host", lambda args: host)
        yield


def validate_error(capsys, spec: str, *overrides: str) -> str:
    """`detach validate` must exit 2 with exactly one line on stderr; returns that line."""
    assert main(["validate", spec, *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("detach validate: error: ")
    return err


# ---- case 4: duplicate keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "first", "second"),
    [
        ("name: a\nseed: 1\nname: b\n", "name", 1, 3),
        ("data:\n  frames: 4\n  frame_size: 32\n  frames: 8\nmodel: {}\n", "frames", 2, 4),
        ("stages:\n  - name: a\n    optimizer: {lr: 1.0, lr: 2.0}\n", "lr", 3, 3),
    ],
    ids=["top_level", "nested", "flow_mapping_in_a_list"],
)
def test_duplicate_key_is_one_line_naming_the_key_and_both_lines(tmp_path, capsys, text, key, first, second):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    err = validate_error(capsys, str(spec))
    assert f"{spec}: line {second}, column" in err
    assert f"duplicate key '{key}' (first on line {first})" in err


def test_merge_keys_may_still_be_overridden(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("base: &b {lr: 1.0, wd: 0.0}\nstage: {<<: *b, lr: 2.0}\n")
    assert read_yaml(path)["stage"] == {"lr": 2.0, "wd": 0.0}


def test_study_files_refuse_duplicate_keys_too(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("name: s\nbase: spec.yaml\nvariants:\n  a: {}\n  a: {seed: 1}\n")
    with pytest.raises(UserError, match=r"line 5, column 3: invalid YAML: duplicate key 'a' \(first on line 4\)"):
        load_study(study)


# ---- cases 5 and 7: bounded sizes, finite floats, seeds -------------------------------------------------


@pytest.mark.parametrize(
    ("override", "field", "problem"),
    [
        ("data.dataset.subjects=1000000000000", "data.dataset.subjects", "less than or equal to 1000"),
        ("data.dataset.recording_seconds=.inf", "data.dataset.recording_seconds", "finite number"),
        ("data.dataset.recordings_per_subject=1000000", "data.dataset.recordings_per_subject", "less than"),
        ("data.dataset.sensor_noise_std=.nan", "data.dataset.sensor_noise_std", "finite number"),
        ("data.stride_seconds=.inf", "data.stride_seconds", "finite number"),
        ("data.stride_seconds=1.0e-9", "data.stride_seconds", "greater than or equal to 0.01"),
        ("data.batch_size=100000000", "data.batch_size", "less than"),
        ("data.sensor_length=65536", "data.sensor_length", "less than or equal to 8192"),
        ("stages.0.optimizer.lr=.inf", "stages.0.optimizer.lr", "finite number"),
        ("stages.0.optimizer.lr=-.inf", "stages.0.optimizer.lr", "finite number"),
        ("stages.0.optimizer.lr=.nan", "stages.0.optimizer.lr", "finite number"),
        ("stages.0.optimizer.lr=inf", "stages.0.optimizer.lr", "finite number"),  # a string pydantic would parse
        ("stages.0.epochs=1000000000", "stages.0.epochs", "less than"),
        ("stages.1.loss.temperature=.nan", "stages.1.loss.temperature", "finite number"),
        ("stages.1.aligner.lambda_hard=.inf", "stages.1.aligner.lambda_hard", "finite number"),
        ("eval.evaluators.0.lr=.inf", "eval.evaluators.0.lr", "finite number"),
        ("seed=1.0e+30", "seed", "exceeded maximum size"),
        ("seed=1.0e+18", "seed", "less than or equal to 4294967295"),
        ("seed=4294967296", "seed", "less than or equal to 4294967295"),
        ("model.clusterer.k=1.0e+12", "model.clusterer.k", "less than or equal to 1024"),
        ("model.video_head.dim=1.0e+12", "model.video_head.dim", "less than or equal to 8192"),
        ("model.sensor_temporal_encoder.gru_hidden=1000000", "model.sensor_temporal_encoder.gru_hidden", "less"),
        ("model.video_backbone.channels=[16, 32, 64, 1000000]", "model.video_backbone.channels.3", "less"),
        ("model.video_temporal_head.channels=[8, 16]", "model.video_temporal_head.channels", "at least 3"),
    ],
)
def test_unbounded_or_non_finite_value_is_refused_naming_the_field(capsys, override, field, problem):
    err = validate_error(capsys, QUICKSTART, override)
    assert f"{QUICKSTART}: {field}: " in err and problem in err, err


def _float_poison(annotation: Any, value: float) -> Any:
    """`value` shaped for a field of this annotation (a list of floats gets [value]); None when it holds no float."""
    if annotation is float:
        return value
    for arg in get_args(annotation):
        inner = _float_poison(arg, value)
        if inner is not None:
            return [inner] if get_origin(annotation) is list else inner
    return None


def test_every_float_of_the_spec_and_every_registered_component_must_be_finite(registry):
    """Walks every model a spec can hold (core sections, each registered component's slot model, nested
    models such as preprocessing steps) and feeds each float field inf, -inf and NaN."""
    checked: set[str] = set()
    for model in reachable_models(build_spec_model(registry)):
        for name, field in model.model_fields.items():
            for value in (math.inf, -math.inf, math.nan):
                poison = _float_poison(field.annotation, value)
                if poison is None:
                    break
                with pytest.raises(ValidationError) as caught:
                    model.model_validate({name: poison})
                types = {err["type"] for err in caught.value.errors() if err["loc"][0] == name}
                assert "finite_number" in types, (model.__name__, name, value, types)
                checked.add(name)
    # The walk reaches the core, every plugin kind and nested models (not an empty loop).
    expected = {"lr", "weight_decay", "window_seconds", "temperature", "recording_seconds", "noise_std", "min_std"}
    assert expected <= checked, expected - checked


def test_registry_refuses_params_that_allow_inf_or_nan_at_any_depth():
    class Lax(ComponentParams):
        model_config = ConfigDict(allow_inf_nan=True)
        rate: float = 0.1

    class Step(BaseModel):
        model_config = ConfigDict(extra="forbid")
        gain: float = 1.0

    class Holder(ComponentParams):
        steps: list[Step] = []

    for params, named in ((Lax, "Lax"), (Holder, "Step")):
        with pytest.raises(PluginError, match=f"{named} must set allow_inf_nan=False"):
            Registry().add(kind="loss", name="lax", factory=lambda p: p, params=params)


# ---- case 7: embeddings that cannot meet ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "override", "video", "sensor"),
    [
        (QUICKSTART, "model.video_head.dim=64", "video_head.dim is 64", "sensor_encoder.dim is 128"),
        (QUICKSTART, "model.sensor_temporal_encoder.dim=256", "video_temporal_head.dim is 128", "is 256"),
        ("examples/imu2clip_quickstart.yaml", "model.sensor_encoder.dim=64", "video_head.dim is 128", "is 64"),
    ],
)
def test_embedding_sizes_that_cannot_meet_are_refused_naming_both_fields(capsys, spec, override, video, sensor):
    err = validate_error(capsys, spec, override)
    assert f"{spec}: model: " in err and video in err and sensor in err, err


def test_embedding_field_is_declared_only_where_it_can_be_checked():
    class Params(ComponentParams):
        dim: int = 8

    with pytest.raises(PluginError, match="only a video_head or sensor_encoder declares one"):
        Registry().add(kind="loss", name="x", factory=lambda p: p, params=Params, embedding_field="dim")
    with pytest.raises(PluginError, match="it must name a field of Params"):
        Registry().add(kind="video_head", name="x", factory=lambda p: p, params=Params, embedding_field="width")


# ---- case 5: the synthetic kitchen's size, before generating it -------------------------------------------


def test_kitchen_too_large_for_the_machine_is_refused_at_once(monkeypatch):
    def generation_started(*args):
        raise AssertionError("the kitchen started generating")  # before the estimate: this, not a long hang

    monkeypatch.setattr(kitchen_module, "generate_recordings", generation_started)
    params = SyntheticKitchenParams(subjects=1000, recordings_per_subject=1000, recording_seconds=3600.0)
    start = time.monotonic()
    with pytest.raises(UserError) as caught:
        build_synthetic_kitchen(params, DataSettings())
    assert time.monotonic() - start < 1.0  # refused before generating a single recording
    message = str(caught.value)
    assert "\n" not in message
    for named in ("subjects=1000", "recordings_per_subject=1000", "recording_seconds=3600", "data.sensor_length=128"):
        assert named in message
    assert "GB of memory, more than 50% of this machine's" in message


def test_kitchen_estimate_covers_what_a_built_kitchen_holds():
    data = DataSettings(frames=2, frame_size=16, sensor_length=64)
    params = SyntheticKitchenParams(preset="tiny")
    kitchen = build_synthetic_kitchen(params, data)
    held = sum(r.sensor.nbytes for r in kitchen.recordings)
    held += sum(kitchen.split(name).sensor.nbytes for name in ("train", "val", "test"))
    assert held <= estimated_bytes(params.resolve_knobs(), data) <= 10 * held
