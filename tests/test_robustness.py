"""The robustness evaluator: its perturbations on arrays (silence, noise) against hand computations, the datasets'
shifted reads (clock offset) against their own later windows, the kitchen's sensor layout, bad params as one-line
errors, and `detach eval` adding it to a trained tiny run
whose clean row is the run's linear probe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_spec

from detach_framework.cli import main
from detach_framework.contracts import EmbeddingSet, EvalContext, EvalWindows, SensorLayout, SensorLayoutSource
from detach_framework.data.settings import DataSettings
from detach_framework.errors import UserError
from detach_framework.report import ReportContext
from detach_framework.spec import eval_uid, load_spec
from detach_plugins.evaluators.robustness import (
    FIGURE,
    TABLE,
    RobustnessEvaluator,
    RobustnessParams,
    add_noise,
    plan_conditions,
    report_sections,
    silence_channels,
    unit_noise,
)

RNG = np.random.default_rng(3)


def windows(n: int = 6, channels: int = 5, length: int = 20) -> np.ndarray:
    return RNG.normal(size=(n, channels, length)).astype(np.float32) + 2.0  # no channel is all zero


def layout(**changes) -> SensorLayout:
    fields = dict(
        fixture_channels={"fridge": [0, 1], "door1": [3]},
        rate_hz=10.0,  # 20 raw samples: a 2 s window, of 20 steps 0.1 s apart
        window_samples=20,
        noise_std=np.full(5, 0.1),
        clock_offset_s=0.25,
    )
    return SensorLayout(**{**fields, **changes})


def eval_windows(x: np.ndarray, sensor_layout: SensorLayout | None, shifted=None) -> EvalWindows:
    return EvalWindows(x, lambda w: w.reshape(len(w), -1), sensor_layout, "toy", shifted)


def toy_shift(x: np.ndarray):
    """A stand-in for a source's shifted read: the windows plus the offset, and the offsets it was asked for."""
    asked: list[float] = []

    def shifted(offset_s: float) -> np.ndarray:
        asked.append(offset_s)
        return x + np.float32(offset_s)

    return shifted, asked


# ---- the perturbations on arrays -------------------------------------------------------------------------------


def test_silencing_a_fixture_changes_only_its_channels():
    x = windows()
    before = x.copy()
    out = silence_channels(x, [1, 3])
    assert np.array_equal(x, before)  # a copy
    assert (out[:, [1, 3]] == 0).all()
    assert np.array_equal(out[:, [0, 2, 4]], x[:, [0, 2, 4]])
    fridge, door = plan_conditions(RobustnessParams(conditions=["silence"]), eval_windows(x, layout()), 0)
    assert (fridge.name, door.name) == ("silence_fridge", "silence_door1")
    assert np.flatnonzero((fridge.apply(x) != x).any(axis=(0, 2))).tolist() == [0, 1]
    assert np.flatnonzero((door.apply(x) != x).any(axis=(0, 2))).tolist() == [3]


def test_the_offset_reads_the_shifted_windows_from_the_source():
    x = windows()
    shifted, asked = toy_shift(x)
    params = RobustnessParams(conditions=["offset"], offsets_s=[0.5, -0.2])
    plan = plan_conditions(params, eval_windows(x, layout(), shifted), 0)  # 10 Hz: 0.5 s is 5 raw samples
    assert [c.name for c in plan] == ["offset_+0.5s", "offset_-0.2s"]
    assert "+5 raw samples" in plan[0].perturbation and "-2 raw samples" in plan[1].perturbation
    assert asked == []  # nothing is read until a condition is scored
    assert np.array_equal(plan[0].apply(x), x + np.float32(0.5)) and asked == [0.5]
    (skipped,) = plan_conditions(params, eval_windows(x, layout()), 0)
    assert skipped.name == "offset" and "cannot read its recordings shifted" in skipped.skipped


def test_the_kitchen_reads_a_window_shifted_by_one_stride_as_the_next_window(host):
    """At the kitchen's 1 s stride (30 raw samples), window i read 1 s later is window i + 1 of its recording, bit for
    bit after the z-score; the last window of a recording stays inside it. Offset 0 is the split itself."""
    from detach_framework.contracts import ShiftedSensorSource
    from detach_framework.engine.session import build_source

    source = build_source(load_spec(tiny_spec(), host.registry), host)
    assert isinstance(source, ShiftedSensorSource)
    split = source.split("test")
    assert np.array_equal(source.shifted_sensor_windows("test", 0.0), split.sensor)
    later = source.shifted_sensor_windows("test", 1.0)
    assert later.shape == split.sensor.shape and later.dtype == np.float32
    successor = (split.recording[:-1] == split.recording[1:]) & np.isclose(np.diff(split.start_seconds), 1.0)
    assert successor.sum() == len(split) - len(np.unique(split.recording))
    assert np.array_equal(later[:-1][successor], split.sensor[1:][successor])
    assert not np.array_equal(later, split.sensor)
    earlier = source.shifted_sensor_windows("test", -1.0)
    assert np.array_equal(earlier[1:][successor], split.sensor[:-1][successor])
    first = np.flatnonzero(np.append(True, ~successor))  # each recording's first window has nothing before it
    assert np.array_equal(earlier[first], split.sensor[first])
    with pytest.raises(UserError, match="unknown split 'dev'"):
        source.shifted_sensor_windows("dev", 1.0)


