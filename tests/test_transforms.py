"""Preprocessing transforms, each checked against a hand computation: NaN policy, train-only z-score,
Butterworth low-pass, resampling, the composable pipeline, its spec entries and its run-directory file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from detach_framework.data.transforms import (
    PREPROCESSING_FILE,
    LowPassStep,
    NanPolicyStep,
    Pipeline,
    ResampleStep,
    TransformStep,
    ZScoreStep,
    butter_lowpass,
    detach_preprocessing,
    load_preprocessing,
    resample_linear,
    resolve_nan,
    save_preprocessing,
)
from detach_framework.errors import UserError

NAN = np.nan


def test_nan_policy_by_hand():
    window = np.array(
        [
            [NAN, 1.0, NAN, 3.0, NAN],  # 60% NaN: dropped -> 0
            [NAN, 2.0, NAN, 4.0, 5.0],  # 40% NaN: interpolated, the leading edge held
            [1.0, NAN, NAN, NAN, 5.0],  # 60% NaN in the middle: dropped too
            [1.0, 2.0, NAN, NAN, 8.0],  # 40%: linear between 2 and 8
        ]
    )
    filled, dead = resolve_nan(window)
    np.testing.assert_array_equal(dead, [True, False, True, False])
    np.testing.assert_allclose(filled[0], 0.0)
    np.testing.assert_allclose(filled[1], [2.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(filled[2], 0.0)
    np.testing.assert_allclose(filled[3], [1.0, 2.0, 4.0, 6.0, 8.0])


def test_nan_policy_half_is_not_dead():
    filled, dead = resolve_nan(np.array([[NAN, NAN, 4.0, 6.0]]))  # exactly 50%: more than half is the rule
    assert not dead[0]
    np.testing.assert_allclose(filled[0], [4.0, 4.0, 4.0, 6.0])


def test_resample_linear_by_hand():
    np.testing.assert_allclose(resample_linear(np.array([[0.0, 2.0, 4.0]]), 5), [[0, 1, 2, 3, 4]])
    np.testing.assert_allclose(resample_linear(np.array([0.0, 3.0]), 4), [0, 1, 2, 3])
    np.testing.assert_allclose(resample_linear(np.array([[7.0]]), 3), [[7, 7, 7]])


def _gain(freq: float, n: int = 4000) -> float:
    """Measured amplitude gain at `freq` (fraction of Nyquist) in the middle of a long sinusoid."""
    t = np.arange(n)
    x = np.sin(np.pi * freq * t)
    y = butter_lowpass(x)
    mid = slice(n // 4, 3 * n // 4)
    return float(np.sqrt(2.0 * np.mean(y[mid] ** 2)))


@pytest.mark.parametrize("freq", [0.05, 0.1, 0.15, 0.3])
def test_butterworth_zero_phase_gain_is_the_squared_magnitude(freq):
    # Digital Butterworth (bilinear transform): |H|^2 = 1 / (1 + (tan(pi f / 2) / tan(pi fc / 2))^(2N));
    # running it forwards and backwards applies |H| twice.
    order, cutoff = 4, 0.1
    expected = 1.0 / (1.0 + (np.tan(np.pi * freq / 2) / np.tan(np.pi * cutoff / 2)) ** (2 * order))
    assert _gain(freq) == pytest.approx(expected, rel=0.02, abs=1e-4)


def test_butterworth_zero_phase_keeps_a_peak_in_place_and_a_constant_unchanged():
    t = np.arange(600)
    bump = np.exp(-0.5 * ((t - 300) / 40.0) ** 2)
    y = butter_lowpass(bump)
    assert int(np.argmax(y)) == 300  # no delay
    np.testing.assert_allclose(butter_lowpass(np.full((2, 50), 3.5)), 3.5, atol=1e-9)
    causal = butter_lowpass(bump, zero_phase=False)
    assert int(np.argmax(causal)) > 300  # the one-way filter does delay


def test_butterworth_short_window_still_filters():
    x = np.random.default_rng(0).normal(size=(3, 10))
    y = butter_lowpass(x)
    assert y.shape == x.shape and np.isfinite(y).all()


def _windows(rng, n, c=3, length=20, loc=0.0, scale=1.0):
    return loc + scale * rng.normal(size=(n, c, length))


def test_zscore_statistics_come_from_the_training_windows_only():
    rng = np.random.default_rng(1)
    train = _windows(rng, 12, loc=5.0, scale=2.0)
    train[3, 1, :15] = NAN  # 75% NaN: channel 1 of window 3 is dead and must not count
    train[4, 2, 2:5] = NAN  # interpolated
    test = _windows(rng, 6, loc=-40.0, scale=9.0)  # very different: must not leak into the statistics
    pipe = Pipeline([NanPolicyStep(), ZScoreStep()], sensor_length=20, where="t")
    pipe.fit(lambda: iter([train[:5], train[5:]]))  # two chunks: must equal one pass

    filled = np.stack([resolve_nan(w)[0] for w in train])
    live = np.ones((12, 3), bool)
    live[3, 1] = False
    for c in range(3):
        values = filled[live[:, c], c].ravel()
        mean, std = pipe.stats[1][0][c], pipe.stats[1][1][c]
        assert mean == pytest.approx(values.mean(), rel=1e-12)
        assert std == pytest.approx(values.std(), rel=1e-12)
    out = pipe(test)
    np.testing.assert_allclose(
        out, ((test - pipe.stats[1][0][None, :, None]) / pipe.stats[1][1][None, :, None]), rtol=1e-5
    )
    dead_out = pipe(train[3:4])
    np.testing.assert_array_equal(dead_out[0, 1], 0.0)  # a dropped channel reads exactly 0 after scaling


def test_zscore_constant_channel_is_only_centred():
    train = np.ones((4, 2, 10))
    train[:, 1] = np.arange(10)
    pipe = Pipeline([ZScoreStep()], 10, "t")
    pipe.fit(lambda: [train])
    assert pipe.stats[0][1][0] == 1.0
    np.testing.assert_allclose(pipe(train)[:, 0], 0.0)


def test_default_pipeline_is_detachs_order_and_resamples():
    steps = detach_preprocessing()
    assert [s.name for s in steps] == ["nan_policy", "zscore", "lowpass", "resample"]
    assert (steps[2].order, steps[2].cutoff, steps[2].zero_phase) == (4, 0.1, True)
    rng = np.random.default_rng(2)
    train = _windows(rng, 8, length=60)
    pipe = Pipeline(steps, sensor_length=32, where="t")
    pipe.fit(lambda: [train])
    out = pipe(train[0])
    assert out.shape == (3, 32) and out.dtype == np.float32
    mean, std = pipe.stats[1]
    expected = resample_linear(butter_lowpass((train[0] - mean[:, None]) / std[:, None]), 32)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_pipeline_without_nan_policy_refuses_nan():
    pipe = Pipeline([ResampleStep()], 4, "ds preprocessing")
    with pytest.raises(UserError, match="ds preprocessing: preprocessing leaves NaN.*nan_policy"):
        pipe(np.array([[1.0, NAN, 2.0]]))


def test_pipeline_length_must_match_sensor_length():
    with pytest.raises(UserError, match="resamples to 16 steps but data.sensor_length is 32"):
        Pipeline([ResampleStep(length=16)], 32, "ds")
    with pytest.raises(UserError, match="windows have 5 steps but data.sensor_length is 8; add a `resample` step"):
        Pipeline([NanPolicyStep()], 8, "ds")(np.zeros((2, 5)))


def test_steps_validate_as_a_tagged_list():
    adapter = TypeAdapter(list[TransformStep])
    steps = adapter.validate_python([{"name": "lowpass", "cutoff": 0.2}, {"name": "resample"}])
    assert isinstance(steps[0], LowPassStep) and steps[0].cutoff == 0.2 and steps[0].order == 4
    with pytest.raises(ValidationError):
        adapter.validate_python([{"name": "median"}])
    with pytest.raises(ValidationError):
        adapter.validate_python([{"name": "lowpass", "cutoff": 1.5}])
    with pytest.raises(ValidationError):
        adapter.validate_python([{"name": "zscore", "typo": 1}])


class _Source:
    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe

    def preprocessing_state(self):
        return self.pipe.state(["a", "b", "c"])

    def load_preprocessing_state(self, state, source):
        self.pipe.load_state(state, source)


def test_statistics_are_stored_in_the_run_directory_and_reused(tmp_path):
    rng = np.random.default_rng(3)
    fitted = Pipeline([ZScoreStep()], 20, "t")
    fitted.fit(lambda: [_windows(rng, 5, loc=2.0)])
    assert save_preprocessing(_Source(fitted), tmp_path) == tmp_path / PREPROCESSING_FILE
    stored = json.loads((tmp_path / PREPROCESSING_FILE).read_text())
    assert stored["fit_split"] == "train" and stored["fit_windows"] == 5
    np.testing.assert_allclose(stored["zscore"]["0"]["mean"], fitted.stats[0][0])

    other = Pipeline([ZScoreStep()], 20, "t")
    other.fit(lambda: [_windows(rng, 5, loc=-7.0)])  # statistics of different data
    load_preprocessing(_Source(other), tmp_path)
    x = _windows(rng, 2)
    np.testing.assert_allclose(other(x), fitted(x))

    mismatched = _Source(Pipeline([NanPolicyStep(), ZScoreStep()], 20, "t"))
    with pytest.raises(UserError, match="stored preprocessing steps differ"):
        load_preprocessing(mismatched, tmp_path)
    assert save_preprocessing(object(), tmp_path / "x") is None  # sources without preprocessing: nothing written
