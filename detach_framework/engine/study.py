"""Ablation studies: a base spec, named variants (override sets) and seeds -> runs, study.csv, study_paired.csv,
study.md, a plot.

Each run lives in `<study dir>/runs/<uid>/` (or the study's `runs_dir`, which several studies may share); a run
whose summary.json exists is complete and skipped, an interrupted one is resumed. Each run is one
`python -m detach_framework train` command started by an executor (engine/executors.py: `jobs` local
subprocesses at a time, or SLURM jobs through submitit); a run starts as soon as a slot is free and no run it
waits for is unfinished. The uid leaves the eval section out, so variants differing only in eval.* share one
trained run: one of them trains it, the others are `detach eval` commands writing `<run>/eval/<eval-uid>/`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from detach_framework.atomic import atomic_write_text
from detach_framework.engine.executors import Executor, JobHandle, LocalPool, Outcome
from detach_framework.engine.rundir import SPEC_FILE, SUMMARY_FILE, RunDirectory
from detach_framework.errors import UserError
from detach_framework.registry import Registry
from detach_framework.spec import Experiment, dump_spec, eval_uid, first_error_line, load_spec, print_note, read_yaml

STUDY_SCHEMA_FILE = "study.schema.json"


class StudySpec(BaseModel):
    """A study file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Study name (its directory).")
    base: str = Field(description="Base spec, relative to the study file.")
    seeds: list[int] = Field(default_factory=lambda: [42], min_length=1, description="Seeds of every variant.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Overrides applied to every variant.")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Variant name -> its overrides (a `base` key replaces the study's base spec). The first variant "
        "is the reference of the paired differences.",
    )
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        default_factory=dict,
        description="Override key -> the values to try: every combination (the cartesian product) is a variant, "
        "named by its key=value pairs; crossed with `variants` when both are given (variant first).",
    )
    metrics: list[str] = Field(
        default_factory=lambda: ["weighted_f1", "macro_map"], min_length=1, description="Columns of the table."
    )
    runs_dir: str = Field(
        "runs",
        description="Where the run directories live, relative to the study's output directory. Studies naming "
        "the same directory share every run whose spec uid they have in common: it trains once and each study "
        "evaluates it under its own eval section.",
    )

    @model_validator(mode="after")
    def _some_variant(self) -> StudySpec:
        if not self.variants and not self.grid:
            raise ValueError("a study needs variants, a grid, or both")
        names = [name for name, _ in self._variant_list()]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"grid: several combinations are named {repeated[0]!r}; give distinct values")
        return self

    def all_variants(self) -> dict[str, dict[str, Any]]:
        """The study's variants in order: `variants`, each crossed with every point of `grid` (or the grid alone;
        a grid value wins over a variant's own value of the same key)."""
        return dict(self._variant_list())

    def _variant_list(self) -> list[tuple[str, dict[str, Any]]]:
        if not self.grid:
            return list(self.variants.items())
        labels = _grid_labels(list(self.grid))
        points = [dict(zip(self.grid, values, strict=True)) for values in product(*self.grid.values())]
        named = []
        for variant, values in (self.variants or {"": {}}).items():
            for point in points:
                label = ",".join(f"{labels[key]}={_grid_value(value)}" for key, value in point.items())
                named.append((f"{variant},{label}" if variant else label, {**values, **point}))
        return named


def _grid_labels(keys: list[str]) -> dict[str, str]:
    """Each grid key's shortest dotted suffix that no other key ends with (`stages.0.optimizer.lr` -> `lr`)."""
    labels = {}
    for key in keys:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            label = ".".join(parts[-size:])
            if not any(other != key and (other == label or other.endswith("." + label)) for other in keys):
                break
        labels[key] = label
    return labels


def _grid_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def study_json_schema() -> dict[str, Any]:
    schema = StudySpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "detach-framework study file"
    schema["anyOf"] = [{"required": ["variants"]}, {"required": ["grid"]}]
    return schema


@dataclass(frozen=True)
class PlannedRun:
    """One variant x seed. `eval_dir` is set for a variant that only evaluates a run another variant trains
    (same uid, other eval settings): its summary is `eval_dir/summary.json`, not the run's."""

    variant: str
    seed: int
    spec: Experiment
    run_dir: Path
    eval_dir: Path | None = None

    @property
    def trains(self) -> bool:
        return self.eval_dir is None

    @property
    def summary_file(self) -> Path:
        return (self.eval_dir or self.run_dir) / SUMMARY_FILE

    @property
    def complete(self) -> bool:
        return self.summary_file.is_file()

    @property
    def start_flag(self) -> str | None:
        """How `detach train` must treat the run directory: continue a checkpointed run, or replace one that
        started but never checkpointed (nothing to keep)."""
        if (self.run_dir / "checkpoints" / "last.pt").is_file():
            return "--resume"
        if self.run_dir.is_dir() and any(self.run_dir.iterdir()):
            return "--overwrite"
        return None


