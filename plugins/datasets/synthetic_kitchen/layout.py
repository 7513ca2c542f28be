"""The kitchen's layout: its fixtures, their image regions, sensor channels, the activity routines over them, and
the shared action template.

A layout is data: a list of fixture kinds with their sensors (or a count, taken from CATALOGUE) and the gap
between stacked drawers. Every instance of a kind stands at the kind's next free place, so the fixture names, the
class list, the channel layout, the image regions and the routines all follow from that list. The default, the
first 7 kinds of the catalogue with the default gap, is the kitchen's original fixed layout, value for value.

Image coordinates are normalised to [0, 1] (x right, y down) so the same scene renders at any frame size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated

import numpy as np
from pydantic import Field

from detach_framework.registry import ComponentParams

SENSOR_RATE_HZ = 30.0

# Seconds of a nominal open or close at speed factor 1 (subjects scale it).
ACTION_SECONDS = 1.0
# Person walking speed in frame widths per second, and the path length of one step.
WALK_SPEED = 0.3
STEP_LENGTH = 0.15
# The gap (frame heights) between stacked drawers by default, and the largest one: a stack of four still fits
# between the ceiling line (0.06) and the counter.
DRAWER_GAP = 0.01
MAX_DRAWER_GAP = 0.05
STACK_BOTTOM = 0.50  # the counter top, where a stack's lowest panel rests
# Computed positions are rounded to this many decimals (a millionth of the frame), so that the default stack lands
# exactly on the values the fixed layout wrote.
GRID_DECIMALS = 6


@dataclass(frozen=True)
class Fixture:
    """One sensed fixture: where it is drawn, how it moves on screen, and its sensor group."""

    name: str
    label: str  # as in Opportunity++'s class names ("Open Door 1")
    kind: str
    rect: tuple[float, float, float, float]  # x0, y0, x1, y1 of the closed panel
    motion: tuple[float, float]  # unit direction the panel shifts when it opens
    handle: tuple[float, float]  # where the hand grabs it
    spot: float  # x of the standing spot in front of it
    reeds: int  # reed switches (0 for doors, as in Opportunity)
    accelerometer: bool  # whether it carries a 3-axis accelerometer
    axis: tuple[float, float, float]  # accelerometer direction of the opening motion
    gravity: tuple[float, float, float]  # static accelerometer reading (mount orientation)
    colour: tuple[float, float, float]  # RGB of its panel before the renderer's per-seed variation


@dataclass(frozen=True)
class Place:
    """Where one instance of a fixture kind stands and how it is mounted. A stacked kind's place gives its y
    relative to the panel's own top: the stack decides where that is."""

    rect: tuple[float, float, float, float]
    motion: tuple[float, float]
    handle: tuple[float, float]
    spot: float
    reeds: int  # reed switches unless the layout says otherwise
    axis: tuple[float, float, float]
    gravity: tuple[float, float, float]
    colour: tuple[float, float, float]


@dataclass(frozen=True)
class FixtureKind:
    label: str
    places: tuple[Place, ...]  # where its first, second, ... instance stands: the kitchen's room for the kind
    stacked: bool = False  # instances rest on the counter one above the other, drawer_gap apart, the first on top


