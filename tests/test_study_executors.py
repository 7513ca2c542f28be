"""`detach ablate --executor local|submitit`: when runs start, where they run and how their ends are collected.

No test trains: each run's command is replaced by a tiny shell script that writes the run's summary.json, so the
study's own planning, skipping and tables are exercised in a few seconds. The submitit tests use submitit's
LocalExecutor (jobs as local processes) and are skipped when submitit is not installed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_spec

from detach_framework.cli import main
from detach_framework.engine import executors, study
from detach_framework.engine.executors import LocalPool, SlurmSettings
from detach_framework.engine.study import run_study
from detach_framework.errors import UserError

SUMMARY = json.dumps({"metrics": {"weighted_f1": 0.5, "macro_map": 0.25}})


def write_study(tmp_path: Path, variants: dict, seeds=(1,)) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_spec()))
    spec = {"name": "mini", "base": "base.yaml", "seeds": list(seeds), "variants": variants}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))  # variant order matters
    return tmp_path / "study.yaml"


def lr_variants(*names: str) -> dict:
    """Independent variants (one uid each): a learning rate apiece."""
    return {name: {"stages.0.optimizer.lr": 10.0 ** -(index + 2)} for index, name in enumerate(names)}


def fake(command: list[str], before: str = "", code: int = 0) -> list[str]:
    """A shell stand-in for a `detach train/eval` command: runs `before`, writes a training's summary.json into
    its --run-dir, exits `code`."""
    steps = [before] if before else []
    if "--run-dir" in command and code == 0:
        run_dir = shlex.quote(command[command.index("--run-dir") + 1])
        steps.append(f"mkdir -p {run_dir} && echo {shlex.quote(SUMMARY)} > {run_dir}/summary.json")
    return ["sh", "-c", "; ".join([*steps, f"exit {code}"])]


def fake_commands(monkeypatch, behaviour: dict[str, dict]) -> None:
    """Replace each run's command by `fake(command, **behaviour[variant])` (default: succeed at once)."""
    real = study._command

    def command(run, out_dir, plugins):
        planned, stem = real(run, out_dir, plugins)
        return fake(planned, **behaviour.get(run.variant, {})), stem

    monkeypatch.setattr(study, "_command", command)


def precedes(lines: list[str], first: str, second: str) -> bool:
    """The line starting with `first` comes before the one starting with `second` (both present)."""
    index = {prefix: next(i for i, line in enumerate(lines) if line.startswith(prefix)) for prefix in (first, second)}
    return index[first] < index[second]


# -- the local pool ---------------------------------------------------------------------------------------------


