"""Plugin discovery with pluggy: entry points of group `detach_framework.plugins`, each loaded alone.

A plugin module implements `detach_register_components(registry)` (mark it with `hookimpl`).
A broken plugin is recorded and reported; it never stops the others from loading.
"""

from __future__ import annotations

import importlib
import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType

import pluggy

from detach_framework.errors import UserError
from detach_framework.registry import Registry

PROJECT = "detach_framework"
ENTRY_POINT_GROUP = "detach_framework.plugins"
BUILTIN_DISTRIBUTION = "detach-framework"
DISABLE_AUTOLOAD_ENV = "DETACH_DISABLE_PLUGIN_AUTOLOAD"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Hooks:
    """Hook specifications a plugin may implement."""

    @hookspec
    def detach_register_components(self, registry: Registry) -> None:
        """Add the plugin's components with `registry.add(kind=..., name=..., factory=..., params=...)`."""

    @hookspec
    def detach_after_epoch(self, stage: str, epoch: int, metrics: dict) -> None:
        """Called after every training epoch with that epoch's logged metrics (read-only)."""


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
        self.registry.current_plugin = label
        self.registry.current_distribution = distribution
        try:
            mod = importlib.import_module(module) if isinstance(module, str) else module
            if not hasattr(mod, "detach_register_components"):
                raise TypeError(f"module {module_name} defines no detach_register_components(registry) hook")
            self.manager.register(mod, name=label)
            # Call this plugin's hook alone so a failure is attributed to it and others still load.
            self.manager.subset_hook_caller(
                "detach_register_components",
                remove_plugins=[p for p in self.manager.get_plugins() if p is not mod],
            )(registry=self.registry)
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
        finally:
            self.registry.current_plugin = "<direct>"
            self.registry.current_distribution = ""

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