# The wall, left to right: door1, fridge, a wall oven under a microwave, the dishwasher under a wall cupboard, the
# drawer stack, a tall cupboard, door2. The drawers share one standing spot, as do the oven and the microwave, and
# the dishwasher's and the upper cupboard's are beside the drawers', so where the person stands does not give every
# fixture away. Hinged fixtures (doors, fridge, cupboards, microwave) move along x, sliding ones along y.
# fmt: off
KINDS: dict[str, FixtureKind] = {
    "door": FixtureKind("Door", (
        Place(rect=(0.03, 0.06, 0.15, 0.50), motion=(1.0, 0.0), handle=(0.13, 0.30), spot=0.14, reeds=0,
              axis=(0.80, 0.55, 0.24), gravity=(0.02, -1.0, 0.05), colour=(0.72, 0.60, 0.45)),
        Place(rect=(0.85, 0.06, 0.97, 0.50), motion=(-1.0, 0.0), handle=(0.87, 0.30), spot=0.86, reeds=0,
              axis=(-0.78, 0.58, 0.22), gravity=(-0.03, -1.0, 0.04), colour=(0.70, 0.58, 0.44)),
    )),
    "fridge": FixtureKind("Fridge", (
        Place(rect=(0.20, 0.06, 0.34, 0.50), motion=(1.0, 0.0), handle=(0.32, 0.26), spot=0.31, reeds=3,
              axis=(0.70, 0.62, 0.35), gravity=(0.0, -0.98, 0.12), colour=(0.88, 0.89, 0.90)),
    )),
    "dishwasher": FixtureKind("Dishwasher", (
        Place(rect=(0.43, 0.34, 0.58, 0.50), motion=(0.0, 1.0), handle=(0.505, 0.36), spot=0.585, reeds=3,
              axis=(0.18, 0.92, 0.35), gravity=(0.10, -0.95, 0.25), colour=(0.62, 0.64, 0.66)),
    )),
    "drawer": FixtureKind("Drawer", stacked=True, places=(
        Place(rect=(0.61, 0.0, 0.75, 0.07), motion=(0.0, 1.0), handle=(0.68, 0.035), spot=0.66, reeds=1,
              axis=(0.10, 0.28, 0.95), gravity=(0.0, -1.0, 0.0), colour=(0.78, 0.66, 0.48)),
        Place(rect=(0.61, 0.0, 0.75, 0.07), motion=(0.0, 1.0), handle=(0.68, 0.035), spot=0.66, reeds=3,
              axis=(0.12, 0.25, 0.96), gravity=(0.02, -1.0, 0.02), colour=(0.78, 0.66, 0.48)),
        Place(rect=(0.61, 0.0, 0.75, 0.07), motion=(0.0, 1.0), handle=(0.68, 0.035), spot=0.66, reeds=3,
              axis=(0.08, 0.30, 0.95), gravity=(-0.02, -1.0, 0.03), colour=(0.78, 0.66, 0.48)),
        Place(rect=(0.61, 0.0, 0.75, 0.07), motion=(0.0, 1.0), handle=(0.68, 0.035), spot=0.66, reeds=3,
              axis=(0.11, 0.27, 0.96), gravity=(0.01, -1.0, -0.02), colour=(0.78, 0.66, 0.48)),
    )),
    "cupboard": FixtureKind("Cupboard", (
        Place(rect=(0.43, 0.10, 0.58, 0.28), motion=(1.0, 0.0), handle=(0.56, 0.24), spot=0.52, reeds=1,
              axis=(0.74, 0.52, 0.42), gravity=(0.04, -0.99, 0.10), colour=(0.74, 0.71, 0.64)),
        Place(rect=(0.775, 0.06, 0.835, 0.50), motion=(-1.0, 0.0), handle=(0.785, 0.28), spot=0.80, reeds=1,
              axis=(-0.72, 0.60, 0.30), gravity=(-0.02, -1.0, 0.06), colour=(0.70, 0.66, 0.58)),
    )),
    "oven": FixtureKind("Oven", (
        Place(rect=(0.355, 0.22, 0.415, 0.32), motion=(0.0, 1.0), handle=(0.385, 0.232), spot=0.385, reeds=3,
              axis=(0.15, 0.90, 0.40), gravity=(0.06, -0.97, 0.20), colour=(0.30, 0.30, 0.32)),
    )),
    "microwave": FixtureKind("Microwave", (
        Place(rect=(0.355, 0.09, 0.415, 0.18), motion=(1.0, 0.0), handle=(0.405, 0.135), spot=0.385, reeds=1,
              axis=(0.78, 0.50, 0.36), gravity=(0.0, -1.0, 0.04), colour=(0.84, 0.84, 0.86)),
    )),
}
# fmt: on
# A layout given as a count takes the first kinds of this list: the first 7 are the original kitchen, then the
# harder additions (a cupboard beside the drawers' spot, a fourth drawer, a second shared spot).
CATALOGUE: tuple[str, ...] = (
    *("door", "door", "fridge", "dishwasher", "drawer", "drawer", "drawer"),
    *("cupboard", "drawer", "oven", "microwave", "cupboard"),
)
MIN_FIXTURES, MAX_FIXTURES = 3, len(CATALOGUE)
DEFAULT_FIXTURES = 7

