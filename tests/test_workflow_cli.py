"""The researcher's workflow on the command line: swapping a component by name, reading a component's params,
printing the resolved spec, dry-running a study; and the housekeeping around them (LICENSE, dependencies,
TensorBoard)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Literal

import pytest
import yaml
from cli_helpers import QUICKSTART, ROOT, run
from conftest import tiny_spec
from pydantic import Field

from detach_framework.errors import UserError
from detach_framework.registry import ComponentParams, describe_params
from detach_framework.spec import Experiment, apply_overrides, dump_spec, load_spec


def notes_of(registry, *overrides, source=QUICKSTART):
    notes: list[str] = []
    return load_spec(source, registry, list(overrides), note=notes.append), notes


# -- swapping a component by name ---------------------------------------------------------------------------


def test_swapping_the_backbone_starts_from_the_new_defaults(capsys):
    code, out, err = run(capsys, "validate", QUICKSTART, "model.video_backbone.name=timm")
    assert code == 0 and "uid synthetic_kitchen-timm-" in out
    assert err.strip().splitlines() == ["note: model.video_backbone: switching small_cnn -> timm dropped channels"]


@pytest.mark.parametrize("name_first", [True, False])
def test_params_of_the_same_command_line_apply_in_any_order(registry, name_first):
    swap, params = (
        "model.video_backbone.name=timm",
        ["model.video_backbone.pool=true", "model.video_backbone.model=test_vit"],
    )
    spec, notes = notes_of(registry, *([swap, *params] if name_first else [*params, swap]))
    backbone = spec.model.video_backbone
    assert (backbone.name, backbone.pool, backbone.model, backbone.img_size) == ("timm", True, "test_vit", None)
    assert notes == ["model.video_backbone: switching small_cnn -> timm dropped channels"]


def test_a_param_given_with_the_swap_is_kept_not_dropped(registry):
    # quickstart's sensor encoder sets only `dim`; given again, nothing is dropped and the embeddings still meet
    spec, notes = notes_of(registry, "model.sensor_encoder.dim=128", "model.sensor_encoder.name=imu2clip_sensor")
    assert spec.model.sensor_encoder.name == "imu2clip_sensor" and spec.model.sensor_encoder.dim == 128
    assert spec.model.sensor_encoder.gru_hidden == 256 and notes == []  # imu2clip_sensor's own default


def test_an_old_param_given_on_the_command_line_is_still_refused(capsys):
    code, _, err = run(
        capsys, "validate", QUICKSTART, "model.video_backbone.channels=[8,8,8,8]", "model.video_backbone.name=timm"
    )
    assert code == 2 and "model.video_backbone.channels: unknown key 'channels'" in err


def test_a_swap_that_leaves_the_spec_invalid_explains_itself_in_the_error_line(capsys):
    code, _, err = run(capsys, "validate", QUICKSTART, "model.sensor_encoder.name=imu2clip_sensor")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "video_head.dim is 128 but sensor_encoder.dim is 256" in err
    assert err.rstrip().endswith(
        "(note: model.sensor_encoder: switching detach_sensor_spatial -> imu2clip_sensor dropped dim)"
    )


def test_an_unknown_name_drops_nothing_and_names_the_choices(capsys):
    code, _, err = run(capsys, "validate", QUICKSTART, "model.video_backbone.name=timmm")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "unknown video_backbone 'timmm'; did you mean 'timm'?" in err and "note" not in err


def test_stage_and_evaluator_slots_swap_too(registry):
    spec, notes = notes_of(registry, "stages.1.aligner.name=detach_spatial", "eval.evaluators.1.name=linear_probe")
    assert spec.stages[1].aligner.name == "detach_spatial" and spec.eval.evaluators[1].name == "linear_probe"
    assert notes == [
        "stages.1.aligner: switching detach_temporal -> detach_spatial dropped momentum, lambda_hard",
        "eval.evaluators.1: switching retrieval -> linear_probe dropped ks",
    ]


def test_same_name_or_a_non_component_name_drops_nothing(registry):
    spec, notes = notes_of(registry, "model.video_backbone.name=small_cnn", "stages.0.name=warm", "name=other")
    assert spec.model.video_backbone.channels == [16, 32, 64, 64]
    assert spec.stages[0].name == "warm" and spec.stages[0].epochs == 5 and spec.name == "other" and notes == []


def test_a_null_slot_is_filled_by_its_name():
    data = {"model": {"clusterer": None}}
    apply_overrides(data, ["model.clusterer.name=odc", "model.clusterer.k=3"])
    assert data == {"model": {"clusterer": {"name": "odc", "k": 3}}}


def test_a_study_variant_notes_its_swap_once(tmp_path, capsys):
    study = write_study(tmp_path, {"vit": {"model.video_backbone.name": "timm"}}, seeds=(1, 2))
    code, out, err = run(capsys, "ablate", study, "--out", str(tmp_path / "out"), "--dry-run")
    assert code == 0, err
    assert err.strip().splitlines() == [
        "note: variant 'vit': model.video_backbone: switching small_cnn -> timm dropped channels"
    ]


# -- detach components KIND NAME -----------------------------------------------------------------------------


def test_components_kind_name_lists_every_param(capsys, registry):
    code, out, _ = run(capsys, "components", "video_backbone", "timm")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("video_backbone 'timm' from plugin 'backbones'")
    assert lines[1].split() == ["param", "type", "default", "description"]
    params = registry.get("video_backbone", "timm").params.model_fields
    assert [line.split()[0] for line in lines[2:]] == list(params)
    img_size = next(line for line in lines if line.startswith("img_size"))
    assert "int | null (> 0, <= 4096)" in img_size and " null " in img_size and "fixed size (ViTs)" in img_size
    code, out, _ = run(capsys, "components", "video_backbone", "small_cnn")
    assert "list[int (>= 1, <= 8192)] (length 4)  [64, 128, 256, 256]" in out


def test_every_registered_component_describes_every_param(registry):
    for component in registry.components():
        rows = describe_params(component.params)
        assert [row[0] for row in rows] == list(component.params.model_fields), component.name
        assert all(row[1] and row[2] for row in rows), component.name


def test_describe_params_shows_required_literals_and_defaults():
    class Params(ComponentParams):
        size: int = Field(ge=0, description="required,\n  over two lines")
        mode: Literal["a", "b"] = "a"
        scale: float | None = None

    assert describe_params(Params) == [
        ("size", "int (>= 0)", "(required)", "required, over two lines"),
        ("mode", '"a" | "b"', '"a"', "-"),
        ("scale", "float | null", "null", "-"),
    ]


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["components", "video_backbone", "nope"], ["unknown video_backbone 'nope'", "installed: small_cnn, timm"]),
        (["components", "backbone", "timm"], ["unknown component kind 'backbone'", "expected one of: dataset, "]),
    ],
)
def test_components_unknown_kind_or_name_is_one_line(capsys, argv, fragments):
    code, _, err = run(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert all(fragment in err for fragment in fragments), err


# -- detach validate --print ---------------------------------------------------------------------------------


def test_validate_print_writes_the_resolved_spec_on_stdout(capsys, registry, tmp_path):
    code, out, err = run(capsys, "validate", QUICKSTART, "model.video_backbone.name=timm", "--print")
    spec = load_spec(QUICKSTART, registry, ["model.video_backbone.name=timm"], note=None)
    assert code == 0 and out == dump_spec(spec)  # the run directory's spec.yaml, nothing else on stdout
    assert yaml.safe_load(out)["model"]["video_backbone"]["model"] == "resnet18"  # defaults are spelled out
    assert f"uid {spec.uid}" in err
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(out)
    assert load_spec(resolved, registry).uid == spec.uid


# -- detach ablate --dry-run ---------------------------------------------------------------------------------


def write_study(tmp_path, variants, seeds=(1,)):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_spec()))
    study = {"name": "mini", "base": "base.yaml", "seeds": list(seeds), "variants": variants}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return str(tmp_path / "study.yaml")


def test_ablate_dry_run_lists_what_it_would_start_and_skip(tmp_path, capsys, monkeypatch):
    study = write_study(tmp_path, {"low": {"stages.0.optimizer.lr": 1e-4}, "high": {}}, seeds=(1, 2))
    out = tmp_path / "out"
    code, listing, _ = run(capsys, "ablate", study, "--out", str(out), "--dry-run")
    assert code == 0
    lines = listing.splitlines()
    assert lines[0] == "study mini: 4 runs, 4 to run, 0 skipped"
    run_dirs = {}
    for line in lines[1:]:
        match = re.fullmatch(r"run: (\w+) seed (\d) -> (.+)", line)
        assert match, line
        run_dirs[match[1], int(match[2])] = Path(match[3])
    assert set(run_dirs) == {("low", 1), ("low", 2), ("high", 1), ("high", 2)} and not out.exists()

    (run_dirs["low", 1] / "summary.json").parent.mkdir(parents=True)
    (run_dirs["low", 1] / "summary.json").write_text("{}")
    (run_dirs["high", 1] / "checkpoints").mkdir(parents=True)
    (run_dirs["high", 1] / "checkpoints" / "last.pt").write_bytes(b"")
    (run_dirs["high", 2]).mkdir(parents=True)
    (run_dirs["high", 2] / "metrics.jsonl").write_text("")
    monkeypatch.setattr(subprocess, "Popen", None)  # a dry run starts nothing
    code, listing, _ = run(capsys, "ablate", study, "--out", str(out), "--dry-run", "--seeds", "1")
    assert code == 0
    assert listing.splitlines() == [
        "study mini: 4 runs, 1 to run, 3 skipped",
        f"skip (complete): low seed 1 -> {run_dirs['low', 1]}",
        f"skip (seed not in --seeds): low seed 2 -> {run_dirs['low', 2]}",
        f"run (resume): high seed 1 -> {run_dirs['high', 1]}",
        f"skip (seed not in --seeds): high seed 2 -> {run_dirs['high', 2]}",
    ]
    code, listing, _ = run(capsys, "ablate", study, "--out", str(out), "--dry-run")
    assert f"run (replace partial): high seed 2 -> {run_dirs['high', 2]}" in listing


# -- housekeeping --------------------------------------------------------------------------------------------


def test_license_file_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / "LICENSE").read_text()
    assert project["license"] == "MIT" and text.startswith("MIT License")
    assert "Copyright (c) 2026 The detach-framework authors" in text


def test_einops_is_declared_exactly_when_imported():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = any(re.match(r"einops\b", requirement) for requirement in project["dependencies"])
    sources = [*(ROOT / "detach_framework").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]
    imported = [p for p in sources if re.search(r"^\s*(import|from) einops\b", p.read_text(), re.MULTILINE)]
    assert declared == bool(imported), imported


def test_tensorboard_is_off_unless_asked_for():
    assert Experiment.model_fields["runtime"].default_factory().tensorboard is False


def test_tensorboard_asked_for_but_not_installed_refuses_to_train(tmp_path, capsys, monkeypatch):
    original = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else original(name, *a)
    )
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec()))
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", str(spec_file), "runtime.tensorboard=true", "--run-dir", str(run_dir))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "runtime.tensorboard is true but tensorboard is not installed" in err
    assert "pip install 'detach-framework[tensorboard]'" in err and not run_dir.exists()


def test_check_tensorboard_passes_when_off():
    from detach_framework.engine.trainer import check_tensorboard

    check_tensorboard(False)
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(UserError, match="runtime.tensorboard"):
            check_tensorboard(True)
