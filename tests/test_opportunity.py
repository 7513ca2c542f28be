"""Opportunity (UCI) and Opportunity++ readers against fixtures written in the real formats (+ truth.json),
every bad input of the issue, `detach data inspect`, and a tiny run trained through the Opportunity++
reader on the synthetic kitchen written in that layout."""

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
from detach_framework.data.recordings import LABEL_MIN_COVERAGE, DataSkipWarning
from detach_framework.data.settings import DataSettings
from detach_framework.data.transforms import PREPROCESSING_FILE, resolve_nan
from detach_framework.data.video import VideoError, read_index
from detach_framework.errors import UserError
from detach_plugins.datasets.opportunity import OpportunityParams, OpportunityPPParams, build_opportunity
from detach_plugins.datasets.opportunity.dataset import discover_runs, read_metadata
from detach_plugins.datasets.opportunity.fixture import write_index_video
from detach_plugins.datasets.opportunity.formats import (
    AMBIENT_COLUMNS,
    CLASS_FIXTURE,
    FIXTURE_NAMES,
    OPEN_CLOSE_IDS,
    estimate_offset_ms,
    label_onsets,
    read_column_names,
    read_label_legend,
    read_pose,
    read_sensor_file,
    read_srt,
)

DATA = DataSettings(frames=4, frame_size=16, sensor_length=32)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("opportunity")
    for name in ("opportunity_pp", "opportunity"):
        assert main(["data", "fixture", name, "--out", str(base / name)]) == 0
    return {"pp": base / "opportunity_pp", "uci": base / "opportunity"}


def truth(root: Path) -> dict:
    return json.loads((root / "truth.json").read_text())


def pp(root: Path, **changes) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataSkipWarning)
        return build_opportunity(OpportunityPPParams(root=str(root), **changes), DATA, layout="pp")


def copy(roots, tmp_path, layout="pp") -> Path:
    return Path(shutil.copytree(roots[layout], tmp_path / layout))


def sensor_file(root: Path, run: str) -> Path:
    return root / "data" / run / f"{run}_sensors_data.txt"


# ---- formats against the truth file ------------------------------------------------------------------


def test_sensor_file_rows_steps_and_nan_fractions(roots):
    t = truth(roots["pp"])
    for run, entry in t["runs"].items():
        data = read_sensor_file(sensor_file(roots["pp"], run))
        assert data.shape == (entry["rows"], 250)
        assert set(np.unique(np.diff(data[:, 0]))) == {33.0, 34.0}
        assert (data[0, 0], data[-1, 0]) == (entry["first_ms"], entry["last_ms"])
        for column in AMBIENT_COLUMNS:
            assert np.isnan(data[:, column - 1]).mean() == pytest.approx(
                entry["ambient_nan_fraction"].get(str(column), 0.0)
            )


def test_metadata_found_where_the_truth_put_it_and_parsed(roots):
    for layout in ("pp", "uci"):
        root = roots[layout]
        meta = read_metadata(root)
        assert meta.columns.path == root / truth(root)["metadata"]["column_names"]
        assert meta.legend.path == root / truth(root)["metadata"]["label_legend"]
    columns = read_column_names(roots["pp"] / "dataset" / "column_names.txt")
    assert columns.tracks["ML_Both_Arms"] == 250 and columns.tracks["Locomotion"] == 244
    assert columns.descriptions[195] == "REED SWITCH DISHWASHER S1"
    assert columns.descriptions[208] == columns.descriptions[209] == "Accelerometer DOOR1 accX"  # names repeat
    legend = read_label_legend(roots["pp"] / "data" / "label_legend.txt")  # one line has a tab before the dash
    assert legend.entries[406516] == ("ML_Both_Arms", "Open Door 1")
    assert legend.entries[2] == ("Locomotion", "Walk")
    assert legend.entries[404508] == ("ML_Both_Arms", "Close Drawer 3")
    assert 0 not in legend.entries


def test_srt_times_ids_and_skipped_unknown_ids(roots):
    t = truth(roots["pp"])
    legend = read_metadata(roots["pp"]).legend
    separators = set()
    for run, entry in t["runs"].items():
        path = roots["pp"] / "data" / run / f"{run}_side.ml_both_arms.srt"
        raw = path.read_bytes()
        separators.add((entry["srt_separator"], b"\r\n" in raw))
        track = read_srt(path, legend)
        expected = [
            (e["start_ms"] + entry["video_offset_ms"], e["end_ms"] + entry["video_offset_ms"], e["id"])
            for e in entry["events"]
        ]
        assert track.events == expected  # whole milliseconds: exact
        assert sum(track.skipped.values()) == entry["srt_unknown"] == 1
    assert {s for s, _ in separators} == {",", "."} and {crlf for _, crlf in separators} == {True, False}


