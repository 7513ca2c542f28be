"""The robustness evaluator over a finished study's runs: each run re-evaluated with `robustness` on its test
subjects, then one table of mean ± std over seeds per condition and variant.

    python benchmarks/robustness_study.py benchmarks/studies/table1/study.csv \
        --runs-dir runs/studies/benchmark --variants detach imu2clip --out benchmarks/studies/robustness

Each run gets `detach eval RUN 'eval.evaluators=[{name: robustness}]' eval.split=test` (evaluators are outside
the spec uid: nothing retrains; `eval.split=test` because the study's grid may have trained with `val`). A run's
table is copied to OUT/<variant>_seed<seed>.json as soon as it is scored, and a run whose file is there is not
scored again, so an interrupted pass resumes. OUT/robustness.csv has one row per run and condition,
OUT/robustness.md the summary (each fixture's silence row, and their range over fixtures).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from detach_framework.atomic import atomic_write_json, atomic_write_text

EVAL_ARGS = ("eval.evaluators=[{name: robustness}]", "eval.split=test")
METRICS = ("weighted_f1", "macro_map")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_csv", type=Path, help="a study's study.csv (variant, seed, uid columns)")
    parser.add_argument("--runs-dir", type=Path, required=True, help="where the study's run directories are")
    parser.add_argument("--variants", nargs="+", required=True, help="which of the study's variants to score")
    parser.add_argument("--out", type=Path, required=True, help="folder for the per-run tables and the summary")
    return parser.parse_args(argv)


def score_run(run_dir: Path) -> list[dict]:
    """`detach eval` with the robustness evaluator; the table it wrote into the run's eval/<eval-uid>/."""
    result = subprocess.run(["detach", "eval", str(run_dir), *EVAL_ARGS], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"detach eval {run_dir} failed: {result.stderr.strip().splitlines()[-1:]}")
    # the summary path is the last line `detach eval` prints ("wrote PATH")
    written = [line.split()[-1] for line in result.stdout.splitlines() if line.startswith("wrote ")]
    summary = json.loads(Path(written[-1]).read_text(encoding="utf-8"))
    return summary["tables"]["robustness"]


def summarise(tables: dict[tuple[str, int], list[dict]], variants: list[str]) -> str:
    """Markdown: one row per condition (silence rows also as their range over fixtures), a column pair per
    variant, mean ± std over its seeds."""
    scored = (row["condition"] for rows in tables.values() for row in rows if "skipped" not in row)
    conditions = list(dict.fromkeys(scored))
    values: dict[tuple[str, str, str], list[float]] = {}
    for (variant, _seed), rows in tables.items():
        for row in rows:
            for metric in METRICS:
                if metric in row:
                    values.setdefault((variant, row["condition"], metric), []).append(float(row[metric]))
    header = ["condition"] + [f"{v} {m}" for v in variants for m in ("F1", "mAP")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(variant: str, condition: str, metric: str) -> str:
        found = values.get((variant, condition, metric), [])
        if not found:
            return ""
        spread = np.std(found, ddof=1) if len(found) > 1 else 0.0  # the sample std, as the study tables give it
        return f"{np.mean(found):.3f} ± {spread:.3f}"

    silenced = [c for c in conditions if c.startswith("silence_")]
    for condition in conditions:
        lines.append("| " + " | ".join([condition] + [cell(v, condition, m) for v in variants for m in METRICS]) + " |")
        if silenced and condition == silenced[-1]:
            ranges = []
            for variant in variants:
                for metric in METRICS:
                    means = [np.mean(values[(variant, c, metric)]) for c in silenced if (variant, c, metric) in values]
                    ranges.append(f"{min(means):.3f}-{max(means):.3f}" if means else "")
            lines.append("| one fixture dead (range of the means) | " + " | ".join(ranges) + " |")
    seeds = sorted({seed for _, seed in tables})
    return "\n".join(lines) + f"\n\nseeds {', '.join(map(str, seeds))}; mean ± sample std over seeds\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with args.study_csv.open(encoding="utf-8") as handle:
        runs = [row for row in csv.DictReader(handle) if row["variant"] in args.variants]
    if not runs:
        raise SystemExit(f"{args.study_csv}: no runs of variants {args.variants}")
    args.out.mkdir(parents=True, exist_ok=True)
    tables: dict[tuple[str, int], list[dict]] = {}
    for row in runs:
        variant, seed = row["variant"], int(row["seed"])
        done = args.out / f"{variant}_seed{seed}.json"
        if not done.is_file():
            print(f"scoring {variant} seed {seed}: {row['uid']}", flush=True)
            atomic_write_json(done, {"uid": row["uid"], "rows": score_run(args.runs_dir / row["uid"])})
        tables[(variant, seed)] = json.loads(done.read_text(encoding="utf-8"))["rows"]
    flat = [
        {"variant": v, "seed": s, **{k: row.get(k, "") for k in ("condition", *METRICS, "skipped")}}
        for (v, s), rows in tables.items()
        for row in rows
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(args.out / "robustness.csv", buffer.getvalue())
    table = summarise(tables, list(args.variants))
    atomic_write_text(args.out / "robustness.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
