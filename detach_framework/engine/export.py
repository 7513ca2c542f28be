"""`detach export`: a run's frozen sensor encoder as a directory that needs no dataset and no video side.

    export.json                  what the weights are and how raw sensor windows reach them (ExportManifest)
    sensor_encoder.safetensors   the sensor slots' weights (keys as in the run's model state dict)

The manifest holds the sensor components (names, params, plugins), the channel names in input order, the
sampling rate, the window, the preprocessing with the train split's statistics, the class names and the
linear probe fitted as the run's probe evaluator fits it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from detach_framework.atomic import atomic_directory, atomic_write_json
from detach_framework.contracts import EvalContext, WindowProbeEvaluator
from detach_framework.data.transforms import PREPROCESSING_FILE, load_preprocessing
from detach_framework.engine.encoder import (
    FrozenSensorEncoder,
    SensorModules,
    pipeline_from_state,
    read_json,
    run_preprocessing,
    stream_format,
    window_samples,
)
from detach_framework.engine.evaluate import embed_split, load_evaluated_checkpoint
from detach_framework.engine.model import SENSOR_SLOTS, sensor_state_dict
from detach_framework.engine.rundir import RunDirectory
from detach_framework.engine.session import Session
from detach_framework.errors import UserError
from detach_framework.evaluation.probe import LinearClassifier
from detach_framework.plugins import PluginHost
from detach_framework.spec import StrictModel, first_error_line, load_spec

EXPORT_FILE = "export.json"
WEIGHTS_FILE = "sensor_encoder.safetensors"
EXPORT_FORMAT = "detach-sensor-export"
EXPORT_VERSION = 1


class ExportedComponent(StrictModel):
    name: str
    params: dict[str, Any]
    plugin: str
    distribution: str = ""


class ExportedWindow(StrictModel):
    samples: int = Field(ge=1, description="Raw samples per window at the sampling rate.")
    seconds: float = Field(gt=0)
    stride_seconds: float = Field(gt=0)
    sensor_length: int = Field(ge=2, description="Steps per window after preprocessing (the encoder's input).")


class ExportedProbe(StrictModel):
    evaluator: str
    weight: list[list[float]]  # [K, P]
    bias: list[float]  # [K]
    mean: list[float] | None  # [P] feature standardisation (train statistics), None when not standardised
    std: list[float] | None

    def classifier(self) -> LinearClassifier:
        optional = (None if v is None else np.asarray(v, np.float64) for v in (self.mean, self.std))
        return LinearClassifier(np.asarray(self.weight, np.float32), np.asarray(self.bias, np.float32), *optional)


class ExportedWeights(StrictModel):
    file: str
    sha256: str


class ExportManifest(StrictModel):
    """export.json."""

    format: Literal["detach-sensor-export"]
    version: Literal[1]
    run: dict[str, Any]
    dataset: str
    sensor_encoder: ExportedComponent
    sensor_temporal_encoder: ExportedComponent | None
    embedding_dim: int = Field(ge=1)
    channels: list[str] = Field(min_length=1)
    sampling_rate_hz: float = Field(gt=0)
    window: ExportedWindow
    preprocessing: dict[str, Any]
    classes: list[str]
    probe: ExportedProbe | None
    weights: ExportedWeights

    @model_validator(mode="after")
    def _consistent(self) -> ExportManifest:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels: names repeat")
        if self.preprocessing.get("channels") != self.channels:
            raise ValueError("preprocessing.channels differ from channels")
        if self.window.samples != window_samples(self.window.seconds, self.sampling_rate_hz):
            raise ValueError("window.samples does not match window.seconds at sampling_rate_hz")
        probe, k, p = self.probe, len(self.classes), self.embedding_dim
        if probe is not None:
            if len(probe.weight) != k or any(len(row) != p for row in probe.weight) or len(probe.bias) != k:
                raise ValueError(f"probe: expected weight [{k}, {p}] and bias [{k}] ({k} classes, {p} features)")
            if (probe.mean is None) != (probe.std is None) or any(
                v is not None and len(v) != p for v in (probe.mean, probe.std)
            ):
                raise ValueError(f"probe: mean and std are both null or both [{p}]")
        return self


def is_export(path: Path) -> bool:
    return (Path(path) / EXPORT_FILE).is_file()


def read_manifest(export_dir: str | Path) -> ExportManifest:
    path = Path(export_dir) / EXPORT_FILE
    if not Path(export_dir).is_dir():
        raise UserError(f"export directory {export_dir} not found")
    data = read_json(path, f"not a {EXPORT_FORMAT} directory")
    if data.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path}: not a detach export (format {data.get('format')!r}, expected {EXPORT_FORMAT!r})")
    if data.get("version") != EXPORT_VERSION:
        raise UserError(f"{path}: export version {data.get('version')!r}; this version reads {EXPORT_VERSION}")
    try:
        return ExportManifest.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{path}: {first_error_line(exc, 'export')}") from None


def encoder_from_export(export_dir: str | Path, host: PluginHost) -> FrozenSensorEncoder:
    """The exported sensor encoder with its preprocessing and probe; reads nothing but the export."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    manifest = read_manifest(export_dir)
    where = str(Path(export_dir) / EXPORT_FILE)
    weights = Path(export_dir) / manifest.weights.file
    if Path(manifest.weights.file).name != manifest.weights.file or not weights.is_file():
        raise UserError(f"{weights} not found (named by {where} weights.file)")
    if _sha256(weights) != manifest.weights.sha256:
        raise UserError(f"{weights}: checksum mismatch with {where}; the file was changed or damaged")
    entries = {slot: _entry(host, slot, getattr(manifest, slot), where) for slot in SENSOR_SLOTS}
    length = manifest.window.sensor_length
    modules = SensorModules(SimpleNamespace(**entries), host.registry, len(manifest.channels), length)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{weights}: unreadable safetensors file ({exc})") from None
    modules.load_weights(state, str(weights))
    return FrozenSensorEncoder(
        modules,
        pipeline_from_state(manifest.preprocessing, length, f"{where} preprocessing"),
        channel_names=manifest.channels,
        rate_hz=manifest.sampling_rate_hz,
        window_seconds=manifest.window.seconds,
        stride_seconds=manifest.window.stride_seconds,
        class_names=manifest.classes,
        probe=None if manifest.probe is None else manifest.probe.classifier(),
        dataset=manifest.dataset,
        source=str(export_dir),
    )


