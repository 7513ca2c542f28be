"""The synthetic kitchen's layout param: the default reproduces the fixed 7-fixture kitchen bit for bit, other
layouts derive their classes, channels and image regions, and bad layouts are one-line errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUIET, tiny_spec

from detach_framework.cli import main
from detach_framework.data.settings import DataSettings
from detach_framework.engine.session import Session, make_loader
from detach_framework.errors import UserError
from detach_framework.spec import load_spec
from detach_plugins.datasets.synthetic_kitchen import SyntheticKitchenParams, build_synthetic_kitchen
from detach_plugins.datasets.synthetic_kitchen.layout import (
    ACTIVITY_NAMES,
    MAX_DRAWER_GAP,
    MAX_FIXTURES,
    MIN_FIXTURES,
    SENSOR_RATE_HZ,
    STACK_BOTTOM,
    build_layout,
    catalogue_specs,
    template_accel,
)
from detach_plugins.datasets.synthetic_kitchen.storage import read_sensor_recording

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "kitchen_layout10.yaml"
DATA = DataSettings(frames=4, frame_size=32, sensor_length=64, seed=7)
# The benchmark's extra sensor-side nuisances at the tiny size: the reference covers their code paths too.
BENCHMARK_NUISANCES = dict(
    handling_depth=0.3, ajar_prob=0.8, reed_dropout_prob=0.3, baseline_wander_gain=0.1, min_open_extent=0.5
)


def _sha(value) -> str:
    if isinstance(value, np.ndarray):
        payload = f"{value.dtype}|{value.shape}|".encode() + np.ascontiguousarray(value).tobytes()
    else:
        payload = json.dumps(value).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def digests(kitchen) -> dict[str, str]:
    """Digests of the names, every split's labels and sensor windows, a raw stream and video windows."""
    out = {
        "names": _sha([kitchen.class_names, kitchen.channel_names, kitchen.fixture_names, kitchen.activity_names]),
        "raw_stream": _sha(kitchen.recordings[0].sensor),
        "static_frame": _sha(kitchen.renderer.static_frame(32)),
    }
    for name in ("train", "val", "test"):
        split = kitchen.split(name)
        out[f"{name}_labels"] = _sha([split.labels.tolist(), split.fixtures.tolist(), split.activity.tolist()])
        out[f"{name}_sensor"] = _sha(split.sensor)
        labelled = int(np.flatnonzero(split.labels > 0)[0])
        out[f"{name}_video"] = _sha(np.stack([split.video(0), split.video(labelled)]))
    return out


# Captured with the kitchen's fixed 7-fixture code, before the layout became a param (numpy 2.4, x86-64).
REFERENCE = {
    "tiny": {
        "names": "188c5b292ac923ac",
        "raw_stream": "aa7b58594f391732",
        "static_frame": "10ccac27966aad91",
        "train_labels": "bc59726c01e30807",
        "train_sensor": "535564e6e80f6744",
        "train_video": "a283e26cb4f2c2d7",
        "val_labels": "551c71176a64043e",
        "val_sensor": "0364692024c7aba9",
        "val_video": "e4e2ac60a17bf2ec",
        "test_labels": "a4c32b49f0436b3b",
        "test_sensor": "f113619ede3d78a0",
        "test_video": "b8f89a907b484b04",
    },
    "tiny_benchmark_nuisances": {
        "names": "188c5b292ac923ac",
        "raw_stream": "99e85b258937df65",
        "static_frame": "10ccac27966aad91",
        "train_labels": "bc59726c01e30807",
        "train_sensor": "d6948fdf332b3a92",
        "train_video": "f30e0609b34b7cf8",
        "val_labels": "551c71176a64043e",
        "val_sensor": "1db37a26acfe3bf8",
        "val_video": "e7c3fea7ad88b6cf",
        "test_labels": "a4c32b49f0436b3b",
        "test_sensor": "f416855f251aac6b",
        "test_video": "5f9ae2baeb4dd6ba",
    },
}


