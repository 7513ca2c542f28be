"""The component registry: a plain dictionary of what plugins registered, per kind.

Plugins fill it through the `detach_register_components(registry)` hook; specs look names up in it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from detach_framework.errors import PluginError, UserError

KINDS: tuple[str, ...] = (
    "dataset",
    "video_backbone",
    "video_head",
    "sensor_encoder",
    "clusterer",
    "aligner",
    "loss",
    "evaluator",
)

_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class ComponentParams(BaseModel):
    """Base of every component's Params model: unknown keys are errors, never silently accepted."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Component:
    """One registered component: how to build it and which parameters it takes."""

    kind: str
    name: str
    factory: Callable[..., Any]
    params: type[BaseModel]
    description: str
    plugin: str
    tools: dict[str, Callable[..., Any]] = field(default_factory=dict)
    distribution: str = ""  # the installed package that provides the plugin ("" when added directly)

    @property
    def origin(self) -> str:
        """'plugin 'x' (distribution 'y')': how errors about this component name who to blame."""
        return f"plugin '{self.plugin}'" + (f" (distribution '{self.distribution}')" if self.distribution else "")


def did_you_mean(value: str, choices: list[str]) -> str:
    """' did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    return f" did you mean '{close[0]}'?" if close else ""


@dataclass
class Registry:
    """Components by kind and name. Adding breaks loudly on anything malformed or duplicated."""

    _components: dict[str, dict[str, Component]] = field(default_factory=lambda: {kind: {} for kind in KINDS})
    current_plugin: str = "<direct>"
    current_distribution: str = ""
    failed_plugins: list[str] = field(default_factory=list)  # "name (error)", shown in unknown-name errors

    def add(
        self,
        *,
        kind: str,
        name: str,
        factory: Callable[..., Any],
        params: type[BaseModel],
        description: str = "",
        tools: dict[str, Callable[..., Any]] | None = None,
    ) -> None:
        """Register a component. `tools` are optional named utilities of the component that the CLI
        exposes (a dataset's "export", "fixture", "inspect"), looked up by name, never imported."""
        where = f"plugin '{self.current_plugin}'"
        if kind not in KINDS:
            raise PluginError(
                f"{where} registers unknown kind '{kind}';{did_you_mean(kind, list(KINDS))} "
                f"expected one of: {', '.join(KINDS)}"
            )
        if not isinstance(name, str) or not _NAME_PATTERN.match(name):
            raise PluginError(
                f"{where} registers {kind} with bad name {name!r}: expected lower_snake_case "
                "starting with a letter (at most 64 characters)"
            )
        if name in self._components[kind]:
            other = self._components[kind][name].plugin
            raise PluginError(f"{where} registers {kind} '{name}' already registered by plugin '{other}'")
        if not callable(factory):
            raise PluginError(f"{where} registers {kind} '{name}' with a factory that is not callable")
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise PluginError(f"{where} registers {kind} '{name}': params must be a pydantic model class")
        if params.model_config.get("extra") != "forbid":
            raise PluginError(
                f"{where} registers {kind} '{name}': its params model {params.__name__} must set "
                "extra='forbid' (derive it from ComponentParams)"
            )
        if kind == "video_backbone" and "frozen" not in params.model_fields:
            raise PluginError(
                f"{where} registers video_backbone '{name}': its params must derive from "
                "detach_framework.contracts.VideoBackboneParams (the trainer reads `frozen`)"
            )
        if tools is not None and not all(isinstance(k, str) and callable(v) for k, v in tools.items()):
            raise PluginError(f"{where} registers {kind} '{name}': tools must map names to callables")
        if "name" in params.model_fields:
            raise PluginError(f"{where} registers {kind} '{name}': params model may not define 'name' (it is the tag)")
        self._components[kind][name] = Component(
            kind=kind,
            name=name,
            factory=factory,
            params=params,
            description=description.strip().splitlines()[0] if description.strip() else "",
            plugin=self.current_plugin,
            tools=dict(tools or {}),
            distribution=self.current_distribution,
        )

    def names(self, kind: str) -> list[str]:
        self._check_kind(kind)
        return sorted(self._components[kind])

    def components(self, kind: str | None = None) -> list[Component]:
        kinds = KINDS if kind is None else (kind,)
        for k in kinds:
            self._check_kind(k)
        return [self._components[k][n] for k in kinds for n in sorted(self._components[k])]

    def get(self, kind: str, name: str) -> Component:
        self._check_kind(kind)
        try:
            return self._components[kind][name]
        except KeyError:
            choices = self.names(kind)
            raise UserError(
                f"unknown {kind} '{name}';{did_you_mean(name, choices)} installed: {', '.join(choices) or '(none)'}"
            ) from None

    def build(self, kind: str, spec: BaseModel, **context: Any) -> Any:
        """Build a component from its validated spec entry (the params model with its `name` tag)."""
        component = self.get(kind, spec.name)  # type: ignore[attr-defined]
        values = {key: value for key, value in vars(spec).items() if key != "name"}
        params = component.params.model_validate(values)
        return component.factory(params, **context)

    def remove_plugin(self, plugin: str) -> None:
        """Forget every component a (failed) plugin registered."""
        for by_name in self._components.values():
            for name in [n for n, c in by_name.items() if c.plugin == plugin]:
                del by_name[name]

    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise UserError(
                f"unknown component kind '{kind}';{did_you_mean(kind, list(KINDS))} expected one of: {', '.join(KINDS)}"
            )
