"""`detach ablate`: variants x seeds, skipping complete runs, and the aggregated table."""

from __future__ import annotations

import csv
import math

import pytest
import yaml
from conftest import tiny_spec

from detach_framework.cli import main
from detach_framework.engine.study import aggregate, as_overrides, markdown_table
from detach_framework.errors import UserError
from detach_framework.plugins import load_plugins


def test_aggregate_mean_and_sample_std():
    rows = [{"variant": "a", "f1": 0.5}, {"variant": "a", "f1": 0.7}, {"variant": "b", "f1": 0.4}]
    table = aggregate(rows, ["a", "b", "c"], ["f1"])
    assert table[0]["n"] == 2 and table[0]["f1"][0] == pytest.approx(0.6)
    assert table[0]["f1"][1] == pytest.approx(math.sqrt(0.02))  # ((0.1^2 + 0.1^2) / (2 - 1)) ** 0.5
    assert table[1]["f1"] == (0.4, 0.0) and table[2]["n"] == 0
    text = markdown_table("t", table, ["f1"])
    assert "| a | 2 | 0.600 ± 0.141 |" in text and "| c | 0 | - |" in text


def test_overrides_round_trip_through_yaml():
    assert as_overrides({"a.b": [1, 2], "c": "x y", "d": False}) == ["a.b=[1, 2]", 'c="x y"', "d=false"]


def write_study(tmp_path, variants, seeds=(1,)):
    spec = tiny_spec()
    spec["stages"][0]["epochs"] = 1
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(spec))
    study = {
        "name": "mini",
        "base": "base.yaml",
        "seeds": list(seeds),
        "variants": variants,
        "overrides": {"eval.evaluators": [{"name": "linear_probe", "epochs": 2}]},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))  # variant order matters
    return str(tmp_path / "study.yaml")


def test_ablate_runs_skips_complete_and_writes_tables(tmp_path, capsys):
    study = write_study(tmp_path, {"lr_low": {"stages.0.optimizer.lr": 1e-4}, "lr_high": {}})
    out = tmp_path / "out"
    assert main(["ablate", study, "--out", str(out), "--jobs", "2"]) == 0
    first = capsys.readouterr().out
    assert "| lr_low | 1 |" in first and "| lr_high | 1 |" in first
    rows = list(csv.DictReader((out / "study.csv").open()))
    assert len(rows) == 2 and {r["variant"] for r in rows} == {"lr_low", "lr_high"}
    assert len({r["uid"] for r in rows}) == 2
    assert (out / "study.png").stat().st_size > 0
    assert main(["ablate", study, "--out", str(out)]) == 0
    assert "2 already complete, 0 to run" in capsys.readouterr().out


def test_bad_variant_fails_before_any_run(tmp_path):
    study = write_study(tmp_path, {"ok": {}, "typo": {"stages.0.aligner.name": "global_contrastiv"}})
    with pytest.raises(UserError, match="variant 'typo'.*did you mean 'global_contrastive'"):
        from detach_framework.engine.study import plan

        plan(study, load_plugins().registry, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_variant_reference_reuses_the_same_seed_run(tmp_path):
    from detach_framework.engine.study import plan

    study = write_study(tmp_path, {"full": {}, "reuse": {"stages.0.init_from": "@full"}}, seeds=(1, 2))
    _, runs = plan(study, load_plugins().registry, tmp_path / "out")
    full = {r.seed: r.run_dir for r in runs if r.variant == "full"}
    for run in (r for r in runs if r.variant == "reuse"):
        assert run.spec.stages[0].init_from == str(full[run.seed])
    bad = write_study(tmp_path, {"reuse": {"stages.0.init_from": "@later"}, "later": {}})
    with pytest.raises(UserError, match="@later must name an earlier variant"):
        plan(bad, load_plugins().registry, tmp_path / "out")


def test_example_studies_plan(tmp_path):
    from pathlib import Path

    from detach_framework.engine.study import plan

    studies = sorted((Path(__file__).resolve().parents[1] / "examples" / "studies").glob("*.yaml"))
    assert studies
    for path in studies:
        study, runs = plan(path, load_plugins().registry, tmp_path)
        assert len(runs) == len(study.variants) * len(study.seeds), path.name


def test_studies_naming_one_runs_dir_share_their_runs(tmp_path):
    """The default keeps each study's runs in <out>/runs/; a shared `runs_dir` gives two studies one directory per
    uid, so a run one study trained is the other's (and "@variant" paths, hence uids, agree between them)."""
    from detach_framework.engine.study import plan

    registry = load_plugins().registry
    study = write_study(tmp_path, {"full": {}, "reuse": {"stages.0.init_from": "@full"}})
    _, alone = plan(study, registry, tmp_path / "studies" / "a")
    assert all(run.run_dir.parent == tmp_path / "studies" / "a" / "runs" for run in alone)
    data = yaml.safe_load(open(study))
    planned = {}
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**data, "name": name, "runs_dir": "../common_runs"}))
        planned[name] = plan(tmp_path / f"{name}.yaml", registry, tmp_path / "studies" / name)[1]
    assert [r.run_dir for r in planned["a"]] == [r.run_dir for r in planned["b"]]
    assert planned["a"][0].run_dir.parent == tmp_path / "studies" / "common_runs"
    assert planned["a"][1].spec.stages[0].init_from == str(planned["a"][0].run_dir)
