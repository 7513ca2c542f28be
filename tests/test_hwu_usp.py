"""HWU-USP reader against a fixture in the (unconfirmed) real layout (+ truth.json), the 8-fold protocol,
the recording-level linear probe (by hand), every bad input of the issue, and a tiny end-to-end run."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_spec

from detach_framework.cli import main
from detach_framework.contracts import EmbeddingSet, EvalContext
from detach_framework.data.recordings import DataSkipWarning
from detach_framework.data.settings import DataSettings
from detach_framework.data.video import VideoError, read_index
from detach_framework.errors import UserError
from detach_plugins.datasets.hwu_usp import HwuUspParams, build_hwu_usp
from detach_plugins.datasets.hwu_usp.dataset import discover_recordings
from detach_plugins.datasets.hwu_usp.fixture import write_hwu_fixture
from detach_plugins.datasets.hwu_usp.formats import (
    ACTIVITIES,
    CHANNELS,
    DETACH_CHANNELS,
    FOLDS,
    read_ambient_csv,
    timestamp_seconds,
)
from detach_plugins.evaluators.recording_probe import RecordingProbeEvaluator, RecordingProbeParams, recording_means

DATA = DataSettings(frames=4, frame_size=16, sensor_length=32)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("hwu") / "hwu_usp"
    assert main(["data", "fixture", "hwu_usp", "--out", str(out)]) == 0
    return out


def truth(root: Path) -> dict:
    return json.loads((root / "truth.json").read_text())


def build(root: Path, **changes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataSkipWarning)
        return build_hwu_usp(HwuUspParams(root=str(root), **changes), DATA)


def files_of(root: Path, name: str):
    return next(f for f in discover_recordings(root) if f.name == name)


def plain(root: Path, subject: int) -> str:
    """A recording of this subject whose CSV has a header and ',' (so line edits below stay simple)."""
    t = truth(root)["recordings"]
    return next(n for n, e in t.items() if e["subject"] == subject and e["header"] and e["delimiter"] == ",")


def test_ambient_csv_quirks_read_back_as_written(root):
    for name, entry in truth(root)["recordings"].items():
        table = read_ambient_csv(files_of(root, name).ambient)
        assert (table.header, table.delimiter) == (entry["header"], entry["delimiter"])
        assert table.channels == list(CHANNELS) and table.values.shape == (entry["rows"], 11)
        seconds, unit = timestamp_seconds(table.times)
        assert unit == entry["timestamp_unit"]
        np.testing.assert_allclose(np.diff(seconds), 0.02, atol=1e-6)  # 50 Hz
        for event in entry["events"]:
            c = CHANNELS.index(event["channel"])
            a, b = round(event["start_s"] * 50), round(event["end_s"] * 50)
            on = table.values[a:b, c]
            on = on[~np.isnan(on)]  # a planted empty field may fall inside an event
            assert (on == 1.0).all() if event["channel"] != "TP_L_Power" else (on > 1400).all()
            assert np.nanmax(table.values[b : b + 5, c], initial=0.0) < 1.0
        for channel, fraction in entry["nan_fraction"].items():
            assert np.isnan(table.values[:, CHANNELS.index(channel)]).mean() == pytest.approx(fraction)


def test_discovery_of_folder_and_flat_recordings_never_takes_depth(root):
    t = truth(root)["recordings"]
    found = discover_recordings(root)
    assert sorted(f.name for f in found) == sorted(t)
    for f in found:
        assert (f.ambient.parent.name == f.name) == (t[f.name]["layout"] == "folder")
        assert f.video is not None and "depth" not in f.video.name
        assert ACTIVITIES[f.activity] == t[f.name]["activity"] and f.subject == t[f.name]["subject"]


def test_fold_protocol_labels_and_channels(root):
    assert sorted(s for fold in FOLDS for s in fold) == list(range(1, 17)) and len(FOLDS) == 8
    t = truth(root)["recordings"]
    source = build(root, val_subjects=[3])
    assert source.class_names == list(ACTIVITIES) and source.channel_names == list(DETACH_CHANNELS)
    subjects = {s: set(source.split(s).subjects.tolist()) for s in ("train", "val", "test")}
    assert subjects == {"train": {4}, "val": {3}, "test": set(truth(root)["fold0_test_subjects"])}
    for split in ("train", "val", "test"):
        ds = source.split(split)
        for r in np.unique(ds.recording):
            rec = source.recordings[r]
            assert (ds.labels[ds.recording == r] == t[rec.name]["label"]).all()  # every window: its recording's
            assert (ds.recording == r).sum() == 4  # 5 s at 2 s windows, 1 s stride
    every = build(root, channels=list(CHANNELS))
    assert every.split("train")[0]["sensor"].shape == (11, 32)
    with pytest.raises(UserError, match="val_subjects \\[1\\] are held out for testing in fold 0"):
        build(root, val_subjects=[1])


def test_samples_carry_their_recording_and_frames_by_timestamp(root):
    source = build(root)
    ds = source.split("test")
    codecs = set()
    for i in (0, 5, 17, 30):
        sample = ds[i]
        r = int(sample["recording"])
        assert r == ds.recording[i] and sample["label"] == source.recordings[r].label
        codecs.add(source.recordings[r].video.suffix)
        start = ds.table.start[i] / 50.0
        expected = [int(np.floor((start + (k + 0.5) * 0.5) * 25 + 1e-9)) for k in range(4)]
        assert [read_index(f) for f in sample["video"].numpy()] == expected
    assert codecs == {".mp4", ".avi"}


# ---- recording-level probe -------------------------------------------------------------------------------


def _embeddings(features, labels, recordings) -> EmbeddingSet:
    n = len(labels)
    return EmbeddingSet(
        probe=np.asarray(features, np.float64),
        video=np.zeros((n, 2)),
        sensor=np.zeros((n, 2)),
        labels=np.asarray(labels),
        subjects=np.zeros(n, np.int64),
        fixtures=np.full(n, -1),
        recordings=np.asarray(recordings),
    )


def test_recording_means_by_hand():
    x = np.array([[1.0, 0.0], [3.0, 2.0], [10.0, 10.0], [5.0, 4.0]])
    means, labels, ids = recording_means(x, np.array([7, 7, 2, 7]), np.array([1, 1, 0, 1]), "train")
    np.testing.assert_array_equal(ids, [2, 7])
    np.testing.assert_allclose(means, [[10.0, 10.0], [3.0, 2.0]])
    np.testing.assert_array_equal(labels, [0, 1])
    with pytest.raises(UserError, match="train recording 7 has windows with different labels"):
        recording_means(x, np.array([7, 7, 2, 7]), np.array([1, 0, 0, 1]), "train")


def test_recording_probe_classifies_recordings_from_their_mean_window(tmp_path):
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 4.0

    def split(recs: int, offset: int):
        feats, labels, recordings = [], [], []
        for r in range(recs):
            label = r % 3
            for _ in range(5):  # single windows are noisy, their mean is not
                feats.append(centres[label] + rng.normal(0, 3.0, 3))
                labels.append(label)
                recordings.append(offset + r)
        return _embeddings(feats, labels, recordings)

    ctx = EvalContext(class_names=["a", "b", "c"], out_dir=tmp_path, seed=1)
    result = RecordingProbeEvaluator(RecordingProbeParams(epochs=60, lr=0.05)).evaluate(
        split(30, 0), split(9, 100), ctx
    )
    assert result.metrics["recording_accuracy"] == 1.0 and result.metrics["recording_count"] == 9
    assert result.plots[0].is_file()
    missing = _embeddings(np.zeros((2, 3)), [0, 1], [0, 1])
    missing.recordings = None
    with pytest.raises(UserError, match="carry no 'recording' key"):
        RecordingProbeEvaluator(RecordingProbeParams()).evaluate(missing, missing, ctx)


def test_inspect_command(root, capsys):
    assert main(["data", "inspect", str(root), "--dataset", "hwu_usp"]) == 0
    out = capsys.readouterr().out
    assert "recordings: 36 (4 subjects)" in out and "50.0" in out and "no hdr" in out and "';'" in out
    assert "25 fps 32x24" in out and "Ktch_Motion_1      0.0023" in out and "cereals" in out
    assert "no offset can be detected" in out


# ---- bad input ----------------------------------------------------------------------------------------------


@pytest.fixture
def copied(root, tmp_path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "hwu"))


def _rewrite(path: Path, lineno: int, edit) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = edit(lines[lineno - 1])
    path.write_text("\n".join(lines) + "\n")


def test_bad_wrong_field_count(copied):
    path = files_of(copied, plain(copied, 3)).ambient
    _rewrite(path, 40, lambda line: line + ",7")
    with pytest.raises(UserError, match=f"{path}:40: 13 fields, expected 12"):
        build(copied)


def test_bad_non_numeric_token(copied):
    path = files_of(copied, plain(copied, 4)).ambient
    _rewrite(path, 9, lambda line: ",".join(["open" if k == 4 else v for k, v in enumerate(line.split(","))]))
    with pytest.raises(UserError, match=f"{path}:9: column Ktch_B4_Cupboard holds a non-numeric token 'open'"):
        build(copied)


def test_bad_missing_channel_and_missing_ambient_file(copied):
    name = plain(copied, 3)
    path = files_of(copied, name).ambient
    path.write_text(path.read_text().replace("Ktch_T3_Cupboard", "Ktch_T9_Cupboard", 1))
    with pytest.raises(UserError, match=f"{path}: channel 'Ktch_T3_Cupboard' not in its columns"):
        build(copied)
    path.unlink()
    with pytest.raises(UserError, match=f"recording {name.split('_')[0]}/{name} has no ambient CSV"):
        build(copied)


def test_bad_recording_without_video_is_skipped_counted_and_reported(copied):
    files_of(copied, "dishes_s04").video.unlink()
    with pytest.warns(DataSkipWarning, match="dishes_s04: no video file, recording left out"):
        source = build_hwu_usp(HwuUspParams(root=str(copied)), DATA)
    assert source.skips["recordings_without_video"] == 1
    assert len(source.split("train")) == 17 * 4
    with pytest.raises(UserError, match="recording dishes_s04 has no RGB video"):
        build(copied, missing_video="error")


def test_bad_video_shorter_than_the_sensor_stream(copied):
    from detach_framework.data.video import index_frame, write_video

    video = files_of(copied, "table_s01").video
    write_video(video, np.stack([index_frame(k, 24, 32) for k in range(60)]), 25.0, "libx264")  # 2.4 s of 5 s
    with pytest.warns(DataSkipWarning, match=r"table_s01: 3 of 4 windows fall outside its video"):
        source = build_hwu_usp(HwuUspParams(root=str(copied)), DATA)
    assert source.skips["windows_outside_video"] == 3


def test_bad_damaged_video_header_is_named_by_inspect_and_stops_the_build(copied, capsys):
    files = next(f for f in discover_recordings(copied) if f.video.suffix == ".avi")
    files.video.write_bytes(bytes(64) + files.video.read_bytes()[64:])
    assert main(["data", "inspect", str(copied), "--dataset", "hwu_usp"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{files.video.name}: damaged" in next(line for line in lines if line.startswith(f"  {files.name} "))
    damaged = [line for line in lines if line.startswith("video ")]
    assert len(damaged) == 1 and damaged[0].startswith(f"video {files.video}: damaged header (it reads only as a bare")
    assert sum("25 fps 32x24" in line for line in lines) == 35  # every other recording is still inspected
    with pytest.raises(VideoError, match=re.escape(f"{files.video}: damaged header")):
        build(copied)


def test_bad_all_nan_channel(copied):
    name = plain(copied, 4)
    path = files_of(copied, name).ambient
    lines = path.read_text().splitlines()
    column = lines[0].split(",").index("Ktch_Motion_2")
    path.write_text(
        "\n".join(
            [lines[0]]
            + [",".join("" if k == column else v for k, v in enumerate(line.split(","))) for line in lines[1:]]
        )
        + "\n"
    )
    with pytest.warns(DataSkipWarning, match=f"{name}: channels entirely NaN: Ktch_Motion_2"):
        source = build_hwu_usp(HwuUspParams(root=str(copied)), DATA)
    assert source.skips["all_nan_channels"] == 1
    ds = source.split("train")
    i = int(np.flatnonzero([source.recordings[r].name == name for r in ds.recording])[0])
    np.testing.assert_array_equal(ds[i]["sensor"][DETACH_CHANNELS.index("Ktch_Motion_2")].numpy(), 0.0)


def test_bad_empty_split_after_filtering(root):
    with pytest.raises(
        UserError, match="hwu_usp: the test split is empty after filtering: fold 7 holds out subjects \\[15, 16\\]"
    ):
        build(root, fold=7)


def test_bad_root_without_recordings(tmp_path):
    with pytest.raises(UserError, match="no recordings under"):
        build(tmp_path)


# ---- end to end ---------------------------------------------------------------------------------------------


def test_tiny_run_with_the_recording_probe(tmp_path, capsys):
    root = write_hwu_fixture(tmp_path / "hwu")
    spec = tiny_spec()
    spec["data"]["dataset"] = {"name": "hwu_usp", "root": str(root)}
    spec["stages"][0]["epochs"] = 1
    spec["eval"]["evaluators"] = [{"name": "recording_probe", "epochs": 5}]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["train", str(tmp_path / "spec.yaml"), "--run-dir", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metrics"]["recording_count"] == 18  # 2 held-out subjects x 9 activities
    assert 0.0 <= summary["metrics"]["recording_accuracy"] <= 1.0
    assert (tmp_path / "run" / "plots" / "recording_confusion_matrix.png").is_file()
