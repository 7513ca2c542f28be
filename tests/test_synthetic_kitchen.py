"""The synthetic kitchen dataset: contract, splits, the P1/P2 mechanics, preprocessing and storage."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import QUIET
from pydantic import ValidationError

from detach_framework.contracts import SAMPLE_KEYS, SPLITS, DatasetSource
from detach_framework.data.settings import DataSettings
from detach_framework.errors import UserError
from detach_framework.plugins import PluginHost
from detach_plugins.datasets.synthetic_kitchen import (
    SyntheticKitchenParams,
    build_synthetic_kitchen,
    resample_linear,
    resolve_nan,
)
from detach_plugins.datasets.synthetic_kitchen.dataset import window_labels
from detach_plugins.datasets.synthetic_kitchen.layout import (
    CLOSE,
    FIXTURES,
    NUM_FIXTURES,
    OPEN,
    SENSOR_RATE_HZ,
    channel_layout,
    template_accel,
    template_extent,
)
from detach_plugins.datasets.synthetic_kitchen.render import KitchenRenderer
from detach_plugins.datasets.synthetic_kitchen.scene import FrameStates, frame_states

DATA = DataSettings(frames=4, frame_size=32, sensor_length=64, seed=7)


def tiny(data: DataSettings = DATA, **knobs):
    return build_synthetic_kitchen(SyntheticKitchenParams(preset="tiny", **knobs), data)


@pytest.fixture(scope="module")
def kitchen():
    return tiny()


def labelled_index(split) -> int:
    return int(np.flatnonzero(split.labels > 0)[0])


def test_registered_through_the_plugin_hook():
    host = PluginHost()
    host.load_module("detach_plugins.datasets.synthetic_kitchen")
    component = host.registry.get("dataset", "synthetic_kitchen")
    assert component.params is SyntheticKitchenParams
    assert all(f.description for f in SyntheticKitchenParams.model_fields.values())


def test_unknown_or_invalid_params_are_rejected():
    with pytest.raises(ValidationError, match="presett"):
        SyntheticKitchenParams.model_validate({"presett": "tiny"})
    with pytest.raises(ValidationError):
        SyntheticKitchenParams(preset="huge")
    with pytest.raises(ValidationError):
        SyntheticKitchenParams(subjects=2)


def test_samples_follow_the_contract(kitchen):
    assert isinstance(kitchen, DatasetSource)
    assert kitchen.class_names[0] == "Null" and len(kitchen.class_names) == 15
    assert kitchen.class_names[1:3] == ["Open Door 1", "Close Door 1"]
    assert len(kitchen.fixture_names) == 7 and len(kitchen.channel_names) == 34
    for name in SPLITS:
        split = kitchen.split(name)
        assert 20 <= len(split) <= 100
        for i in (0, len(split) - 1):
            sample = split[i]
            assert tuple(sample) == SAMPLE_KEYS
            assert sample["video"].dtype == torch.uint8 and sample["video"].shape == (4, 3, 32, 32)
            assert sample["sensor"].dtype == torch.float32 and sample["sensor"].shape == (34, 64)
            assert torch.isfinite(sample["sensor"]).all()
            for key in ("label", "subject", "fixture", "index"):
                assert sample[key].dtype == torch.int64 and sample[key].shape == ()
            assert int(sample["index"]) == i
    with pytest.raises(UserError, match="unknown split"):
        kitchen.split("dev")


def test_splits_are_subject_wise(kitchen):
    seen = {name: set(kitchen.split(name).subjects.tolist()) for name in SPLITS}
    assert all(seen[name] == set(kitchen.subject_splits[name]) for name in SPLITS)
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"])
    assert not (seen["val"] & seen["test"])
    assert set().union(*seen.values()) == {0, 1, 2}


def test_same_seed_same_data_other_seed_other_data(kitchen):
    again = tiny()
    for name in SPLITS:
        a, b = kitchen.split(name), again.split(name)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.sensor, b.sensor)
    i = labelled_index(kitchen.split("train"))
    torch.testing.assert_close(kitchen.split("train")[i]["video"], again.split("train")[i]["video"])
    torch.testing.assert_close(kitchen.split("train")[i]["video"], kitchen.split("train")[i]["video"])
    other = tiny(seed=8)
    assert not np.array_equal(other.split("train").sensor, kitchen.split("train").sensor)
    assert not np.array_equal(other.renderer.static_frame(32), kitchen.renderer.static_frame(32))


def test_close_is_the_time_reversed_open_template():
    tau = np.linspace(0.0, 1.0, 101)
    np.testing.assert_allclose(template_extent(CLOSE, tau), template_extent(OPEN, tau)[::-1], atol=1e-12)
    np.testing.assert_allclose(template_accel(CLOSE, tau), template_accel(OPEN, tau)[::-1], atol=1e-12)
    assert template_extent(OPEN, tau)[0] == 0.0 and template_extent(OPEN, tau)[-1] == 1.0
    # Asymmetric: a close is not just an open with the sign flipped.
    assert not np.allclose(template_accel(CLOSE, tau), -template_accel(OPEN, tau), atol=0.05)


def test_every_fixture_fires_the_same_template_on_its_own_channels_only():
    kitchen = tiny(**QUIET)
    layout = channel_layout()
    gravity = np.zeros(len(layout.names))
    for f, fx in enumerate(FIXTURES):
        gravity[layout.accel[f]] = fx.gravity
    fired = set()
    for rec in kitchen.recordings:
        signal = rec.sensor.astype(np.float64) - gravity[:, None]
        t = np.arange(signal.shape[1]) / SENSOR_RATE_HZ
        onset, dur, fixture, kind = rec.actions()
        for on, d, f, k in zip(onset, dur, fixture, kind, strict=True):
            inside = np.flatnonzero((t >= on) & (t <= on + d))
            # Other fixtures' channels stay silent (nothing else moves: no cross-talk, footsteps, noise).
            assert np.abs(signal[layout.fixture != f][:, inside]).max() < 1e-6
            # The own accelerometer is the shared template along the fixture's axis.
            template = template_accel(int(k), (t[inside] - on) / d)
            for c in layout.accel[int(f)]:
                assert abs(np.corrcoef(signal[c, inside], template)[0, 1]) > 0.999
            # Reed switches: rising edge on an open, falling edge on a close, level held in between.
            for c in layout.reed.get(int(f), []):
                before, after = rec.sensor[c, max(inside[0] - 1, 0)], rec.sensor[c, inside[-1] + 1]
                assert (before, after) == ((0.0, 1.0) if k == OPEN else (1.0, 0.0))
            fired.add(int(f))
    assert len(fired) >= 5


def test_channel_groups_tell_fixtures_apart(kitchen):
    layout = channel_layout()
    split = kitchen.split("train")
    for i in np.flatnonzero(split.labels > 0):
        energy = np.array([np.abs(split.sensor[i][layout.fixture == f]).max() for f in range(NUM_FIXTURES)])
        assert energy.argmax() == split.fixtures[i] or energy[split.fixtures[i]] > 0.5 * energy.max()


def _states(t: int, person_x: np.ndarray, extent: np.ndarray) -> FrameStates:
    return FrameStates(
        person_x=person_x,
        person_y=np.full(t, 0.94),
        step_phase=np.linspace(0, 3, t),
        moving=np.ones(t),
        reach=np.zeros(t),
        reach_fixture=np.full(t, -1),
        lean=np.zeros(t),
        rummage=np.zeros((t, 2)),
        extent=extent,
        flicker=np.ones(t),
        jitter=np.zeros((t, 2)),
    )


@pytest.mark.parametrize("size", [64, 128])
def test_an_action_moves_a_few_pixels_while_the_person_dominates_motion(size):
    renderer = KitchenRenderer(seed=1, fixture_motion_px=2.0)
    f = 5  # drawer2
    extent = np.zeros((2, NUM_FIXTURES))
    extent[1, f] = 1.0
    shirt = np.array([0.2, 0.7, 0.3])
    still = renderer.render(_states(2, np.full(2, 0.3), extent), size, shirt, person=False).astype(float)
    fixture_change = np.abs(still[1] - still[0]).sum(axis=0)
    x0, y0, x1, y1 = (c * size for c in FIXTURES[f].rect)
    shift = 2.0 * size / 64
    ys, xs = np.nonzero(fixture_change > 1)
    # Every changed pixel lies within the drawer's box grown by its shift: the change is local.
    assert ys.min() >= np.floor(y0) - 1 and ys.max() <= np.ceil(y1 + shift) + 1
    assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1) + 1
    # The face moved down by `shift` pixels: the open frame matches the closed one moved by that much.
    k = np.arange(0, 4 * int(shift) + 1)
    m = 1
    closed_face = still[0][:, int(y0) + m : int(y1) - m, int(x0) + m : int(x1) - m]
    err = [
        np.abs(still[1][:, int(y0) + m + j : int(y1) - m + j, int(x0) + m : int(x1) - m] - closed_face).mean()
        for j in k
    ]
    assert k[int(np.argmin(err))] == round(shift) and min(err) < 1.0
    # A walking person (0.2 s of walking) changes far more of the frame than the whole opening.
    walking = renderer.render(_states(2, np.array([0.40, 0.46]), np.zeros((2, NUM_FIXTURES))), size, shirt)
    person_change = np.abs(walking[1].astype(float) - walking[0].astype(float)).sum()
    assert person_change > 5 * fixture_change.sum()
    assert (np.abs(walking[1].astype(float) - still[0]).sum(axis=0) > 30).mean() > 0.02


def test_in_labelled_windows_the_fixture_is_a_small_part_of_the_motion(kitchen):
    """P1 on real windows: frame-to-frame change caused by the fixture vs by everything (person)."""
    shares = []
    for name in SPLITS:
        split = kitchen.split(name)
        for i in np.flatnonzero(split.labels > 0):
            rec = kitchen.recordings[split.recording[i]]
            states = frame_states(rec, split.frame_times(i), 0.0, 0.0)
            with_person = kitchen.renderer.render(states, 64, rec.shirt).astype(float)
            fixture_only = kitchen.renderer.render(states, 64, rec.shirt, person=False).astype(float)
            fixture_motion = np.abs(np.diff(fixture_only, axis=0)).sum()
            shares.append(fixture_motion / np.abs(np.diff(with_person, axis=0)).sum())
    assert len(shares) >= 10 and np.median(shares) < 0.35 and max(shares) > 0.0


def test_window_label_rule():
    starts = np.array([0.0, 1.0, 2.0, 3.0])
    onset, dur = np.array([0.5, 2.6]), np.array([1.0, 1.0])
    labels, fixtures = window_labels(starts, 2.0, onset, dur, np.array([3, 8]), np.array([1, 3]))
    # [0,2] holds all of action 1; [1,3] half of it and 0.4 of action 2; [2,4] most of action 2;
    # [3,5] only 0.6 of action 2 (more than half).
    np.testing.assert_array_equal(labels, [3, 3, 8, 8])
    np.testing.assert_array_equal(fixtures, [1, 1, 3, 3])
    labels, fixtures = window_labels(np.array([0.0]), 2.0, np.array([1.6]), np.array([1.0]), np.array([5]), [2])
    assert labels[0] == 0 and fixtures[0] == -1  # only 0.4 of the action: Null


def test_labels_fixtures_and_windows_agree(kitchen):
    for name in SPLITS:
        split = kitchen.split(name)
        assert ((split.labels == 0) == (split.fixtures == -1)).all()
        hit = split.labels > 0
        np.testing.assert_array_equal(split.fixtures[hit], (split.labels[hit] - 1) // 2)
        assert (split.labels == 0).sum() > 0 and hit.sum() > 0
        for i in range(len(split)):
            rec = kitchen.recordings[split.recording[i]]
            assert split.subjects[i] == rec.subject and split.activity[i] == rec.activity
            assert split.start_seconds[i] + DATA.window_seconds <= rec.duration + 1e-9


def test_nan_policy_zeroes_mostly_missing_channels_and_interpolates_the_rest():
    nan = np.nan
    window = np.array(
        [
            [1.0, nan, nan, nan, 5.0, nan],  # 4/6 missing: dead, zeros
            [0.0, nan, 2.0, nan, nan, 8.0],  # interior gaps: linear
            [nan, 3.0, 4.0, 5.0, nan, nan],  # edge gaps: edge values held
            [nan, nan, nan, 1.0, 2.0, 3.0],  # exactly half missing: still interpolated
        ]
    )
    filled, dead = resolve_nan(window)
    np.testing.assert_array_equal(dead, [True, False, False, False])
    np.testing.assert_allclose(filled[3], [1, 1, 1, 1, 2, 3])
    np.testing.assert_array_equal(filled[0], np.zeros(6))
    np.testing.assert_allclose(filled[1], [0, 1, 2, 4, 6, 8])
    np.testing.assert_allclose(filled[2], [3, 3, 4, 5, 5, 5])
    np.testing.assert_allclose(resample_linear(np.array([[0.0, 2.0, 4.0]]), 5), [[0, 1, 2, 3, 4]])


def test_dataset_applies_the_nan_policy_per_window():
    kitchen = tiny(nan_burst_rate=6.0)
    n = int(round(DATA.window_seconds * SENSOR_RATE_HZ))
    dead_seen = interpolated_seen = 0
    for name in SPLITS:
        split = kitchen.split(name)
        assert np.isfinite(split.sensor).all()
        for i in range(len(split)):
            rec = kitchen.recordings[split.recording[i]]
            k0 = int(round(split.start_seconds[i] * SENSOR_RATE_HZ))
            missing = np.isnan(rec.sensor[:, k0 : k0 + n]).mean(axis=1)
            for c in np.flatnonzero(missing > 0.5):
                assert (split.sensor[i, c] == 0).all()
                dead_seen += 1
            interpolated_seen += int(((missing > 0) & (missing <= 0.5)).sum())
    assert dead_seen > 0 and interpolated_seen > 0


def test_zscore_uses_train_statistics_only(kitchen):
    train, test = kitchen.split("train"), kitchen.split("test")
    moving = train.sensor.std(axis=(0, 2)) > 0.1
    np.testing.assert_allclose(train.sensor.mean(axis=(0, 2))[moving], 0.0, atol=0.05)
    # A test window is its raw slice, NaN-resolved and resampled, scaled with the *train* statistics.
    i = labelled_index(test)
    rec = kitchen.recordings[test.recording[i]]
    n = int(round(DATA.window_seconds * SENSOR_RATE_HZ))
    k0 = int(round(test.start_seconds[i] * SENSOR_RATE_HZ))
    filled, dead = resolve_nan(rec.sensor[:, k0 : k0 + n])
    expected = (resample_linear(filled, DATA.sensor_length) - kitchen.sensor_mean[:, None]) / kitchen.sensor_std[
        :, None
    ]
    expected[dead] = 0.0
    np.testing.assert_allclose(test.sensor[i], expected, atol=1e-5)
    # The statistics are not the test split's own: re-standardising the test split would change it.
    assert np.abs(test.sensor.mean(axis=(0, 2))).max() > 0.05


def test_export_and_read_back_give_the_same_samples(kitchen, tmp_path):
    out = tmp_path / "kitchen"
    kitchen.export(out)
    assert (out / "manifest.json").is_file() and len(list(out.glob("*.npz"))) == len(kitchen.recordings)
    assert [p.name for p in tmp_path.iterdir()] == ["kitchen"]  # the temporary directory was renamed
    with np.load(next(out.glob("*.npz")), allow_pickle=False) as npz:
        assert npz["sensor"].dtype == np.float32
    loaded = build_synthetic_kitchen(SyntheticKitchenParams(root=str(out), preset="tiny"), DATA)
    assert loaded.knobs == kitchen.knobs and loaded.seed == kitchen.seed
    for name in SPLITS:
        a, b = kitchen.split(name), loaded.split(name)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.sensor, b.sensor)
        for i in (0, labelled_index(a)):
            for key, value in a[i].items():
                torch.testing.assert_close(value, b[i][key])
    with pytest.raises(UserError, match="not an empty directory"):
        kitchen.export(out)


def test_bad_root_names_the_file(kitchen, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="nowhere"):
        build_synthetic_kitchen(SyntheticKitchenParams(root=str(missing)), DATA)
    out = tmp_path / "kitchen"
    kitchen.export(out)
    with pytest.raises(UserError, match="subjects"):
        build_synthetic_kitchen(SyntheticKitchenParams(root=str(out), subjects=4), DATA)
    with pytest.raises(UserError, match="seed"):
        build_synthetic_kitchen(SyntheticKitchenParams(root=str(out), seed=99), DATA)
    victim = sorted(out.glob("*.npz"))[0]
    victim.write_bytes(b"not a zip file")
    with pytest.raises(UserError, match=victim.name):
        build_synthetic_kitchen(SyntheticKitchenParams(root=str(out)), DATA)
    victim.unlink()
    with pytest.raises(UserError, match=victim.name):
        build_synthetic_kitchen(SyntheticKitchenParams(root=str(out)), DATA)
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(UserError, match="manifest.json"):
        build_synthetic_kitchen(SyntheticKitchenParams(root=str(out)), DATA)


KNOB_CHANGES = {
    "subjects": 4,
    "recordings_per_subject": 3,
    "recording_seconds": 30.0,
    "sensor_noise_std": 0.2,
    "crosstalk_gain": 0.9,
    "walking_vibration_gain": 0.6,
    "nan_burst_rate": 5.0,
    "max_clock_offset_s": 1.0,
    "flicker_amplitude": 0.3,
    "camera_jitter_px": 3.0,
    "fixture_motion_px": 6.0,
    "speed_spread": 0.5,
    "amplitude_spread": 0.6,
    "max_hold_s": 6.0,
    "handling_depth": 0.4,
    "baseline_wander_gain": 0.3,
    "min_open_extent": 0.3,
    "ajar_prob": 0.8,
    "reed_dropout_prob": 0.5,
    "layout": {"fixtures": 5},
}


def _fingerprint(kitchen) -> list[np.ndarray]:
    split = kitchen.split("train")
    video = [split.video(i) for i in range(0, len(split), 5)]
    return [split.labels, split.sensor, *video]


def test_every_knob_changes_the_data(kitchen):
    names = set(SyntheticKitchenParams.model_fields) - {"preset", "root", "seed"}
    assert names == set(KNOB_CHANGES)
    base = _fingerprint(kitchen)
    for knob, value in KNOB_CHANGES.items():
        changed = _fingerprint(tiny(**{knob: value}))
        same = len(changed) == len(base) and all(
            a.shape == b.shape and np.array_equal(a, b) for a, b in zip(base, changed, strict=True)
        )
        assert not same, knob
    assert not np.array_equal(_fingerprint(tiny(data=replace(DATA, seed=3)))[1], base[1])


def test_quickstart_size_and_bad_settings():
    quick = build_synthetic_kitchen(SyntheticKitchenParams(), DataSettings())
    assert 900 <= len(quick.split("train")) <= 1200
    assert len(np.unique(quick.split("train").labels)) == 15
    with pytest.raises(UserError, match="window_seconds"):
        tiny(data=DataSettings(window_seconds=100.0))
