"""The kitchen's fixed layout: fixtures, their image regions, sensor channels and the shared action template.

Image coordinates are normalised to [0, 1] (x right, y down) so the same scene renders at any frame size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SENSOR_RATE_HZ = 30.0

# Seconds of a nominal open or close at speed factor 1 (subjects scale it).
ACTION_SECONDS = 1.0
# Person walking speed in frame widths per second, and the path length of one step.
WALK_SPEED = 0.3
STEP_LENGTH = 0.15


@dataclass(frozen=True)
class Fixture:
    """One sensed fixture: where it is drawn, how it moves on screen, and its sensor group."""

    name: str
    label: str  # as in Opportunity++'s class names ("Open Door 1")
    rect: tuple[float, float, float, float]  # x0, y0, x1, y1 of the closed panel
    motion: tuple[float, float]  # unit direction the panel shifts when it opens
    handle: tuple[float, float]  # where the hand grabs it
    spot: float  # x of the standing spot in front of it
    reeds: int  # reed switches (0 for doors, as in Opportunity)
    axis: tuple[float, float, float]  # accelerometer direction of the opening motion
    gravity: tuple[float, float, float]  # static accelerometer reading (mount orientation)


# Horizontal wall layout, left to right: door1, fridge, dishwasher beside the stacked drawers, door2.
# The drawers share one standing spot and the dishwasher's is next to it, so where the person stands
# does not give every fixture away.
# fmt: off
FIXTURES: tuple[Fixture, ...] = (
    Fixture(name="door1", label="Door 1", rect=(0.03, 0.06, 0.15, 0.50), motion=(1.0, 0.0),
            handle=(0.13, 0.30), spot=0.14, reeds=0, axis=(0.80, 0.55, 0.24), gravity=(0.02, -1.0, 0.05)),
    Fixture(name="door2", label="Door 2", rect=(0.85, 0.06, 0.97, 0.50), motion=(-1.0, 0.0),
            handle=(0.87, 0.30), spot=0.86, reeds=0, axis=(-0.78, 0.58, 0.22), gravity=(-0.03, -1.0, 0.04)),
    Fixture(name="fridge", label="Fridge", rect=(0.20, 0.06, 0.34, 0.50), motion=(1.0, 0.0),
            handle=(0.32, 0.26), spot=0.31, reeds=3, axis=(0.70, 0.62, 0.35), gravity=(0.0, -0.98, 0.12)),
    Fixture(name="dishwasher", label="Dishwasher", rect=(0.43, 0.34, 0.58, 0.50), motion=(0.0, 1.0),
            handle=(0.505, 0.36), spot=0.585, reeds=3, axis=(0.18, 0.92, 0.35), gravity=(0.10, -0.95, 0.25)),
    Fixture(name="drawer1", label="Drawer 1", rect=(0.61, 0.27, 0.75, 0.34), motion=(0.0, 1.0),
            handle=(0.68, 0.305), spot=0.66, reeds=1, axis=(0.10, 0.28, 0.95), gravity=(0.0, -1.0, 0.0)),
    Fixture(name="drawer2", label="Drawer 2", rect=(0.61, 0.35, 0.75, 0.42), motion=(0.0, 1.0),
            handle=(0.68, 0.385), spot=0.66, reeds=3, axis=(0.12, 0.25, 0.96), gravity=(0.02, -1.0, 0.02)),
    Fixture(name="drawer3", label="Drawer 3", rect=(0.61, 0.43, 0.75, 0.50), motion=(0.0, 1.0),
            handle=(0.68, 0.465), spot=0.66, reeds=3, axis=(0.08, 0.30, 0.95), gravity=(-0.02, -1.0, 0.03)),
)
# fmt: on
FIXTURE_NAMES: list[str] = [f.name for f in FIXTURES]
NUM_FIXTURES = len(FIXTURES)

OPEN, CLOSE = 0, 1
CLASS_NAMES: list[str] = ["Null"] + [f"{verb} {f.label}" for f in FIXTURES for verb in ("Open", "Close")]

# Reed switches flip at these opening extents: several switches on one fixture trip one after another.
REED_THRESHOLDS: dict[int, tuple[float, ...]] = {1: (0.5,), 3: (0.15, 0.5, 0.85)}

# Floor positions (feet x, feet y) where the person idles between visits: the Null content.
IDLE_SPOTS: tuple[tuple[float, float], ...] = ((0.24, 0.98), (0.47, 0.99), (0.74, 0.98))
VISIT_FEET_Y = 0.94

# Recording-level activities (HWU-USP style): the routine of fixtures a recording cycles through.
ACTIVITIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Early morning", ("door1", "fridge", "drawer1", "door2")),
    ("Coffee time", ("drawer2", "dishwasher", "fridge", "drawer1")),
    ("Sandwich time", ("door1", "drawer3", "drawer1", "dishwasher")),
    ("Cleanup", ("dishwasher", "drawer2", "drawer3", "door2")),
    ("Relaxing", ("door2", "door1", "drawer3", "fridge")),
)
ACTIVITY_NAMES: list[str] = [name for name, _ in ACTIVITIES]


def class_index(fixture: int, kind: int) -> int:
    """Label of an open (kind 0) or close (kind 1) of a fixture; 0 is Null."""
    return 1 + 2 * fixture + kind


@dataclass(frozen=True)
class ChannelLayout:
    """Sensor channels grouped per fixture, like Opportunity's reed switches + fixture accelerometers."""

    names: list[str]
    fixture: np.ndarray  # [C] fixture index of each channel
    reed: dict[int, np.ndarray]  # fixture -> its reed channel indices
    accel: dict[int, np.ndarray]  # fixture -> its 3 accelerometer channel indices
    groups: list[np.ndarray]  # channel groups that share a radio (NaN bursts hit a whole group)