def test_the_noise_is_deterministic_and_has_the_stated_std():
    x = np.ones((400, 3, 50), np.float32)
    x[0, 2] = 0.0  # a dead channel in one window stays silent
    sigma = np.array([0.1, 0.2, 0.0])
    noise = unit_noise(x.shape, 50, seed=5)  # raw samples = steps: no resampling
    assert np.array_equal(noise, unit_noise(x.shape, 50, seed=5))
    assert not np.array_equal(noise, unit_noise(x.shape, 50, seed=6))
    twice = add_noise(x, noise, 2.0, sigma) - x
    # total std 2 sigma = sigma (training) + added sqrt(2^2 - 1) sigma
    for c, expected in enumerate(math.sqrt(3.0) * sigma):
        assert twice[:, c].std() == pytest.approx(expected, rel=0.02, abs=1e-12)
    assert (twice[0, 2] == 0).all() and (twice[:, 2] == 0).all()
    four = add_noise(x, noise, 4.0, sigma) - x  # the same draw, scaled
    np.testing.assert_allclose(four[:, :2], twice[:, :2] * math.sqrt(15.0) / math.sqrt(3.0), rtol=1e-4, atol=1e-6)
    # 3 raw samples resampled to 5 steps (0, .5, 1, 1.5, 2): steps 0, 2, 4 are raw samples, 1 and 3 the mean of two
    resampled = unit_noise((20000, 1, 5), 3, seed=1)
    variance = resampled.var(axis=(0, 1))
    np.testing.assert_allclose(variance, [1.0, 0.5, 1.0, 0.5, 1.0], rtol=0.04)


def test_the_kitchen_declares_its_sensor_layout(host):
    from detach_framework.engine.session import build_source

    source = build_source(load_spec(tiny_spec(), host.registry), host)
    assert isinstance(source, SensorLayoutSource)
    found = source.sensor_layout()
    assert found.problem(len(source.channel_names)) is None
    assert list(found.fixture_channels) == source.fixture_names  # every kitchen fixture carries channels
    for name, channels in found.fixture_channels.items():
        assert all(source.channel_names[c].startswith(f"{name}_") for c in channels)
    assert sorted(c for cs in found.fixture_channels.values() for c in cs) == list(range(len(source.channel_names)))
    np.testing.assert_array_equal(found.noise_std, source.knobs.sensor_noise_std / source.sensor_std)
    assert (found.rate_hz, found.window_samples, found.clock_offset_s) == (30.0, 60, 0.25)


@pytest.mark.parametrize("name", ["opportunity", "hwu_usp"])
def test_recorded_datasets_declare_their_fixtures_but_not_their_noise(registry, name, tmp_path):
    """Every WindowedSource: each fixture's channels from the reader's channel_fixture; no noise level, so the noise
    conditions are skipped saying why while silence and offset apply."""
    component = registry.get("dataset", name)
    root = component.tools["fixture"](tmp_path / "root")
    values = component.tools.get("fixture_params", lambda r: {"root": str(r)})(root)
    source = component.factory(component.params.model_validate(values), data=DataSettings(sensor_length=24))
    found = source.sensor_layout()
    assert found.problem(len(source.channel_names)) is None and found.fixture_channels
    for name_, channels in found.fixture_channels.items():
        assert all(source.channel_fixture[c] == source.fixture_names.index(name_) for c in channels)
    assert found.noise_std is None and found.clock_offset_s is None
    split = source.split("train")
    table, step = split.table, round(source.data.stride_seconds * source.recordings[0].rate_hz)
    stride_s = step / source.recordings[0].rate_hz
    later = source.shifted_sensor_windows("train", stride_s)
    successor = (table.recording[:-1] == table.recording[1:]) & (np.diff(table.start) == step)
    assert successor.any()
    for i in np.flatnonzero(successor):
        np.testing.assert_array_equal(later[i], split.sensor(i + 1))
    sensor = np.ones((2, len(source.channel_names), 24), np.float32)
    plan = plan_conditions(RobustnessParams(), eval_windows(sensor, found, toy_shift(sensor)[0]), 0)
    silenced = [c.name for c in plan if c.name.startswith("silence_")]
    assert silenced == [f"silence_{f}" for f in found.fixture_channels]
    assert [c.name for c in plan if c.name.startswith("offset_")] == ["offset_+0.5s", "offset_+1s"]
    (noise,) = [c for c in plan if c.name.startswith("noise")]
    assert "does not know its training noise level" in noise.skipped


