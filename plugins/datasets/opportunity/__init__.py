"""Opportunity (UCI release) and Opportunity++ dataset plugins.

Formats are described in `formats.py`, where each fact not yet confirmed on the real release is a named constant.
Tools: `fixture` (a tiny dataset in the real layout with truth.json), `fixture_params` (params reading it
with all three splits non-empty) and `inspect` (a root's summary).
"""

from __future__ import annotations

from pathlib import Path

from detach_framework.data.settings import DataSettings
from detach_framework.plugins import hookimpl
from detach_framework.registry import Register

from .dataset import OpportunityParams, OpportunityPPParams, build_opportunity
from .fixture import write_opportunity_fixture
from .inspect import inspect_opportunity

__all__ = [
    "OpportunityPPParams",
    "OpportunityParams",
    "build_opportunity",
    "inspect_opportunity",
    "write_opportunity_fixture",
]


def build_uci(params: OpportunityParams, data: DataSettings):
    return build_opportunity(params, data, layout="uci")


def build_pp(params: OpportunityPPParams, data: DataSettings):
    return build_opportunity(params, data, layout="pp")


@hookimpl
def detach_register_components(register: Register) -> None:
    register(
        kind="dataset",
        name="opportunity",
        factory=build_uci,
        params=OpportunityParams,
        description="Opportunity (UCI): 250-column .dat runs, 37 ambient channels, 14 open/close classes "
        "(no video: sensor-only with blank_video)",
        tools={
            "fixture": lambda out, seed=0: write_opportunity_fixture(Path(out), "uci", seed),
            "fixture_params": lambda root: {"root": str(root), "blank_video": True, "val_runs": ["S1-Drill"]},
            "inspect": lambda root: inspect_opportunity(root, "uci"),
        },
    )
    register(
        kind="dataset",
        name="opportunity_pp",
        factory=build_pp,
        params=OpportunityPPParams,
        description="Opportunity++: Opportunity's sensors + side-camera video (10 fps), SRT labels, pose",
        tools={
            "fixture": lambda out, seed=0: write_opportunity_fixture(Path(out), "pp", seed),
            "fixture_params": lambda root: {"root": str(root), "val_runs": ["S1-Drill"]},
            "inspect": lambda root: inspect_opportunity(root, "pp"),
        },
    )
