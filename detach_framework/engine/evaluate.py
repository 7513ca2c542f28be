"""Evaluation of a trained run: frozen embeddings of the train and test splits fed to every evaluator."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from detach_framework.atomic import atomic_write_json, atomic_write_text
from detach_framework.contracts import (
    EmbeddingSet,
    EvalContext,
    EvalWindows,
    SensorLayoutSource,
    ShiftedSensorSource,
)
from detach_framework.data.transforms import load_preprocessing
from detach_framework.engine.checkpoint import BEST, LAST, load_checkpoint
from detach_framework.engine.rundir import EVAL_SPEC_FILE, SUMMARY_FILE, RunDirectory
from detach_framework.engine.session import Session, make_loader, to_device
from detach_framework.errors import PluginError, UserError
from detach_framework.plugins import PluginHost
from detach_framework.spec import Experiment, check_eval_overrides, eval_uid, load_spec


def embed_split(session: Session, split: str) -> EmbeddingSet:
    return embed_split_windows(session, split, keep_windows=False)[0]


@torch.no_grad()
def embed_split_windows(session: Session, split: str, *, keep_windows: bool) -> tuple[EmbeddingSet, np.ndarray | None]:
    """The split's embeddings and, with `keep_windows`, the sensor windows [N, C, L] they were computed from."""
    dataset = session.split(split)  # cache-backed when the training splits are
    if len(dataset) == 0:
        raise UserError(f"data.dataset: the {split} split is empty, nothing to evaluate")
    session.model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for batch in make_loader(dataset, session.spec, shuffle=False):
        with session.autocast():
            out = session.model.embed(to_device(batch, session.device))
        for key in ("probe", "video", "sensor"):  # evaluators always receive float32
            parts.setdefault(key, []).append(out[key].float().cpu().numpy())
        for key in ("label", "subject", "fixture", "recording"):
            if key in batch:  # "recording" is optional
                parts.setdefault(key, []).append(batch[key].numpy())
        if keep_windows:
            parts.setdefault("windows", []).append(batch["sensor"].numpy())
    cat = {key: np.concatenate(value) for key, value in parts.items()}
    embeddings = EmbeddingSet(
        probe=cat["probe"],
        video=cat["video"],
        sensor=cat["sensor"],
        labels=cat["label"],
        subjects=cat["subject"],
        fixtures=cat["fixture"],
        recordings=cat.get("recording"),
    )
    return embeddings, cat.get("windows")


@torch.no_grad()
def embed_sensor_windows(session: Session, sensor: np.ndarray) -> np.ndarray:
    """Probe features [M, P] of sensor windows [M, C, L], as `embed_split` computes them: the model's sensor side
    in batches of data.batch_size, under the run's precision."""
    session.model.eval()
    parts = []
    for chunk in torch.from_numpy(np.ascontiguousarray(sensor, np.float32)).split(session.spec.data.batch_size):
        with session.autocast():
            parts.append(session.model.embed_probe({"sensor": chunk.to(session.device)}).float().cpu().numpy())
    return np.concatenate(parts)


def eval_windows(session: Session, split: str, sensor: np.ndarray) -> EvalWindows:
    """What evaluators that perturb the eval split's windows get: the windows, the sensor side, the dataset's layout
    (checked here, so that a plugin's bad layout is named as the dataset's fault) and, where the source can re-read
    its recordings, the split's windows shifted in time (checked to match `sensor` in shape)."""
    source, name = session.source, session.spec.data.dataset.name
    layout = source.sensor_layout() if isinstance(source, SensorLayoutSource) else None
    if layout is not None:
        problem = layout.problem(len(source.channel_names))
        if problem:
            raise PluginError(f"dataset '{name}' returned a bad sensor_layout(): {problem}")
    shifted = None
    if isinstance(source, ShiftedSensorSource):

        def shifted(offset_s: float) -> np.ndarray:
            windows = np.asarray(source.shifted_sensor_windows(split, offset_s), np.float32)
            if windows.shape != sensor.shape:
                raise PluginError(
                    f"dataset '{name}' returned shifted_sensor_windows of shape {list(windows.shape)} for the "
                    f"{split} split, expected {list(sensor.shape)} (its windows)"
                )
            return windows

    return EvalWindows(sensor, lambda windows: embed_sensor_windows(session, windows), layout, name, shifted)


def evaluated_checkpoint_path(spec: Experiment, run: RunDirectory) -> Path:
    """The checkpoint file `eval.checkpoint` names (last.pt when there is no best.pt); reading nothing, so a
    caller can refuse a run without one before building its dataset."""
    name = BEST if spec.eval.checkpoint == "best" else LAST
    path = run.checkpoints / name
    if not path.is_file():
        path = run.checkpoints / LAST
    if not path.is_file():
        raise UserError(f"{run.checkpoints} holds no checkpoint (the run never finished an epoch)")
    return path