def _entry(host: PluginHost, slot: str, component: ExportedComponent | None, where: str) -> Any:
    """A spec-entry stand-in (`name` + params) for `build_sensor_encoder`, its params checked first."""
    if component is None:
        return None
    registered = host.registry.get("sensor_encoder", component.name)  # unknown: one line with the choices
    try:
        registered.params.model_validate(component.params)
    except ValidationError as exc:
        raise UserError(f"{where}: {slot} '{component.name}' params {first_error_line(exc, top='')}") from None
    return SimpleNamespace(name=component.name, **component.params)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- writing ------------------------------------------------------------------------------------------------


def check_target(out: Path) -> None:
    """An export may replace an export, never anything else."""
    if out.exists() and not (out.is_dir() and (is_export(out) or not any(out.iterdir()))):
        raise UserError(f"{out} exists and is not an export directory (no {EXPORT_FILE}); not overwriting it")


def write_export(run_dir: str | Path, out: str | Path, host: PluginHost) -> ExportManifest:
    """Export a run's sensor encoder (the checkpoint evaluation chooses) into `out`. Builds the run's dataset:
    the probe is fitted on the train split's embeddings, as the run's probe evaluator fits it."""
    out = Path(out)
    check_target(out)
    run = RunDirectory.open_existing(run_dir)
    spec = load_spec(run.spec_file, host.registry)
    preprocessing = run_preprocessing(run)
    channels, rate = stream_format(preprocessing, str(run.path / PREPROCESSING_FILE))
    session = Session.from_spec(spec, host, run.path)
    load_preprocessing(session.source, run.path)
    state, checkpoint = load_evaluated_checkpoint(session, run)
    if list(session.source.channel_names) != channels:
        raise UserError(f"{run.path / PREPROCESSING_FILE}: its channels differ from the dataset's")
    train = embed_split(session, "train")
    probe = _fit_probe(session, train, run)
    tensors = {
        key: value.detach().cpu().clone() for key, value in sensor_state_dict(session.model.state_dict()).items()
    }
    manifest = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "run": {
            "name": spec.name,
            "uid": spec.uid,
            "checkpoint": checkpoint.name,
            "stage": state.get("stage"),
            "epochs_done": state.get("epochs_done"),
        },
        "dataset": spec.data.dataset.name,
        **{slot: _component(host, getattr(spec.model, slot)) for slot in SENSOR_SLOTS},
        "embedding_dim": int(train.probe.shape[1]),
        "channels": channels,
        "sampling_rate_hz": rate,
        "window": {
            "samples": window_samples(spec.data.window_seconds, rate),
            "seconds": spec.data.window_seconds,
            "stride_seconds": spec.data.stride_seconds,
            "sensor_length": spec.data.sensor_length,
        },
        "preprocessing": preprocessing,
        "classes": list(session.source.class_names),
        "probe": probe,
        "weights": {"file": WEIGHTS_FILE, "sha256": ""},
    }

    def fill(tmp: Path) -> None:
        from safetensors.torch import save_file

        save_file(tensors, str(tmp / WEIGHTS_FILE))  # no metadata: its order varies; export.json says what this is
        manifest["weights"]["sha256"] = _sha256(tmp / WEIGHTS_FILE)
        ExportManifest.model_validate(manifest)  # what read_manifest will demand, checked before it is in place
        atomic_write_json(tmp / EXPORT_FILE, manifest)

    _replace_directory(out, fill)
    return ExportManifest.model_validate(manifest)