@pytest.mark.parametrize(
    "case, knobs", [("tiny", {}), ("tiny_benchmark_nuisances", BENCHMARK_NUISANCES)], ids=["tiny", "nuisances"]
)
def test_the_default_layout_reproduces_the_fixed_kitchen_bit_for_bit(case, knobs):
    kitchen = build_synthetic_kitchen(SyntheticKitchenParams(preset="tiny", **knobs), DATA)
    assert digests(kitchen) == REFERENCE[case]


def kitchen(layout: dict | None, **knobs):
    return build_synthetic_kitchen(SyntheticKitchenParams(preset="tiny", layout=layout, **knobs), DATA)


def with_layout(layout) -> dict:
    spec = tiny_spec()
    spec["data"]["dataset"]["layout"] = layout
    return spec


def test_the_layout_param_is_uid_neutral_at_its_default(host):
    base = load_spec(tiny_spec(), host.registry).uid
    assert load_spec(with_layout(None), host.registry).uid == base
    assert load_spec(with_layout({"fixtures": 10}), host.registry).uid != base
    assert load_spec(tiny_spec(), host.registry, ["data.dataset.layout.fixtures=4"]).data.dataset.layout.fixtures == 4


# ---- derived from the layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("count, channels", [(4, 18), (10, 50)])
def test_kitchens_of_4_and_10_fixtures_build_and_a_detach_spec_trains_on_them(host, count, channels):
    """The example's DETACH quickstart at the tiny size, with ODC's K set to the kitchen's sensor locations."""
    tiny = ["data.dataset.preset=tiny", "data.frames=4", "data.frame_size=32", "data.sensor_length=32"]
    tiny += ["data.batch_size=8", "runtime.device=cpu", "cache.frames=off", "model.clusterer.min_cluster_size=2"]
    overrides = [*tiny, f"data.dataset.layout.fixtures={count}", f"model.clusterer.k={count}"]
    spec = load_spec(EXAMPLE, host.registry, overrides)
    session = Session.from_spec(spec, host)
    source = session.source
    assert len(source.fixture_names) == count == spec.model.clusterer.k  # the true K, as k: auto will read it
    assert len(set(source.fixture_names)) == count
    assert len(source.class_names) == 1 + 2 * count and len(source.channel_names) == channels
    assert sorted(set(source.channel_fixture.tolist())) == list(range(count))
    layout = source.sensor_layout()
    assert list(layout.fixture_channels) == source.fixture_names
    for name, found in layout.fixture_channels.items():  # each fixture's channels are the ones named after it
        assert [source.channel_names[c].split("_")[0] for c in found] == [name] * len(found)
    for split in ("train", "val", "test"):
        data = source.split(split)
        assert data.labels.max() < len(source.class_names) and data.fixtures.max() < count
    batch = next(iter(make_loader(source.split("train"), spec, shuffle=False)))
    assert batch["sensor"].shape == (8, channels, 32) and batch["video"].shape == (8, 4, 3, 32, 32)
    with torch.no_grad():
        assert session.model.sensor_encoder(batch["sensor"]).shape[0] == 8


def test_an_explicit_layout_gives_each_fixture_its_sensors_and_place():
    layout = {
        "fixtures": ["door", {"kind": "fridge", "reeds": 0}, {"kind": "drawer", "accelerometer": False}, "drawer"],
        "drawer_gap": 0.03,
    }
    built = kitchen(layout)
    assert built.fixture_names == ["door", "fridge", "drawer1", "drawer2"]
    assert built.class_names[1:3] == ["Open Door", "Close Door"] and built.class_names[-1] == "Close Drawer 2"
    assert built.channel_names == [
        "door_acc_x", "door_acc_y", "door_acc_z",
        "fridge_acc_x", "fridge_acc_y", "fridge_acc_z",
        "drawer1_reed1",  # the top drawer's place has one reed switch, and this one has no accelerometer
        "drawer2_reed1", "drawer2_reed2", "drawer2_reed3", "drawer2_acc_x", "drawer2_acc_y", "drawer2_acc_z",
    ]  # fmt: skip
    top, bottom = built.layout.fixtures[2].rect, built.layout.fixtures[3].rect
    assert bottom[3] == STACK_BOTTOM and bottom[1] - top[3] == pytest.approx(0.03)
    assert built.split("train")[0]["sensor"].shape == (13, DATA.sensor_length)


