"""The report of a study directory: the mean +/- std table of study.csv, its bar plot and the per-run rows."""

from __future__ import annotations

import base64
import csv
import math
from pathlib import Path

from detach_framework.atomic import atomic_write_text
from detach_framework.engine.study import aggregate
from detach_framework.errors import UserError
from detach_framework.report.page import REPORT_FILE, Raw, esc, html_table, page

STUDY_FIXED_COLUMNS = ("variant", "seed", "uid")


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def write_study_report(path: Path) -> Path:
    """The study's mean +/- std table (from study.csv), its bar plot and the per-run rows."""
    path = Path(path)
    md = path / "study.md"
    name = path.name
    if md.is_file():
        first = md.read_text(encoding="utf-8").splitlines()[:1]
        if first and first[0].startswith("#"):
            name = first[0].lstrip("#").strip() or name
    body = [f"<h1>Study report: {esc(name)}</h1>", f'<p class="meta">{esc(path)}</p>']
    table_csv = path / "study.csv"
    if table_csv.is_file():
        with table_csv.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            raw = list(reader)
        metrics = [c for c in columns if c not in STUDY_FIXED_COLUMNS]
        rows = [{**r, **{m: _float(r.get(m)) for m in metrics}} for r in raw]
        variants = list(dict.fromkeys(r.get("variant", "") for r in rows))
        table = aggregate(rows, variants, metrics)
        summary_rows = [
            [e["variant"], e["n"]]
            + [Raw(f'<td class="num">{_mean_std(*e[m])}</td>') if not math.isnan(e[m][0]) else "-" for m in metrics]
            for e in table
        ]
        body += ["<h2>Mean &plusmn; std over seeds</h2>", html_table(["variant", "n", *metrics], summary_rows)]
        plot = path / "study.png"
        if plot.is_file():
            data = base64.b64encode(plot.read_bytes()).decode("ascii")
            body += ["<h2>Bar plot</h2>", f'<img src="data:image/png;base64,{data}" alt="study bar plot">']
        run_rows = []
        for r in rows:
            uid = r.get("uid", "")
            report = path / "runs" / uid / REPORT_FILE
            link = Raw(f'<td><a href="{esc(report.relative_to(path).as_posix())}">{esc(uid)}</a></td>')
            run_rows.append([r.get("variant", ""), r.get("seed", ""), link if uid and report.is_file() else uid])
            run_rows[-1] += [r[m] for m in metrics]
        body += ["<h2>Runs</h2>", html_table(["variant", "seed", "uid", *metrics], run_rows)]
    elif md.is_file():
        body += ['<p class="skip">No study.csv: showing study.md as written.</p>', f"<pre>{esc(md.read_text())}</pre>"]
    else:
        raise UserError(f"{path}: neither study.csv nor study.md; is this a study directory?")
    return atomic_write_text(path / REPORT_FILE, page(f"detach study report: {name}", body))


def _mean_std(mean: float, std: float) -> str:
    return esc(f"{mean:.3f} ± {std:.3f}")
