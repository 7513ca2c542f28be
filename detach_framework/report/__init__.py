"""`detach report`: one self-contained report.html for a run directory or a study directory.

A plugin adds sections to a run's report with the `detach_report_sections(context)` hook: it reads the run
from a `ReportContext` and returns `Section`s (a figure, a `Table`, or both).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from detach_framework.errors import UserError
from detach_framework.report.context import ReportContext
from detach_framework.report.page import Section, Table
from detach_framework.report.run import SECTIONS, load_test_embeddings, write_run_report
from detach_framework.report.study import write_study_report

__all__ = [
    "SECTIONS",
    "ReportContext",
    "Section",
    "Table",
    "load_test_embeddings",
    "write_report",
    "write_run_report",
    "write_study_report",
]


def write_report(path: Path, host: object, log: Callable[[str], None] = print) -> Path:
    """A study directory (study.csv / study.md) or a run directory (spec.yaml) -> its report.html."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a directory")
    if (path / "study.csv").is_file() or (path / "study.md").is_file():
        return write_study_report(path)
    if (path / "spec.yaml").is_file():
        return write_run_report(path, host, log)
    raise UserError(f"{path} is neither a run directory (spec.yaml) nor a study directory (study.csv)")