def test_local_pool_starts_the_next_run_as_soon_as_any_job_ends(tmp_path, registry, monkeypatch):
    """With two slots, a quick second run ending frees a slot for the third while the first still runs: the first
    only ends once the third has started (it waits for the file the third writes; 30 s at most, then it fails)."""
    released = tmp_path / "third-started"
    wait = f"for i in $(seq 600); do [ -e {released} ] && break; sleep 0.05; done; [ -e {released} ] || exit 7"
    scripts = iter([wait, "true", f"touch {released}"])  # the runs in start order: slow, quick, third
    real_popen = subprocess.Popen

    def popen(command, **kwargs):
        return real_popen(fake(command, before=next(scripts)), **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    lines: list[str] = []
    study_file = write_study(tmp_path, lr_variants("slow", "quick", "third"))
    result = run_study(study_file, registry, tmp_path / "out", jobs=2, log=lines.append)
    assert precedes(lines, "[2/3] done: quick", "[3/3] start: third")
    assert precedes(lines, "[3/3] start: third", "[1/3] done: slow")
    assert len(result["rows"]) == 3


def test_local_pool_keeps_runs_that_wait_for_another_in_order(tmp_path, registry, monkeypatch):
    """A run reusing another's stage (@full) and an evaluation of its directory wait for it, even with a free
    slot; an independent run queued after them overtakes them."""
    variants = {
        "full": {},
        "reuse": {"stages.0.init_from": "@full"},
        **lr_variants("other"),
        "retrieval_only": {"eval.evaluators": [{"name": "retrieval"}]},
    }
    fake_commands(monkeypatch, {"full": {"before": "sleep 0.5"}})
    lines: list[str] = []
    run_study(write_study(tmp_path, variants), registry, tmp_path / "out", jobs=3, log=lines.append)
    starts = [line for line in lines if " start: " in line]
    assert [line.split(" seed")[0] for line in starts[:2]] == ["[1/4] start: full", "[2/4] start: other"]
    assert precedes(lines, "[1/4] done: full", "[3/4] start: reuse")
    assert precedes(lines, "[1/4] done: full", "[4/4] start: retrieval_only")
    assert sum(" done: " in line for line in lines) == 4


def test_local_pool_collects_failures_and_runs_the_rest(tmp_path, registry, monkeypatch):
    fake_commands(monkeypatch, {"bad": {"code": 3}})
    out = tmp_path / "out"
    lines: list[str] = []
    study_file = write_study(tmp_path, lr_variants("good", "bad", "also_good"))
    with pytest.raises(UserError, match=r"study mini: 1 run\(s\) failed: bad/seed 1 exit 3 \(see specs/\*\.log\)"):
        run_study(study_file, registry, out, jobs=2, log=lines.append)
    assert any(line.startswith("[2/3] failed: bad seed 1 -> ") and line.endswith(" s, exit 3)") for line in lines)
    assert len(list(out.glob("runs/*/summary.json"))) == 2 and (out / "study.csv").is_file()
    fake_commands(monkeypatch, {})
    lines.clear()
    run_study(study_file, registry, out, jobs=2, log=lines.append)
    assert lines[0] == "study mini: 3 runs, 2 already complete, 1 to run"


def test_local_pool_gives_each_job_the_least_busy_gpu(tmp_path):
    pool = LocalPool(3, gpus=["3", "5"])
    record = "echo ${CUDA_VISIBLE_DEVICES:-none} >"
    jobs = [pool.start(["sh", "-c", f"{record} {tmp_path / str(i)}"], tmp_path / f"{i}.log", "x") for i in range(2)]
    while any(job.poll() is None for job in jobs):
        time.sleep(0.05)
    third = pool.start(["sh", "-c", f"{record} {tmp_path / '2'}"], tmp_path / "2.log", "x")
    while third.poll() is None:
        time.sleep(0.05)
    assert [(tmp_path / str(i)).read_text().strip() for i in range(3)] == ["3", "5", "3"]
    assert [job.where for job in (*jobs, third)] == [" on GPU 3", " on GPU 5", " on GPU 3"]
    single = LocalPool(2, gpus=["0"]).start(["sh", "-c", f"{record} {tmp_path / 'one'}"], tmp_path / "o.log", "x")
    while single.poll() is None:
        time.sleep(0.05)
    assert single.where == "" and (tmp_path / "one").read_text().strip() == os.environ.get(
        "CUDA_VISIBLE_DEVICES", "none"
    )


def test_an_interrupted_study_stops_its_jobs(tmp_path, registry, monkeypatch):
    fake_commands(monkeypatch, {name: {"before": "exec sleep 60"} for name in ("a", "b")})
    monkeypatch.setattr(executors, "STOP_GRACE_S", 0.5)  # then SIGTERM
    started = []
    real_start = LocalPool.start
    monkeypatch.setattr(
        LocalPool, "start", lambda self, *args, **kw: started.append(real_start(self, *args, **kw)) or started[-1]
    )

    def log(line: str) -> None:
        if line.startswith("[2/2] start"):
            raise KeyboardInterrupt

    begun = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_study(write_study(tmp_path, lr_variants("a", "b")), registry, tmp_path / "out", jobs=2, log=log)
    assert time.monotonic() - begun < 30
    assert len(started) == 2 and all(job.process.returncode is not None for job in started)


# -- the command line -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--slurm-partition", "gpu"], "--slurm-partition applies only to --executor submitit"),
        (["--slurm-option", "account=lab"], "--slurm-option applies only to --executor submitit"),
        (["--executor", "submitit", "--slurm-time", "0"], "--slurm-time 0: expected a positive number"),
        (["--executor", "submitit", "--slurm-gpus", "-1"], "--slurm-gpus -1: expected 0 or more"),
        (["--executor", "submitit", "--slurm-option", "account"], "--slurm-option account: expected KEY=VALUE"),
    ],
)
def test_bad_executor_options_are_one_line_errors(tmp_path, capsys, arguments, message):
    study_file = write_study(tmp_path, lr_variants("a"))
    assert main(["ablate", str(study_file), "--out", str(tmp_path / "out"), *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"detach ablate: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_submitit_executor_without_submitit_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    study_file = write_study(tmp_path, lr_variants("a"))
    assert main(["ablate", str(study_file), "--out", str(tmp_path / "out"), "--executor", "submitit"]) == 2
    assert capsys.readouterr().err == (
        "detach ablate: error: --executor submitit needs the submitit package: pip install 'detach-framework[slurm]'\n"
    )


# -- submitit ---------------------------------------------------------------------------------------------------


@pytest.fixture
def submitit():
    return pytest.importorskip("submitit")


def test_submitit_runs_each_run_as_a_job_and_the_study_resumes(tmp_path, registry, monkeypatch, submitit):
    """Relative paths (the study run from its directory) and the per-run thread count reach the job's command;
    a failed job is collected like a failed local run, and the rerun starts only what is missing."""
    monkeypatch.chdir(tmp_path)
    threads = "echo $OMP_NUM_THREADS > threads.$$"
    fake_commands(monkeypatch, {"bad": {"code": 3}, "a": {"before": threads}})
    pool = executors.submitit_pool(Path("out/submitit"), SlurmSettings(cpus=3), slots=2, cluster="local")
    assert pool.executor.cluster == "local"  # submitit's LocalExecutor: each job a local process
    pool.poll_seconds = 0.1
    study_file = write_study(Path("."), lr_variants("a", "bad", "c"))
    lines: list[str] = []
    with pytest.raises(UserError, match=r"1 run\(s\) failed: bad/seed 1 exit 3"):
        run_study(study_file, registry, Path("out"), log=lines.append, executor=pool)
    assert all(" (job " in line for line in lines if " start: " in line)
    assert len(list(Path("out").glob("runs/*/summary.json"))) == 2
    assert [path.read_text() for path in Path(".").glob("threads.*")] == ["3\n"]
    fake_commands(monkeypatch, {})
    lines.clear()
    run_study(study_file, registry, Path("out"), log=lines.append, executor=pool)
    assert lines[0] == "study mini: 3 runs, 2 already complete, 1 to run"
    assert precedes(lines, "[1/1] start: bad", "[1/1] done: bad")


def test_slurm_settings_become_the_jobs_sbatch_parameters(tmp_path, monkeypatch, submitit):
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # as if srun were here
    settings = SlurmSettings(partition="gpu", time_min=90, cpus=8, gpus=1, options={"account": "lab"})
    pool = executors.submitit_pool(tmp_path, settings, slots=4)
    expected = {"partition": "gpu", "time": 90, "cpus_per_task": 8, "gpus_per_node": 1}
    assert {key: pool.executor.parameters[key] for key in expected} == expected
    assert pool.executor.parameters["additional_parameters"] == {"account": "lab"}
    assert executors.submitit_pool(tmp_path, SlurmSettings(), slots=1).executor.parameters["time"] == 1440


def test_submitit_executor_without_slurm_is_a_one_line_error(tmp_path, capsys, submitit):
    if shutil.which("srun"):
        pytest.skip("this machine has SLURM")
    study_file = write_study(tmp_path, lr_variants("a"))
    assert main(["ablate", str(study_file), "--out", str(tmp_path / "out"), "--executor", "submitit"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("detach ablate: error: --executor submitit: no SLURM on this machine") and err.count("\n") == 1
    )


def test_submitit_job_trains_the_run(tmp_path, registry, submitit):
    """The real command in a submitit job: `detach train` of the run, its output in specs/<uid>.log."""
    study_file = write_study(tmp_path, {"only": {"stages.0.epochs": 1}})
    out = tmp_path / "out"
    pool = executors.submitit_pool(out / "submitit", SlurmSettings(cpus=1), slots=1, cluster="local")
    pool.poll_seconds = 0.2
    result = run_study(study_file, registry, out, executor=pool, log=lambda line: None)
    assert [row["variant"] for row in result["rows"]] == ["only"]
    (log_file,) = out.glob("specs/*.log")
    assert (out / "runs" / log_file.stem / "summary.json").is_file() and "weighted_f1" in log_file.read_text()


def test_the_first_line_counts_runs_left_for_other_seeds_apart_from_complete_ones(tmp_path, registry, monkeypatch):
    fake_commands(monkeypatch, {})
    lines: list[str] = []
    study_file = write_study(tmp_path, lr_variants("a", "b"), seeds=(1, 2))
    run_study(study_file, registry, tmp_path / "out", seeds=[1], log=lines.append)
    assert lines[0] == "study mini: 4 runs, 0 already complete, 2 to run, 2 left for other seeds"
    lines.clear()
    run_study(study_file, registry, tmp_path / "out", seeds=[2], log=lines.append)
    assert lines[0] == "study mini: 4 runs, 2 already complete, 2 to run"