def test_the_drawer_gap_spaces_the_stack_and_the_stack_rests_on_the_counter():
    for gap in (0.0, 0.01, MAX_DRAWER_GAP):
        drawers = [f for f in build_layout(catalogue_specs(MAX_FIXTURES), gap).fixtures if f.kind == "drawer"]
        assert len(drawers) == 4 and drawers[-1].rect[3] == STACK_BOTTOM and drawers[0].rect[1] >= 0.06
        for upper, lower in zip(drawers, drawers[1:], strict=False):
            assert lower.rect[1] - upper.rect[3] == pytest.approx(gap)
            assert upper.spot == lower.spot  # one standing spot for the whole stack


@pytest.mark.parametrize("count", range(MIN_FIXTURES, MAX_FIXTURES + 1))
def test_every_count_places_fixtures_apart_and_every_routine_visits_them(count):
    layout = build_layout(catalogue_specs(count), MAX_DRAWER_GAP)
    rects = [f.rect for f in layout.fixtures]
    for i, a in enumerate(rects):
        assert 0 <= a[0] < a[2] <= 1 and 0 <= a[1] < a[3] <= 1
        for b in rects[i + 1 :]:  # closed panels never overlap
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    routines = layout.routines()
    assert len(routines) == len(ACTIVITY_NAMES)
    assert all(len(set(r)) == len(r) >= 2 for r in routines)
    visits = np.bincount(np.concatenate(routines), minlength=count)  # how many routines visit each fixture
    assert visits.min() >= 2 and visits.max() - visits.min() <= 2, visits


def test_each_fixture_of_a_10_fixture_kitchen_fires_its_own_channels_and_is_drawn_in_its_region():
    built = kitchen({"fixtures": 10}, **QUIET)
    channels = built.layout.channels()
    gravity = np.zeros(len(channels.names))
    for f, chans in channels.accel.items():
        gravity[chans] = built.layout.fixtures[f].gravity
    fired = set()
    for rec in built.recordings:
        signal = rec.sensor.astype(np.float64) - gravity[:, None]
        t = np.arange(signal.shape[1]) / SENSOR_RATE_HZ
        for on, d, f, k in zip(*rec.actions(), strict=True):
            inside = np.flatnonzero((t >= on) & (t <= on + d))
            assert np.abs(signal[channels.fixture != f][:, inside]).max() < 1e-6
            template = template_accel(int(k), (t[inside] - on) / d)
            assert abs(np.corrcoef(signal[channels.accel[int(f)][0], inside], template)[0, 1]) > 0.999
            fired.add(int(f))
    assert len(fired) >= 6
    whole = built.renderer.static_frame(64)
    for f, fixture in enumerate(built.layout.fixtures):
        x0, y0, x1, y1 = (round(c * 64) for c in fixture.rect)
        changed = np.abs(whole - built.renderer.static_frame(64, without=f)).sum(axis=0) > 1e-3
        assert changed[y0:y1, x0:x1].mean() > 0.5 and not changed[:, : max(x0 - 2, 0)].any(), fixture.name


