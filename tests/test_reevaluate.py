"""Re-evaluation without retraining: the uid leaves eval out, `detach eval RUN_DIR eval.k=v` writes
RUN_DIR/eval/<eval-uid>/, and a study's eval-only variants evaluate the run another variant trained."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import tiny_spec

from detach_framework.cli import main
from detach_framework.engine.study import plan
from detach_framework.spec import dump_spec, eval_uid, load_spec

RETRIEVAL_ONLY = '[{"name": "retrieval"}]'


def one_epoch_spec() -> dict:
    spec = tiny_spec()
    spec["stages"][0]["epochs"] = 1
    spec["eval"]["evaluators"][0]["epochs"] = 2
    return spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One trained tiny run, shared by the `detach eval` tests (each copies nothing: eval writes under eval/)."""
    root = tmp_path_factory.mktemp("trained")
    (root / "spec.yaml").write_text(yaml.safe_dump(one_epoch_spec()))
    assert main(["train", str(root / "spec.yaml"), "--run-dir", str(root / "run")]) == 0
    return root / "run"


def test_uid_covers_training_not_evaluation(registry):
    base = load_spec(tiny_spec(), registry)
    other = load_spec(tiny_spec(), registry, [f"eval.evaluators={RETRIEVAL_ONLY}", "eval.checkpoint=last"])
    assert other.uid == base.uid
    assert eval_uid(other) != eval_uid(base)
    assert eval_uid(load_spec(tiny_spec(), registry, ["eval.checkpoint=last"])) != eval_uid(base)
    assert load_spec(tiny_spec(), registry, ["seed=8"]).uid != base.uid


def test_eval_overrides_write_an_eval_directory_and_keep_the_training_summary(trained, capsys, registry):
    capsys.readouterr()
    summary_before = (trained / "summary.json").read_bytes()
    plots_before = sorted(p.name for p in (trained / "plots").iterdir())
    assert main(["eval", str(trained), "eval.evaluators.0.epochs=3", "eval.checkpoint=last"]) == 0
    out = capsys.readouterr().out
    spec = load_spec(trained / "spec.yaml", registry, ["eval.evaluators.0.epochs=3", "eval.checkpoint=last"])
    target = trained / "eval" / eval_uid(spec)
    assert f"wrote {target / 'summary.json'}" in out and "weighted_f1" in out
    summary = json.loads((target / "summary.json").read_text())
    assert summary["uid"] == spec.uid and summary["eval_uid"] == eval_uid(spec) and summary["checkpoint"] == "last.pt"
    assert "weighted_f1" in summary["metrics"] and "v2s_R@1" in summary["metrics"]
    assert (target / "plots" / "confusion_matrix.png").is_file()
    assert f"eval/{eval_uid(spec)}/plots/confusion_matrix.png" in summary["plots"]
    assert yaml.safe_load((target / "eval.yaml").read_text()) == spec.eval.model_dump(mode="json")
    assert (trained / "summary.json").read_bytes() == summary_before
    assert sorted(p.name for p in (trained / "plots").iterdir()) == plots_before


def test_eval_split_val_scores_the_validation_subjects(trained, capsys, registry, host):
    """eval.split=val: the probe is still fitted on train, and scores the validation windows instead of the test
    ones (for choosing hyperparameters); the summary says which split it scored."""
    from detach_framework.engine.session import build_source

    capsys.readouterr()
    assert main(["eval", str(trained), "eval.split=val"]) == 0
    assert "val windows)" in capsys.readouterr().out
    spec = load_spec(trained / "spec.yaml", registry, ["eval.split=val"])
    summary = json.loads((trained / "eval" / eval_uid(spec) / "summary.json").read_text())
    source = build_source(spec, host)
    assert summary["split"] == "val" and "test_samples" not in summary
    assert summary["val_samples"] == len(source.split("val"))
    own = json.loads((trained / "summary.json").read_text())
    assert own["split"] == "test" and own["test_samples"] == len(source.split("test"))
    assert summary["metrics"]["weighted_f1"] != own["metrics"]["weighted_f1"]


def test_eval_without_overrides_rewrites_the_run_summary(trained, capsys):
    assert main(["eval", str(trained)]) == 0
    assert f"wrote {trained / 'summary.json'}" in capsys.readouterr().out