OPEN, CLOSE = 0, 1

# Reed switches flip at these opening extents: several switches on one fixture trip one after another.
REED_THRESHOLDS: dict[int, tuple[float, ...]] = {1: (0.5,), 3: (0.15, 0.5, 0.85)}
REED_CHOICES: tuple[int, ...] = (0, *REED_THRESHOLDS)

# Floor positions (feet x, feet y) where the person idles between visits: the Null content.
IDLE_SPOTS: tuple[tuple[float, float], ...] = ((0.24, 0.98), (0.47, 0.99), (0.74, 0.98))
VISIT_FEET_Y = 0.94

# Recording-level activities (HWU-USP style): the routine of fixtures a recording cycles through, in the original
# kitchen's names (KitchenLayout.routines fits them to any layout).
ACTIVITIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Early morning", ("door1", "fridge", "drawer1", "door2")),
    ("Coffee time", ("drawer2", "dishwasher", "fridge", "drawer1")),
    ("Sandwich time", ("door1", "drawer3", "drawer1", "dishwasher")),
    ("Cleanup", ("dishwasher", "drawer2", "drawer3", "door2")),
    ("Relaxing", ("door2", "door1", "drawer3", "fridge")),
)
ACTIVITY_NAMES: list[str] = [name for name, _ in ACTIVITIES]
MIN_ROUTINE = 2  # fixtures a routine cycles through at least, so that no visit repeats the one before


def class_index(fixture: int, kind: int) -> int:
    """Label of an open (kind 0) or close (kind 1) of a fixture; 0 is Null."""
    return 1 + 2 * fixture + kind


@dataclass(frozen=True)
class ChannelLayout:
    """Sensor channels grouped per fixture, like Opportunity's reed switches + fixture accelerometers."""

    names: list[str]
    fixture: np.ndarray  # [C] fixture index of each channel
    reed: dict[int, np.ndarray]  # fixture -> its reed channel indices (fixtures with reed switches)
    accel: dict[int, np.ndarray]  # fixture -> its 3 accelerometer channel indices (fixtures with one)
    groups: list[np.ndarray]  # channel groups that share a radio (NaN bursts hit a whole group)


# Checked by build_layout (one error naming the entry); the schema's enum only helps editors complete it.
FixtureKindName = Annotated[str, Field(json_schema_extra={"enum": list(KINDS)})]


class FixtureParams(ComponentParams):
    """One fixture of a layout as asked for: its kind and which sensors it carries."""

    kind: FixtureKindName = Field(description=f"Fixture kind: {', '.join(KINDS)}.")
    reeds: int | None = Field(
        None,
        description=f"Reed switches on it ({', '.join(map(str, REED_CHOICES))}; null: as many as its place "
        "usually has, as a count's fixtures do).",
    )
    accelerometer: bool = Field(True, description="Whether it carries a 3-axis accelerometer.")


def catalogue_specs(count: int) -> list[FixtureParams]:
    """The first `count` kinds of CATALOGUE, each with its place's sensors."""
    if not MIN_FIXTURES <= count <= MAX_FIXTURES:
        raise ValueError(
            f"fixtures {count}: a kitchen has {MIN_FIXTURES} to {MAX_FIXTURES} fixtures "
            f"(a count takes the first of: {', '.join(CATALOGUE)})"
        )
    return [FixtureParams(kind=kind) for kind in CATALOGUE[:count]]


