"""`base:` in spec files, `grid:` in study files, the study schema, and progress lines without a terminal."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import tiny_spec

from detach_framework.cli import main
from detach_framework.engine import session as session_module
from detach_framework.engine.study import StudySpec, _grid_labels, load_study, plan, study_json_schema
from detach_framework.engine.trainer import _clock
from detach_framework.errors import UserError
from detach_framework.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
STUDY_SCHEMA = ROOT / "schemas" / "study.schema.json"


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- base: ------------------------------------------------------------------------------------------------------


def test_base_merges_mappings_and_replaces_lists(tmp_path, registry):
    write(tmp_path / "bases" / "tiny.yaml", tiny_spec())
    stage = {"name": "only", "epochs": 1, "aligner": {"name": "global_contrastive"}, "loss": {"name": "infonce"}}
    child = write(
        tmp_path / "child.yaml",
        {"base": "bases/tiny.yaml", "seed": 3, "data": {"batch_size": 8}, "stages": [stage]},
    )
    spec = load_spec(child, registry)
    assert spec.seed == 3 and spec.data.batch_size == 8
    assert spec.data.frames == 4 and spec.data.dataset.preset == "tiny"  # the rest of `data` from the base
    assert [s.name for s in spec.stages] == ["only"]  # a list is replaced, not merged
    flat = tiny_spec(seed=3, stages=[stage])
    flat["data"]["batch_size"] = 8
    assert spec.uid == load_spec(flat, registry).uid


def test_base_component_swap_starts_from_the_new_component(tmp_path, registry):
    write(tmp_path / "base.yaml", tiny_spec())
    other = next(name for name in registry.names("video_backbone") if name != "small_cnn")
    child = write(tmp_path / "child.yaml", {"base": "base.yaml", "model": {"video_backbone": {"name": other}}})
    spec = load_spec(child, registry)
    assert spec.model.video_backbone.name == other  # small_cnn's `channels` did not follow
    assert spec.model.sensor_encoder.dim == 16
    same = write(tmp_path / "same.yaml", {"base": "base.yaml", "model": {"video_backbone": {"channels": [4, 4, 8, 8]}}})
    assert load_spec(same, registry).model.video_backbone.channels == [4, 4, 8, 8]


def test_validate_with_base_and_overrides(tmp_path, capsys):
    write(tmp_path / "base.yaml", tiny_spec())
    child = write(tmp_path / "child.yaml", {"base": "base.yaml", "name": "child"})
    assert main(["validate", str(child), "seed=5", "--print"]) == 0
    captured = capsys.readouterr()
    resolved = yaml.safe_load(captured.out)
    assert resolved["name"] == "child" and resolved["seed"] == 5 and "base" not in resolved
    assert "is valid; uid synthetic_kitchen-" in captured.err


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"child.yaml": {"base": "child.yaml"}}, "child.yaml: base: child.yaml is this file itself"),
        ({"child.yaml": {"base": "absent.yaml"}}, "child.yaml: base: {tmp}/absent.yaml not found"),
        (
            {"child.yaml": {"base": "a.yaml"}, "a.yaml": {"base": "child.yaml"}},
            "child.yaml: base: {tmp}/a.yaml names this file as its base (a cycle)",
        ),
        (
            {"child.yaml": {"base": "a.yaml"}, "a.yaml": {"base": "tiny.yaml"}},
            "child.yaml: base: {tmp}/a.yaml names a base itself (tiny.yaml); one level of inheritance only",
        ),
        ({"child.yaml": {"base": 3}}, "child.yaml: base: expected the path of a spec file, got 3"),
        # found by the schema fuzzer: a name longer than the file system allows was an OSError traceback
        ({"child.yaml": {"base": "a" * 300}}, "child.yaml: base: '{tmp}/aaaa"),
        ({"child.yaml": {"base": "nul\x00byte"}}, "child.yaml: base: 'nul\\x00byte' is not a usable path"),
    ],
)
def test_bad_bases_are_one_line_errors(tmp_path, registry, files, expected):
    write(tmp_path / "tiny.yaml", tiny_spec())
    for name, data in files.items():
        write(tmp_path / name, data)
    with pytest.raises(UserError) as info:
        load_spec(tmp_path / "child.yaml", registry)
    assert expected.format(tmp=tmp_path.resolve()) in str(info.value) and "\n" not in str(info.value)


def test_a_spec_path_longer_than_the_file_system_allows_is_one_line(registry):
    with pytest.raises(UserError, match=r"^spec file: 'a{100}\.\.\.': File name too long$"):
        load_spec("a" * 300 + ".yaml", registry)


def test_a_dict_spec_cannot_name_a_base(registry):
    with pytest.raises(UserError, match="only a spec file may name a base"):
        load_spec({**tiny_spec(), "base": "other.yaml"}, registry)


def test_experiment_schema_allows_base_and_partial_specs():
    schema = json.loads((ROOT / "schemas" / "experiment.schema.json").read_text())
    assert schema["properties"]["base"]["type"] == "string"
    assert schema["if"] == {"required": ["base"]} and schema["else"]["required"] == ["data", "model", "stages"]


# -- grid: ------------------------------------------------------------------------------------------------------


def write_study(tmp_path: Path, **fields) -> Path:
    write(tmp_path / "base.yaml", tiny_spec())
    return write(tmp_path / "study.yaml", {"name": "grid", "base": "base.yaml", "seeds": [1, 2], **fields})


def test_grid_is_the_cartesian_product_named_by_its_values(tmp_path, registry):
    grid = {"stages.0.optimizer.lr": [0.001, 0.0001], "stages.0.epochs": [1, 3]}
    study, runs = plan(write_study(tmp_path, grid=grid), registry, tmp_path / "out")
    names = ["lr=0.001,epochs=1", "lr=0.001,epochs=3", "lr=0.0001,epochs=1", "lr=0.0001,epochs=3"]
    assert list(study.all_variants()) == names
    assert len(runs) == 8 and len({r.run_dir for r in runs}) == 8
    by_name = {(r.variant, r.seed): r.spec for r in runs}
    spec = by_name["lr=0.0001,epochs=3", 2]
    assert spec.stages[0].optimizer.lr == 0.0001 and spec.stages[0].epochs == 3 and spec.seed == 2


def test_grid_crosses_the_variants(tmp_path, registry):
    path = write_study(
        tmp_path,
        variants={"small": {"data.batch_size": 8}, "large": {}},
        grid={"data.frames": [2, 4], "base": ["base.yaml"]},
    )
    study = load_study(path)
    assert list(study.all_variants()) == [
        "small,frames=2,base=base.yaml",
        "small,frames=4,base=base.yaml",
        "large,frames=2,base=base.yaml",
        "large,frames=4,base=base.yaml",
    ]
    assert study.all_variants()["small,frames=2,base=base.yaml"] == {
        "data.batch_size": 8,
        "data.frames": 2,
        "base": "base.yaml",
    }
    _, runs = plan(path, registry, tmp_path / "out")
    assert {(r.spec.data.batch_size, r.spec.data.frames) for r in runs} == {(8, 2), (8, 4), (16, 2), (16, 4)}


def test_grid_labels_are_the_shortest_unambiguous_suffix():
    keys = ["stages.0.epochs", "stages.1.epochs", "stages.0.optimizer.lr", "seed"]
    assert _grid_labels(keys) == {
        "stages.0.epochs": "0.epochs",
        "stages.1.epochs": "1.epochs",
        "stages.0.optimizer.lr": "lr",
        "seed": "seed",
    }


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "a study needs variants, a grid, or both"),
        ({"grid": {"seed": []}}, "grid.seed: List should have at least 1 item"),
        ({"grid": {"data.frames": [4, "4"]}}, "several combinations are named 'frames=4'"),
        ({"grid": {"data.frames": 4}}, "grid.data.frames: Input should be a valid list"),
    ],
)
def test_bad_grids_are_one_line_errors(tmp_path, fields, expected):
    with pytest.raises(UserError) as info:
        load_study(write_study(tmp_path, **fields))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_bad_grid_values_name_the_variant(tmp_path, registry):
    with pytest.raises(UserError, match=r"variant 'frames=1' \(seed 1\).*data.frames"):
        plan(write_study(tmp_path, grid={"data.frames": [1]}), registry, tmp_path / "out")


# -- the study schema ---------------------------------------------------------------------------------------------


def test_study_schema_file_is_current():
    """Regenerate with `DETACH_DISABLE_PLUGIN_AUTOLOAD=1 detach schema` when this fails."""
    assert json.loads(STUDY_SCHEMA.read_text()) == study_json_schema(), "schemas/ is stale: run `detach schema`"


def test_study_schema_describes_the_study_file():
    schema = study_json_schema()
    assert schema["title"] == "detach-framework study file" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(StudySpec.model_fields)
    assert schema["anyOf"] == [{"required": ["variants"]}, {"required": ["grid"]}]
    assert schema["properties"]["grid"]["additionalProperties"]["minItems"] == 1


def test_schema_command_writes_both_schemas(tmp_path, capsys):
    assert main(["schema", "--out", str(tmp_path / "spec.json")]) == 0
    assert json.loads((tmp_path / "study.schema.json").read_text()) == study_json_schema()
    assert json.loads((tmp_path / "spec.json").read_text())["title"] == "detach-framework experiment spec"
    assert main(["schema", "--out", str(tmp_path / "study.schema.json")]) == 2
    assert "that name is the study schema's" in capsys.readouterr().err


# -- progress without a terminal ------------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_epoch_lines_only_when_auto_lacks_a_terminal(monkeypatch):
    monkeypatch.setattr(session_module.sys, "stderr", io.StringIO())
    assert session_module.epoch_lines_enabled("auto") and not session_module.progress_enabled("auto")
    assert not session_module.epoch_lines_enabled("off") and not session_module.epoch_lines_enabled("on")
    monkeypatch.setattr(session_module.sys, "stderr", FakeTerminal())
    assert not session_module.epoch_lines_enabled("auto") and session_module.progress_enabled("auto")


def test_clock():
    assert [_clock(s) for s in (0, 59.6, 61, 3725.2)] == ["0:00:00", "0:01:00", "0:01:01", "1:02:05"]


def test_training_without_a_terminal_prints_one_line_per_epoch(tmp_path, capsys):
    spec = tiny_spec(runtime={"device": "cpu", "progress": "auto", "tensorboard": False})
    spec["eval"]["evaluators"] = [{"name": "retrieval"}]
    path = write(tmp_path / "spec.yaml", spec)
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if " epoch " in line]
    pattern = r"align epoch {}/2: train_loss \d+\.\d{{4}} val_loss \d+\.\d{{4}} \(\d+\.\d s; run ETA \d:\d\d:\d\d\)"
    assert len(lines) == 2, lines
    for epoch, line in enumerate(lines, start=1):
        assert re.fullmatch(pattern.format(epoch), line), line
    assert lines[1].endswith("run ETA 0:00:00)")


def test_progress_off_prints_no_epoch_lines(tmp_path, capsys):
    spec = tiny_spec()
    spec["stages"][0]["epochs"] = 1
    spec["eval"]["evaluators"] = [{"name": "retrieval"}]
    assert main(["train", str(write(tmp_path / "spec.yaml", spec)), "--run-dir", str(tmp_path / "run")]) == 0
    assert " epoch " not in capsys.readouterr().err
