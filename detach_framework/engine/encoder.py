"""The frozen sensor encoder on its own: the sensor slots of a trained model with the preprocessing the run's
dataset applied, rebuilt from a run directory (or, in export.py, an export) without the dataset or the video side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import TypeAdapter, ValidationError
from torch import nn

from detach_framework.data.transforms import PREPROCESSING_FILE, Pipeline, TransformStep
from detach_framework.engine.evaluate import read_evaluated_checkpoint
from detach_framework.engine.model import build_sensor_encoder, probe_embedding, sensor_state_dict
from detach_framework.engine.rundir import RunDirectory
from detach_framework.errors import UserError
from detach_framework.evaluation.probe import LinearClassifier
from detach_framework.plugins import PluginHost
from detach_framework.spec import load_spec

_CHUNK = 256  # windows per forward pass: bounds memory on long recordings


class SensorModules(nn.Module):
    """The sensor slots of an AlignmentModel under the same attribute names, so that the model's state-dict
    entries for them (`sensor_state_dict`) load as they are. forward(sensor [B, C, L]) -> probe features."""

    def __init__(self, model_spec: Any, registry: Any, channels: int, sensor_length: int) -> None:
        super().__init__()
        self.sensor_encoder = build_sensor_encoder(model_spec.sensor_encoder, registry, channels, sensor_length)
        self.sensor_temporal_encoder = None
        if model_spec.sensor_temporal_encoder is not None:
            self.sensor_temporal_encoder = build_sensor_encoder(
                model_spec.sensor_temporal_encoder, registry, channels, sensor_length
            )

    def forward(self, sensor: torch.Tensor) -> torch.Tensor:
        temporal = None if self.sensor_temporal_encoder is None else self.sensor_temporal_encoder(sensor)
        return probe_embedding(self.sensor_encoder(sensor), temporal)

    def load_weights(self, state: dict[str, torch.Tensor], source: str) -> None:
        try:
            self.load_state_dict(state)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())
            raise UserError(f"{source}: the weights do not fit the sensor encoder ({detail[:300]})") from None


class FrozenSensorEncoder:
    """`encoder(raw) -> embedding`: raw sensor windows [C, n] or [B, C, n] (channels in `channel_names` order,
    `window_samples` samples at `rate_hz`, NaN allowed) are preprocessed as the run's dataset preprocessed its
    windows (NaN policy, resampling, z-score with the train split's statistics), then encoded into the features
    the run's linear probe reads ([P] or [B, P]). `predict_proba` applies that probe (exports only)."""

    def __init__(
        self,
        modules: SensorModules,
        pipeline: Pipeline,
        *,
        channel_names: Sequence[str],
        rate_hz: float,
        window_seconds: float,
        stride_seconds: float,
        class_names: Sequence[str] = (),
        probe: LinearClassifier | None = None,
        dataset: str = "",
        source: str = "",
    ) -> None:
        self.modules = modules.eval().requires_grad_(False)
        self.pipeline = pipeline
        self.channel_names = list(channel_names)
        self.rate_hz = float(rate_hz)
        self.window_seconds = float(window_seconds)
        self.stride_seconds = float(stride_seconds)
        self.window_samples = window_samples(window_seconds, rate_hz)
        self.class_names = list(class_names)
        self.probe = probe
        self.dataset = dataset  # whose recording format `detach predict` reads by default
        self.source = source
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> FrozenSensorEncoder:
        self.device = torch.device(device)
        self.modules.to(self.device)
        return self

    def preprocess(self, raw: Any) -> np.ndarray:
        """Raw windows [C, n] or [B, C, n] -> the encoder's input [B, C, L] float32."""
        x = raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else raw
        try:
            x = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise UserError(f"raw window: expected a float array [C, n] or [B, C, n] ({exc})") from None
        if x.ndim not in (2, 3):
            raise UserError(f"raw window: expected shape [C, n] or [B, C, n], got {list(x.shape)}")
        x = x[None] if x.ndim == 2 else x
        if x.shape[1] != len(self.channel_names):
            raise UserError(
                f"raw window has {x.shape[1]} channels; this encoder takes {len(self.channel_names)} "
                f"({', '.join(self.channel_names[:4])}, ...: see encoder.channel_names)"
            )
        if x.shape[2] != self.window_samples:
            raise UserError(
                f"raw window has {x.shape[2]} samples; this encoder takes {self.window_samples} "
                f"({self.window_seconds:g} s at {self.rate_hz:g} Hz)"
            )
        return self.pipeline(x)

    @torch.no_grad()
    def embed(self, sensor: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Preprocessed windows [B, C, L] -> probe features [B, P] (float32, on the CPU)."""
        sensor = torch.as_tensor(sensor, dtype=torch.float32)
        parts = [self.modules(chunk.to(self.device)).float().cpu() for chunk in sensor.split(_CHUNK)]
        return torch.cat(parts) if parts else torch.zeros(0, 0)

    def __call__(self, raw: Any) -> torch.Tensor:
        single = np.ndim(raw) == 2
        embedding = self.embed(self.preprocess(raw))
        return embedding[0] if single else embedding

    def predict_proba(self, raw: Any) -> np.ndarray:
        """Class probabilities ([K] or [B, K], in `class_names` order) of raw windows."""
        if self.probe is None:
            raise UserError(
                f"{self.source}: this encoder carries no fitted probe (load an export written by `detach export` "
                "from a run whose eval.evaluators include a linear probe)"
            )
        single = np.ndim(raw) == 2
        probabilities = self.probe.predict_proba(self.embed(self.preprocess(raw)).numpy())
        return probabilities[0] if single else probabilities


def window_samples(window_seconds: float, rate_hz: float) -> int:
    """Raw samples in one window, as the datasets cut them."""
    return max(int(round(window_seconds * rate_hz)), 1)


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({what}): {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object ({what})")
    return data


def pipeline_from_state(state: dict[str, Any], sensor_length: int, where: str) -> Pipeline:
    """The fitted preprocessing described by a `preprocessing_state()` in `Pipeline.state` form."""
    try:
        steps = TypeAdapter(list[TransformStep]).validate_python(state.get("steps"))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise UserError(f"{where}: bad preprocessing steps ({first['msg']})") from None
    pipeline = Pipeline(steps, sensor_length, where)
    pipeline.load_state(state, where)
    if pipeline.needs_fit and not pipeline.stats:
        raise UserError(f"{where}: the preprocessing has a z-score but no stored statistics")
    return pipeline


def stream_format(state: dict[str, Any], where: str) -> tuple[list[str], float]:
    """(channel names, sampling rate) of the raw streams a stored preprocessing applies to."""
    channels, rate = state.get("channels"), state.get("rate_hz")
    if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
        raise UserError(f"{where}: expected `channels`, a list of channel names")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
        raise UserError(
            f"{where}: no sampling rate (`rate_hz`); the run's dataset does not say at what rate its preprocessing "
            "applies, so raw windows cannot be prepared for its encoder"
        )
    return list(channels), float(rate)


def run_preprocessing(run: RunDirectory) -> dict[str, Any]:
    """The preprocessing state training stored in the run directory (train-split statistics)."""
    path = run.path / PREPROCESSING_FILE
    if not path.is_file():
        raise UserError(
            f"{path} not found: the run's dataset stores no sensor preprocessing, so its encoder cannot be "
            "applied to raw windows"
        )
    return read_json(path, "the run's sensor preprocessing")


def encoder_from_run(run_dir: str | Path, host: PluginHost) -> FrozenSensorEncoder:
    """The run's sensor encoder (the checkpoint evaluation chooses) with its stored preprocessing; builds
    neither the dataset nor the video side."""
    run = RunDirectory.open_existing(run_dir)
    spec = load_spec(run.spec_file, host.registry)
    state = run_preprocessing(run)
    where = str(run.path / PREPROCESSING_FILE)
    channels, rate = stream_format(state, where)
    pipeline = pipeline_from_state(state, spec.data.sensor_length, where)
    modules = SensorModules(spec.model, host.registry, len(channels), spec.data.sensor_length)
    checkpoint, path = read_evaluated_checkpoint(spec, run, "cpu")
    modules.load_weights(sensor_state_dict(checkpoint["model"]), str(path))
    return FrozenSensorEncoder(
        modules,
        pipeline,
        channel_names=channels,
        rate_hz=rate,
        window_seconds=spec.data.window_seconds,
        stride_seconds=spec.data.stride_seconds,
        dataset=spec.data.dataset.name,
        source=str(run.path),
    )