@dataclass(frozen=True)
class KitchenLayout:
    """The fixtures of one kitchen, in class order, and everything that follows from them."""

    fixtures: tuple[Fixture, ...]
    drawer_gap: float

    @property
    def fixture_names(self) -> list[str]:
        """One per sensor location: len() is the true number of clusters K."""
        return [f.name for f in self.fixtures]

    @property
    def class_names(self) -> list[str]:
        return ["Null"] + [f"{verb} {f.label}" for f in self.fixtures for verb in ("Open", "Close")]

    def specs(self) -> list[FixtureParams]:
        """The explicit form of this layout (build_layout(layout.specs(), layout.drawer_gap) rebuilds it)."""
        return [FixtureParams(kind=f.kind, reeds=f.reeds, accelerometer=f.accelerometer) for f in self.fixtures]

    def channels(self) -> ChannelLayout:
        names: list[str] = []
        owner: list[int] = []
        reed: dict[int, np.ndarray] = {}
        accel: dict[int, np.ndarray] = {}
        for f, fx in enumerate(self.fixtures):
            if fx.reeds:
                reed[f] = np.arange(len(names), len(names) + fx.reeds)
                names += [f"{fx.name}_reed{j + 1}" for j in range(fx.reeds)]
                owner += [f] * fx.reeds
            if fx.accelerometer:
                accel[f] = np.arange(len(names), len(names) + 3)
                names += [f"{fx.name}_acc_{axis}" for axis in "xyz"]
                owner += [f] * 3
        groups = [reed[f] for f in sorted(reed)] + [accel[f] for f in sorted(accel)]
        return ChannelLayout(names, np.asarray(owner, dtype=np.int64), reed, accel, groups)

    def crosstalk(self) -> np.ndarray:
        """[F, F] how strongly a fixture's motion shakes each other fixture: 1 for the closest pair (stacked)."""
        centres = np.array([[(f.rect[0] + f.rect[2]) / 2, (f.rect[1] + f.rect[3]) / 2] for f in self.fixtures])
        dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        w = np.exp(-dist / 0.1)
        np.fill_diagonal(w, 0.0)
        return w / w.max()

    def routines(self) -> list[tuple[int, ...]]:
        """Per activity (ACTIVITY_NAMES' order) the fixtures its recordings cycle through: the fixtures of its
        ACTIVITIES routine that this kitchen has; then each fixture no routine visits joins as many routines as the
        others are in on average (the shortest first), so it is visited about as often; then a routine left with
        fewer than MIN_ROUTINE takes the kitchen's first fixtures it lacks. The original kitchen keeps its own."""
        names = self.fixture_names
        routines = [[names.index(n) for n in script if n in names] for _, script in ACTIVITIES]
        visited = [f for routine in routines for f in routine]
        # With none of the original names, enough for every routine to reach MIN_ROUTINE.
        share = round(len(visited) / len(set(visited))) if visited else -(-len(routines) * MIN_ROUTINE // len(names))
        for f in (f for f in range(len(names)) if f not in visited):
            for routine in sorted(routines, key=len)[:share]:  # stable: ties go to the earlier activity
                routine.append(f)
        for routine in routines:
            routine += [f for f in range(len(names)) if f not in routine][: max(MIN_ROUTINE - len(routine), 0)]
        return [tuple(routine) for routine in routines]


def _grid(value: float) -> float:
    return round(value, GRID_DECIMALS)


def _stacked(places: Sequence[Place], gap: float) -> list[Place]:
    """The places of a stack of len(places) panels: the last rests on the counter, each other one above the next."""
    out: list[Place] = []
    for i, place in enumerate(places):
        top = STACK_BOTTOM - sum(p.rect[3] - p.rect[1] for p in places[i:]) - (len(places) - 1 - i) * gap
        x0, y0, x1, y1 = place.rect
        out.append(
            replace(
                place,
                rect=(x0, _grid(top + y0), x1, _grid(top + y1)),
                handle=(place.handle[0], _grid(top + place.handle[1])),
            )
        )
    return out


def build_layout(specs: Sequence[FixtureParams], drawer_gap: float = DRAWER_GAP) -> KitchenLayout:
    """Place every fixture at its kind's next free place. A kind listed once is named by the kind ("fridge"), one
    listed more often is numbered in list order ("door1", "door2"; the first drawer is the top one). Bad input is a
    ValueError naming the entry (`fixtures[i]`) and the value."""
    if not MIN_FIXTURES <= len(specs) <= MAX_FIXTURES:
        raise ValueError(f"fixtures: {len(specs)} listed; a kitchen has {MIN_FIXTURES} to {MAX_FIXTURES} fixtures")
    for i, spec in enumerate(specs):
        if spec.kind not in KINDS:
            raise ValueError(f"fixtures[{i}]: unknown fixture kind '{spec.kind}'; expected one of: {', '.join(KINDS)}")
        if spec.reeds is not None and spec.reeds not in REED_CHOICES:
            raise ValueError(
                f"fixtures[{i}] ({spec.kind}): reeds {spec.reeds}; expected one of {', '.join(map(str, REED_CHOICES))}"
            )
    counts = {kind: sum(spec.kind == kind for spec in specs) for kind in KINDS}
    for kind, count in counts.items():
        if count > len(KINDS[kind].places):
            raise ValueError(f"fixtures: {count} of kind '{kind}'; the kitchen has room for {len(KINDS[kind].places)}")
    places = {
        kind: _stacked(KINDS[kind].places[:count], drawer_gap) if KINDS[kind].stacked else KINDS[kind].places
        for kind, count in counts.items()
    }
    fixtures: list[Fixture] = []
    seen = dict.fromkeys(KINDS, 0)
    for i, spec in enumerate(specs):
        place = places[spec.kind][seen[spec.kind]]
        seen[spec.kind] += 1
        reeds = place.reeds if spec.reeds is None else spec.reeds
        if not reeds and not spec.accelerometer:
            raise ValueError(
                f"fixtures[{i}] ({spec.kind}): no sensor at all (reeds 0, accelerometer false); give it reed "
                "switches or an accelerometer"
            )
        numbered = counts[spec.kind] > 1
        fixtures.append(
            Fixture(
                name=f"{spec.kind}{seen[spec.kind]}" if numbered else spec.kind,
                label=f"{KINDS[spec.kind].label} {seen[spec.kind]}" if numbered else KINDS[spec.kind].label,
                kind=spec.kind,
                rect=place.rect,
                motion=place.motion,
                handle=place.handle,
                spot=place.spot,
                reeds=reeds,
                accelerometer=spec.accelerometer,
                axis=place.axis,
                gravity=place.gravity,
                colour=place.colour,
            )
        )
    return KitchenLayout(tuple(fixtures), float(drawer_gap))


DEFAULT_LAYOUT = build_layout(catalogue_specs(DEFAULT_FIXTURES))
# The default kitchen's fixtures and classes: what the Opportunity++ export maps to Opportunity's sensors (it writes
# only this layout) and what the tests of the fixed kitchen read.
FIXTURES: tuple[Fixture, ...] = DEFAULT_LAYOUT.fixtures
FIXTURE_NAMES: list[str] = DEFAULT_LAYOUT.fixture_names
NUM_FIXTURES = len(FIXTURES)
CLASS_NAMES: list[str] = DEFAULT_LAYOUT.class_names


def channel_layout() -> ChannelLayout:
    """The default kitchen's channels (a layout's own: KitchenLayout.channels)."""
    return DEFAULT_LAYOUT.channels()


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
