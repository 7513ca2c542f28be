"""The Python API: what the `detach` commands do, from a notebook or a script.

    from detach_framework import api
    result = api.train("examples/quickstart.yaml", overrides=["stages.0.epochs=1"], run_dir="runs/demo")
    run = api.load_run(result.run_dir)            # spec, summary; run.model builds the model (and the dataset)
    export_dir = api.export(result.run_dir, "exports/demo")
    encoder = api.load_encoder(export_dir)        # no dataset needed: encoder(raw [C, n]) -> embedding
    api.predict(export_dir, "recording.csv", out="probabilities.csv")

Every function loads the installed plugins (plus `plugins`, module names as for `--plugin`) once per process.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detach_framework.engine.encoder import FrozenSensorEncoder, encoder_from_run, read_json
from detach_framework.engine.export import EXPORT_FILE, encoder_from_export, is_export, write_export
from detach_framework.engine.predict import Predictions, predict_file
from detach_framework.engine.run import RunResult, train_and_evaluate
from detach_framework.engine.rundir import SPEC_FILE, RunDirectory
from detach_framework.errors import UserError
from detach_framework.plugins import PluginHost, load_plugins
from detach_framework.spec import Experiment, dump_spec, load_spec

__all__ = ["LoadedRun", "Predictions", "RunResult", "export", "load_encoder", "load_run", "predict", "train"]


@functools.cache
def _host(plugins: tuple[str, ...]) -> PluginHost:
    return load_plugins(plugins)


def train(
    spec_or_path: str | Path | dict[str, Any] | Experiment,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    plugins: Sequence[str] = (),
) -> RunResult:
    """Train a spec (a YAML path, a dict as the YAML would hold, or a loaded spec) with `key.path=value`
    overrides into `run_dir` (default runs/<name>/<uid>), then evaluate it: `detach train`'s path."""
    host = _host(tuple(plugins))
    source = yaml.safe_load(dump_spec(spec_or_path)) if isinstance(spec_or_path, Experiment) else spec_or_path
    spec = load_spec(source, host.registry, list(overrides))
    return train_and_evaluate(spec, host, run_dir, resume=resume, overwrite=overwrite)


@dataclass
class LoadedRun:
    """A run directory: its spec and summary at once; `model` (the checkpoint evaluation chooses, in eval mode)
    is built on first use, with the run's dataset. `encoder()` needs no dataset."""

    path: Path
    spec: Experiment
    summary: dict[str, Any] | None  # None until the run has been evaluated
    host: PluginHost = field(repr=False)

    @functools.cached_property
    def session(self):
        from detach_framework.data.transforms import load_preprocessing
        from detach_framework.engine.evaluate import load_evaluated_checkpoint
        from detach_framework.engine.session import Session

        session = Session.from_spec(self.spec, self.host, self.path)
        load_preprocessing(session.source, self.path)
        load_evaluated_checkpoint(session, RunDirectory(self.path))
        session.model.eval()
        return session

    @property
    def model(self):
        return self.session.model

    def encoder(self) -> FrozenSensorEncoder:
        return encoder_from_run(self.path, self.host)


def load_run(run_dir: str | Path, *, plugins: Sequence[str] = ()) -> LoadedRun:
    host = _host(tuple(plugins))
    run = RunDirectory.open_existing(run_dir)
    summary = None
    if run.summary_file.is_file():
        summary = read_json(run.summary_file, "the run's summary")
    return LoadedRun(run.path, load_spec(run.spec_file, host.registry), summary, host)


def load_encoder(run_dir_or_export: str | Path, *, plugins: Sequence[str] = ()) -> FrozenSensorEncoder:
    """The frozen sensor encoder with its preprocessing, from an export (with its probe: `predict_proba`) or a
    run directory; neither builds the dataset. `encoder(raw [C, n] or [B, C, n]) -> embedding [P] or [B, P]`."""
    path = Path(run_dir_or_export)
    host = _host(tuple(plugins))
    if is_export(path):
        return encoder_from_export(path, host)
    if (path / SPEC_FILE).is_file():
        return encoder_from_run(path, host)
    raise UserError(f"{path} is neither an export directory ({EXPORT_FILE}) nor a run directory ({SPEC_FILE})")


def export(run_dir: str | Path, out: str | Path, *, plugins: Sequence[str] = ()) -> Path:
    """`detach export RUN_DIR --out OUT`: returns OUT."""
    write_export(run_dir, out, _host(tuple(plugins)))
    return Path(out)


def predict(
    export_dir: str | Path,
    recording: str | Path,
    out: str | Path | None = None,
    *,
    format: str = "auto",
    plugins: Sequence[str] = (),
) -> Predictions:
    """`detach predict`: per-window class probabilities of one recording (written as CSV to `out` when given)."""
    host = _host(tuple(plugins))
    encoder = encoder_from_export(export_dir, host)
    return predict_file(encoder, Path(recording), None if out is None else Path(out), host.registry, format)
