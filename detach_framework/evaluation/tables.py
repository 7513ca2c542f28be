"""Plain-text tables for the terminal: a metrics dict and row tables (e.g. the per-class table)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _cell(value: Any, float_format: str) -> str:
    if isinstance(value, float):
        return format(value, float_format)
    return str(value)


def _is_numeric(value: Any) -> bool:
    # bool is an int subclass but reads as a word, so it aligns like text.
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    float_format: str = ".4f",
) -> str:
    """Align rows under a header; numbers right-aligned, text left-aligned. Missing cells show ''.

    Columns default to the keys in order of first appearance across the rows.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    if not columns:
        return ""
    cells = [[_cell(row.get(col, ""), float_format) for col in columns] for row in rows]
    numeric = [all(_is_numeric(row.get(col)) for row in rows if col in row) for col in columns]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))]
        return "  ".join(parts).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def format_metrics(metrics: Mapping[str, float], *, float_format: str = ".4f") -> str:
    """Two columns, metric and value, one line per metric in the dict's order."""
    return format_table(
        [{"metric": name, "value": value} for name, value in metrics.items()],
        ["metric", "value"],
        float_format=float_format,
    )