# ---- what the evaluator cannot do is skipped, saying why -------------------------------------------------------


def embeddings(n: int, seed: int) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    probe = rng.normal(size=(n, 100)).astype(np.float32)
    return EmbeddingSet(probe, probe, probe, labels, np.zeros(n, int), labels.copy())


def test_conditions_a_dataset_cannot_support_are_skipped_with_the_reason(tmp_path):
    x = windows(n=12)
    params = RobustnessParams(epochs=2)
    missing = plan_conditions(params, None, 0)
    assert [c.name for c in missing] == ["silence", "offset", "noise"] and all(
        "no sensor windows" in c.skipped for c in missing
    )
    undeclared = plan_conditions(params, eval_windows(x, None), 0)
    assert all("declares no sensor layout" in c.skipped for c in undeclared)
    recorded_layout = layout(fixture_channels={}, noise_std=None)
    recorded = plan_conditions(params, eval_windows(x, recorded_layout, toy_shift(x)[0]), 0)
    reasons = {c.name: c.skipped for c in recorded if c.skipped}
    assert set(reasons) == {"silence", "noise"}
    assert "which channels each fixture" in reasons["silence"] and "training noise level" in reasons["noise"]
    # an evaluator called on embeddings alone still scores the clean windows
    result = RobustnessEvaluator(params).evaluate(
        embeddings(30, 0), embeddings(12, 1), EvalContext(["a", "b", "c"], tmp_path)
    )
    rows = result.tables[TABLE]
    assert rows[0]["condition"] == "clean" and [r["condition"] for r in rows[1:]] == ["silence", "offset", "noise"]
    assert set(result.metrics) == {"robust/clean/weighted_f1", "robust/clean/macro_map"}
    assert result.plots == [tmp_path / FIGURE] and (tmp_path / FIGURE).is_file()


def test_every_condition_scores_through_the_embedding_it_is_given(tmp_path):
    x = windows(n=12)
    train, test = embeddings(30, 0), embeddings(12, 1)
    test.probe = x.reshape(12, -1)  # what eval_windows' embed gives for the clean windows
    ctx = EvalContext(["a", "b", "c"], tmp_path, seed=0, windows=eval_windows(x, layout(), toy_shift(x)[0]))
    result = RobustnessEvaluator(RobustnessParams(epochs=2)).evaluate(train, test, ctx)
    names = [r["condition"] for r in result.tables[TABLE]]
    expected = ["clean", "silence_fridge", "silence_door1", "offset_+0.5s", "offset_+1s", "noise_x2", "noise_x4"]
    assert names == expected
    assert set(result.metrics) == {f"robust/{n}/{m}" for n in expected for m in ("weighted_f1", "macro_map")}


# ---- bad params: one line naming the field ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"conditions": ["silence", "wind"]}, "conditions"),
        ({"conditions": ["noise", "noise"]}, "conditions"),
        ({"noise_factors": [-2.0]}, "noise_factors"),
        ({"noise_factors": [0.5]}, "noise_factors"),
        ({"offsets_s": [0.0]}, "offsets_s"),
        ({"offsets_s": [float("inf")]}, "offsets_s"),
    ],
)
def test_bad_params_are_one_line_errors_naming_the_field(registry, params, field):
    spec = tiny_spec()
    spec["eval"]["evaluators"] = [{"name": "robustness", **params}]
    with pytest.raises(UserError) as caught:
        load_spec(spec, registry)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and field in message, message


def test_an_offset_below_half_a_raw_sample_is_refused_naming_the_field():
    x = windows()  # raw samples at 10 Hz: 0.1 s apart
    with pytest.raises(UserError, match=r"^robustness.offsets_s: 0.04 s is less than half a raw sample \(0.1 s"):
        plan_conditions(RobustnessParams(offsets_s=[0.04]), eval_windows(x, layout(), toy_shift(x)[0]), 0)
    longer = plan_conditions(RobustnessParams(offsets_s=[-3.5]), eval_windows(x, layout(), toy_shift(x)[0]), 0)
    assert [c.name for c in longer if c.name.startswith("offset")] == ["offset_-3.5s"]  # past the 2 s window: read


# ---- on a trained run, through detach eval ---------------------------------------------------------------------

