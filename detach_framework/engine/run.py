"""Train a spec into a run directory, then evaluate it: what `detach train` and `detach_framework.api.train` do."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detach_framework.data.transforms import save_preprocessing
from detach_framework.engine import distributed, evaluate
from detach_framework.engine.precision import check_precision
from detach_framework.engine.rundir import RunDirectory
from detach_framework.engine.session import Session, resolve_device
from detach_framework.engine.threads import configure_threads
from detach_framework.engine.trainer import Trainer, check_tensorboard
from detach_framework.errors import UserError
from detach_framework.plugins import PluginHost
from detach_framework.spec import Experiment, dump_spec


@dataclass
class RunResult:
    """A finished run: its directory, its spec and summary.json's content (None on ranks > 0 under torchrun)."""

    run_dir: Path
    spec: Experiment
    summary: dict[str, Any] | None


def default_run_dir(spec: Experiment) -> Path:
    return Path("runs") / spec.name / spec.uid


def train_and_evaluate(
    spec: Experiment,
    host: PluginHost,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> RunResult:
    """Prepare (and lock) the run directory, train every stage, evaluate the chosen checkpoint."""
    path = Path(run_dir) if run_dir is not None else default_run_dir(spec)
    check_precision(spec.runtime.precision, resolve_device(spec.runtime.device))  # before a run directory exists
    check_tensorboard(spec.runtime.tensorboard)
    threads = configure_threads(spec.runtime.threads, spec.data.num_workers)  # before any parallel work
    rank = distributed.init_from_environment(resolve_device(spec.runtime.device).type)
    run = None
    summary = None
    try:
        # Rank 0 alone prepares (and locks) the run directory; the others learn whether it succeeded.
        failure = ""
        if rank.is_main:
            try:
                run = RunDirectory.prepare(path, resume=resume, overwrite=overwrite)
                if resume:
                    run.check_same_spec(spec, host.registry)
            except UserError as exc:
                failure = str(exc)
        ok = distributed.broadcast_(torch.tensor([0 if failure else 1], device=resolve_device(spec.runtime.device)))
        if failure:
            raise UserError(failure)
        if not int(ok.item()):
            raise UserError(f"rank 0 could not prepare the run directory {path}")
        if rank.is_main:
            if not run.spec_file.is_file():  # a resumed run killed before it wrote its spec writes it now
                run.write_spec(dump_spec(spec))
            run.write_env([vars(p) for p in host.plugins], threads)
            print(f"run directory: {run.path}", file=sys.stderr)
        else:
            run = RunDirectory(path)
        session = Session.from_spec(spec, host, run.path, training=True)
        trainer = Trainer(session, run)
        if rank.is_main:
            save_preprocessing(session.source, run.path)  # train-split statistics, reused by `detach eval`
        trainer.fit(resume=resume)
        if rank.is_main:
            summary = evaluate.evaluate_run(session, run)  # via the module: benchmarks/profile_run.py wraps it
    finally:
        if run is not None:
            run.close()
        distributed.shutdown()
    return RunResult(path, spec, summary)
