"""Every script in benchmarks/ runs at its smallest sizes, one round: a change that breaks a benchmark fails here.

The numbers they print are not checked (toy sizes measure nothing); that each part ran and printed its rows is.
The two longest (cache_bench builds two stores, speed_bench trains the quickstart twice) are marked slow, so the
default suite stays within its time: `pytest -m slow tests/test_benchmarks.py` runs them.
Scripts that start processes of their own (speed_bench, gpu_check) and profile_run (it patches torch and the
trainer for good) run as subprocesses, the others in this process. Every process pays seconds of imports
(torch, timm, the plugins), so the subprocesses start together, two at a time, when the first test of this
file runs, and overlap with the in-process tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# One intra-op thread per process: the runs overlap on the CPU cores instead of oversubscribing them.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.usefixtures("subprocess_runs")  # the first test of the file starts them


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up while it executes)
    spec.loader.exec_module(module)
    return module


def subprocess_commands(tmp: Path) -> dict[str, list[str]]:
    smoke_overrides = load("speed_bench").SMOKE_OVERRIDES
    return {
        # the repository itself as the baseline: both sides run this code, no git worktree is needed
        "speed_bench": ["speed_bench.py", "--baseline", str(ROOT), "--smoke", "--only", "quickstart"],
        "gpu_check": ["gpu_check.py", "--device", "cpu", "--smoke", "--out", str(tmp / "gpu_check.json")],
        "profile_run": [
            "profile_run.py",
            str(ROOT / "examples" / "quickstart.yaml"),
            *smoke_overrides,
            f"cache.dir={tmp / 'cache'}",
            "--json",
            str(tmp / "profile.json"),
        ],
    }


def run_script(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(BENCHMARKS / argv[0]), *argv[1:]]
    return subprocess.run(command, cwd=cwd, env=ONE_THREAD, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def subprocess_runs(request, tmp_path_factory) -> dict[str, tuple[Future, Path]]:
    """The selected subprocess smokes, started at once; each test waits for its own."""
    selected = {item.name for item in request.session.items}
    pool = ThreadPoolExecutor(max_workers=2)
    runs = {}
    for name in ("speed_bench", "gpu_check", "profile_run"):  # longest first
        if f"test_{name}_smoke" in selected:
            tmp = tmp_path_factory.mktemp(name)
            runs[name] = (pool.submit(run_script, subprocess_commands(tmp)[name], tmp), tmp)
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


def finished(runs: dict[str, tuple[Future, Path]], name: str) -> tuple[str, Path]:
    future, tmp = runs[name]
    result = future.result()
    tail = f"{result.stdout[-2000:]}{result.stderr[-4000:]}"
    assert result.returncode == 0, f"{name} exited with {result.returncode}:\n{tail}"
    return result.stdout, tmp


# -- in this process ---------------------------------------------------------------------------------------


def test_calibrate_synthetic_smoke(capsys):
    calibrate = load("calibrate_synthetic")
    argv = ["--preset", "tiny", "--seeds", "0", "--epochs", "1", "--sensor-length", "16"]
    code = calibrate.main([*argv, "--threads", str(torch.get_num_threads())])
    out = capsys.readouterr().out
    assert code in (0, 1)  # the tiny preset is not calibrated: its targets may fail, the script must not
    assert re.search(r"^\s+0\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M), out  # seed 0: both controls scored
    assert re.search(r"^overall: (PASS|FAIL); wall time", out, re.M), out


def test_k_estimation_smoke(capsys):
    assert load("k_estimation").main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+7\s+0\s+7\s+\d+\s+(yes|no)\s+[\d.]+$", out, re.M), out  # the tiny kitchen's row
    assert re.search(r"^right: [01]/1$", out, re.M), out


@pytest.mark.slow
def test_cache_bench_smoke(capsys):
    cache_bench = load("cache_bench")
    with torch.random.fork_rng():  # it seeds torch: leave the suite's RNG as it was
        assert cache_bench.main(["--smoke", "--threads", str(torch.get_num_threads())]) == 0
    out = capsys.readouterr().out
    for row in ("build", "epoch", "read min", "read med", "loader", "step", "rss"):
        assert re.search(rf"^{row}\s+\S.*", out, re.M), f"no '{row}' row in:\n{out}"
    assert len(re.findall(r"^read min .* ratio +[\d.]+x", out, re.M)) == 4  # two stores, warm and first read
    assert re.search(r"^step .* ms/step .* ratio +[\d.]+x", out, re.M), out


# -- subprocesses --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_speed_bench_smoke(subprocess_runs):
    out, _ = finished(subprocess_runs, "speed_bench")
    # the same code on both sides: the same test metrics
    assert re.search(
        r"^quickstart: baseline [\d.]+ s, current [\d.]+ s, ratio [\d.]+x.* difference 0\.0000$", out, re.M
    ), out


def test_gpu_check_smoke(subprocess_runs):
    _, tmp = finished(subprocess_runs, "gpu_check")
    report = json.loads((tmp / "gpu_check.json").read_text())
    assert report["cuda_path"]["returncode"] == 0, report["cuda_path"]["stderr_tail"]
    assert report["cuda_path"]["metrics"]
    (step,) = report["steps"]
    assert "error" not in step and {"detach_stage1_joint_ms", "detach_stage2_ms", "imu2clip_ms"} <= set(step)
    assert [row["workers"] for row in report["data"]] == [0] and report["data"][0]["windows_per_s"] > 0


def test_profile_run_smoke(subprocess_runs):
    out, tmp = finished(subprocess_runs, "profile_run")
    assert "| where | seconds | share |" in out
    result = json.loads((tmp / "profile.json").read_text())
    rows = result["rows"]
    assert any(name.startswith("train: forward video_backbone") for name in rows), rows
    assert any(name.startswith("evaluation: ") for name in rows), rows
    assert abs(sum(rows.values()) - result["wall_s"]) < 1e-6 * max(result["wall_s"], 1)  # shares add up
    assert result["metrics"]
