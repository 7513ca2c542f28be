"""Plugin discovery with pluggy: entry points of group `detach_framework.plugins`, each loaded alone.

A plugin module implements hooks of `Hooks` (mark each with `hookimpl`): `detach_register_components(register)`
to add components, `detach_after_epoch(stage, epoch, metrics)` to see each epoch's record (e.g. a logger),
`detach_report_sections(context)` to add sections to a run's report.
A broken plugin is recorded and reported; it never stops the others from loading.
"""

from __future__ import annotations

import importlib
import os
import traceback
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING

import pluggy

from detach_framework.errors import UserError
from detach_framework.registry import Register, Registry

if TYPE_CHECKING:  # the report sits above this layer: its types are only named here
    from detach_framework.report import ReportContext, Section

PROJECT = "detach_framework"
ENTRY_POINT_GROUP = "detach_framework.plugins"
BUILTIN_DISTRIBUTION = "detach-framework"
DISABLE_AUTOLOAD_ENV = "DETACH_DISABLE_PLUGIN_AUTOLOAD"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Hooks:
    """Hook specifications a plugin may implement."""

    @hookspec
    def detach_register_components(self, register: Register) -> None:
        """Add the plugin's components with `register(kind=..., name=..., factory=..., params=...)`
        (the arguments of `Registry.add`); `register` is bound to this plugin, so every component and every
        registration error names it."""

    @hookspec
    def detach_after_epoch(self, stage: str, epoch: int, metrics: dict) -> None:
        """Called by the main process after each training epoch once its record is final (logged to
        metrics.jsonl and checkpointed): the stage's name, the epoch within it (from 1) and the record, to
        read, not change. An exception stops the run; the epoch is saved, so `--resume` continues."""

    @hookspec
    def detach_report_sections(self, context: ReportContext) -> list[Section]:
        """The sections a plugin adds to a run's report, drawn from what `context` holds of the run (its
        records, summary and folders; `context.draw` and `context.skip` build them); return [] when the run has
        nothing of yours. The report shows them after its own, plugin by plugin in load order."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    distribution: str
    status: str  # "loaded" or "failed"
    error: str = ""
    components: int = 0


@dataclass
class PluginHost:
    """The loaded plugins, their registry and the failures met on the way."""

    registry: Registry = field(default_factory=Registry)
    plugins: list[PluginInfo] = field(default_factory=list)
    manager: pluggy.PluginManager = field(default_factory=lambda: _new_manager())
    debug: bool = False  # print a failing plugin's traceback

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.status == "failed"]

    def load_module(self, module: ModuleType | str, *, name: str | None = None, distribution: str = "") -> None:
        """Import (if needed) and register one plugin module; record a failure instead of raising."""
        label = name or (module if isinstance(module, str) else module.__name__)
        module_name = module if isinstance(module, str) else module.__name__
        before = len(self.registry.components())
        try:
            mod = importlib.import_module(module) if isinstance(module, str) else module
            try:
                self.manager.register(mod, name=label)
                self.manager.check_pending()  # a misspelled hook name fails here instead of being ignored
            except pluggy.PluginValidationError as exc:  # its first line names the hook only; the reason follows
                raise TypeError(" ".join(str(exc).split())) from None
            if not self.manager.get_hookcallers(mod):
                raise TypeError(
                    f"module {module_name} defines no detach_register_components(register), "
                    "detach_after_epoch(stage, epoch, metrics) or detach_report_sections(context) hook marked "
                    "with @hookimpl"
                )
            # Call this plugin's hook alone so a failure is attributed to it and others still load.
            self.manager.subset_hook_caller(
                "detach_register_components",
                remove_plugins=[p for p in self.manager.get_plugins() if p is not mod],
            )(register=partial(self.registry.add, plugin=label, distribution=distribution))
        except Exception as exc:  # noqa: BLE001 - any plugin error is recorded, never fatal
            self._forget(label)
            detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
            self.plugins.append(PluginInfo(label, module_name, distribution, "failed", detail))
            origin = f" from {distribution}" if distribution else ""
            self.registry.failed_plugins.append(f"{label} ({detail}){origin}")
            if self.debug:
                traceback.print_exc()
        else:
            added = len(self.registry.components()) - before
            self.plugins.append(PluginInfo(label, module_name, distribution, "loaded", components=added))

    def _forget(self, label: str) -> None:
        """Drop a half-registered plugin: its hook and whatever components it added before failing."""
        plugin = self.manager.get_plugin(label)
        if plugin is not None:
            self.manager.unregister(plugin)
        self.registry.remove_plugin(label)


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(Hooks)
    return manager


def load_plugins(
    extra_modules: list[str] | tuple[str, ...] = (), *, autoload: bool | None = None, debug: bool = False
) -> PluginHost:
    """Load the built-in plugins, third-party entry points (unless autoload is disabled) and modules.

    With DETACH_DISABLE_PLUGIN_AUTOLOAD=1 only entry points of this distribution (the built-ins) load.
    """
    if autoload is None:
        autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip() not in {"1", "true", "yes"}
    host = PluginHost(debug=debug)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else ""
        if not autoload and dist.replace("_", "-") != BUILTIN_DISTRIBUTION:
            continue
        host.load_module(ep.value.split(":")[0], name=ep.name, distribution=dist)
    for module in extra_modules:
        host.load_module(module, name=module, distribution="--plugin")
        if host.plugins[-1].status == "failed":
            raise UserError(f"--plugin {module}: {host.plugins[-1].error}")
    return host