@pytest.mark.parametrize("override", ["stages.0.epochs=3", "seed=1", "data.batch_size=8", "evaluators=[]"])
def test_eval_refuses_overrides_that_change_training(trained, capsys, override):
    capsys.readouterr()
    assert main(["eval", str(trained), "eval.checkpoint=last", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    key = override.partition("=")[0]
    assert f"{key} is not an eval.* key" in err and "only eval.* can change without retraining" in err


def test_eval_override_errors_name_the_field(trained, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained), "eval.evaluators.0.name=linear_prob"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'linear_probe'?" in err


# -- studies --------------------------------------------------------------------------------------------------


def write_study(tmp_path: Path, variants: dict, seeds=(1,)) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(one_epoch_spec()))
    study = {
        "name": "evals",
        "base": "base.yaml",
        "seeds": list(seeds),
        "variants": variants,
        "metrics": ["weighted_f1", "v2s_R@1"],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


EVAL_VARIANTS = {"probe": {}, "retrieval_only": {"eval.evaluators": [{"name": "retrieval"}]}}


def test_ablate_evaluates_eval_only_variants_on_one_trained_run(tmp_path, capsys):
    study = write_study(tmp_path, EVAL_VARIANTS)
    out = tmp_path / "out"
    assert main(["ablate", str(study), "--out", str(out), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "run: probe seed 1" in dry and "evaluate only (reuses the trained run): retrieval_only seed 1" in dry

    assert main(["ablate", str(study), "--out", str(out), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    runs = list((out / "runs").iterdir())
    assert len(runs) == 1  # trained once
    epochs = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [1]
    evaluated = list((runs[0] / "eval").iterdir())
    assert len(evaluated) == 1 and (evaluated[0] / "summary.json").is_file()
    # a line as each run starts and as it ends: name, seed, directory, wall time, exit status
    assert f"[1/2] start: probe seed 1 -> {runs[0]}" in printed
    assert f"[2/2] start: retrieval_only seed 1 -> {evaluated[0]}" in printed
    for line in (f"[1/2] done: probe seed 1 -> {runs[0]} (", f"[2/2] done: retrieval_only seed 1 -> {evaluated[0]} ("):
        assert line in printed
    assert printed.count(" s, exit 0)") == 2

    rows = {r["variant"]: r for r in csv.DictReader((out / "study.csv").open())}
    assert rows["probe"]["uid"] == rows["retrieval_only"]["uid"] == runs[0].name
    assert 0 <= float(rows["probe"]["weighted_f1"]) <= 1 and math.isnan(float(rows["retrieval_only"]["weighted_f1"]))
    assert float(rows["retrieval_only"]["v2s_R@1"]) == pytest.approx(float(rows["probe"]["v2s_R@1"]))

    assert main(["ablate", str(study), "--out", str(out)]) == 0
    assert "2 already complete, 0 to run" in capsys.readouterr().out


def test_the_run_keeps_the_eval_settings_it_was_trained_under(tmp_path, registry):
    """Reordering the variants must not make the run's summary stand for another variant's evaluators."""
    study = write_study(tmp_path, EVAL_VARIANTS)
    out = tmp_path / "out"
    _, runs = plan(study, registry, out)
    assert [(r.variant, r.trains) for r in runs] == [("probe", True), ("retrieval_only", False)]
    retrieval = runs[1]
    assert retrieval.eval_dir == retrieval.run_dir / "eval" / eval_uid(retrieval.spec)
    # the run directory was started by the retrieval-only settings (e.g. an earlier version of the study)
    retrieval.run_dir.mkdir(parents=True)
    (retrieval.run_dir / "spec.yaml").write_text(dump_spec(retrieval.spec))
    _, runs = plan(study, registry, out)
    assert [(r.variant, r.trains) for r in runs] == [("probe", False), ("retrieval_only", True)]


def test_an_unfinished_run_no_variant_can_train_is_refused(tmp_path, registry):
    from detach_framework.errors import UserError

    study = write_study(tmp_path, {"probe": {}})
    _, (run,) = plan(study, registry, tmp_path / "out")
    other = load_spec(run.spec.model_dump(mode="json"), registry, [f"eval.evaluators={RETRIEVAL_ONLY}"])
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "spec.yaml").write_text(dump_spec(other))
    with pytest.raises(UserError, match="started under eval settings that no variant of the study has now"):
        plan(study, registry, tmp_path / "out")
    (run.run_dir / "summary.json").write_text("{}")  # finished: the variant just evaluates it
    _, (run,) = plan(study, registry, tmp_path / "out")
    assert not run.trains