def test_pose_keeps_participant_one_at_100_ms_per_frame(roots):
    t = truth(roots["pp"])
    pose = read_pose(roots["pp"] / "data" / "S1-ADL1" / "S1-ADL1_pose.csv")
    assert len(pose.times_ms) == t["runs"]["S1-ADL1"]["pose_rows_participant_1"]
    np.testing.assert_allclose(pose.times_ms[:3], [0.0, 200.0, 400.0])
    assert pose.columns[:2] == ["Nose_x", "Nose_y"] and pose.values.shape == (len(pose.times_ms), 6)


def test_offset_estimate_from_label_onsets_matches_truth(roots):
    t = truth(roots["pp"])
    legend = read_metadata(roots["pp"]).legend
    for run, entry in t["runs"].items():
        data = read_sensor_file(sensor_file(roots["pp"], run))
        srt = read_srt(roots["pp"] / "data" / run / f"{run}_side.ml_both_arms.srt", legend)
        offset, matches = estimate_offset_ms(label_onsets(data[:, 0], data[:, 249]), srt.events)
        assert offset == pytest.approx(entry["video_offset_ms"]) and matches == len(entry["events"])
    assert estimate_offset_ms([(0.0, 406516)], []) == (None, 0)


# ---- the dataset ---------------------------------------------------------------------------------------


def expected_window_labels(entry: dict, n: int = 60, step: int = 30) -> list[int]:
    """By hand from truth events: the open/close action overlapping a window most, if it covers at least half
    of the action or of the window; class index = 1 + position of its raw id in OPEN_CLOSE_IDS."""
    ms = np.round(np.arange(entry["rows"]) * 1000.0 / 30.0)
    out = []
    for s in range(0, entry["rows"] - n + 1, step):
        best, best_overlap = 0, 0
        for e in entry["events"]:
            if e["id"] not in OPEN_CLOSE_IDS:
                continue
            a, b = np.searchsorted(ms, e["start_ms"]), np.searchsorted(ms, e["end_ms"])
            overlap = min(b, s + n) - max(a, s)
            if overlap > best_overlap and overlap >= LABEL_MIN_COVERAGE * min(b - a, n):
                best, best_overlap = 1 + OPEN_CLOSE_IDS.index(e["id"]), overlap
        out.append(best)
    return out


def test_challenge_split_labels_classes_and_fixtures_match_truth(roots):
    t = truth(roots["pp"])
    source = pp(roots["pp"])
    legend = read_metadata(roots["pp"]).legend
    assert source.class_names == ["Null"] + [legend.name(i) for i in OPEN_CLOSE_IDS]
    assert source.fixture_names == FIXTURE_NAMES and len(source.channel_names) == 37
    for split in ("train", "test"):
        ds = source.split(split)
        runs = [source.recordings[r].name for r in np.unique(ds.recording)]
        assert runs == t["challenge"][split]
        for r in np.unique(ds.recording):
            entry = t["runs"][source.recordings[r].name]
            np.testing.assert_array_equal(ds.labels[ds.recording == r], expected_window_labels(entry))
        for label, fixture in zip(ds.labels, ds.fixtures, strict=True):
            raw = OPEN_CLOSE_IDS[label - 1] if label else None
            assert fixture == (FIXTURE_NAMES.index(CLASS_FIXTURE[raw]) if raw else -1)
    assert len(source.split("val")) == 0
    train_runs = {source.recordings[r].name for r in source.split("train").recording}
    assert not train_runs & {source.recordings[r].name for r in source.split("test").recording}


def test_loso_and_val_runs_never_share_a_run(roots):
    source = pp(roots["pp"], split="loso", test_subject=2, val_runs=["S1-Drill"])
    names = {s: {source.recordings[r].name for r in source.split(s).recording} for s in ("train", "val", "test")}
    assert names == {
        "train": {"S1-ADL1", "S3-ADL2", "S3-ADL5", "S4-ADL1"},
        "val": {"S1-Drill"},
        "test": {"S2-ADL1", "S2-ADL4"},
    }
    with pytest.raises(UserError, match="val_runs \\['S4-ADL1'\\] are not training runs of split 'challenge'"):
        pp(roots["pp"], val_runs=["S4_ADL1"])  # '_' accepted for '-'; S4 is unused by the challenge split
    with pytest.raises(UserError, match="runs \\['S2-ADL1'\\] are in both train/val and test"):
        pp(roots["pp"], split="loso", test_subject=2, val_runs=["S2-ADL1"])


