"""Report sections contributed by plugins (`detach_report_sections`): a figure, a table or both, after the core's
own sections and in plugin load order; a plot that refuses its data, and a hook that returns no list."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_one_line_error, run
from conftest import tiny_spec
from test_report import ESCAPED, PNG_MAGIC, XSS, assert_offline, parse, png_bytes

from detach_framework.report import SECTIONS
from detach_plugins.detach.report import SECTIONS as DETACH_SECTIONS

FIGURE_PLUGIN = """
from matplotlib.figure import Figure

from detach_framework.evaluation.plots import save_figure_atomic
from detach_framework.plugins import hookimpl
from detach_framework.report import Table


def plot(path):
    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([1, 2], [2, 1])
    return save_figure_atomic(figure, path)


@hookimpl
def detach_report_sections(context):
    epochs = [r for r in context.records if r.get("kind") == "epoch"]
    table = Table(("epochs", "run"), [(len(epochs), context.run_path.name)])
    return [context.draw("mine-figure", "My figure", plot, "drawn by a plugin", table=table)]
"""

TABLE_PLUGIN = f"""
from detach_framework.plugins import hookimpl
from detach_framework.report import Section, Table

XSS = {XSS!r}


@hookimpl
def detach_report_sections(context):
    return [Section("mine-table", XSS, table=Table((XSS, "value"), [(XSS, 0.5)]), caption=XSS)]
"""

NOTHING_PLUGIN = """
from detach_framework.plugins import hookimpl


@hookimpl
def detach_report_sections(context):
    return []
"""

REFUSING_PLUGIN = """
from detach_framework.plugins import hookimpl


def plot(path):
    raise ValueError("no records of mine to draw")


@hookimpl
def detach_report_sections(context):
    return [context.draw("mine-refused", "My refused figure", plot, "never shown")]
"""

NOT_A_LIST_PLUGIN = """
from detach_framework.plugins import hookimpl


@hookimpl
def detach_report_sections(context):
    return context.skip("mine", "Mine", "a section alone, not in a list")
"""


def plugin(directory: Path, monkeypatch, name: str, body: str) -> str:
    """`name` importable as a --plugin module with `body` as its source."""
    (directory / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(directory))
    return name


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory as an untrained run leaves it: spec.yaml and two epoch records, no checkpoint."""
    run_path = tmp_path / "run"
    run_path.mkdir()
    (run_path / "spec.yaml").write_text(yaml.safe_dump(tiny_spec()))
    records = [{"kind": "epoch", "stage": "align", "epoch": e, "train_loss": 1.0 / e} for e in (1, 2)]
    (run_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_path


def test_plugin_sections_follow_the_core_in_load_order(run_dir, tmp_path, monkeypatch, capsys):
    names = [
        plugin(tmp_path, monkeypatch, "fake_report_table", TABLE_PLUGIN),
        plugin(tmp_path, monkeypatch, "fake_report_nothing", NOTHING_PLUGIN),
        plugin(tmp_path, monkeypatch, "fake_report_figure", FIGURE_PLUGIN),
    ]
    code, _, err = run(capsys, *(f"--plugin={name}" for name in names), "report", str(run_dir))
    assert code == 0, err
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    assert_offline(text)
    parsed = parse(run_dir / "report.html")
    # Built-in plugins (detach) load before --plugin modules; a plugin returning [] adds nothing.
    core_and_detach = [key for key, _ in SECTIONS + DETACH_SECTIONS]
    assert list(parsed.sections) == [*core_and_detach, "mine-table", "mine-figure"]
    figure = parsed.sections["mine-figure"]
    assert not figure["skip"] and len(figure["img"]) == 1 and png_bytes(figure["img"][0]).startswith(PNG_MAGIC)
    assert (run_dir / "plots" / "report" / "mine-figure.png").is_file()
    assert "drawn by a plugin" in text
    table = parsed.sections["mine-table"]
    assert not table["img"] and not table["skip"]
    assert XSS not in text and text.count(ESCAPED) >= 4  # title, caption, header, cell
    # The table-only section's cell, then the figure's table: it saw two epoch records and the run's folder.
    assert parsed.cells[-4:] == [XSS, "0.5000", "2", "run"]


def test_a_plot_that_refuses_its_data_is_a_skip_line(run_dir, tmp_path, monkeypatch, capsys):
    name = plugin(tmp_path, monkeypatch, "fake_report_refusing", REFUSING_PLUGIN)
    code, out, err = run(capsys, f"--plugin={name}", "report", str(run_dir))
    assert code == 0, err
    section = parse(run_dir / "report.html").sections["mine-refused"]
    assert not section["img"] and section["skip"] == ["Skipped: could not draw: no records of mine to draw"]
    assert "skipped My refused figure: could not draw: no records of mine to draw" in out
    assert "never shown" not in (run_dir / "report.html").read_text(encoding="utf-8")


def test_a_hook_returning_no_list_is_one_line_naming_the_plugin(run_dir, tmp_path, monkeypatch, capsys):
    name = plugin(tmp_path, monkeypatch, "fake_report_not_a_list", NOT_A_LIST_PLUGIN)
    code, _, err = run(capsys, f"--plugin={name}", "report", str(run_dir))
    assert_one_line_error(code, err, "plugin 'fake_report_not_a_list'", "returned Section, not a list")