def as_overrides(values: dict[str, Any]) -> list[str]:
    """{"a.b": 1} -> ["a.b=1"]; JSON is valid YAML, so every value round-trips through the override parser."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def load_study(path: str | Path) -> StudySpec:
    path = Path(path)
    data = read_yaml(path)
    try:
        return StudySpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{path}: {first_error_line(exc)}") from None


def plan(
    study_file: str | Path, registry: Registry, out_dir: Path, seeds: list[int] | None = None
) -> tuple[StudySpec, list[PlannedRun]]:
    """Validate every variant x seed up front, so a typo fails before hours of training.

    An override value "@other" in a variant names the run directory of variant `other` with the same seed
    (e.g. `stages.0.init_from: "@full"` reuses its stage 1); that variant must come earlier in the file.
    A variant's `base` key replaces the study's base spec (to compare methods built from different specs).
    Variants differing only in eval.* share a run directory (see `_share_trained_runs`).
    """
    study_file = Path(study_file)
    study = load_study(study_file)
    base = (study_file.parent / study.base).resolve()
    # Normalised, not resolved: "@variant" references put this path into specs (and so into their uids),
    # which must not change with the default layout, and must agree between studies sharing the directory.
    runs_dir = Path(os.path.normpath(out_dir / study.runs_dir))
    runs: list[PlannedRun] = []
    noted: dict[str, None] = {}  # a variant's dropped keys are the same for every seed: say so once
    for variant, values in study.all_variants().items():
        values = dict(values)
        spec_file = (study_file.parent / values.pop("base")).resolve() if "base" in values else base
        for seed in seeds if seeds is not None else study.seeds:
            resolved = {key: _resolve_reference(study_file, variant, seed, v, runs) for key, v in values.items()}
            overrides = [*as_overrides(study.overrides), *as_overrides(resolved), f"seed={seed}"]
            notes: list[str] = []
            try:
                spec = load_spec(spec_file, registry, overrides, note=notes.append)
            except UserError as exc:
                raise UserError(f"{study_file}: variant '{variant}' (seed {seed}): {exc}") from None
            noted.update(dict.fromkeys(f"variant '{variant}': {line}" for line in notes))
            runs.append(PlannedRun(variant, seed, spec, runs_dir / spec.uid))
    for line in noted:
        print_note(line)
    return study, _share_trained_runs(runs, registry)


def _share_trained_runs(runs: list[PlannedRun], registry: Registry) -> list[PlannedRun]:
    """Of the variants sharing a run directory, those evaluated as it was trained (its spec.yaml's eval section,
    else the first such variant's) read its summary.json; every other one evaluates it into eval/<eval-uid>/."""
    trained: dict[Path, str] = {}
    shared = []
    for run in runs:
        if run.run_dir not in trained:
            trained[run.run_dir] = _started_eval_uid(run.run_dir, registry) or eval_uid(run.spec)
        mine = eval_uid(run.spec)
        if mine != trained[run.run_dir]:
            run = replace(run, eval_dir=RunDirectory(run.run_dir).eval_dir(mine))
        shared.append(run)
    for run_dir in trained:
        if not (run_dir / SUMMARY_FILE).is_file() and all(r.run_dir != run_dir or not r.trains for r in shared):
            raise UserError(
                f"{run_dir} was started under eval settings that no variant of the study has now and is not "
                f"finished: finish it (detach train {run_dir / SPEC_FILE} --run-dir {run_dir} --resume) or delete it"
            )
    return shared


def _started_eval_uid(run_dir: Path, registry: Registry) -> str | None:
    """The eval-uid a started run directory was trained under; None when it has no (readable) spec.yaml."""
    if not (run_dir / SPEC_FILE).is_file():
        return None
    try:
        return eval_uid(load_spec(run_dir / SPEC_FILE, registry, note=None))
    except UserError:
        return None  # a spec the installed plugins refuse: training it again would say why


def pending_runs(runs: list[PlannedRun], seeds: list[int] | None) -> list[PlannedRun]:
    """The runs to start now: not complete, and among `seeds` when given."""
    return [r for r in runs if not r.complete and (seeds is None or r.seed in seeds)]


def dry_run(study_file: str | Path, registry: Registry, out_dir: Path, seeds: list[int] | None = None) -> list[str]:
    """What `run_study` would do, one line per run: start (fresh, resumed or replacing a partial directory),
    evaluate only (a variant sharing another's trained run), or skip (complete, or a seed left out by `seeds`).
    Nothing is written."""
    study, runs = plan(study_file, registry, out_dir)
    pending = pending_runs(runs, seeds)
    starting = {run.summary_file for run in pending}
    lines = [f"study {study.name}: {len(runs)} runs, {len(pending)} to run, {len(runs) - len(pending)} skipped"]
    for run in runs:
        if run.complete:
            action = "skip (complete)"
        elif run.summary_file not in starting:
            action = "skip (seed not in --seeds)"
        elif not run.trains:
            action = "evaluate only (reuses the trained run)"
        else:
            action = {"--resume": "run (resume)", "--overwrite": "run (replace partial)"}.get(run.start_flag, "run")
        lines.append(f"{action}: {run.variant} seed {run.seed} -> {run.eval_dir or run.run_dir}")
    return lines


def _resolve_reference(study_file: Path, variant: str, seed: int, value: Any, runs: list[PlannedRun]) -> Any:
    if not (isinstance(value, str) and value.startswith("@")):
        return value
    for run in runs:
        if run.variant == value[1:] and run.seed == seed:
            return str(run.run_dir)
    raise UserError(f"{study_file}: variant '{variant}': {value} must name an earlier variant of the study")


@dataclass
class _Job:
    """A started run: `detach train` of a trained run, or `detach eval` of an evaluation-only variant."""

    run: PlannedRun
    handle: JobHandle
    label: str  # "[3/8]": its place in the start order
    started: float


def _waits_for(run: PlannedRun, other: PlannedRun) -> bool:
    """`run` may not start while `other` runs or is queued before it: it writes the same run directory (one
    writer at a time), or reuses that run's stage (init_from)."""
    needs = {stage.init_from for stage in run.spec.stages if stage.init_from}
    return other.run_dir == run.run_dir or str(other.run_dir) in needs


def run_study(
    study_file: str | Path,
    registry: Registry,
    out_dir: Path,
    *,
    jobs: int = 1,
    seeds: list[int] | None = None,
    plugins: list[str] | None = None,
    log: Callable[[str], None] = print,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Run the study's pending runs on `executor` (default: `jobs` local subprocesses at a time), then write
    its tables from every complete run."""
    study, runs = plan(study_file, registry, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # `seeds` restricts what runs now; the tables always gather every complete run of the study.
    pending = pending_runs(runs, seeds)
    complete = sum(run.complete for run in runs)
    later = len(runs) - complete - len(pending)  # neither complete nor among `seeds`
    log(
        f"study {study.name}: {len(runs)} runs, {complete} already complete, {len(pending)} to run"
        + (f", {later} left for other seeds" if later else "")
    )
    # Trainings before evaluations (an evaluation-only variant needs its trained run); identical variants once.
    starts: dict[Path, PlannedRun] = {}
    for run in sorted(pending, key=lambda r: not r.trains):  # a stable sort: plan order otherwise
        starts.setdefault(run.summary_file, run)
    failures = _run_queue(list(starts.values()), executor or LocalPool(jobs), out_dir, plugins or [], log)
    result = collect(study, runs, out_dir)
    if failures:
        raise UserError(f"study {study.name}: {len(failures)} run(s) failed: {'; '.join(failures)} (see specs/*.log)")
    return result


def _run_queue(
    queue: list[PlannedRun], executor: Executor, out_dir: Path, plugins: list[str], log: Callable[[str], None]
) -> list[str]:
    """Start each run as soon as a slot is free and nothing it waits for (`_waits_for`) runs or is queued before
    it, so a later independent run may overtake a waiting one; return a failure line per failed run."""
    waiting, active, failures = list(queue), [], []
    started = 0
    try:
        while waiting or active:
            ended = [(job, outcome) for job in active if (outcome := job.handle.poll()) is not None]
            for job, outcome in ended:
                active.remove(job)
                failures += _ended(job, outcome, log)
            progressed = bool(ended)
            while len(active) < executor.slots and (run := _next_ready(waiting, active)) is not None:
                waiting.remove(run)
                started += 1
                label, target = f"[{started}/{len(queue)}]", run.eval_dir or run.run_dir
                progressed = True
                if not run.trains and not (run.run_dir / SUMMARY_FILE).is_file():
                    log(f"{label} skipped: {run.variant} seed {run.seed} -> {target}: its trained run did not finish")
                    failures.append(f"{run.variant}/seed {run.seed} not evaluated (its training failed)")
                    continue
                command, stem = _command(run, out_dir, plugins)
                handle = executor.start(command, out_dir / "specs" / f"{stem}.log", name=stem)
                active.append(_Job(run, handle, label, time.monotonic()))
                log(f"{label} start: {run.variant} seed {run.seed} -> {target}{handle.where}")
            if not progressed:
                time.sleep(executor.poll_seconds)
    finally:  # interrupted (or a start failed): stop what still runs, so no orphan keeps writing a run directory
        if active:
            executor.stop([job.handle for job in active])
    return failures


def _next_ready(waiting: list[PlannedRun], active: list[_Job]) -> PlannedRun | None:
    """The first waiting run that waits for no running job and no run queued before it."""
    for index, run in enumerate(waiting):
        if not any(_waits_for(run, job.run) for job in active) and not any(
            _waits_for(run, earlier) for earlier in waiting[:index]
        ):
            return run
    return None


def _command(run: PlannedRun, out_dir: Path, plugins: list[str]) -> tuple[list[str], str]:
    """The `detach train` (with the resolved spec written to specs/<uid>.yaml) or `detach eval` command of a run,
    and the stem of its files in specs/."""
    (out_dir / "specs").mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "detach_framework"]
    for module in plugins:
        command += ["--plugin", module]
    if run.trains:
        stem = run.spec.uid
        spec_file = out_dir / "specs" / f"{stem}.yaml"
        atomic_write_text(spec_file, dump_spec(run.spec))
        command += ["train", str(spec_file), "--run-dir", str(run.run_dir)]
        if run.start_flag is not None:
            command.append(run.start_flag)
    else:
        stem = f"{run.spec.uid}.eval-{eval_uid(run.spec)}"
        command += ["eval", str(run.run_dir), f"eval={json.dumps(run.spec.eval.model_dump(mode='json'))}"]
    return command, stem


def _ended(job: _Job, outcome: Outcome, log: Callable[[str], None]) -> list[str]:
    """Say how a job ended; return a failure line if it failed."""
    run, seconds = job.run, time.monotonic() - job.started
    status = "done" if outcome.ok else "failed"
    log(
        f"{job.label} {status}: {run.variant} seed {run.seed} -> {run.eval_dir or run.run_dir} "
        f"({seconds:.1f} s, {outcome.detail})"
    )
    return [] if outcome.ok else [f"{run.variant}/seed {run.seed} {outcome.detail}"]


def collect(study: StudySpec, runs: list[PlannedRun], out_dir: Path) -> dict[str, Any]:
    """Gather every complete run's metrics and write the study's tables and plot."""
    return write_outputs(study, completed_rows(study, runs), out_dir)


def completed_rows(study: StudySpec, runs: list[PlannedRun]) -> list[dict[str, Any]]:
    """One row per complete run: variant, seed, uid and the study's metrics (NaN where a summary lacks one)."""
    rows = []
    for run in runs:
        if not run.complete:
            continue
        summary = json.loads(run.summary_file.read_text())
        rows.append(
            {
                "variant": run.variant,
                "seed": run.seed,
                "uid": run.spec.uid,
                **{m: summary["metrics"].get(m, math.nan) for m in study.metrics},
            }
        )
    return rows


def write_outputs(study: StudySpec, rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    """Write study.csv (one row per run), study_paired.csv (each variant minus the first, paired by seed),
    study.md (mean +/- std and the paired differences per variant) and study.png."""
    variants = list(study.all_variants())
    atomic_write_text(out_dir / "study.csv", _csv_text(["variant", "seed", "uid", *study.metrics], rows))
    table = aggregate(rows, variants, study.metrics)
    paired = paired_comparisons(rows, variants, study.metrics)
    atomic_write_text(out_dir / "study_paired.csv", _csv_text(PAIRED_COLUMNS, [p.csv_row() for p in paired]))
    atomic_write_text(out_dir / "study.md", markdown_table(study.name, table, study.metrics, paired))
    plot_study(table, study.metrics, out_dir / "study.png")
    return {"rows": rows, "table": table, "paired": paired}


def _csv_text(fieldnames: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def aggregate(rows: list[dict[str, Any]], variants: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """Per variant: n, and mean / sample std of each metric over its seeds."""
    table = []
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        entry: dict[str, Any] = {"variant": variant, "n": len(mine)}
        for metric in metrics:
            values = [float(r[metric]) for r in mine if not math.isnan(float(r[metric]))]
            mean = sum(values) / len(values) if values else math.nan
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            entry[metric] = (mean, std)
        table.append(entry)
    return table


@dataclass(frozen=True)
class PairedDifference:
    """One metric of one variant minus the study's reference variant, over the seeds where both finished."""

    variant: str
    reference: str
    metric: str
    seeds: tuple[Any, ...]
    differences: tuple[float, ...]
    mean: float  # NaN when no seed is shared
    low: float | None  # the 95% paired t interval; None below 2 seeds, where it does not exist
    high: float | None

    @property
    def n(self) -> int:
        return len(self.differences)

    def csv_row(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "reference": self.reference,
            "metric": self.metric,
            "n": self.n,
            "mean_difference": self.mean if self.n else None,
            "ci95_low": self.low,
            "ci95_high": self.high,
            "seeds": " ".join(str(seed) for seed in self.seeds),
            "differences": " ".join(repr(d) for d in self.differences),
        }


PAIRED_COLUMNS = "variant reference metric n mean_difference ci95_low ci95_high seeds differences".split()


def paired_differences(rows: list[dict[str, Any]], reference: str, variant: str, metric: str) -> dict[Any, float]:
    """seed -> variant's metric minus reference's, for the seeds where both have a finite value (in the
    reference's seed order)."""

    def by_seed(name: str) -> dict[Any, float]:
        values = {r["seed"]: float(r[metric]) for r in rows if r["variant"] == name}
        return {seed: value for seed, value in values.items() if math.isfinite(value)}

    mine = by_seed(variant)
    return {seed: mine[seed] - value for seed, value in by_seed(reference).items() if seed in mine}


def mean_t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of a Student t interval for the mean; (mean, None, None) for one value, since a
    sample standard deviation needs two; (NaN, None, None) for none."""
    n = len(values)
    if n == 0:
        return math.nan, None, None
    mean = sum(values) / n
    if n == 1:
        return mean, None, None
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_comparisons(rows: list[dict[str, Any]], variants: list[str], metrics: list[str]) -> list[PairedDifference]:
    """Every variant after the first, per metric, against the first (the study's reference row)."""
    if not variants:
        return []
    reference = variants[0]
    comparisons = []
    for variant in variants[1:]:
        for metric in metrics:
            differences = paired_differences(rows, reference, variant, metric)
            mean, low, high = mean_t_interval(list(differences.values()))
            comparisons.append(
                PairedDifference(
                    variant, reference, metric, tuple(differences), tuple(differences.values()), mean, low, high
                )
            )
    return comparisons


def format_difference(difference: PairedDifference) -> str:
    """A table cell: `+0.031 [-0.010, +0.072], n=3`; `+0.031, n=1 (no interval)` for one shared seed; `-` for none."""
    if difference.n == 0:
        return "-"
    if difference.low is None or difference.high is None:
        return f"{difference.mean:+.3f}, n=1 (no interval)"
    return f"{difference.mean:+.3f} [{difference.low:+.3f}, {difference.high:+.3f}], n={difference.n}"


def markdown_table(
    name: str, table: list[dict[str, Any]], metrics: list[str], paired: list[PairedDifference] | None = None
) -> str:
    """Mean +/- std per variant; with `paired`, one more column per metric: the mean paired difference against
    the reference row with its 95% t interval."""
    header = ["variant", "n", *metrics]
    by_cell = {(p.variant, p.metric): p for p in paired or []}
    reference = paired[0].reference if paired else None
    if reference is not None:
        header += [f"Δ{m} vs {reference} (95% CI)" for m in metrics]
    lines = [f"### {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in table:
        cells = [f"{entry[m][0]:.3f} ± {entry[m][1]:.3f}" if not math.isnan(entry[m][0]) else "-" for m in metrics]
        if reference is not None:
            for metric in metrics:
                is_reference = entry["variant"] == reference
                cells.append("(reference)" if is_reference else format_difference(by_cell[entry["variant"], metric]))
        lines.append(f"| {entry['variant']} | {entry['n']} | " + " | ".join(cells) + " |")
    if reference is not None:
        lines += [
            "",
            f"Δ: mean over seeds of (variant - {reference}), paired by seed over the seeds where both runs finished, "
            "with the 95% paired t interval (none for n=1); an interval that contains 0 is within seed noise. "
            "Per-seed differences: study_paired.csv.",
        ]
    return "\n".join(lines) + "\n"


def plot_study(table: list[dict[str, Any]], metrics: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from detach_framework.evaluation.plots import save_figure_atomic

    x = np.arange(len(table))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(table) + 2), 3.5))
    for i, metric in enumerate(metrics):
        means = [e[metric][0] for e in table]
        stds = [e[metric][1] for e in table]
        ax.bar(x + i * width - 0.4 + width / 2, means, width, yerr=stds, capsize=3, label=metric)
    ax.set_xticks(x, [e["variant"] for e in table], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
