"""Params of the synthetic kitchen, its presets, the resolved knob values generation runs with, and its layout."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import Discriminator, Field, Strict, Tag, create_model, model_validator

from detach_framework.registry import MAX_SEED, ComponentParams

from .layout import (
    CATALOGUE,
    DEFAULT_FIXTURES,
    DEFAULT_LAYOUT,
    DRAWER_GAP,
    KINDS,
    MAX_DRAWER_GAP,
    MAX_FIXTURES,
    MIN_FIXTURES,
    FixtureKindName,
    FixtureParams,
    KitchenLayout,
    build_layout,
    catalogue_specs,
)

PresetName = Literal["tiny", "quickstart", "benchmark"]


def _knob(description: str, **bounds: float) -> Any:
    """A Knobs field: its description and pydantic bounds also make its override in SyntheticKitchenParams."""
    return field(metadata={"description": description, "bounds": bounds})


@dataclass(frozen=True)
class Knobs:
    """Every generation and rendering knob, resolved (no None): what a stored dataset records. Each knob is
    declared here once; SyntheticKitchenParams derives its optional override (same bounds and description)."""

    subjects: int = _knob("Number of subjects (split subject-wise into train/val/test; at least 3).", ge=3, le=1000)
    recordings_per_subject: int = _knob("Recordings per subject.", ge=1, le=1000)
    # Generation time grows with the square of a recording's length (every action spans the whole stream).
    recording_seconds: float = _knob(
        "Length of each recording in seconds (sensor clock, at most an hour).", ge=10.0, le=3600.0
    )
    sensor_noise_std: float = _knob(
        "Gaussian noise std on every channel, in units of an action's peak.", ge=0.0, le=100.0
    )
    crosstalk_gain: float = _knob(
        "Fraction of a fixture's vibration felt by its nearest neighbour's accelerometer.", ge=0.0, le=10.0
    )
    walking_vibration_gain: float = _knob(
        "Footstep vibration on every accelerometer, in units of an action's peak.", ge=0.0, le=100.0
    )
    nan_burst_rate: float = _knob(
        "NaN bursts (packet loss) per channel group per minute of raw stream.", ge=0.0, le=60.0
    )
    max_clock_offset_s: float = _knob(
        "Each recording's video clock is offset by U(-max, max) seconds.", ge=0.0, le=60.0
    )
    flicker_amplitude: float = _knob("Relative amplitude of the global illumination flicker.", ge=0.0, le=0.5)
    camera_jitter_px: float = _knob(
        "Camera shake std in pixels at a 64-pixel frame (scales with frame size).", ge=0.0, le=64.0
    )
    fixture_motion_px: float = _knob(
        "How far a fully open fixture's panel shifts, in pixels at a 64-pixel frame (the P1 "
        "signal; scales with frame size).",
        ge=0.0,
        le=64.0,
    )
    speed_spread: float = _knob("Log-std of the per-subject speed factor (walking and actions).", ge=0.0, le=1.0)
    amplitude_spread: float = _knob("Log-std of the per-subject acceleration amplitude factor.", ge=0.0, le=1.0)
    max_hold_s: float = _knob(
        "A fixture is held open U(0.4, max) seconds (divided by the subject's speed) between its open and close.",
        ge=0.4,
        le=600.0,
    )
    handling_depth: float = _knob(
        "While a fixture is held open the hand nudges it in by up to this much of full extent and "
        "back out (up to once a second; unlabelled moves with the shared template; 0: it stays still).",
        ge=0.0,
        le=1.0,
    )
    baseline_wander_gain: float = _knob(
        "Slow baseline wander of every accelerometer (bias drift, 0.03-0.3 Hz), std in units of "
        "an action's peak (0: none).",
        ge=0.0,
        le=100.0,
    )
    min_open_extent: float = _knob(
        "Each visit opens its fixture to U(min_open_extent, 1) of fully open (1: always fully); a "
        "shallow open moves less and may leave the upper reed switches untripped.",
        gt=0.0,
        le=1.0,
    )
    ajar_prob: float = _knob(
        "Probability that a close leaves its fixture ajar (extent 0.2-0.5, at most half the open "
        "extent: the first of three reed switches stays on) until the fixture's next visit.",
        ge=0.0,
        le=1.0,
    )
    reed_dropout_prob: float = _knob(
        "Probability that a fixture's reed-switch node sends nothing (NaN) for a whole recording.", ge=0.0, le=1.0
    )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Knobs:
        names = {f.name for f in fields(cls)}
        missing, extra = names - set(values), set(values) - names
        if missing or extra:
            raise ValueError(f"knobs: missing {sorted(missing)}, unexpected {sorted(extra)}")
        return cls(**values)


# tiny and quickstart share these nuisance levels (a model tuned on one transfers to the other) and keep the
# sensor side easy enough to show learning within a few minutes on a CPU.
_NUISANCE = dict(
    sensor_noise_std=0.03,
    crosstalk_gain=0.25,
    walking_vibration_gain=0.15,
    nan_burst_rate=0.5,
    max_clock_offset_s=0.25,
    flicker_amplitude=0.05,
    camera_jitter_px=0.5,
    fixture_motion_px=2.0,
    speed_spread=0.15,
    amplitude_spread=0.2,
    max_hold_s=2.5,
    handling_depth=0.0,
    baseline_wander_gain=0.0,
    min_open_extent=1.0,
    ajar_prob=0.0,
    reed_dropout_prob=0.0,
)
# benchmark adds the sensor-side nuisances that make "which channels fire" need temporal evidence, at the
# levels calibrated by benchmarks/calibrate_synthetic.py with its two method-agnostic controls (a random
# sensor encoder's linear probe <= 0.50 weighted F1, the same encoder trained with labels >= 0.90): long
# holds with the hand nudging the fixture, fixtures left ajar, reed nodes that drop out for a recording and
# a slow baseline wander that hides the accelerometers from any fixed projection. Its size is part of that
# calibration: the supervised control needs ~7000 training windows to learn the accelerometer template.
_BENCHMARK_NUISANCE = dict(
    _NUISANCE,
    max_hold_s=5.0,
    handling_depth=0.3,
    baseline_wander_gain=0.1,
    ajar_prob=0.8,
    reed_dropout_prob=0.3,
)
PRESETS: dict[str, Knobs] = {
    "tiny": Knobs(subjects=3, recordings_per_subject=2, recording_seconds=24.0, **_NUISANCE),
    # The quickstart has the benchmark's calibrated sensor side at a size that trains in a minute: with the
    # easy one, an untrained encoder's probe already reached 0.62 F1 and the README's first run showed little.
    "quickstart": Knobs(subjects=6, recordings_per_subject=4, recording_seconds=64.0, **_BENCHMARK_NUISANCE),
    "benchmark": Knobs(subjects=30, recordings_per_subject=5, recording_seconds=80.0, **_BENCHMARK_NUISANCE),
}


def _knob_override_fields() -> dict[str, Any]:
    """Per knob, an optional params field with the knob's bounds and description: None keeps the preset's value."""
    types = get_type_hints(Knobs)
    return {
        f.name: (types[f.name] | None, Field(None, **f.metadata["bounds"], description=f.metadata["description"]))
        for f in fields(Knobs)
    }


def _by_type(of_str: str, otherwise: str) -> Discriminator:
    """Pick a union member by the input's type, so a bad value gets that member's error alone."""
    return Discriminator(
        lambda value: of_str if isinstance(value, int | str) and not isinstance(value, bool) else otherwise
    )


# `fixtures: 10` or `fixtures: [door, {kind: drawer, reeds: 0}, ...]`.
FixtureEntry = Annotated[
    Annotated[FixtureKindName, Tag("kind")] | Annotated[FixtureParams, Tag("fixture")], _by_type("kind", "fixture")
]
FixturesField = Annotated[
    Annotated[int, Strict(), Tag("count")] | Annotated[list[FixtureEntry], Tag("list")], _by_type("count", "list")
]


class KitchenLayoutParams(ComponentParams):
    """Which fixtures the kitchen has, with their sensors, and how close its stacked drawers stand. The class list
    (Null + open/close per fixture), the channels, the image regions and the activity routines follow from it."""

    fixtures: FixturesField = Field(
        DEFAULT_FIXTURES,
        description=f"A count ({MIN_FIXTURES}-{MAX_FIXTURES}: the first kinds of {', '.join(CATALOGUE)}, each with "
        "its usual sensors) or a list of kinds, or of {kind, reeds, accelerometer}, in class order. Each instance "
        "stands at its kind's next place (room for "
        + ", ".join(f"{len(kind.places)} {name}" for name, kind in KINDS.items())
        + "); a kind listed more than once is numbered in list order (door1, door2; drawer1 is the top drawer).",
    )
    drawer_gap: float = Field(
        DRAWER_GAP,
        ge=0.0,
        le=MAX_DRAWER_GAP,
        description="Gap between stacked drawers in frame heights: the drawers share one standing spot, and a "
        "smaller gap packs their image regions closer (the hardest fixtures to tell apart by video).",
    )

    def specs(self) -> list[FixtureParams]:
        if isinstance(self.fixtures, int):
            return catalogue_specs(self.fixtures)
        return [FixtureParams(kind=entry) if isinstance(entry, str) else entry for entry in self.fixtures]

    def resolve(self) -> KitchenLayout:
        return build_layout(self.specs(), self.drawer_gap)

    @model_validator(mode="after")
    def _buildable(self) -> KitchenLayoutParams:
        self.resolve()  # a ValueError naming the entry and the value
        return self

    @classmethod
    def of(cls, layout: KitchenLayout) -> KitchenLayoutParams:
        """The explicit params of a layout (what a stored kitchen records)."""
        return cls(fixtures=layout.specs(), drawer_gap=layout.drawer_gap)


class _PresetParams(ComponentParams):
    preset: PresetName = Field(
        "quickstart",
        description="Size preset: 'tiny' (unit tests, ~50 windows per split), 'quickstart' (~1000 train "
        "windows), 'benchmark' (~12 000 windows, the calibrated sensor-side nuisances).",
    )


# preset, then the knobs in Knobs' order, then root and seed: the params' field order, kept in dumps and the schema.
_PresetAndKnobParams = create_model("_PresetAndKnobParams", __base__=_PresetParams, **_knob_override_fields())


class SyntheticKitchenParams(_PresetAndKnobParams):
    """Synthetic kitchen: a preset plus optional knob overrides (None keeps the preset's value) and layout."""

    layout: KitchenLayoutParams | None = Field(
        None,
        description="The fixtures and their sensors, e.g. {fixtures: 10} or {fixtures: [door, fridge, {kind: "
        f"drawer, reeds: 0}}, ...]}}; null: the original {len(DEFAULT_LAYOUT.fixtures)} "
        f"({', '.join(DEFAULT_LAYOUT.fixture_names)}: {len(DEFAULT_LAYOUT.channels().names)} channels, "
        f"{len(DEFAULT_LAYOUT.class_names)} classes). A stored kitchen (root) keeps its own.",
    )

    root: str | None = Field(
        None,
        description="Read a dataset previously written by SyntheticKitchen.export from this directory "
        "instead of generating one (knob overrides and a different preset or seed are then errors).",
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Generation seed; None uses data.seed.")

    def knob_overrides(self) -> dict[str, float | int]:
        """The knobs this params set explicitly (not None)."""
        names = [f.name for f in fields(Knobs)]
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def resolve_knobs(self) -> Knobs:
        base = PRESETS[self.preset].to_dict()
        base.update(self.knob_overrides())
        return Knobs(**base)

    def resolve_layout(self) -> KitchenLayout:
        return DEFAULT_LAYOUT if self.layout is None else self.layout.resolve()
