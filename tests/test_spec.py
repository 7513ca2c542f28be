"""Spec validation, overrides, uid and schema: errors name the path, the bad value and the choices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_spec

from detach_framework.errors import UserError
from detach_framework.spec import apply_override, json_schema, load_spec

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "experiment.schema.json"


def test_tiny_spec_validates_with_defaults(registry):
    spec = load_spec(tiny_spec(), registry)
    assert spec.model.sensor_encoder.dim == 16
    assert spec.model.sensor_encoder.kernels == [10, 5, 5]  # default filled in
    assert spec.stages[0].optimizer.weight_decay == 1e-4


def test_uid_ignores_runtime_but_not_results(registry):
    base = load_spec(tiny_spec(), registry)
    assert load_spec(tiny_spec(), registry, ["data.num_workers=2", "runtime.device=auto", "name=x"]).uid == base.uid
    assert load_spec(tiny_spec(), registry, ["seed=8"]).uid != base.uid
    assert load_spec(tiny_spec(), registry, ["stages.0.optimizer.lr=0.01"]).uid != base.uid
    assert base.uid.startswith("synthetic_kitchen-small_cnn-imu2clip_sensor-global_contrastive-")


def test_overrides_are_yaml_typed_with_list_indices(registry):
    spec = load_spec(
        tiny_spec(),
        registry,
        [
            "stages.0.epochs=5",
            "model.video_backbone.channels=[4, 4, 8, 8]",
            "eval.evaluators.0.epochs=3",
            "runtime.tensorboard=true",
        ],
    )
    assert spec.stages[0].epochs == 5
    assert spec.model.video_backbone.channels == [4, 4, 8, 8]
    assert spec.eval.evaluators[0].epochs == 3
    assert spec.runtime.tensorboard is True


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "model.sensor_encoder.name=imu2clip_sensr",
            "model.sensor_encoder.name: unknown sensor_encoder 'imu2clip_sensr'; did you mean 'imu2clip_sensor'? "
            "installed: ",
        ),
        (
            "model.sensor_encoder.dimm=3",
            "model.sensor_encoder.dimm: unknown key 'dimm'; did you mean 'dim'? allowed keys: channels, dim",
        ),
        ("stages.0.epochs=abc", "stages.0.epochs: Input should be a valid integer"),
        ("data.frame_size=-1", "data.frame_size: Input should be greater than or equal to 16 (got -1)"),
        (
            "eval.evaluators.1.name=linear_prob",
            "eval.evaluators.1.name: unknown evaluator 'linear_prob'; did you mean 'linear_probe'?",
        ),
        ("stages.0.aligner.name=nope", "stages.0.aligner.name: unknown aligner 'nope'; installed:"),
        ("datta.frames=3", "datta: unknown key 'datta'; did you mean 'data'?"),
    ],
)
def test_validation_errors_name_path_value_and_choices(registry, override, expected):
    with pytest.raises(UserError) as info:
        load_spec(tiny_spec(), registry, [override])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("stages.4.epochs=1", "index 4 out of range at 'stages.4' (length 1)"),
        ("seed.value=1", "'seed' is a int, it has no key 'value'"),
        ("stages.x.epochs=1", "'stages.x' indexes a list, expected an integer index"),
        ("no_equals_sign", "expected key.path=value"),
    ],
)
def test_bad_override_paths(override, expected):
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        apply_override(tiny_spec(), override)


def test_missing_and_malformed_spec_files(registry, tmp_path):
    with pytest.raises(UserError, match="spec file not found: .*absent.yaml"):
        load_spec(tmp_path / "absent.yaml", registry)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(UserError, match="bad.yaml: line 2.*invalid YAML"):
        load_spec(bad, registry)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(UserError, match="expected a mapping"):
        load_spec(scalar, registry)


def test_duplicate_stage_names_rejected(registry):
    spec = tiny_spec()
    spec["stages"] = spec["stages"] * 2
    with pytest.raises(UserError, match="stage names must be unique, repeated: align"):
        load_spec(spec, registry)


def test_schema_file_is_current():
    """Regenerate with `DETACH_DISABLE_PLUGIN_AUTOLOAD=1 detach schema` when this fails."""
    from detach_framework.plugins import load_plugins

    builtins = load_plugins(autoload=False)
    assert json.loads(SCHEMA.read_text()) == json_schema(builtins.registry), "schemas/ is stale: run `detach schema`"


def test_example_specs_reference_schema_and_validate(registry):
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        first = path.read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=../schemas/experiment.schema.json", path.name
        load_spec(path, registry)


def test_schema_lists_registered_components():
    schema = json.loads(SCHEMA.read_text())
    text = json.dumps(schema)
    for name in ("imu2clip_sensor", "small_cnn", "timm", "synthetic_kitchen", "linear_probe", "infonce"):
        assert f'"const": "{name}"' in text or f'"enum": ["{name}"]' in text, name
    assert yaml.safe_load(yaml.safe_dump(schema)) == schema
