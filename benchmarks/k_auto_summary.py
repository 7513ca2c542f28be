"""What `model.clusterer.k: auto` costs DETACH: per kitchen, the estimated K and the weighted F1 / macro mAP with
the estimated and with the true K, from the finished `examples/studies/k_auto/layout{4,7,10}.yaml` studies.

    detach ablate examples/studies/k_auto/layout4.yaml     # and layout7, layout10 (18 quickstart-sized runs)
    python benchmarks/k_auto_summary.py runs/studies --out benchmarks/studies/k_auto/k_auto.md

Each study's study.csv names its runs (variant, seed, uid); an `auto` run's k_estimate.json holds the K it
estimated and trained with. Where the estimate is right the two variants train alike, so their scores match
to the last digit.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from detach_framework.atomic import atomic_write_text

LAYOUTS = (4, 7, 10)
RUNS_DIR = "k_auto"  # the studies' shared runs_dir, beside their own folders


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", type=Path, help="the folder holding k_auto_layout<N>/ and k_auto/ (runs/studies)")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    return parser.parse_args(argv)


def rows_of(studies: Path, fixtures: int) -> list[dict[str, str]]:
    path = studies / f"k_auto_layout{fixtures}" / "study.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; run detach ablate examples/studies/k_auto/layout{fixtures}.yaml first")
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lines = [
        "| fixtures | seed | estimated K | F1 true K | F1 auto | ΔF1 | mAP true K | mAP auto | ΔmAP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    right = total = 0
    for fixtures in LAYOUTS:
        runs = {(row["variant"], int(row["seed"])): row for row in rows_of(args.studies, fixtures)}
        for seed in sorted({seed for _, seed in runs}):
            true, auto = runs.get(("true_k", seed)), runs.get(("auto", seed))
            if true is None or auto is None:
                continue
            estimate = json.loads((args.studies / RUNS_DIR / auto["uid"] / "k_estimate.json").read_text())["chosen"]
            right, total = right + (estimate == fixtures), total + 1
            f1 = float(true["weighted_f1"]), float(auto["weighted_f1"])
            ap = float(true["macro_map"]), float(auto["macro_map"])
            lines.append(
                f"| {fixtures} | {seed} | {estimate} | {f1[0]:.3f} | {f1[1]:.3f} | {f1[1] - f1[0]:+.3f} | "
                f"{ap[0]:.3f} | {ap[1]:.3f} | {ap[1] - ap[0]:+.3f} |"
            )
    table = "\n".join(lines) + f"\n\nestimate right in {right} of {total} kitchens\n"
    if args.out is not None:
        atomic_write_text(args.out, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