ROBUSTNESS = "eval.evaluators=[{name: linear_probe, epochs: 2}, {name: robustness, epochs: 2}]"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run evaluated without the robustness evaluator (it is added afterwards)."""
    root = tmp_path_factory.mktemp("trained")
    spec = tiny_spec()
    spec["stages"][0]["epochs"] = 1
    spec["eval"]["evaluators"][0]["epochs"] = 2
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["train", str(root / "spec.yaml"), "--run-dir", str(root / "run")]) == 0
    return root / "run"


def test_detach_eval_adds_it_to_a_finished_run_and_its_clean_row_is_the_linear_probe(trained, capsys, registry):
    own = json.loads((trained / "summary.json").read_text())
    assert main(["eval", str(trained), ROBUSTNESS]) == 0
    spec = load_spec(trained / "spec.yaml", registry, [ROBUSTNESS])
    assert spec.uid == own["uid"]  # evaluators are outside the uid: nothing retrains
    target = trained / "eval" / eval_uid(spec)
    summary = json.loads((target / "summary.json").read_text())
    metrics = summary["metrics"]
    for metric in ("weighted_f1", "macro_map"):
        assert metrics[f"robust/clean/{metric}"] == metrics[metric] == own["metrics"][metric]
    rows = summary["tables"][TABLE]
    fixtures = ["door1", "door2", "fridge", "dishwasher", "drawer1", "drawer2", "drawer3"]
    names = ["clean", *(f"silence_{f}" for f in fixtures), "offset_+0.5s", "offset_+1s", "noise_x2", "noise_x4"]
    assert [r["condition"] for r in rows] == names and not any("skipped" in r for r in rows)
    assert all(0.0 <= r["weighted_f1"] <= 1.0 and 0.0 <= r["macro_map"] <= 1.0 for r in rows)
    assert (target / "plots" / FIGURE).is_file() and f"eval/{eval_uid(spec)}/plots/{FIGURE}" in summary["plots"]


def test_the_sensor_side_alone_reproduces_the_probe_features(trained, host):
    from detach_framework.data.transforms import load_preprocessing
    from detach_framework.engine.evaluate import embed_split_windows, eval_windows, load_evaluated_checkpoint
    from detach_framework.engine.rundir import RunDirectory
    from detach_framework.engine.session import Session

    run = RunDirectory.open_existing(trained)
    session = Session.from_spec(load_spec(run.spec_file, host.registry), host)
    load_preprocessing(session.source, run.path)
    load_evaluated_checkpoint(session, run)
    test, sensor = embed_split_windows(session, "test", keep_windows=True)
    assert sensor.shape == (len(test.labels), len(session.source.channel_names), 32)
    given = eval_windows(session, "test", sensor)
    assert np.array_equal(given.embed(sensor), test.probe)
    assert np.array_equal(given.shifted(0.0), sensor)  # the source's shifted read is the split's own at 0 s
    assert given.layout.fixture_channels and given.dataset == "synthetic_kitchen"


def test_an_offset_below_half_a_raw_sample_fails_detach_eval_in_one_line(trained, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained), "eval.evaluators=[{name: robustness, offsets_s: [0.01]}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "robustness.offsets_s: 0.01 s is less than half a raw sample" in err, err


def test_detach_report_shows_the_robustness_of_a_re_evaluation(trained, capsys, registry):
    assert main(["eval", str(trained), ROBUSTNESS]) == 0
    uid = eval_uid(load_spec(trained / "spec.yaml", registry, [ROBUSTNESS]))
    assert main(["report", str(trained)]) == 0
    html = (trained / "report.html").read_text()
    section = html.split(f'<section id="robustness-{uid}">', 1)[1].split("</section>", 1)[0]
    assert f"(eval/{uid})" in section and "data:image/png;base64," in section
    assert "<th>condition</th>" in section and "silence_fridge" in section and "noise_x4" in section
    assert '<section id="robustness">' not in html  # the run's own summary holds no robustness table


def test_the_report_section_needs_a_robustness_table(tmp_path):
    def context(summary):
        return ReportContext(records=[], summary=summary, run_path=tmp_path, out=tmp_path / "plots" / "report")

    assert report_sections(context({})) == []
    assert report_sections(context({"tables": {"per_class": [{"class": "a"}]}})) == []
    rows = [
        {"condition": "clean", "perturbation": "as is", "weighted_f1": 0.8, "macro_map": 0.7, "f1_change": 0.0},
        {"condition": "noise", "perturbation": "added sensor noise", "skipped": "recorded data"},
    ]
    (section,) = report_sections(context({"tables": {TABLE: rows}}))
    assert section.key == "robustness" and section.png is not None and section.skip is None
    header = ["condition", "perturbation", "weighted_f1", "macro_map", "f1_change", "skipped"]
    assert list(section.table.header) == header
    assert list(section.table.rows[1]) == ["noise", "added sensor noise", "", "", "", "recorded data"]
    only_skipped = report_sections(context({"tables": {TABLE: rows[1:]}}))[0]
    assert only_skipped.png is None and "no scored condition" in only_skipped.skip