def test_samples_video_follows_the_estimated_clock_offset(roots):
    t = truth(roots["pp"])
    source = pp(roots["pp"], estimate_offset=True)
    ds = source.split("train")
    for i in (0, 7, len(ds) - 1):
        sample = ds[i]
        rec = source.recordings[int(sample["recording"])]
        offset = t["runs"][rec.name]["video_offset_ms"] / 1000.0
        assert rec.video_offset_s == pytest.approx(offset)
        start = ds.table.start[i] / 30.0
        times = start + (np.arange(4) + 0.5) * 2.0 / 4 + offset
        assert [read_index(f) for f in sample["video"].numpy()] == [int(np.floor(x * 10)) for x in times]
        assert sample["sensor"].shape == (37, 32) and np.isfinite(sample["sensor"].numpy()).all()
        assert sample["label"] == ds.labels[i] and sample["subject"] == rec.subject


def test_uci_layout_reads_the_same_sensor_windows(roots):
    with pytest.raises(UserError, match="UCI release has no video.*blank_video: true"):
        build_opportunity(OpportunityParams(root=str(roots["uci"])), DATA, layout="uci")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataSkipWarning)
        uci = build_opportunity(OpportunityParams(root=str(roots["uci"]), blank_video=True), DATA, layout="uci")
    plus = pp(roots["pp"])
    for split in ("train", "test"):
        np.testing.assert_array_equal(uci.split(split).labels, plus.split(split).labels)
        np.testing.assert_allclose(uci.split(split)[3]["sensor"], plus.split(split)[3]["sensor"])
    assert int(uci.split("train")[0]["video"].sum()) == 0  # blank, and said so in the params


def test_channels_and_classes_are_configurable_by_column_and_raw_id(roots):
    source = pp(roots["pp"], channels=[208, 209, 210, 195], classes=[406516, 404516, 407521])
    assert source.channel_names == ["acc_door1_x", "acc_door1_y", "acc_door1_z", "reed_dishwasher_s1"]
    assert source.class_names == ["Null", "Open Door 1", "Close Door 1", "Drink from Cup"]
    assert source.split("train")[0]["sensor"].shape == (4, 32)
    assert 3 in source.split("train").labels  # the drink, now a class
    walking = pp(roots["pp"], track="Locomotion", classes=[2, 1])  # any track, classes by raw id in any order
    assert walking.class_names == ["Null", "Walk", "Stand"]
    # Fixture rows: Stand for 150 samples, Walk for 50, repeating. 60-sample windows every 30: the one at 120
    # ties 30/30 (the earlier action wins), the one at 150 is 50/60 Walk, the one at 180 is 40/60 Stand.
    assert walking.split("train").labels[:8].tolist() == [2, 2, 2, 2, 2, 1, 2, 2]
    with pytest.raises(UserError, match="class ids \\[123\\] are missing from .*label_legend.txt"):
        pp(roots["pp"], classes=[123])


def test_inspect_command_reports_runs_nan_video_offsets_and_counts(roots, capsys):
    assert main(["data", "inspect", str(roots["pp"]), "--dataset", "opportunity_pp"]) == 0
    out = capsys.readouterr().out
    assert "runs: 7" in out and "S3-ADL5" in out and "16.0" in out
    assert "10 fps 64x48" in out and "+700 (5)" in out and "+450 (5)" in out
    assert "208 acc_door1_x" in out and "211 acc_lazychair_x" in out and "0.1429" in out
    assert "Open Door 1" in out and "train" in out and "all_nan_channels 1" in out
    assert main(["data", "inspect", str(roots["uci"]), "--dataset", "opportunity"]) == 0
    assert "runs: 7" in capsys.readouterr().out
    assert main(["data", "inspect", str(roots["uci"]), "--dataset", "synthetic_kitchen"]) == 2
    assert "offers no 'inspect' tool" in capsys.readouterr().err


# ---- bad input: each a clear error naming the file and line or run, or a counted, reported skip -------


