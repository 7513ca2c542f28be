"""Whole-run wall time of this checkout against a baseline checkout, side by side in one run.

    .venv/bin/python benchmarks/speed_bench.py --baseline speed-baseline            # every case, one round
    .venv/bin/python benchmarks/speed_bench.py --baseline speed-baseline --only quickstart --rounds 3

`--baseline` is a git ref (checked out into a temporary worktree) or a directory holding another checkout.
Each case runs `python -m detach_framework train SPEC ...` in a fresh process for both sides, alternating
baseline and current within each round, each side with its own run directory and its own cache directory;
before the first round each side's caches are built (`detach cache build`, untimed), so the timed runs read a
warm frame cache, as a user's second run does. The baseline side imports its own code: a temporary folder
holds links to its `detach_framework/` and `plugins/` and the entry points of its pyproject, and comes first
on PYTHONPATH; the current side (the checkout this script is in) is imported the same way. Printed per case:
the median wall time of each side, their ratio, peak RSS, and whether the test metrics agree (the speed work
removes repeated work, so they should, to float rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    name: str
    spec: str
    overrides: list[str]
    target: float | None  # the highest acceptable current / baseline wall-time ratio


CASES = [
    Case("quickstart", "examples/quickstart.yaml", [], 0.6),
    Case("detach-benchmark", "examples/quickstart.yaml", ["data.dataset.preset=benchmark"], 0.5),
    Case("imu2clip-benchmark", "examples/imu2clip_quickstart.yaml", ["data.dataset.preset=benchmark"], 0.7),
]
SMOKE_OVERRIDES = [  # `--smoke`: the smallest sizes, seconds per run (the default test suite runs it)
    "data.dataset.preset=tiny",
    "data.frames=2",
    "data.frame_size=16",
    "data.sensor_length=16",
    "data.batch_size=16",
]


@dataclass
class Side:
    label: str
    checkout: Path
    pythonpath: Path | None  # a folder that makes the checkout importable first; None: as installed
    walls: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def checkout_site(checkout: Path, into: Path) -> Path:
    """A folder that makes `checkout`'s code importable ahead of the installed one: links to its packages and
    a dist-info with its entry points (the plugins are found through them)."""
    site = into / "site"
    site.mkdir(parents=True)
    (site / "detach_framework").symlink_to(checkout / "detach_framework")
    (site / "detach_plugins").symlink_to(checkout / "plugins")
    project = tomllib.loads((checkout / "pyproject.toml").read_text())["project"]
    info = site / f"detach_framework-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: detach-framework\nVersion: {project['version']}\n")
    groups = project.get("entry-points", {})
    text = "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
    (info / "entry_points.txt").write_text(text)
    return site


def resolve_baseline(value: str, tmp: Path) -> Path:
    if Path(value).is_dir():
        return Path(value).resolve()
    worktree = tmp / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), value], check=True)
    return worktree


def run_detach(
    side: Side, args: list[str], log: Path, *, check: bool = True, program: list[str] | None = None
) -> tuple[float, float]:
    """Run `detach ARGS` (or `python PROGRAM ARGS`) for one side in a fresh process: (wall seconds, peak RSS in
    MiB of that process)."""
    env = dict(os.environ)
    if side.pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(side.pythonpath), env.get("PYTHONPATH", "")) if p)
    started = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(
            [sys.executable, *(program or ["-m", "detach_framework"]), *args],
            cwd=side.checkout,
            env=env,
            stdout=out,
            stderr=out,
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if check and child.returncode != 0:
        raise SystemExit(f"{side.label}: detach {' '.join(args)} exited with {child.returncode}; see {log}")
    return wall, usage.ru_maxrss / 1024


PROFILER = Path(__file__).resolve().parent / "profile_run.py"


def bench_case(
    case: Case, sides: list[Side], rounds: int, tmp: Path, extra: list[str], profile_dir: Path | None = None
) -> dict:
    """Both sides of one case; with `profile_dir`, each run goes through profile_run.py (both sides alike, so the
    hooks' small overhead cancels in the ratio) and its table is written there."""
    overrides = [*case.overrides, *extra]
    spec = str(ROOT / case.spec)
    for side in sides:  # warm caches, untimed
        side.walls, side.rss_mb = [], []
        cache = tmp / f"cache-{side.label}-{case.name}"
        # (a spec with nothing to cache exits 2 here: then there is nothing to warm)
        run_detach(side, ["cache", "build", spec, *overrides, f"cache.dir={cache}"], tmp / "build.log", check=False)
    for r in range(rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            run = tmp / f"run-{side.label}-{case.name}-{r}"
            cache = tmp / f"cache-{side.label}-{case.name}"
            log = tmp / f"{side.label}-{case.name}-{r}.log"
            if profile_dir is None:
                argv = ["train", spec, *overrides, f"cache.dir={cache}", "--run-dir", str(run)]
                wall, rss = run_detach(side, argv, log)
            else:
                out = profile_dir / f"{case.name}-{side.label}-{r}"
                argv = [spec, *overrides, f"cache.dir={cache}", "--run-dir", str(run), "--json", f"{out}.json"]
                wall, rss = run_detach(side, argv, log, program=[str(PROFILER)])
                shutil.copy(log, f"{out}.txt")
            side.walls.append(wall)
            side.rss_mb.append(rss)
            side.metrics = json.loads((run / "summary.json").read_text())["metrics"]
            shutil.rmtree(run)
    base, cur = sides
    ratio = statistics.median(cur.walls) / statistics.median(base.walls)
    drift = max((abs(cur.metrics[k] - base.metrics[k]) for k in base.metrics if k in cur.metrics), default=0.0)
    return {
        "case": case.name,
        "command": f"detach train {case.spec} {' '.join(overrides)}".strip(),
        "baseline_s": [round(w, 2) for w in base.walls],
        "current_s": [round(w, 2) for w in cur.walls],
        "baseline_peak_rss_mb": round(max(base.rss_mb)),
        "current_peak_rss_mb": round(max(cur.rss_mb)),
        "ratio": round(ratio, 3),
        "target": case.target,
        "met": None if case.target is None else ratio <= case.target,
        "max_metric_difference": round(drift, 5),
        "baseline_metrics": base.metrics,
        "current_metrics": cur.metrics,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git ref or checkout directory to compare against")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", help="comma-separated case names: " + ", ".join(c.name for c in CASES))
    parser.add_argument("--smoke", action="store_true", help="tiny data, for the test suite")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="run each side under profile_run.py, tables to DIR")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.only or c.name in args.only.split(",")]
    extra = SMOKE_OVERRIDES if args.smoke else []
    with tempfile.TemporaryDirectory(prefix="detach-speed-") as name:
        tmp = Path(name)
        checkout = resolve_baseline(args.baseline, tmp)
        try:
            # Each side imports its own checkout, so the script can run from a clone of a commit while the
            # installed (editable) tree goes on changing.
            sides = [
                Side("baseline", checkout, checkout_site(checkout, tmp / "baseline-site")),
                Side("current", ROOT, checkout_site(ROOT, tmp / "current-site")),
            ]
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
            results = [bench_case(case, sides, args.rounds, tmp, extra, args.profile) for case in cases]
        finally:
            if checkout == tmp / "baseline":
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)], check=False)
    for r in results:
        met = "met" if r["met"] else "NOT met"
        verdict = "" if r["met"] is None else f" (target <= {r['target']:.2f}x: {met})"
        print(
            f"{r['case']}: baseline {statistics.median(r['baseline_s']):.1f} s, current "
            f"{statistics.median(r['current_s']):.1f} s, ratio {r['ratio']:.2f}x{verdict}; peak RSS "
            f"{r['baseline_peak_rss_mb']} / {r['current_peak_rss_mb']} MiB; "
            f"largest test-metric difference {r['max_metric_difference']:.4f}"
        )
        print(f"  {r['command']}  (runs: baseline {r['baseline_s']}, current {r['current_s']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
