"""`detach export` / `detach predict` and the Python API: the exported sensor encoder reproduces the run's own
embeddings and test predictions without the dataset, and every bad export or input is one line, exit 2."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error
from conftest import tiny_spec

from detach_framework.cli import main
from detach_framework.engine.evaluate import embed_split, load_evaluated_checkpoint
from detach_framework.engine.rundir import RunDirectory
from detach_framework.engine.session import Session
from detach_framework.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
RATE_HZ = 30.0  # the synthetic kitchen's sensor rate


def readme_api_example() -> str:
    """The README's Python API block, run as written from the repository root."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API, export and predict") :]
    return section[section.index("```python\n") + len("```python\n") : section.index("\n```\n")]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def exported(tmp_path_factory, host):
    """A tiny run trained through the API, exported through the CLI, its kitchen written to disk, and the
    run's own test-split embeddings, labels and window positions (computed with the dataset)."""
    from detach_framework import api

    tmp = tmp_path_factory.mktemp("export")
    result = api.train(tiny_spec(), run_dir=tmp / "run")
    assert result.summary is not None and (tmp / "run" / "summary.json").is_file()
    assert main(["export", str(tmp / "run"), "--out", str(tmp / "export")]) == 0
    assert main(["data", "synth", "--preset", "tiny", "--seed", "7", "--out", str(tmp / "kitchen")]) == 0
    spec = load_spec(tmp / "run" / "spec.yaml", host.registry)
    session = Session.from_spec(spec, host)
    load_evaluated_checkpoint(session, RunDirectory(tmp / "run"))
    train, test = embed_split(session, "train"), embed_split(session, "test")
    split = session.source.split("test")
    evaluator = host.registry.build("evaluator", spec.eval.evaluators[0])  # the run's linear probe
    probs = evaluator.params.fit_probe(train.probe, train.labels, test.probe, len(session.source.class_names), 7)
    return {
        "tmp": tmp,
        "run": tmp / "run",
        "export": tmp / "export",
        "kitchen": tmp / "kitchen",
        "summary": result.summary,
        "test": test,
        "test_pred": probs.argmax(axis=1),
        "recording_ids": [session.source.recordings[r].rec_id for r in split.recording],
        "starts": split.start_seconds,
    }


def recording_file(exported, rec_id: int) -> Path:
    return exported["kitchen"] / f"recording_{rec_id:04d}.npz"


def raw_test_windows(exported) -> np.ndarray:
    """The raw [N, C, 60] windows of the run's test split, cut from the kitchen's files as the dataset cuts them."""
    n = int(round(2.0 * RATE_HZ))
    windows = []
    for rec_id, start in zip(exported["recording_ids"], exported["starts"], strict=True):
        with np.load(recording_file(exported, rec_id)) as npz:
            sensor = npz["sensor"]
        k0 = min(int(np.rint(start * RATE_HZ)), sensor.shape[1] - n)
        windows.append(sensor[:, k0 : k0 + n])
    return np.stack(windows).astype(np.float64)


def test_export_directory_holds_safetensors_and_one_json(exported):
    names = sorted(p.name for p in exported["export"].iterdir())
    assert names == ["export.json", "sensor_encoder.safetensors"]
    manifest = json.loads((exported["export"] / "export.json").read_text())
    assert manifest["format"] == "detach-sensor-export" and manifest["version"] == 1
    assert manifest["sensor_encoder"]["name"] == "imu2clip_sensor" and manifest["sensor_temporal_encoder"] is None
    assert manifest["sampling_rate_hz"] == RATE_HZ and manifest["window"]["samples"] == 60
    assert len(manifest["channels"]) == 34 and manifest["classes"][0] == "Null"
    assert np.asarray(manifest["probe"]["weight"]).shape == (len(manifest["classes"]), manifest["embedding_dim"])
    assert manifest["preprocessing"]["zscore"]  # the train split's statistics


