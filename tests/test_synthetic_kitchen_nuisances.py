"""The synthetic kitchen's sensor-side nuisances that make "which channels fire" need temporal evidence:
long holds, nudges while held open, shallow opens, fixtures left ajar, reed nodes that drop out and the
accelerometers' slow baseline wander. Each is checked on the raw streams with everything else switched off."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import QUIET

from detach_framework.data.settings import DataSettings
from detach_plugins.datasets.synthetic_kitchen import SyntheticKitchenParams, build_synthetic_kitchen
from detach_plugins.datasets.synthetic_kitchen.layout import FIXTURES, REED_THRESHOLDS, SENSOR_RATE_HZ, channel_layout
from detach_plugins.datasets.synthetic_kitchen.scene import (
    AJAR_EXTENT,
    MIN_HOLD_S,
    NUDGE_S,
    WANDER_HZ,
    fixture_extents,
)

DATA = DataSettings(frames=2, frame_size=16, sensor_length=32, seed=11)
LAYOUT = channel_layout()


def kitchen(**knobs):
    params = SyntheticKitchenParams(preset="tiny", recording_seconds=60.0, **{**QUIET, **knobs})
    return build_synthetic_kitchen(params, DATA)


def times_of(rec) -> np.ndarray:
    return np.arange(rec.sensor.shape[1]) / SENSOR_RATE_HZ


def motion(rec) -> np.ndarray:
    """The accelerometer channels without gravity: what the fixtures' movements add."""
    out = rec.sensor[np.concatenate(list(LAYOUT.accel.values()))].astype(np.float64)
    gravity = np.concatenate([np.asarray(FIXTURES[f].gravity) for f in LAYOUT.accel])
    return out - gravity[:, None]


@pytest.fixture(scope="module")
def plain():
    return kitchen()


def same_labels(a, b) -> bool:
    return all(np.array_equal(a.split(s).labels, b.split(s).labels) for s in ("train", "val", "test"))


def test_defaults_switch_every_new_nuisance_off(plain):
    for rec in plain.recordings:
        assert np.all(rec.open_extent == 1.0) and np.all(rec.rest_extent == 0.0) and len(rec.nudge_on) == 0
        hold = rec.close_on - (rec.open_on + rec.open_dur)
        assert np.all(hold >= MIN_HOLD_S / rec.speed - 1e-9) and np.all(hold <= 2.5 / rec.speed + 1e-9)


def test_holds_last_up_to_max_hold_s():
    long = kitchen(max_hold_s=9.0)
    holds = np.concatenate([(r.close_on - r.open_on - r.open_dur) * r.speed for r in long.recordings])
    assert holds.max() <= 9.0 + 1e-9 and holds.max() > 2.5  # the default bound is exceeded, the new one kept


def test_a_fixture_left_ajar_keeps_its_first_reed_on_until_its_next_open(plain):
    ajar = kitchen(ajar_prob=1.0)
    assert same_labels(plain, ajar)  # an unlabelled state: timelines and labels are unchanged
    checked = 0
    for rec in ajar.recordings:
        t = times_of(rec)
        extents = fixture_extents(rec, t)
        for v, f in enumerate(rec.visit_fixture):
            rest = rec.rest_extent[v]
            assert AJAR_EXTENT[0] <= rest <= AJAR_EXTENT[1]
            later = np.flatnonzero(rec.visit_fixture[v + 1 :] == f)
            until = rec.open_on[v + 1 + later[0]] if len(later) else rec.duration
            between = (t > rec.close_on[v] + rec.close_dur[v] + 0.05) & (t < until - 0.05)
            np.testing.assert_allclose(extents[between, f], rest)
            for c, threshold in zip(LAYOUT.reed.get(f, []), REED_THRESHOLDS.get(FIXTURES[f].reeds, ()), strict=True):
                if between.any():
                    assert np.all(rec.sensor[c, between] == float(rest > threshold))
                    checked += rest > threshold
    assert checked >= 3


def test_shallow_opens_move_less_and_leave_upper_reeds_untripped(plain):
    shallow = kitchen(min_open_extent=0.2)
    assert same_labels(plain, shallow)
    reached = np.concatenate([r.open_extent for r in shallow.recordings])
    assert reached.min() < 0.5 and reached.max() <= 1.0 and np.all(reached >= 0.2)
    for full, rec in zip(plain.recordings, shallow.recordings, strict=True):
        t = times_of(rec)
        extents = fixture_extents(rec, t)
        for v, f in enumerate(rec.visit_fixture):
            visit = (t >= rec.open_on[v]) & (t <= rec.close_on[v] + rec.close_dur[v])
            assert extents[visit, f].max() == pytest.approx(rec.open_extent[v], abs=1e-6)
            for c, threshold in zip(LAYOUT.reed.get(f, []), REED_THRESHOLDS.get(FIXTURES[f].reeds, ()), strict=True):
                assert rec.sensor[c, visit].max() == float(rec.open_extent[v] > threshold)
            # Same time, a fraction of the distance: the acceleration scales by that fraction.
            opening = (t >= rec.open_on[v]) & (t <= rec.open_on[v] + rec.open_dur[v])
            expected = rec.open_extent[v] * motion(full)[:, opening]
            np.testing.assert_allclose(motion(rec)[:, opening], expected, atol=1e-5)


