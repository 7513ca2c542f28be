"""What a run's report hands to the sections it draws, its own and those plugins add (`detach_report_sections`).

A plugin reads the run through this object alone, so the core needs to know nothing of the records it draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detach_framework.report.page import Section, Table


@dataclass(frozen=True)
class ReportContext:
    """One run directory as its report sees it.

    records:  metrics.jsonl, one dict per line (epoch records have kind "epoch", stage, epoch and the metrics)
    summary:  summary.json, or {} before `detach eval`
    run_path: the run directory
    out:      the folder for the report's figure PNGs (plots/report)
    """

    records: list[dict[str, Any]]
    summary: dict[str, Any]
    run_path: Path
    out: Path

    def draw(
        self, key: str, title: str, plot: Callable[[Path], Path], caption: str = "", *, table: Table | None = None
    ) -> Section:
        """A figure section: `plot(out / f"{key}.png")` writes the PNG and returns its path. A plot that refuses
        its data with a ValueError gives a skipped section saying why (its table, if any, still shows)."""
        try:
            path = plot(self.out / f"{key}.png")
        except ValueError as exc:
            return Section(key, title, caption=caption, skip=f"could not draw: {exc}", table=table)
        return Section(key, title, png=path.read_bytes(), caption=caption, table=table)

    def skip(self, key: str, title: str, reason: str) -> Section:
        """A section with nothing to show: the report says `reason` in its place."""
        return Section(key, title, skip=reason)
