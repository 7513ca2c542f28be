"""Study output: each variant's per-seed paired difference against the first row, with a 95% paired t interval,
checked against hand computations; and the example studies on the benchmark preset."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from detach_framework.engine.study import (
    StudySpec,
    format_difference,
    load_study,
    paired_comparisons,
    plan,
    write_outputs,
)
from detach_framework.plugins import load_plugins

STUDIES = Path(__file__).resolve().parents[1] / "examples" / "studies"


def rows_of(variant: str, values: dict[int, float], metric: str = "weighted_f1") -> list[dict]:
    return [{"variant": variant, "seed": seed, "uid": f"{variant}{seed}", metric: v} for seed, v in values.items()]


REFERENCE = {42: 0.70, 0: 0.72, 1: 0.71}
VARIANT = {42: 0.74, 0: 0.73, 1: 0.76}
# By hand: differences 0.74-0.70, 0.73-0.72, 0.76-0.71 = 0.04, 0.01, 0.05; mean 0.10/3 = 0.033333;
# deviations 0.006667, -0.023333, 0.016667, squares summing to 0.0026/3; sample sd sqrt(0.0026/3/2) = 0.020817;
# standard error sd/sqrt(3) = sqrt(0.0013)/3 = 0.012019; t_{0.975,2} = 4.302653 -> half-width 0.051711;
# interval 0.033333 -/+ 0.051711 = [-0.018378, +0.085045].
MEAN = 0.10 / 3
HALF = 4.302653 * math.sqrt(0.0026 / 3 / 2) / math.sqrt(3)


def test_paired_t_interval_by_hand():
    rows = rows_of("ref", REFERENCE) + rows_of("var", VARIANT)
    (difference,) = paired_comparisons(rows, ["ref", "var"], ["weighted_f1"])
    assert (difference.variant, difference.reference, difference.metric) == ("var", "ref", "weighted_f1")
    assert difference.seeds == (42, 0, 1) and difference.n == 3
    assert difference.differences == pytest.approx((0.04, 0.01, 0.05), abs=1e-12)
    assert difference.mean == pytest.approx(MEAN, abs=1e-12)
    assert HALF == pytest.approx(0.051711, abs=1e-6)
    assert (difference.low, difference.high) == pytest.approx((MEAN - HALF, MEAN + HALF), abs=1e-6)
    assert format_difference(difference) == "+0.033 [-0.018, +0.085], n=3"


def test_only_seeds_where_both_finished_are_paired():
    # "var" has a NaN at seed 1, so only seeds 42 and 0 pair up with the reference; "missing" shares no seed,
    # so it has no pair. By hand for "var": differences 0.04, 0.01; mean 0.025; sd |0.04 - 0.01| / sqrt(2) = 0.021213;
    # se = sd/sqrt(2) = 0.015; t_{0.975,1} = 12.706205 -> half-width 0.190593.
    rows = rows_of("ref", REFERENCE) + rows_of("var", {42: 0.74, 0: 0.73}) + rows_of("missing", {7: 0.9})
    rows += rows_of("var", {1: math.nan})
    var, missing = paired_comparisons(rows, ["ref", "var", "missing"], ["weighted_f1"])
    assert var.seeds == (42, 0) and var.mean == pytest.approx(0.025, abs=1e-12)
    assert (var.low, var.high) == pytest.approx((0.025 - 12.706205 * 0.015, 0.025 + 12.706205 * 0.015), abs=1e-6)
    assert format_difference(var) == "+0.025 [-0.166, +0.216], n=2"
    assert missing.n == 0 and math.isnan(missing.mean) and format_difference(missing) == "-"


def test_single_seed_has_no_interval():
    rows = rows_of("ref", {42: 0.70}) + rows_of("var", {42: 0.74})
    (difference,) = paired_comparisons(rows, ["ref", "var"], ["weighted_f1"])
    assert difference.n == 1 and difference.mean == pytest.approx(0.04, abs=1e-12)
    assert difference.low is None and difference.high is None
    assert format_difference(difference) == "+0.040, n=1 (no interval)"


def test_study_outputs_carry_the_paired_differences(tmp_path):
    study = StudySpec.model_validate(
        {"name": "s", "base": "b.yaml", "variants": {"ref": {}, "var": {}}, "metrics": ["weighted_f1", "macro_map"]}
    )
    # macro_map: var is 0.02 above ref at every seed, so the differences' sd is 0 and the interval a point
    reference_map = {42: 0.60, 0: 0.62, 1: 0.61}
    variant_map = {seed: value + 0.02 for seed, value in reference_map.items()}
    rows = []
    for variant, f1, mean_ap in (("ref", REFERENCE, reference_map), ("var", VARIANT, variant_map)):
        for seed in f1:
            rows.append({"variant": variant, "seed": seed, "uid": f"{variant}{seed}", "weighted_f1": f1[seed]})
            rows[-1]["macro_map"] = mean_ap[seed]
    result = write_outputs(study, rows, tmp_path)
    assert [(p.variant, p.metric) for p in result["paired"]] == [("var", "weighted_f1"), ("var", "macro_map")]

    paired = list(csv.DictReader((tmp_path / "study_paired.csv").open()))
    f1, mean_ap = paired
    assert (f1["variant"], f1["reference"], f1["metric"], f1["n"], f1["seeds"]) == (
        "var",
        "ref",
        "weighted_f1",
        "3",
        "42 0 1",
    )
    assert [float(d) for d in f1["differences"].split()] == pytest.approx([0.04, 0.01, 0.05], abs=1e-12)
    assert float(f1["mean_difference"]) == pytest.approx(MEAN, abs=1e-12)
    assert (float(f1["ci95_low"]), float(f1["ci95_high"])) == pytest.approx((MEAN - HALF, MEAN + HALF), abs=1e-6)
    assert float(mean_ap["ci95_low"]) == pytest.approx(0.02) and float(mean_ap["ci95_high"]) == pytest.approx(0.02)

    md = (tmp_path / "study.md").read_text(encoding="utf-8")
    header = "| variant | n | weighted_f1 | macro_map | Δweighted_f1 vs ref (95% CI) | Δmacro_map vs ref (95% CI) |"
    assert header in md
    assert "| ref | 3 | 0.710 ± 0.010 | 0.610 ± 0.010 | (reference) | (reference) |" in md
    assert (
        "| var | 3 | 0.743 ± 0.015 | 0.630 ± 0.010 | +0.033 [-0.018, +0.085], n=3 | +0.020 [+0.020, +0.020], n=3 |"
        in md
    )
    # the per-run table keeps its columns
    assert next(csv.reader((tmp_path / "study.csv").open())) == ["variant", "seed", "uid", "weighted_f1", "macro_map"]


def test_example_studies_run_on_the_benchmark_preset_and_quick_ones_are_labelled(tmp_path):
    registry = load_plugins().registry
    assert [load_study(STUDIES / f"table{n}.yaml").name for n in (1, 2, 3)] == ["table1", "table2", "table3"]
    studies = [(STUDIES / f"table{n}.yaml", "benchmark") for n in (1, 2, 3)]
    studies += [(p, "quickstart") for p in (STUDIES / "quick").glob("*.yaml")]
    assert len(studies) == 6 and sorted(p.name for p in STUDIES.glob("*.yaml"))[-1] == "table3.yaml"
    for path, preset in studies:
        study, runs = plan(path, registry, tmp_path / path.stem)
        assert study.seeds == [42, 0, 1], path
        assert study.name.endswith("_quick") == (preset == "quickstart"), path
        assert len(runs) == len(study.variants) * len(study.seeds), path
        assert {run.spec.data.dataset.preset for run in runs} == {preset}, path


def test_the_learning_rate_study_scores_validation_and_shares_table1s_runs(tmp_path):
    """table1_lr.yaml gives every trained method the same grid, on validation subjects only, and each method's
    chosen rate is the very run table1.yaml evaluates on the test subjects for seed 42."""
    registry = load_plugins().registry
    lr_study, lr_runs = plan(STUDIES / "table1_lr.yaml", registry, tmp_path / "studies" / "table1_lr")
    _, table_runs = plan(STUDIES / "table1.yaml", registry, tmp_path / "studies" / "table1")
    assert lr_study.seeds == [42] and {run.spec.eval.split for run in lr_runs} == {"val"}
    assert {run.spec.data.dataset.preset for run in lr_runs} == {"benchmark"}
    assert {run.spec.eval.split for run in table_runs} == {"test"}
    methods = {run.variant.rsplit("_lr", 1)[0] for run in lr_runs}
    assert methods == {"detach", "imu2clip", "primus", "comodo", "evi_mae", "supervised"}
    for method in methods:
        rates = {run.variant.rsplit("_lr", 1)[1] for run in lr_runs if run.variant.startswith(method + "_lr")}
        assert rates == {"3e-4", "1e-3", "3e-3"}, method
    # Each trained method's seed-42 row of Table 1 is one point of the grid (the rate chosen on validation).
    grid_dirs = {run.run_dir: run.variant for run in lr_runs}
    for run in table_runs:
        if run.seed == 42 and run.variant != "floor":
            assert grid_dirs[run.run_dir].rsplit("_lr", 1)[0] == run.variant, run.variant
