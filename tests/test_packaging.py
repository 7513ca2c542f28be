"""pyproject.toml lists every package explicitly (detach_plugins lives in plugins/): none may be missing."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in (("detach_framework", "detach_framework"), ("plugins", "detach_plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *relative.parts]))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_every_builtin_entry_point_module_exists():
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    for module in entry_points["detach_framework.plugins"].values():
        parts = module.split(".")
        assert parts[0] == "detach_plugins"
        path = ROOT / "plugins" / Path(*parts[1:])
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), module