def test_nudges_happen_while_held_open_and_are_not_labelled(plain):
    nudged = kitchen(handling_depth=0.4, max_hold_s=6.0)
    assert same_labels(kitchen(max_hold_s=6.0), nudged)
    count = 0
    for rec in nudged.recordings:
        t = times_of(rec)
        for v in np.unique(rec.nudge_visit):
            on = np.sort(rec.nudge_on[rec.nudge_visit == v])
            assert on[0] >= rec.open_on[v] + rec.open_dur[v] and on[-1] + 2 * NUDGE_S <= rec.close_on[v]
            assert np.all(np.diff(on) >= 2 * NUDGE_S - 1e-9)
        for v, at, depth in zip(rec.nudge_visit, rec.nudge_on, rec.nudge_depth, strict=True):
            assert 0.0 < depth <= 0.4
            f = rec.visit_fixture[v]
            deepest = fixture_extents(rec, np.array([at + NUDGE_S]))[0, f]
            assert deepest == pytest.approx(rec.open_extent[v] - depth, abs=1e-6)
            during = (t > at) & (t < at + 2 * NUDGE_S)
            assert np.abs(motion(rec)[:, during]).max() > 0.1 * depth  # the accelerometer feels it
            count += 1
    assert count >= 10


def test_baseline_wander_is_slow_and_only_on_accelerometers(plain):
    gain = 0.5
    wandering = kitchen(baseline_wander_gain=gain)
    accel = np.zeros(len(LAYOUT.names), bool)
    accel[np.concatenate(list(LAYOUT.accel.values()))] = True
    for base, rec in zip(plain.recordings, wandering.recordings, strict=True):
        added = rec.sensor.astype(np.float64) - base.sensor
        assert np.all(added[~accel] == 0.0)
        wander = added[accel]
        assert 0.3 * gain < wander.std() < 2.0 * gain
        power = np.abs(np.fft.rfft(wander - wander.mean(axis=1, keepdims=True), axis=1)) ** 2
        freq = np.fft.rfftfreq(wander.shape[1], 1.0 / SENSOR_RATE_HZ)
        assert power[:, freq > 3 * WANDER_HZ[1]].sum() < 0.01 * power.sum()  # slower than any action


@pytest.mark.parametrize("prob", [0.0, 0.5, 1.0])
def test_reed_dropout_silences_whole_reed_nodes(prob):
    dropped = kitchen(reed_dropout_prob=prob)
    reed = np.concatenate(list(LAYOUT.reed.values()))
    silent = []
    for rec in dropped.recordings:
        for chans in LAYOUT.reed.values():  # a node is silent as a whole, all recording long, or not at all
            missing = np.isnan(rec.sensor[chans])
            assert missing.all() or not missing.any()
            silent.append(missing.all())
        assert not np.isnan(np.delete(rec.sensor, reed, axis=0)).any()
    assert np.mean(silent) == prob if prob in (0.0, 1.0) else 0.2 < np.mean(silent) < 0.8
    # The windows still load: the NaN policy flags the dead channels and zeroes them.
    assert np.isfinite(dropped.split("train").sensor).all()


def test_extents_of_a_few_frame_times_match_the_whole_recording():
    rec = kitchen(ajar_prob=0.7, handling_depth=0.4, max_hold_s=6.0).recordings[0]
    t = times_of(rec)
    whole = fixture_extents(rec, t)
    for start in np.arange(0, len(t) - 60, 37):  # a window's frames only see what happened before them
        idx = np.arange(start, start + 60, 7)
        np.testing.assert_array_equal(fixture_extents(rec, t[idx]), whole[idx])


def test_an_exported_kitchen_keeps_every_nuisance(tmp_path):
    busy = kitchen(ajar_prob=0.7, handling_depth=0.4, max_hold_s=6.0, reed_dropout_prob=0.3, min_open_extent=0.5)
    busy.export(tmp_path / "kitchen")
    params = SyntheticKitchenParams(root=str(tmp_path / "kitchen"), preset="tiny")
    loaded = build_synthetic_kitchen(params, DATA)
    for a, b in zip(busy.recordings, loaded.recordings, strict=True):
        for name in ("open_extent", "rest_extent", "nudge_visit", "nudge_on", "nudge_depth"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    split, again = busy.split("train"), loaded.split("train")
    np.testing.assert_array_equal(split.sensor, again.sensor)
    np.testing.assert_array_equal(split.video(5), again.video(5))


def test_labelled_opens_move_out_and_closes_move_in_whatever_the_knobs():
    busy = kitchen(min_open_extent=0.2, ajar_prob=1.0, handling_depth=0.5, max_hold_s=6.0)
    for rec in busy.recordings:
        t = times_of(rec)
        extents = fixture_extents(rec, t)
        onset, dur, fixture, kind = rec.actions()
        for on, d, f, k in zip(onset, dur, fixture, kind, strict=True):
            before = extents[np.searchsorted(t, on) - 1, f]
            after = extents[min(np.searchsorted(t, on + d) + 1, len(t) - 1), f]
            assert (after > before) if k == 0 else (after < before)


def test_each_nuisance_keeps_its_own_random_stream():
    # Switching the wander on must not change which reed nodes drop out, nor the timeline or the nudges.
    base = kitchen(reed_dropout_prob=0.5, handling_depth=0.4)
    wandering = kitchen(reed_dropout_prob=0.5, handling_depth=0.4, baseline_wander_gain=0.3)
    for a, b in zip(base.recordings, wandering.recordings, strict=True):
        np.testing.assert_array_equal(np.isnan(a.sensor), np.isnan(b.sensor))
        np.testing.assert_array_equal(a.nudge_on, b.nudge_on)
