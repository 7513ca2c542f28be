"""The CLI: each user mistake is one line on stderr and exit code 2; --debug shows the traceback."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from cli_helpers import QUICKSTART, assert_one_line_error, run

from detach_framework import plugins as plugin_module


def test_validate_ok(capsys):
    code, out, _ = run(capsys, "validate", QUICKSTART)
    assert code == 0 and "uid synthetic_kitchen-small_cnn-detach_sensor_spatial-detach_spatial-detach_temporal-" in out


def test_validate_unknown_component_names_path_choices_and_closest(capsys):
    code, _, err = run(capsys, "validate", QUICKSTART, "model.sensor_encoder.name=nope")
    assert_one_line_error(
        code, err, "model.sensor_encoder.name", "unknown sensor_encoder 'nope'", "installed: ", "imu2clip_sensor"
    )
    code, _, err = run(capsys, "validate", QUICKSTART, "model.sensor_encoder.name=imu2clip_sensr")
    assert_one_line_error(code, err, "did you mean 'imu2clip_sensor'?")


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (
            ["validate", QUICKSTART, "model.sensor_encoder.dimm=1"],
            ["unknown key 'dimm'", "did you mean 'dim'?"],
        ),
        (["validate", QUICKSTART, "stages.0.epochs=many"], ["stages.0.epochs", "valid integer", "'many'"]),
        (["validate", "missing-spec.yaml"], ["spec file not found: missing-spec.yaml"]),
        (["validate", QUICKSTART, "stages.9.epochs=1"], ["index 9 out of range"]),
        (["components", "lossy"], ["unknown component kind 'lossy'", "did you mean 'loss'?"]),
        (["eval", "no-such-run"], ["not a run directory"]),
        (["data", "synth", "--preset", "huge", "--out", "x"], ["--preset huge"]),
    ],
)
def test_user_errors_are_one_line_exit_2(capsys, argv, fragments):
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *fragments)


def test_non_empty_run_dir_is_refused(capsys, tmp_path):
    (tmp_path / "precious.txt").write_text("results")
    code, _, err = run(capsys, "train", QUICKSTART, "--run-dir", str(tmp_path))
    assert_one_line_error(code, err, "is not empty", "--resume", "--overwrite")
    assert (tmp_path / "precious.txt").read_text() == "results"


def test_debug_shows_traceback(capsys):
    code, _, err = run(capsys, "--debug", "validate", "missing-spec.yaml")
    assert code == 2 and "Traceback" in err


def test_plugins_lists_a_broken_plugin_and_the_rest(capsys, monkeypatch, tmp_path):
    (tmp_path / "fake_broken_cli.py").write_text("raise ImportError('needs a missing library')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real = plugin_module.entry_points

    def entry_points(group):
        broken = SimpleNamespace(name="broken", value="fake_broken_cli", dist=SimpleNamespace(name="third-party"))
        return [*real(group=group), broken]

    monkeypatch.setattr(plugin_module, "entry_points", entry_points)
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    assert "failed" in out and "ImportError: needs a missing library" in out
    assert out.count("loaded") >= 4
    code, _, err = run(capsys, "validate", QUICKSTART, "model.sensor_encoder.name=nope")
    assert_one_line_error(code, err, "failed to load: broken (ImportError: needs a missing library)")


def test_components_lists_kinds(capsys):
    code, out, _ = run(capsys, "components", "sensor_encoder")
    assert code == 0 and "imu2clip_sensor" in out and "small_cnn" not in out


def test_schema_writes_file(capsys, tmp_path):
    target = tmp_path / "s.json"
    code, _, _ = run(capsys, "schema", "--out", str(target))
    assert code == 0 and '"title": "detach-framework experiment spec"' in target.read_text()