def _edit_line(path: Path, lineno: int, edit) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = edit(lines[lineno - 1])
    path.write_text("\n".join(lines) + "\n")


def test_bad_wrong_column_count(roots, tmp_path):
    root = copy(roots, tmp_path)
    path = sensor_file(root, "S1-ADL1")
    _edit_line(path, 57, lambda line: line.rsplit(" ", 1)[0])
    with pytest.raises(UserError, match=f"{path}:57: 249 columns, expected 250"):
        pp(root)


def test_bad_non_numeric_token(roots, tmp_path):
    root = copy(roots, tmp_path)
    path = sensor_file(root, "S2-ADL4")
    _edit_line(path, 12, lambda line: " ".join(["x1y" if k == 199 else tok for k, tok in enumerate(line.split(" "))]))
    with pytest.raises(UserError, match=f"{path}:12: column 200 holds a non-numeric token 'x1y'"):
        pp(root)


def test_bad_run_without_video_is_skipped_counted_and_reported(roots, tmp_path):
    root = copy(roots, tmp_path)
    (root / "data" / "S1-Drill" / "S1-Drill_side.avi").unlink()
    with pytest.warns(DataSkipWarning, match="S1-Drill: no video file, recording left out"):
        source = build_opportunity(OpportunityPPParams(root=str(root)), DATA, layout="pp")
    assert source.skips["recordings_without_video"] == 1
    assert "S1-Drill" not in {source.recordings[r].name for r in source.split("train").recording}
    with pytest.raises(UserError, match="run S1-Drill has no side video"):
        pp(root, missing_video="error")


def test_bad_video_shorter_than_the_sensor_stream(roots, tmp_path):
    root = copy(roots, tmp_path)
    write_index_video(root / "data" / "S2-ADL4" / "S2-ADL4_side.avi", 80, 10.0)  # 8 s of a 16 s run
    with pytest.warns(DataSkipWarning, match=r"S2-ADL4: 8 of 15 windows fall outside its video \(8.0 s"):
        source = build_opportunity(OpportunityPPParams(root=str(root)), DATA, layout="pp")
    # Kept: windows whose last frame (start + 1.75 s) is before 8 s, i.e. starts 0..6 s.
    assert source.skips["windows_outside_video"] == 8
    test = source.split("test")
    assert (test.recording == test.recording[0]).sum() == 7


def test_bad_corrupt_video_names_the_file(roots, tmp_path):
    root = copy(roots, tmp_path)
    path = root / "data" / "S3-ADL2" / "S3-ADL2_side.avi"
    path.write_bytes(b"not a video at all" * 50)
    with pytest.raises(VideoError, match=f"{path}: not a readable video"):
        pp(root)


