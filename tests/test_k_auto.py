"""`model.clusterer.k: auto`: the estimator on hand-made co-activation patterns and on the kitchen, the run's
k_estimate.json, training and resuming with it, its report section and its bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import train_until_interrupted
from test_detach import detach_spec

from detach_framework.cli import main
from detach_framework.data.settings import DataSettings
from detach_framework.engine import locations
from detach_framework.engine.checkpoint import load_checkpoint
from detach_framework.engine.locations import (
    K_ESTIMATE_FILE,
    eigengap,
    estimate_locations,
    firing,
    jaccard,
    train_windows,
)
from detach_framework.errors import UserError
from detach_framework.report import ReportContext
from detach_framework.spec import load_spec
from detach_plugins.datasets.synthetic_kitchen import SyntheticKitchenParams, build_synthetic_kitchen
from detach_plugins.detach.report import k_estimate_sections


def spiky_windows(groups: int, per_group: int, noise_channels: int, windows: int = 240, seed: int = 0) -> np.ndarray:
    """Windows [N, C, 16] of quiet channels where, in turn, each group of `per_group` channels spikes together
    (and every `groups + 1`-th window nothing does); `noise_channels` more spike alone at random."""
    rng = np.random.default_rng(seed)
    channels = groups * per_group + noise_channels
    x = 0.01 * rng.standard_normal((windows, channels, 16))
    for n in range(windows):
        group = n % (groups + 1)
        if group < groups:
            x[n, group * per_group : (group + 1) * per_group, 8] += 5.0
    for c in range(groups * per_group, channels):
        x[rng.random(windows) < 0.05, c, 4] += 5.0
    return x


# -- the criterion by hand ---------------------------------------------------------------------------------


def test_jaccard_by_hand():
    fires = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 0]], dtype=bool)  # windows x channels
    similarity = jaccard(fires)
    assert similarity[0, 1] == pytest.approx(2 / 3)  # both fire in windows 0, 1; either in 0, 1, 2
    assert similarity[0, 2] == 0.0 and similarity[2, 2] == 0.0  # channel 2 never fires
    assert similarity[0, 0] == 1.0


def test_eigengap_by_hand():
    # Three pairs that always fire together and never with another pair: each pair's block of the normalised
    # Laplacian is [[1, -1], [-1, 1]], eigenvalues 0 and 2, so the spectrum is 0, 0, 0, 2, 2, 2.
    similarity = np.kron(np.eye(3), np.ones((2, 2)))
    candidates, gaps, eigenvalues = eigengap(similarity)
    assert eigenvalues == pytest.approx([0, 0, 0, 2, 2, 2], abs=1e-12)
    assert candidates == [2, 3]  # 2 .. m // 2
    assert gaps == pytest.approx([0.0, 2.0], abs=1e-12)  # lambda_2 - lambda_1, lambda_3 - lambda_2: K = 3


def test_firing_ignores_a_held_level_and_a_slow_drift():
    x = np.zeros((20, 3, 32))
    x[:, 0] = 3.0  # held all window long (a fixture left ajar)
    x[:, 1] = np.linspace(-2.0, 2.0, 32)  # a drift across the window
    x[5, 2, 10] = 4.0  # a transient
    fires = firing(x)
    assert not fires[:, :2].any()
    assert fires[:, 2].tolist() == [n == 5 for n in range(20)]


def test_five_groups_of_two_plus_noise_give_five():
    estimate = estimate_locations(spiky_windows(groups=5, per_group=2, noise_channels=2))
    assert estimate.estimate == estimate.chosen == 5  # DETACH's K counts locations, not "no sensor fires"
    assert estimate.candidates == list(range(2, 7))
    assert int(np.argmax(estimate.eigengaps)) + 2 == 5
    assert len(estimate.channels) == 12


def test_seven_groups_of_mixed_sizes():
    x = spiky_windows(groups=7, per_group=3, noise_channels=0)
    assert estimate_locations(x).chosen == 7


# -- the kitchen ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixtures", [4, 7])
def test_tiny_kitchen_estimate_is_its_number_of_fixtures(fixtures):
    # The tiny preset's nuisances; 5 recordings per subject, so that the training subject goes through all five
    # activities and visits every fixture (a fixture that never moves in the training windows cannot be found).
    data = DataSettings(window_seconds=2.0, stride_seconds=1.0, frames=2, frame_size=16, sensor_length=64, seed=0)
    params = SyntheticKitchenParams(preset="tiny", recordings_per_subject=5, layout={"fixtures": fixtures})
    source = build_synthetic_kitchen(params, data)
    train = source.split("train")
    assert len(np.unique(train.fixtures[train.fixtures >= 0])) == fixtures
    estimate = estimate_locations(train_windows(train), list(source.channel_names))
    assert estimate.chosen == len(source.fixture_names) == fixtures


# -- bad input -------------------------------------------------------------------------------------------------


def test_one_window_is_a_one_line_user_error():
    with pytest.raises(UserError, match=r"^model\.clusterer\.k is auto.* has 1: at least 2 windows") as info:
        estimate_locations(spiky_windows(5, 2, 0)[:1])
    assert "\n" not in str(info.value)


def test_windows_where_nothing_fires_are_a_user_error():
    with pytest.raises(UserError, match=r"^model\.clusterer\.k is auto, but only 0 of 6 channels fire") as info:
        estimate_locations(np.zeros((30, 6, 16)))
    assert "\n" not in str(info.value)


def test_k_sometimes_is_refused_naming_the_field(registry):
    with pytest.raises(UserError, match=r"model\.clusterer\.k: Input should be 'auto' \(got 'sometimes'\)$"):
        load_spec(detach_spec(), registry, ["model.clusterer.k=sometimes"])
    with pytest.raises(UserError, match=r"model\.clusterer\.k: Input should be greater than or equal to 2 \(got 1\)$"):
        load_spec(detach_spec(), registry, ["model.clusterer.k=1"])
    spec = load_spec(detach_spec(), registry, ["model.clusterer.k=auto"])
    assert spec.model.clusterer.k == "auto"
    assert load_spec(detach_spec(), registry).uid != spec.uid


# -- a run -------------------------------------------------------------------------------------------------------


def auto_spec(tmp_path):
    spec = detach_spec(deterministic=True)
    spec["model"]["clusterer"]["k"] = "auto"
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_train_with_k_auto_writes_the_estimate_and_resume_keeps_it(tmp_path, monkeypatch, capsys):
    path = auto_spec(tmp_path)
    run = tmp_path / "run"
    train_until_interrupted(monkeypatch, path, run, at_epoch=2)
    estimate = json.loads((run / K_ESTIMATE_FILE).read_text())
    assert {"method", "threshold", "candidates", "eigengaps", "estimate", "chosen"} <= set(estimate)
    assert len(estimate["candidates"]) == len(estimate["eigengaps"])
    assert "model.clusterer.k: auto -> " in capsys.readouterr().err
    k = estimate["chosen"]

    def refuse(*args, **kwargs):
        raise AssertionError("resume estimated K again instead of reading k_estimate.json")

    original = locations.estimate_locations
    monkeypatch.setattr(locations, "estimate_locations", refuse)
    assert main(["train", path, "--run-dir", str(run), "--resume"]) == 0
    assert json.loads((run / K_ESTIMATE_FILE).read_text()) == estimate
    model = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert model["clusterer.centroids"].shape[0] == k
    assert json.loads((run / "summary.json").read_text())["metrics"]

    # `detach report` rebuilds the model (the estimate is deterministic) and shows the section.
    monkeypatch.setattr(locations, "estimate_locations", original)
    assert main(["report", str(run)]) == 0
    assert 'id="k-estimate"' in (run / "report.html").read_text(encoding="utf-8")
    context = ReportContext(records=[], summary={}, run_path=run, out=tmp_path / "plots")
    (section,) = k_estimate_sections(context)
    assert section.png and not section.skip
    assert [row[0] for row in section.table.rows] == estimate["candidates"]


def test_no_report_section_without_an_estimate(tmp_path):
    assert k_estimate_sections(ReportContext(records=[], summary={}, run_path=tmp_path, out=tmp_path / "p")) == []


def test_estimator_is_deterministic():
    x = spiky_windows(5, 2, 2)
    assert estimate_locations(x) == estimate_locations(x.copy())
