"""The component registry: a plain dictionary of what plugins registered, per kind.

Plugins fill it through the `detach_register_components(register)` hook; specs look names up in it.
"""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

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

EMBEDDING_KINDS: tuple[str, ...] = ("video_head", "sensor_encoder")  # kinds whose outputs meet in a loss

_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

# Upper bounds shared by the core spec and the component params: far above any real dataset or model, low
# enough that a typo such as 1e12 is refused by `detach validate` instead of exhausting memory later.
MAX_WIDTH = 8192  # embedding sizes, hidden widths, channels of a layer
MAX_SENSOR_LENGTH = 8192  # sensor steps per window (a temporal encoder attends over L/4 steps)
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 8192
MAX_SEED = 2**32 - 1  # numpy's seed range
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]  # an entry of a list of layer widths


class ComponentParams(BaseModel):
    """Base of every component's Params model: unknown keys are errors, never silently accepted, and
    floats must be finite (inf or NaN in a learning rate or a temperature only fails later, mid-training)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def reachable_models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """`model` and every pydantic model its fields can hold, through lists, unions, Annotated and the like."""
    found: list[type[BaseModel]] = []
    pending: list[Any] = [model]
    while pending:
        annotation = pending.pop()
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in found:
                found.append(annotation)
                pending += [f.annotation for f in annotation.model_fields.values()]
        else:
            pending += get_args(annotation)
    return found


# Constraint attributes of pydantic field metadata, as `detach components KIND NAME` shows them.
_CONSTRAINTS: dict[str, str] = {
    "gt": "> {}",
    "ge": ">= {}",
    "lt": "< {}",
    "le": "<= {}",
    "length": "length {}",  # min_length == max_length
    "min_length": "length >= {}",
    "max_length": "length <= {}",
    "pattern": "matching {}",
}


def describe_params(params: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    """(name, type with its constraints, default as YAML would write it, description) of every param."""
    rows = []
    for name, info in params.model_fields.items():
        if info.is_required():
            default = "(required)"
        else:
            value = info.get_default(call_default_factory=True)
            default = json.dumps(value.model_dump(mode="json") if isinstance(value, BaseModel) else value, default=str)
        kind = _type_text(info.annotation) + _constraint_text(info.metadata)
        rows.append((name, kind, default, " ".join((info.description or "-").split())))
    return rows


def _type_text(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Annotated:
        return _type_text(args[0]) + _constraint_text(args[1:])
    if origin is Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_text(arg) for arg in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_text(arg) for arg in args)}]"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _constraint_text(metadata: Any) -> str:
    bounds: dict[str, Any] = {}
    for item in metadata:
        for meta in item.metadata if isinstance(item, FieldInfo) else (item,):
            bounds.update({key: getattr(meta, key) for key in _CONSTRAINTS if getattr(meta, key, None) is not None})
    if "min_length" in bounds and bounds["min_length"] == bounds.get("max_length"):
        bounds["length"] = bounds.pop("min_length")
        del bounds["max_length"]
    found = [text.format(bounds[key]) for key, text in _CONSTRAINTS.items() if key in bounds]
    return f" ({', '.join(found)})" if found else ""


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
    embedding_field: str | None = None  # params field holding the out_dim of a video head or sensor encoder

    @property
    def origin(self) -> str:
        """'plugin 'x' (distribution 'y')': how errors about this component name who to blame."""
        return f"plugin '{self.plugin}'" + (f" (distribution '{self.distribution}')" if self.distribution else "")


def did_you_mean(value: str, choices: list[str]) -> str:
    """' did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    return f" did you mean '{close[0]}'?" if close else ""


# What a plugin's `detach_register_components(register)` hook receives: Registry.add with the plugin bound,
# so that every component it adds (and every error about one) names that plugin.
Register = Callable[..., None]


@dataclass
class Registry:
    """Components by kind and name. Adding breaks loudly on anything malformed or duplicated."""

    _components: dict[str, dict[str, Component]] = field(default_factory=lambda: {kind: {} for kind in KINDS})
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
        embedding_field: str | None = None,
        plugin: str = "<direct>",
        distribution: str = "",
    ) -> None:
        """Register a component on behalf of `plugin` (from the installed package `distribution`); a plugin's
        hook receives this method with both bound (`Register`). `tools` are optional named utilities of the
        component that the CLI exposes (a dataset's "export", "fixture", "inspect"), looked up by name, never
        imported.
        `embedding_field` (video heads and sensor encoders) names the params field that sets the size of the
        embedding the component outputs (its `out_dim`): `validate` then refuses paired video and sensor
        embeddings of different sizes, which could only meet in a loss after a crash."""
        where = f"plugin '{plugin}'"
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
        lax = [model.__name__ for model in reachable_models(params) if model.model_config.get("allow_inf_nan", True)]
        if lax:
            raise PluginError(
                f"{where} registers {kind} '{name}': its params model(s) {', '.join(lax)} must set "
                "allow_inf_nan=False so that floats are finite (derive them from ComponentParams)"
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
        if embedding_field is not None and (kind not in EMBEDDING_KINDS or embedding_field not in params.model_fields):
            raise PluginError(
                f"{where} registers {kind} '{name}' with embedding_field={embedding_field!r}: only a "
                f"{' or '.join(EMBEDDING_KINDS)} declares one, and it must name a field of {params.__name__}"
            )
        self._components[kind][name] = Component(
            kind=kind,
            name=name,
            factory=factory,
            params=params,
            description=description.strip().splitlines()[0] if description.strip() else "",
            plugin=plugin,
            tools=dict(tools or {}),
            distribution=distribution,
            embedding_field=embedding_field,
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
