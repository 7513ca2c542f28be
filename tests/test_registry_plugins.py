"""Registry rules and plugin loading: loud registration errors, isolated plugin failures, autoload switch,
the plugin-bound `register` and the after-epoch hook."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import tiny_spec
from pydantic import BaseModel

from detach_framework import plugins as plugin_module
from detach_framework.cli import main
from detach_framework.errors import PluginError, UserError
from detach_framework.registry import ComponentParams, Registry


class Params(ComponentParams):
    size: int = 1


def factory(params):
    return params.size


def test_add_and_build():
    registry = Registry()
    registry.add(kind="loss", name="mine", factory=factory, params=Params)
    assert registry.names("loss") == ["mine"]
    tagged = SimpleNamespace(name="mine", size=5)
    assert registry.build("loss", tagged) == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "lossy"}, "unknown kind 'lossy'; did you mean 'loss'?"),
        ({"name": "Bad-Name"}, "bad name 'Bad-Name'"),
        ({"params": dict}, "must be a pydantic model class"),
        ({"factory": 3}, "factory that is not callable"),
    ],
)
def test_malformed_registration_fails_loudly(kwargs, message):
    registry = Registry()
    arguments = {"kind": "loss", "name": "ok", "factory": factory, "params": Params, **kwargs}
    with pytest.raises(PluginError, match=message.replace("?", r"\?").replace("(", r"\(")):
        registry.add(**arguments)


def test_params_must_forbid_extra_keys():
    class Loose(BaseModel):
        size: int = 1

    with pytest.raises(PluginError, match="extra='forbid'"):
        Registry().add(kind="loss", name="loose", factory=factory, params=Loose)


def test_backbone_params_must_carry_frozen():
    with pytest.raises(PluginError, match="VideoBackboneParams"):
        Registry().add(kind="video_backbone", name="b", factory=factory, params=Params)


def test_duplicate_name_names_both_plugins():
    registry = Registry()
    registry.add(kind="loss", name="same", factory=factory, params=Params, plugin="first")
    with pytest.raises(PluginError, match="plugin 'second' registers loss 'same' already registered by plugin 'first'"):
        registry.add(kind="loss", name="same", factory=factory, params=Params, plugin="second")


def test_unknown_name_lists_choices_and_closest():
    registry = Registry()
    registry.add(kind="loss", name="infonce", factory=factory, params=Params)
    with pytest.raises(UserError, match="unknown loss 'infonse'; did you mean 'infonce'\\? installed: infonce"):
        registry.get("loss", "infonse")


def _write_module(tmp_path: Path, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return name


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("fake_plugin_")]:
        del sys.modules[name]


def _fake_entry_points(values: list[tuple[str, str, str]]):
    def entry_points(group):
        assert group == plugin_module.ENTRY_POINT_GROUP
        return [SimpleNamespace(name=n, value=v, dist=SimpleNamespace(name=d)) for n, v, d in values]

    return entry_points


def test_broken_plugins_are_recorded_and_others_load(module_dir, monkeypatch):
    _write_module(module_dir, "fake_plugin_import", "raise RuntimeError('boom at import')\n")
    _write_module(
        module_dir,
        "fake_plugin_register",
        """
        from detach_framework.plugins import hookimpl
        from detach_framework.registry import ComponentParams
        class P(ComponentParams):
            pass
        @hookimpl
        def detach_register_components(register):
            register(kind="loss", name="half_done", factory=lambda p: p, params=P)
            raise ValueError("boom in registration")
        """,
    )
    _write_module(
        module_dir,
        "fake_plugin_good",
        """
        from detach_framework.plugins import hookimpl
        from detach_framework.registry import ComponentParams
        class P(ComponentParams):
            pass
        @hookimpl
        def detach_register_components(register):
            register(kind="loss", name="good_loss", factory=lambda p: p, params=P)
        """,
    )
    monkeypatch.setattr(
        plugin_module,
        "entry_points",
        _fake_entry_points(
            [
                ("a_import", "fake_plugin_import", "third-party"),
                ("b_register", "fake_plugin_register", "third-party"),
                ("c_good", "fake_plugin_good", "third-party"),
            ]
        ),
    )
    host = plugin_module.load_plugins(autoload=True)
    status = {p.name: (p.status, p.error) for p in host.plugins}
    assert status["a_import"] == ("failed", "RuntimeError: boom at import")
    assert status["b_register"] == ("failed", "ValueError: boom in registration")
    assert status["c_good"][0] == "loaded"
    # The half-registered component of the failed plugin is gone; the good one stays.
    assert host.registry.names("loss") == ["good_loss"]
    assert any(entry.startswith("a_import (RuntimeError") for entry in host.registry.failed_plugins)


def test_autoload_switch_keeps_only_builtins(module_dir, monkeypatch):
    _write_module(
        module_dir,
        "fake_plugin_other",
        """
        from detach_framework.plugins import hookimpl
        @hookimpl
        def detach_register_components(register):
            pass
        """,
    )
    monkeypatch.setattr(
        plugin_module,
        "entry_points",
        _fake_entry_points(
            [
                ("builtin", "detach_plugins.methods.imu2clip", "detach-framework"),
                ("other", "fake_plugin_other", "someone-else"),
            ]
        ),
    )
    monkeypatch.setenv(plugin_module.DISABLE_AUTOLOAD_ENV, "1")
    assert [p.name for p in plugin_module.load_plugins().plugins] == ["builtin"]
    monkeypatch.delenv(plugin_module.DISABLE_AUTOLOAD_ENV)
    assert [p.name for p in plugin_module.load_plugins().plugins] == ["builtin", "other"]


def test_explicit_plugin_module_failure_is_a_user_error(module_dir):
    _write_module(module_dir, "fake_plugin_nohook", "x = 1\n")
    with pytest.raises(UserError, match="--plugin fake_plugin_nohook: .*defines no detach_register_components"):
        plugin_module.load_plugins(["fake_plugin_nohook"], autoload=False)


def test_builtin_plugins_all_load(host):
    assert host.failures == []
    assert {"synthetic_kitchen", "backbones", "imu2clip", "evaluators"} <= {p.name for p in host.plugins}


def test_register_is_bound_to_its_plugin(module_dir, monkeypatch):
    for name in ("first", "second"):
        _write_module(
            module_dir,
            f"fake_plugin_{name}",
            """
            from detach_framework.plugins import hookimpl
            from detach_framework.registry import ComponentParams
            class P(ComponentParams):
                pass
            @hookimpl
            def detach_register_components(register):
                register(kind="loss", name="shared", factory=lambda p: p, params=P)
            """,
        )
    monkeypatch.setattr(
        plugin_module,
        "entry_points",
        _fake_entry_points([("a", "fake_plugin_first", "dist-a"), ("b", "fake_plugin_second", "dist-b")]),
    )
    host = plugin_module.load_plugins(autoload=True)
    component = host.registry.get("loss", "shared")
    assert (component.plugin, component.distribution) == ("a", "dist-a")
    failed = {p.name: p.error for p in host.failures}
    assert failed == {"b": "PluginError: plugin 'b' registers loss 'shared' already registered by plugin 'a'"}


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ("detach_register_components(registry)", r"\(registry\).*'registry'.*hookspec"),  # the form before `register`
        ("detach_register_component(register)", r"unknown hook 'detach_register_component'"),
    ],
)
def test_a_hook_the_spec_does_not_know_is_refused_naming_it(module_dir, hook, message):
    _write_module(
        module_dir,
        "fake_plugin_bad_hook",
        f"from detach_framework.plugins import hookimpl\n@hookimpl\ndef {hook}:\n    pass\n",
    )
    with pytest.raises(UserError, match=f"--plugin fake_plugin_bad_hook: TypeError: .*{message}"):
        plugin_module.load_plugins(["fake_plugin_bad_hook"], autoload=False)


def test_after_epoch_hook_gets_each_epoch_record_as_logged(module_dir, tmp_path):
    # A logger plugin: it implements only this hook, registers nothing, and still loads.
    _write_module(
        module_dir,
        "fake_plugin_logger",
        """
        from detach_framework.plugins import hookimpl
        SEEN = []
        @hookimpl
        def detach_after_epoch(stage, epoch, metrics):
            SEEN.append((stage, epoch, metrics))
        """,
    )
    spec, run = tmp_path / "spec.yaml", tmp_path / "run"
    spec.write_text(yaml.safe_dump(tiny_spec(eval={"evaluators": [{"name": "linear_probe", "epochs": 1}]})))
    assert main(["--plugin", "fake_plugin_logger", "train", str(spec), "--run-dir", str(run)]) == 0
    seen = sys.modules["fake_plugin_logger"].SEEN
    logged = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert [(stage, epoch) for stage, epoch, _ in seen] == [("align", 1), ("align", 2)]
    assert [json.loads(json.dumps(metrics, default=float)) for *_, metrics in seen] == [
        {key: value for key, value in record.items() if key != "time"} for record in logged
    ]