def test_encoder_in_a_fresh_process_without_the_dataset_matches_the_run(exported, tmp_path):
    raw = raw_test_windows(exported)
    np.save(tmp_path / "raw.npy", raw)
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import detach_framework.engine.session as session

        def refuse(*args, **kwargs):
            raise AssertionError("the dataset was built")

        session.build_source = refuse
        session.Session.from_spec = refuse
        from detach_framework import api

        export_dir, run_dir, raw_file, out = sys.argv[1:]
        raw = np.load(raw_file)
        from_export = api.load_encoder(export_dir)
        np.savez(
            out,
            export=from_export(raw).numpy(),
            single=from_export(raw[0]).numpy(),
            run=api.load_encoder(run_dir)(raw).numpy(),
            probs=from_export.predict_proba(raw),
        )
        """
    )
    fresh = tmp_path / "elsewhere"
    fresh.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETACH_")}
    args = [exported["export"], exported["run"], tmp_path / "raw.npy", tmp_path / "out.npz"]
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], cwd=fresh, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert list(fresh.iterdir()) == []  # no cache, no run directory: nothing was built
    out = np.load(tmp_path / "out.npz")
    probe = exported["test"].probe
    np.testing.assert_allclose(out["export"], probe, atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["run"], probe, atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["single"], probe[0], atol=1e-6, rtol=0)
    assert (out["probs"].argmax(axis=1) == exported["test_pred"]).all()


def read_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    rows = list(csv.reader(path.open()))
    values = np.asarray(rows[1:], dtype=np.float64)
    return rows[0], values[:, 0], values[:, 1:]


def test_predict_on_kitchen_recordings_reproduces_the_run_test_predictions(exported, capsys):
    ids = np.asarray(exported["recording_ids"])
    predicted = np.full(len(ids), -1)
    for rec_id in np.unique(ids):
        out = exported["tmp"] / f"pred_{rec_id}.csv"
        code, _, err = run_cli(capsys, "predict", exported["export"], recording_file(exported, rec_id), "--out", out)
        assert code == 0, err
        header, starts, probs = read_predictions(out)
        assert header[0] == "window_start_s" and header[1] == "Null" and len(header) == 16
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        rows = np.flatnonzero(ids == rec_id)
        np.testing.assert_allclose(starts, exported["starts"][rows], atol=1e-6)  # the dataset's own windows
        predicted[rows] = probs.argmax(axis=1)
    np.testing.assert_array_equal(predicted, exported["test_pred"])
    accuracy = float((predicted == exported["test"].labels).mean())
    assert accuracy == pytest.approx(exported["summary"]["metrics"]["accuracy"], abs=1e-9)


def write_csv(path: Path, names: list[str], stream: np.ndarray, time: np.ndarray | None = None) -> Path:
    header = names if time is None else ["time", *names]
    columns = stream if time is None else np.vstack([time, stream])
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([["" if np.isnan(v) else repr(float(v)) for v in row] for row in columns.T])
    return path


def kitchen_stream(exported) -> tuple[list[str], np.ndarray, int]:
    rec_id = exported["recording_ids"][0]
    with np.load(recording_file(exported, rec_id)) as npz:
        sensor = npz["sensor"].astype(np.float64)
    channels = json.loads((exported["export"] / "export.json").read_text())["channels"]
    return channels, sensor, rec_id


def test_predict_reads_a_csv_of_channels_in_any_order(exported, capsys, tmp_path):
    channels, sensor, rec_id = kitchen_stream(exported)
    reference = tmp_path / "reference.csv"
    assert run_cli(capsys, "predict", exported["export"], recording_file(exported, rec_id), "--out", reference)[0] == 0
    order = np.random.default_rng(0).permutation(len(channels))
    time = 10.0 + np.arange(sensor.shape[1]) / RATE_HZ
    table = write_csv(tmp_path / "rec.csv", [channels[i] for i in order], sensor[order], time)
    out = tmp_path / "from_csv.csv"
    code, _, err = run_cli(capsys, "predict", exported["export"], table, "--out", out)
    assert code == 0, err
    _, starts, probs = read_predictions(out)
    _, ref_starts, ref_probs = read_predictions(reference)
    np.testing.assert_allclose(starts, ref_starts + 10.0, atol=1e-6)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-6)


def test_bad_inputs_are_one_line_errors(exported, capsys, tmp_path):
    channels, sensor, _ = kitchen_stream(exported)
    time = np.arange(sensor.shape[1]) / RATE_HZ
    cases = [
        (write_csv(tmp_path / "missing.csv", channels[1:], sensor[1:]), ["missing channel(s) " + channels[0]]),
        (
            write_csv(tmp_path / "extra.csv", [*channels, "oven_temp"], np.vstack([sensor, sensor[:1]])),
            ["channel(s) oven_temp are not the export's"],
        ),
        (write_csv(tmp_path / "rate.csv", channels, sensor, time / 2), ["sampled at 60 Hz", "trained at 30 Hz"]),
        (write_csv(tmp_path / "short.csv", channels, sensor[:, :10]), ["shorter than one window"]),
    ]
    for table, fragments in cases:
        code, _, err = run_cli(capsys, "predict", exported["export"], table, "--out", tmp_path / "p.csv")
        assert_one_line_error(code, err, "detach predict: error:", str(table), *fragments)
    assert not (tmp_path / "p.csv").exists()


def damaged_export(exported, tmp_path: Path, name: str, change) -> Path:
    target = tmp_path / name
    target.mkdir()
    for item in exported["export"].iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    change(target)
    return target


def edit_manifest(edit):
    def change(target: Path) -> None:
        manifest = json.loads((target / "export.json").read_text())
        edit(manifest)
        (target / "export.json").write_text(json.dumps(manifest))

    return change


@pytest.mark.parametrize(
    ("name", "change", "fragments"),
    [
        ("no_manifest", lambda t: (t / "export.json").unlink(), ["export.json not found"]),
        ("not_json", lambda t: (t / "export.json").write_text("{"), ["export.json: unreadable"]),
        ("other_format", edit_manifest(lambda m: m.update(format="zip")), ["not a detach export"]),
        ("no_channels", edit_manifest(lambda m: m.pop("channels")), ["channels", "Field required"]),
        ("bad_probe", edit_manifest(lambda m: m["probe"]["bias"].pop()), ["probe: expected weight"]),
        (
            "bad_params",
            edit_manifest(lambda m: m["sensor_encoder"]["params"].update(dim="wide")),
            ["sensor_encoder 'imu2clip_sensor' params dim"],
        ),
        ("no_weights", lambda t: (t / "sensor_encoder.safetensors").unlink(), ["sensor_encoder.safetensors not found"]),
        (
            "damaged_weights",
            lambda t: (t / "sensor_encoder.safetensors").write_bytes(b"\0" * 64),
            ["checksum mismatch"],
        ),
    ],
)
def test_malformed_export_directories_are_one_line_errors(exported, capsys, tmp_path, name, change, fragments):
    broken = damaged_export(exported, tmp_path, name, change)
    recording = recording_file(exported, exported["recording_ids"][0])
    code, _, err = run_cli(capsys, "predict", broken, recording, "--out", tmp_path / "p.csv")
    assert_one_line_error(code, err, "detach predict: error:", *fragments)


def test_export_replaces_an_export_but_never_another_directory(exported, capsys, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "export", exported["run"], "--out", other)
    assert_one_line_error(code, err, "detach export: error:", "not an export directory")
    assert (other / "keep.txt").read_text() == "mine"
    again = damaged_export(exported, tmp_path, "again", lambda t: None)
    code, _, err = run_cli(capsys, "export", exported["run"], "--out", again)
    assert code == 0, err
    assert (again / "export.json").read_bytes() == (exported["export"] / "export.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "notes"]  # no staging leftovers


def test_dataset_without_a_recording_reader_is_a_one_line_error(exported, capsys, tmp_path):
    recording = recording_file(exported, exported["recording_ids"][0])
    argv = ["predict", exported["export"], recording, "--out", tmp_path / "p.csv", "--format", "opportunity"]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "dataset 'opportunity' cannot read a single recording")


def test_load_run_gives_spec_summary_and_the_evaluated_model(exported):
    from detach_framework import api
    from detach_framework.engine.checkpoint import load_checkpoint

    run = api.load_run(exported["run"])
    assert run.summary == exported["summary"] and run.spec.uid == exported["summary"]["uid"]
    state = load_checkpoint(exported["run"] / "checkpoints" / run.summary["checkpoint"])["model"]
    assert not run.model.training
    assert all(torch.equal(value, state[key]) for key, value in run.model.state_dict().items())


def test_sensor_modules_of_a_decomposed_model_give_its_probe_features(host):
    """DETACH's probe features are [n(z_s), n(h_s)]: the export's sensor modules rebuild them from the model's
    state dict alone."""
    from types import SimpleNamespace

    from detach_framework.engine.encoder import SensorModules
    from detach_framework.engine.model import AlignmentModel, sensor_state_dict

    spec = load_spec(ROOT / "examples" / "quickstart.yaml", host.registry)
    source = SimpleNamespace(channel_names=[f"c{i}" for i in range(5)], class_names=["Null", "a", "b"])
    length, size = spec.data.sensor_length, spec.data.frame_size
    model = AlignmentModel(spec.model, host.registry, source, length, num_train=8).eval()
    modules = SensorModules(spec.model, host.registry, 5, length).eval()
    modules.load_state_dict(sensor_state_dict(model.state_dict()))
    generator = torch.Generator().manual_seed(0)
    batch = {
        "video": torch.randint(0, 256, (2, spec.data.frames, 3, size, size), dtype=torch.uint8, generator=generator),
        "sensor": torch.randn(2, 5, length, generator=generator),
    }
    with torch.no_grad():
        torch.testing.assert_close(modules(batch["sensor"]), model.embed(batch)["probe"], rtol=0, atol=1e-6)


def test_encoder_refuses_windows_of_the_wrong_shape(exported):
    from detach_framework import api
    from detach_framework.errors import UserError

    encoder = api.load_encoder(exported["export"])
    assert encoder(torch.zeros(2, 34, 60)).shape == (2, encoder.probe.weight.shape[1])  # tensors work too
    with pytest.raises(UserError, match="has 33 channels; this encoder takes 34"):
        encoder(np.zeros((33, 60)))
    with pytest.raises(UserError, match="has 59 samples; this encoder takes 60"):
        encoder(np.zeros((34, 59)))


def test_readme_api_example_runs(tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the repository's specs, runs written in tmp_path
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_api_example(), "README.md", "exec"), namespace)
    assert namespace["embedding"].shape == (128,)
    assert namespace["probabilities"].shape == (len(namespace["encoder"].class_names),)
    assert (tmp_path / "exports" / "api-demo" / "export.json").is_file()