def test_a_stored_kitchen_keeps_its_layout(tmp_path):
    built = kitchen({"fixtures": 10})
    built.export(tmp_path / "k10")
    loaded = build_synthetic_kitchen(SyntheticKitchenParams(root=str(tmp_path / "k10")), DATA)
    assert loaded.layout == built.layout and loaded.channel_names == built.channel_names
    np.testing.assert_array_equal(loaded.split("test").sensor, built.split("test").sensor)
    same = SyntheticKitchenParams(root=str(tmp_path / "k10"), layout={"fixtures": 10})
    assert build_synthetic_kitchen(same, DATA).fixture_names == built.fixture_names
    with pytest.raises(UserError, match="holds a kitchen of fixtures door1, .*remove `layout`"):
        build_synthetic_kitchen(SyntheticKitchenParams(root=str(tmp_path / "k10"), layout={"fixtures": 4}), DATA)
    recording = read_sensor_recording(next((tmp_path / "k10").glob("*.npz")))
    assert recording.channel_names == built.channel_names and recording.stream.shape[0] == 50
    # A manifest from before layouts were a param holds the default kitchen.
    kitchen(None).export(tmp_path / "k7")
    manifest = tmp_path / "k7" / "manifest.json"
    content = json.loads(manifest.read_text())
    del content["layout"]
    manifest.write_text(json.dumps(content))
    assert build_synthetic_kitchen(SyntheticKitchenParams(root=str(tmp_path / "k7")), DATA).fixture_names == [
        "door1", "door2", "fridge", "dishwasher", "drawer1", "drawer2", "drawer3"
    ]  # fmt: skip


# ---- bad layouts: one line naming the field and the value -----------------------------------------------------

BAD_LAYOUTS = {
    "zero fixtures": ({"fixtures": 0}, "data.dataset.layout: fixtures 0: a kitchen has 3 to 12 fixtures"),
    "more than 12": ({"fixtures": 13}, "data.dataset.layout: fixtures 13: a kitchen has 3 to 12 fixtures"),
    "too short a list": ({"fixtures": ["door", "fridge"]}, "fixtures: 2 listed; a kitchen has 3 to 12"),
    "no sensor": (
        {"fixtures": ["door", {"kind": "fridge", "reeds": 0, "accelerometer": False}, "drawer"]},
        "fixtures[1] (fridge): no sensor at all (reeds 0, accelerometer false)",
    ),
    "a door without its accelerometer": (
        {"fixtures": [{"kind": "door", "accelerometer": False}, "fridge", "drawer"]},
        "fixtures[0] (door): no sensor at all",
    ),
    "unknown kind": ({"fixtures": ["door", "toaster", "fridge"]}, "fixtures[1]: unknown fixture kind 'toaster'"),
    "unknown kind in an entry": ({"fixtures": ["door", "fridge", {"kind": "sink"}]}, "unknown fixture kind 'sink'"),
    "gap too large": ({"drawer_gap": 0.2}, "data.dataset.layout.drawer_gap: Input should be less than or equal"),
    "negative gap": ({"drawer_gap": -0.01}, "data.dataset.layout.drawer_gap: Input should be greater than or equal"),
    "no room": ({"fixtures": ["drawer"] * 5}, "fixtures: 5 of kind 'drawer'; the kitchen has room for 4"),
    "reeds": ({"fixtures": ["door", {"kind": "fridge", "reeds": 2}, "oven"]}, "fixtures[1] (fridge): reeds 2"),
    "misspelt key": ({"fixtures": [{"kind": "door", "reed": 1}]}, "fixtures.0.reed: unknown key 'reed'"),
}


@pytest.mark.parametrize("layout, expected", list(BAD_LAYOUTS.values()), ids=list(BAD_LAYOUTS))
def test_a_bad_layout_is_one_line_naming_the_field_and_value(host, layout, expected):
    with pytest.raises(UserError) as caught:
        load_spec(with_layout(layout), host.registry)
    message = str(caught.value)
    assert "\n" not in message and expected in message, message


def test_the_cli_refuses_a_bad_layout_in_one_line(capsys, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_spec()))
    assert main(["validate", str(spec), "data.dataset.layout.fixtures=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("detach validate: error:") and "fixtures 0" in err and "\n" not in err