def read_evaluated_checkpoint(
    spec: Experiment, run: RunDirectory, device: torch.device | str
) -> tuple[dict[str, Any], Path]:
    """The checkpoint `evaluated_checkpoint_path` chooses, refusing one written under another spec uid.
    Evaluation, `detach report`, `detach export` and `load_encoder` all choose through here."""
    path = evaluated_checkpoint_path(spec, run)
    state = load_checkpoint(path, map_location=device)
    if state.get("uid") != spec.uid:
        raise UserError(
            f"{path} was written under spec uid {state.get('uid')}, but {run.spec_file} has uid {spec.uid}; "
            "this checkpoint does not belong to this run's spec"
        )
    return state, path


def load_evaluated_checkpoint(session: Session, run: RunDirectory) -> tuple[dict[str, Any], Path]:
    """Load into the session's model the checkpoint evaluation uses (see `read_evaluated_checkpoint`)."""
    state, path = read_evaluated_checkpoint(session.spec, run, session.device)
    session.model.load_state_dict(state["model"])
    return state, path


def evaluate_run(session: Session, run: RunDirectory, out_dir: Path | None = None) -> dict[str, Any]:
    """Load the spec's chosen checkpoint, run every evaluator, write and return summary.json: the run's own, or
    with `out_dir` (see `reevaluate_run`) one in out_dir, with the plots in out_dir/plots."""
    spec = session.spec
    state, path = load_evaluated_checkpoint(session, run)
    # `test` is whichever split eval.split names: evaluators score it and never learn which one it is.
    train = embed_split(session, "train")
    test, test_windows = embed_split_windows(session, spec.eval.split, keep_windows=True)
    plots_dir = run.plots if out_dir is None else out_dir / "plots"
    context = EvalContext(
        class_names=list(session.source.class_names),
        out_dir=plots_dir,
        seed=spec.seed,
        windows=eval_windows(session, spec.eval.split, test_windows),
    )
    metrics: dict[str, float] = {}
    tables: dict[str, Any] = {}
    plots: list[str] = []
    for entry in spec.eval.evaluators:
        evaluator = session.host.registry.build("evaluator", entry)
        result = evaluator.evaluate(train, test, context)
        clash = set(result.metrics) & set(metrics)
        if clash:
            raise PluginError(f"evaluator '{entry.name}' reports metrics already reported: {sorted(clash)}")
        metrics.update({k: float(v) for k, v in result.metrics.items()})
        tables.update(result.tables)
        plots += [str(p.relative_to(run.path)) if p.is_relative_to(run.path) else str(p) for p in result.plots]
    summary = {
        "name": spec.name,
        "uid": spec.uid,
        "eval_uid": eval_uid(spec),
        "checkpoint": path.name,
        "stage": state.get("stage"),
        "epochs_done": state.get("epochs_done"),
        "train_samples": int(len(train.labels)),
        "split": spec.eval.split,
        f"{spec.eval.split}_samples": int(len(test.labels)),
        "metrics": metrics,
        "tables": tables,
        "plots": plots,
    }
    if out_dir is None:
        run.write_summary(summary)
    else:
        atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def reevaluate_run(session: Session, run: RunDirectory) -> tuple[dict[str, Any], Path]:
    """Evaluate the trained run under the session spec's eval section (which may differ from the run's) into
    RUN_DIR/eval/<eval-uid>/: summary.json, plots/ and the resolved eval section as eval.yaml."""
    out_dir = run.eval_dir(eval_uid(session.spec))
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(session.spec.eval.model_dump(mode="json"), sort_keys=False)
    atomic_write_text(out_dir / EVAL_SPEC_FILE, resolved)
    return evaluate_run(session, run, out_dir), out_dir


def evaluate_run_directory(
    run_dir: str | Path, host: PluginHost, overrides: Sequence[str] = ()
) -> tuple[dict[str, Any], Path]:
    """`detach eval`: evaluate a trained run again. Without overrides, under its own spec, rewriting its summary.json;
    with `eval.*` overrides, into RUN_DIR/eval/<eval-uid>/ (`reevaluate_run`). Returns the summary and its file."""
    check_eval_overrides(overrides)
    run = RunDirectory.open_existing(run_dir, write=True)
    try:
        session = Session.from_spec(load_spec(run.spec_file, host.registry, overrides), host, run.path)
        load_preprocessing(session.source, run.path)
        if not overrides:
            return evaluate_run(session, run), run.summary_file
        summary, out_dir = reevaluate_run(session, run)
        return summary, out_dir / SUMMARY_FILE
    finally:
        run.close()


def format_summary(summary: dict[str, Any]) -> str:
    split = summary.get("split", "test")  # summaries written before eval.split scored the test split
    lines = [
        f"run {summary['name']} / {summary['uid']} ({summary['checkpoint']}, "
        f"{summary['train_samples']} train / {summary[f'{split}_samples']} {split} windows)"
    ]
    width = max((len(k) for k in summary["metrics"]), default=10)
    lines += [f"  {key:<{width}}  {value:.4f}" for key, value in summary["metrics"].items()]
    return "\n".join(lines)