def _component(host: PluginHost, entry: Any) -> dict[str, Any] | None:
    if entry is None:
        return None
    registered = host.registry.get("sensor_encoder", entry.name)
    params = entry.model_dump(mode="json", exclude={"name"})
    return {"name": entry.name, "params": params, "plugin": registered.plugin, "distribution": registered.distribution}


def _fit_probe(session: Session, train: Any, run: RunDirectory) -> dict[str, Any] | None:
    """The first window-probe evaluator of the spec fits its classifier on the train split (None: the spec has
    none, and the export can embed but not classify)."""
    spec = session.spec
    for entry in spec.eval.evaluators:
        evaluator = session.host.registry.build("evaluator", entry)
        if isinstance(evaluator, WindowProbeEvaluator):
            context = EvalContext(class_names=list(session.source.class_names), out_dir=run.plots, seed=spec.seed)
            fitted = evaluator.fit_classifier(train, context)
            optional = {k: None if v is None else v.tolist() for k, v in (("mean", fitted.mean), ("std", fitted.std))}
            return {"evaluator": entry.name, "weight": fitted.weight.tolist(), "bias": fitted.bias.tolist(), **optional}
    return None


def _replace_directory(out: Path, fill: Any) -> None:
    """Write the new export beside `out`, then swap it in: a reader sees the old export or the new one."""
    if not out.exists() or not any(out.iterdir()):
        atomic_directory(out, fill, "detach export")
        return
    staged, old = out.with_name(f".{out.name}.new"), out.with_name(f".{out.name}.old")
    for leftover in (staged, old):  # of an interrupted earlier export
        shutil.rmtree(leftover, ignore_errors=True)
    atomic_directory(staged, fill, "detach export")
    os.replace(out, old)
    os.replace(staged, out)
    shutil.rmtree(old, ignore_errors=True)