def test_bad_damaged_video_header_is_named_by_inspect_and_stops_training(roots, tmp_path, capsys):
    root = copy(roots, tmp_path)
    path = root / "data" / "S3-ADL2" / "S3-ADL2_side.avi"
    path.write_bytes(bytes(64) + path.read_bytes()[64:])  # the RIFF header is gone; FFmpeg guesses a bare stream
    assert main(["data", "inspect", str(root), "--dataset", "opportunity_pp"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("  S3-ADL2 "))
    assert "damaged" in row and "25 fps" not in row and "0.0 s" not in row  # was "25 fps 64x48 0.0 s"
    assert [line for line in lines if line.startswith("video ")] == [
        f"video {path}: damaged header (it reads only as a bare 'mjpeg' stream without timestamps, at an assumed "
        "25 fps); restore the file, or remux a raw stream into .mp4 or .avi"
    ]
    assert sum("10 fps 64x48" in line for line in lines) == 6  # the other runs are still inspected
    for missing_video in ("skip", "error"):  # damaged is not missing: never a silent skip of its windows
        with pytest.raises(VideoError, match=re.escape(f"{path}: damaged header")):
            pp(root, missing_video=missing_video)
    spec = tiny_spec()
    spec["data"]["dataset"] = {"name": "opportunity_pp", "root": str(root), "val_runs": ["S1-Drill"]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataSkipWarning)
        assert main(["train", str(tmp_path / "spec.yaml"), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    naming = [line for line in err.splitlines() if str(path) in line]
    assert "Traceback" not in err and len(naming) == 1
    assert naming[0].startswith(f"detach train: error: {path}: damaged header")


def test_bad_all_nan_channel_is_zeroed_counted_and_reported(roots):
    with pytest.warns(DataSkipWarning, match="S2-ADL1: channels entirely NaN .*acc_lazychair_x"):
        source = build_opportunity(OpportunityPPParams(root=str(roots["pp"])), DATA, layout="pp")
    assert source.skips["all_nan_channels"] == 1
    train = source.split("train")
    rec = next(r for r, rec in enumerate(source.recordings) if rec.name == "S2-ADL1")
    i = int(np.flatnonzero(train.recording == rec)[0])
    column = source.channel_names.index("acc_lazychair_x")
    np.testing.assert_array_equal(train[i]["sensor"][column].numpy(), 0.0)
    assert np.isfinite(train[i]["sensor"].numpy()).all()


def test_bad_empty_split_after_filtering(roots):
    with pytest.raises(
        UserError, match="opportunity_pp: the test split is empty after filtering: split 'loso' wants S9-ADL1"
    ):
        pp(roots["pp"], split="loso", test_subject=9)
    with pytest.raises(UserError, match="the train split is empty after filtering.*wants S4-ADL5"):
        pp(roots["pp"], split="custom", train_runs=["S4-ADL5"], test_runs=["S1-ADL1"])


def test_bad_label_id_missing_from_the_legend(roots, tmp_path):
    root = copy(roots, tmp_path)
    path = sensor_file(root, "S3-ADL5")
    _edit_line(path, 200, lambda line: line.rsplit(" ", 1)[0] + " 406599")
    legend = root / "data" / "label_legend.txt"
    with pytest.raises(UserError, match=f"{path}:200: label id 406599 in column 250 is missing from {legend}"):
        pp(root)


def test_bad_missing_metadata_file(roots, tmp_path):
    root = copy(roots, tmp_path)
    (root / "dataset" / "column_names.txt").unlink()
    with pytest.raises(
        UserError,
        match="column_names.txt not found; searched .*/column_names.txt, .*/data/column_names.txt, "
        ".*/dataset/column_names.txt",
    ):
        pp(root)


def test_bad_root_without_runs(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match="no runs found under"):
        discover_runs(tmp_path, "pp")


# ---- end to end: the synthetic kitchen in the Opportunity++ layout, through the real reader -----------


def test_tiny_run_trains_through_the_opportunity_pp_reader(tmp_path, capsys):
    root = tmp_path / "kitchen_pp"
    assert (
        main(["data", "synth", "--preset", "tiny", "--seed", "7", "--format", "opportunity_pp", "--out", str(root)])
        == 0
    )
    exported = json.loads((root / "truth.json").read_text())
    params = {"name": "opportunity_pp", "root": str(root), "split": "loso", "test_subject": 3, "estimate_offset": True}
    spec = tiny_spec()
    spec["data"]["dataset"] = params
    spec["stages"][0]["epochs"] = 1
    spec["eval"]["evaluators"][0]["epochs"] = 2
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataSkipWarning)
        assert main(["train", str(tmp_path / "spec.yaml"), "--run-dir", str(run)]) == 0
        source = build_opportunity(
            OpportunityPPParams(**{k: v for k, v in params.items() if k != "name"}),
            DataSettings(frames=4, frame_size=32, sensor_length=32),
            "pp",
        )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_samples"] == len(source.split("train")) and summary["test_samples"] == len(
        source.split("test")
    )
    assert 0.0 <= summary["metrics"]["weighted_f1"] <= 1.0
    for rec in source.recordings:  # the offsets the export planted, recovered from label onsets
        assert rec.video_offset_s * 1000 == pytest.approx(exported["runs"][rec.name]["video_offset_ms"], abs=34)
    # The z-score statistics in the run directory are the training windows', by hand.
    stored = json.loads((run / PREPROCESSING_FILE).read_text())
    train = source.split("train")
    raw = source._raw(train.table, np.arange(len(train)))
    filled, dead = zip(*(resolve_nan(w) for w in raw), strict=True)
    filled, live = np.stack(filled), ~np.stack(dead)
    for c in (0, 5, 20):
        values = filled[live[:, c], c].ravel()
        assert stored["zscore"]["1"]["mean"][c] == pytest.approx(values.mean(), rel=1e-9, abs=1e-9)
        assert stored["zscore"]["1"]["std"][c] == pytest.approx(max(values.std(), 0) or 1.0, rel=1e-9)
    assert stored["fit_windows"] == len(train) and stored["channels"] == source.channel_names
