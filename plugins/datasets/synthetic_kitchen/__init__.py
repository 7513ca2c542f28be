"""The synthetic kitchen: a built-in dataset rendering video and ambient sensors from one ground truth.

It reproduces the two difficulties DETACH is about (see docs/METHOD.md): the visible change of an action is a
few pixels next to a large walking person (P1), and every fixture shares one open/close template, so only
which channel group fires tells fixtures apart (P2).
"""

from __future__ import annotations

from pathlib import Path

from detach_framework.contracts import READ_RECORDING
from detach_framework.data.settings import DataSettings
from detach_framework.errors import UserError
from detach_framework.plugins import hookimpl
from detach_framework.registry import Register

from .dataset import KitchenSplit, SyntheticKitchen, check_fits_in_memory, resample_linear, resolve_nan
from .opportunity_pp import export_opportunity_pp
from .presets import PRESETS, Knobs, SyntheticKitchenParams
from .scene import SceneRecording, generate_recordings
from .storage import load_recordings, read_sensor_recording

__all__ = [
    "PRESETS",
    "KitchenSplit",
    "Knobs",
    "SceneRecording",
    "SyntheticKitchen",
    "SyntheticKitchenParams",
    "build_synthetic_kitchen",
    "resample_linear",
    "resolve_nan",
]


def build_synthetic_kitchen(params: SyntheticKitchenParams, data: DataSettings) -> SyntheticKitchen:
    """Generate the kitchen from a preset (+ overrides), or read one exported earlier from `root`."""
    if params.root is None:
        seed = data.seed if params.seed is None else params.seed
        knobs = params.resolve_knobs()
        layout = params.resolve_layout()
        check_fits_in_memory(knobs, data, layout)
        return SyntheticKitchen(generate_recordings(knobs, seed, layout), knobs, seed, params.preset, data, layout)
    stored = load_recordings(Path(params.root))
    # A stored kitchen fixes its own knobs and seed: a request for different ones cannot be honoured.
    overrides = params.knob_overrides()
    if overrides:
        raise UserError(
            f"synthetic_kitchen: root {params.root} holds a generated dataset; remove the knob overrides "
            f"{sorted(overrides)} (they only apply when generating)"
        )
    if "preset" in params.model_fields_set and params.preset != stored.preset:
        raise UserError(f"synthetic_kitchen: root {params.root} holds preset '{stored.preset}', not '{params.preset}'")
    if params.seed is not None and params.seed != stored.seed:
        raise UserError(
            f"synthetic_kitchen: root {params.root} was generated with seed {stored.seed}, not {params.seed}"
        )
    if params.layout is not None and params.resolve_layout() != stored.layout:
        held = ", ".join(stored.layout.fixture_names)
        raise UserError(
            f"synthetic_kitchen: root {params.root} holds a kitchen of fixtures {held}, not the layout asked for "
            "(remove `layout`: a stored kitchen keeps its own)"
        )
    check_fits_in_memory(stored.knobs, data, stored.layout)
    return SyntheticKitchen(stored.recordings, stored.knobs, stored.seed, stored.preset, data, stored.layout)


@hookimpl
def detach_register_components(register: Register) -> None:
    register(
        kind="dataset",
        name="synthetic_kitchen",
        factory=build_synthetic_kitchen,
        params=SyntheticKitchenParams,
        description="Synthetic kitchen: fixed camera + ambient channels on 3-12 fixtures (default layout: 34 "
        "channels on 7 fixtures, 15 open/close classes; no download; presets tiny/quickstart/benchmark)",
        tools={"export_opportunity_pp": export_opportunity_pp, READ_RECORDING: read_sensor_recording},
    )