def channel_layout() -> ChannelLayout:
    names: list[str] = []
    owner: list[int] = []
    reed: dict[int, np.ndarray] = {}
    accel: dict[int, np.ndarray] = {}
    for f, fx in enumerate(FIXTURES):
        if fx.reeds:
            reed[f] = np.arange(len(names), len(names) + fx.reeds)
            names += [f"{fx.name}_reed{j + 1}" for j in range(fx.reeds)]
            owner += [f] * fx.reeds
        accel[f] = np.arange(len(names), len(names) + 3)
        names += [f"{fx.name}_acc_{axis}" for axis in "xyz"]
        owner += [f] * 3
    groups = [reed[f] for f in sorted(reed)] + [accel[f] for f in sorted(accel)]
    return ChannelLayout(names, np.asarray(owner, dtype=np.int64), reed, accel, groups)


def crosstalk_weights() -> np.ndarray:
    """[F, F] how strongly a fixture's motion shakes each other fixture: 1 for stacked neighbours."""
    centres = np.array([[(f.rect[0] + f.rect[2]) / 2, (f.rect[1] + f.rect[3]) / 2] for f in FIXTURES])
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    w = np.exp(-dist / 0.1)
    np.fill_diagonal(w, 0.0)
    return w / w.max()


# ---- The one open/close template every fixture shares (P2) ------------------------------------------

_TEMPLATE_STEPS = 2001
_TAU = np.linspace(0.0, 1.0, _TEMPLATE_STEPS)


def _open_template() -> tuple[np.ndarray, np.ndarray]:
    """Extent (0 closed .. 1 open) and normalised acceleration of an open over action time [0, 1].

    A sharp pull then a long glide to rest, plus a latch click at the start; asymmetric on purpose so a
    close (its time reverse: slow push, slam, click at the end) differs from an open in shape.
    """

    def bump(mu: float, sigma: float) -> np.ndarray:
        return np.exp(-0.5 * ((_TAU - mu) / sigma) ** 2) / sigma

    smooth = bump(0.22, 0.07) - bump(0.62, 0.16)  # equal areas: the panel ends at rest
    dt = _TAU[1] - _TAU[0]
    velocity = np.cumsum(smooth) * dt
    position = np.cumsum(velocity) * dt
    extent = np.clip((position - position[0]) / (position[-1] - position[0]), 0.0, 1.0)
    x = (_TAU - 0.05) / 0.012
    click = (1 - x**2) * np.exp(-0.5 * x**2)  # Ricker wavelet: zero net push, so extent is unaffected
    accel = smooth / np.abs(smooth).max() + 0.6 * click
    return extent, accel / np.abs(accel).max()


_OPEN_EXTENT, _OPEN_ACCEL = _open_template()


def template_extent(kind: int, tau: np.ndarray) -> np.ndarray:
    """Opening extent at action time tau in [0, 1]; a close is the open played backwards."""
    tau = np.clip(tau, 0.0, 1.0)
    return np.interp(tau if kind == OPEN else 1.0 - tau, _TAU, _OPEN_EXTENT)


def template_accel(kind: int, tau: np.ndarray) -> np.ndarray:
    """Acceleration along the fixture's axis (peak 1) at action time tau; zero outside [0, 1]."""
    inside = (tau >= 0.0) & (tau <= 1.0)
    t = np.clip(tau, 0.0, 1.0)
    return np.where(inside, np.interp(t if kind == OPEN else 1.0 - t, _TAU, _OPEN_ACCEL), 0.0)
