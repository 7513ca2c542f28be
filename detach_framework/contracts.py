"""Typed contracts of each component kind: what a factory receives and what the component produces.

Shapes: B batch, T frames, C sensor channels, L sensor steps, D feature channels, E embedding size.
Sample dicts (one item of a dataset split) hold:
  video    uint8   [T, 3, H, W]   raw RGB frames (the backbone normalises them)
  sensor   float32 [C, L]         finite values (datasets resolve NaN before returning)
  label    int64   []             class index into `class_names` (0 is Null where a Null class exists)
  subject  int64   []             subject id, for subject-wise splits
  fixture  int64   []             ground-truth fixture index or -1 (analysis only, never for training)
  index    int64   []             position of the sample in its split (memory banks key on it)
Optional keys: recording int64 [] - the recording the window comes from (recording-level evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np
import torch
from torch import nn

from detach_framework.errors import UserError
from detach_framework.registry import ComponentParams

if TYPE_CHECKING:
    from detach_framework.evaluation.probe import LinearClassifier

SAMPLE_KEYS: tuple[str, ...] = ("video", "sensor", "label", "subject", "fixture", "index")
SPLITS: tuple[str, ...] = ("train", "val", "test")


@runtime_checkable
class DatasetSource(Protocol):
    """dataset factory(params, data: DataSettings) -> DatasetSource.

    Optional extensions, each a protocol below: PreprocessingStateSource, PreprocessingRestoreSource,
    SensorLayoutSource, ShiftedSensorSource, ExportableSource.
    Reading one recording without the dataset: the dataset's `READ_RECORDING` tool (see RecordingReader).
    """

    class_names: list[str]
    channel_names: list[str]
    fixture_names: list[str]

    def split(self, name: str) -> torch.utils.data.Dataset: ...


@runtime_checkable
class PreprocessingStateSource(Protocol):
    """Optional extension of a DatasetSource: its fitted preprocessing as a JSON-able dict, which `detach train`
    writes to the run directory as preprocessing.json. A state that `detach export` can carry holds the steps and
    statistics in `Pipeline.state` form plus `rate_hz`, the sampling rate of the raw streams the steps apply to."""

    def preprocessing_state(self) -> dict[str, Any]: ...


@runtime_checkable
class PreprocessingRestoreSource(Protocol):
    """Optional extension of a DatasetSource: `detach eval` hands it the state training wrote (`source` names the
    file, for messages), so a run is evaluated with its own statistics, not ones recomputed from today's data."""

    def load_preprocessing_state(self, state: dict[str, Any], source: str) -> None: ...


@runtime_checkable
class ExportableSource(Protocol):
    """Optional extension of a DatasetSource that generates its data: writes it to `out_dir` in a layout its
    own reader takes back (`detach data export`)."""

    def export(self, out_dir: Path) -> None: ...


@dataclass(frozen=True)
class SensorLayout:
    """What a dataset knows about its sensor channels, for evaluations that perturb its windows (the `robustness`
    evaluator). A window is `window_samples` raw samples at `rate_hz`, resampled linearly to its L steps over the
    same interval, in the units the dataset's preprocessing leaves them (after the z-score a channel that sent
    nothing reads 0: the NaN policy's dead channel).

    fixture_channels  fixture name -> indices into `channel_names` of the channels it carries; fixtures that carry
                      none are left out, and it is empty when the dataset does not know which channel sits where
    noise_std         [C] std of the training data's sensor noise in window units, independent per raw sample;
                      None when unknown (recorded data)
    clock_offset_s    the largest video-sensor clock offset (either sign) of the training recordings; None: unknown
    """

    fixture_channels: dict[str, list[int]]
    rate_hz: float
    window_samples: int
    noise_std: np.ndarray | None = None
    clock_offset_s: float | None = None

    @classmethod
    def from_channel_fixture(
        cls, fixture_names: Sequence[str], channel_fixture: np.ndarray | None, **fields: Any
    ) -> SensorLayout:
        """From each channel's fixture index (-1: on no fixture; None: unknown), as the sources keep it."""
        owners = np.asarray([] if channel_fixture is None else channel_fixture, np.int64)
        channels = {name: np.flatnonzero(owners == f).tolist() for f, name in enumerate(fixture_names)}
        return cls(fixture_channels={name: found for name, found in channels.items() if found}, **fields)

    def problem(self, channels: int) -> str | None:
        """What is wrong with this layout for a source of `channels` channels, or None."""
        for name, found in self.fixture_channels.items():
            if not found or any(not 0 <= c < channels for c in found):
                return f"fixture '{name}' lists channels {found}, expected indices in [0, {channels})"
        if not (self.rate_hz > 0 and np.isfinite(self.rate_hz)) or self.window_samples < 1:
            return f"rate_hz {self.rate_hz} and window_samples {self.window_samples} must be positive"
        noise = self.noise_std
        if noise is not None and (np.shape(noise) != (channels,) or not np.all(np.isfinite(noise) & (noise >= 0))):
            return f"noise_std must be [{channels}] finite values >= 0, got shape {list(np.shape(noise))}"
        return None


@runtime_checkable
class SensorLayoutSource(Protocol):
    """Optional extension of a DatasetSource: `sensor_layout() -> SensorLayout`, called once the preprocessing is
    final (after `load_preprocessing_state`). Evaluation hands it to the evaluators (`EvalWindows.layout`); for a
    source without it they get None, and the robustness evaluator skips what it cannot perturb, saying why.
    Built in: the synthetic kitchen, and every WindowedSource (opportunity, opportunity_pp, hwu_usp)."""

    def sensor_layout(self) -> SensorLayout: ...


@runtime_checkable
class ShiftedSensorSource(Protocol):
    """Optional extension of a DatasetSource: `shifted_sensor_windows(split, offset_s) -> [N, C, L] float32`, the
    split's windows (row i is row i of `split(split)`) with the sensor stream read `offset_s` seconds later on its
    recording (earlier when negative) against the same video and labels, and preprocessed as the split's windows
    are (the train split's statistics). A window the shift would carry past either end of its recording reads the
    recording's first or last window instead. It lets the robustness evaluator's offset condition read real data
    where a shift within the window would leave steps without any. Built in: the synthetic kitchen, and every
    WindowedSource."""

    def shifted_sensor_windows(self, split: str, offset_s: float) -> np.ndarray: ...


class VideoBackboneParams(ComponentParams):
    """Base of every video backbone's params: the trainer freezes the backbone when `frozen`."""

    frozen: bool = False


@runtime_checkable
class VideoBackbone(Protocol):
    """video_backbone factory(params) -> nn.Module.

    forward(video float [B, T, 3, H, W], already normalised with `mean`/`std`) -> maps [B, T, D, h, w]
    (h = w = 1 when the backbone pools). `feature_dim` is D; `mean`/`std` are per-channel RGB
    statistics in [0, 1] units from the model's data config.
    """

    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, video: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class VideoHead(Protocol):
    """video_head factory(params, in_dim: int) -> nn.Module; forward(maps [B,T,D,h,w]) -> [B, out_dim].

    Optional extension: FrameInputHead (the head reads frames instead of maps).
    """

    out_dim: int

    def __call__(self, maps: torch.Tensor) -> torch.Tensor: ...


FrameInputKind = Literal["maps", "frames"]
FRAME_INPUT_KINDS = get_args(FrameInputKind)


@runtime_checkable
class FrameInputHead(Protocol):
    """Optional extension of a VideoHead: `input_kind` "frames" means forward takes normalised frames
    [B, T, 3, H, W] instead of backbone maps (only model.video_temporal_head is given them); "maps" is what a head
    without it reads. Read by engine.model.reads_frames, which refuses any other value. Built in:
    detach_temporal_head (its `input` param)."""

    input_kind: FrameInputKind


@runtime_checkable
class SensorEncoder(Protocol):
    """sensor_encoder factory(params, in_channels: int, length: int) -> nn.Module.

    forward(sensor [B, C, L]) -> [B, out_dim].
    """

    out_dim: int

    def __call__(self, sensor: torch.Tensor) -> torch.Tensor: ...


class Loss(nn.Module):
    """loss factory(params) -> an instance of one of the calling conventions below; forward -> float32 scalar.

    The convention is what an aligner checks: it takes the stage's loss (an aligner with an objective of its own
    builds its default one from its params when the stage names none) and raises UnusableLoss for a loss of
    another convention, which the trainer reports naming the stage and the loss. A loss that compares samples
    across the batch gathers them from every process itself (`engine.distributed.gather_with_grad`, as
    open_clip's ClipLoss does), so aligners pass this process's rows; a loss that scores each sample on its own
    gathers nothing.
    """


class ContrastiveLoss(Loss):
    """Paired video and sensor embeddings, row i of each a positive pair (built-in: infonce). The aligners of
    paired embeddings call it: global_contrastive, primus, evi_mae, detach_temporal (they also accept any
    other nn.Module of this call that is not a Loss).

    forward(video [B, E], sensor [B, E], weights [N, N] | None, s2v_weights [N, N] | None) -> scalar, where the
    loss gathers video and sensor from every process (N = B x processes, the global batch): `weights` scale the
    negatives (row i: those of anchor i, in both directions); an aligner that weights the sensor-to-video
    direction differently also passes `s2v_weights` (detach_temporal with s2v_weights: transposed).
    """

    def forward(
        self,
        video: torch.Tensor,
        sensor: torch.Tensor,
        weights: torch.Tensor | None = None,
        s2v_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")


class ViewLoss(Loss):
    """Two augmented views of each window, row i of each (built-in: primus_ssl, PRIMUS's self-supervision).

    forward(first [B, P], second [B, P], support [K, P]) -> scalar; `support` holds past embeddings the loss
    may draw positives from (K may be 0). On this process's batch: its support is this process's queue.
    """

    def forward(self, first: torch.Tensor, second: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")


class DistillationLoss(Loss):
    """A teacher's similarity distribution over a bank of teacher embeddings, taught to a student (built-in:
    comodo_distillation; aligner comodo).

    forward(teacher [B, E], student [B, E], bank [K, E]) -> scalar; each sample against the bank alone.
    """

    def forward(self, teacher: torch.Tensor, student: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")


class ReconstructionLoss(Loss):
    """Masked-token reconstruction (built-in: masked_reconstruction; aligner evi_mae).

    forward(prediction [..., F], target [..., F], mask [...] bool, True = masked) -> scalar over the masked
    tokens; each token on its own.
    """

    def forward(self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")


class UnusableLoss(UserError):
    """An aligner was given a stage loss it cannot call: the trainer names the stage and the loss."""


@runtime_checkable
class Clusterer(Protocol):
    """clusterer factory(params, num_samples: int, dim: int) -> nn.Module holding its state as buffers.

    What stage 1 (detach_spatial) needs from it. Features are [B, dim] sensor embeddings; the training samples
    are known by their `index` in the train split (0 .. num_samples-1), each with a row of the memory bank.
      k                               number of clusters
      bank [num_samples, dim]         the (L2-normalised) features it clusters, one row per training sample
      labels [num_samples] int64      each training sample's cluster: the pseudo-labels stage 1 trains on
      centroids [k, dim]              one per cluster (with bank and labels, broadcast from rank 0 at start)
      initialize(features [num_samples, dim], seed)
                                      at stage start, from the whole train split's features (seeded)
      update_bank(indices [B], features [B, dim]) -> float
                                      after each optimizer step, the batch's new features; returns the
                                      fraction of these samples whose label changed (logged per epoch)
      update_centroids()              at each epoch end (labels may change here too)
      confidence(quantile) -> [num_samples] bool
                                      whether each training sample is close to its centroid (stage 1 trains
                                      the video side on these, refines the sensor side on the others)
      sizes() -> [k] int64            training samples per cluster
      logits(features) -> [B, k]      the scores the sensor side is trained with, against labels
      assign(features) -> [B] int64   the nearest cluster of samples outside the bank (validation windows)
      class_weights() -> [k] float    per-cluster weights of the clustering loss
      augment(sensor [B, C, L], generator) -> [B, C, L]
                                      the training view of the windows whose features it clusters, drawn
                                      from `generator` (the ODC's time warp, from the stage's second epoch);
                                      a clusterer without one returns `sensor` and draws nothing
    """

    k: int
    bank: torch.Tensor
    labels: torch.Tensor
    centroids: torch.Tensor

    def initialize(self, features: torch.Tensor, seed: int) -> None: ...

    def update_bank(self, indices: torch.Tensor, features: torch.Tensor) -> float: ...

    def update_centroids(self) -> None: ...

    def confidence(self, quantile: float) -> torch.Tensor: ...

    def sizes(self) -> torch.Tensor: ...

    def logits(self, features: torch.Tensor) -> torch.Tensor: ...

    def assign(self, features: torch.Tensor) -> torch.Tensor: ...

    def class_weights(self) -> torch.Tensor: ...

    def augment(self, sensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...


class AlignerBase(nn.Module):
    """aligner factory(params, model: AlignmentModel, loss: nn.Module) -> an AlignerBase (the trainer refuses
    anything else): the base class of every aligner, declaring the lifecycle the trainer calls.

    The aligner may read the model's sizes when built but keeps no reference to it (the model is not
    its submodule); the loss is. forward(model, batch: dict of collated samples on the device) ->
    dict with a scalar 'loss' plus any scalars worth logging. `trainable_modules(model)` names the
    parts of the model this stage trains; the aligner's own parameters always train with the stage.
    The lifecycle methods, each a no-op here, are called by the trainer at their moment:

    on_stage_start(model, context)  once before the stage's first epoch to train (a StageContext: e.g.
                                    k-means over `context.train_batches()`; skip what the checkpoint restored
                                    when `context.resumed`)
    on_epoch_start(epoch)           epoch counts from 1 within the stage
    after_optimizer_step(model)     e.g. EMA or memory-bank updates
    on_epoch_end(model) -> dict     diagnostics merged into the epoch's metrics record
    fixed_outputs(model) -> {key: fn(batch) -> [B, ...]}
                                    outputs of model parts this stage keeps frozen, each a function of the
                                    sample alone (no randomness, eval mode): the trainer computes them once per
                                    sample of the train and validation splits at stage start and hands them back
                                    in every batch under `key`, so forward can skip the frozen parts. Declare
                                    nothing for a frozen branch that sees random augmentations: it would change
                                    the results, not only their cost.
    """

    def trainable_modules(self, model: nn.Module) -> list[nn.Module]:
        raise NotImplementedError(f"{type(self).__name__} must say which model parts its stage trains")

    def on_stage_start(self, model: nn.Module, context: Any) -> None:
        return None

    def on_epoch_start(self, epoch: int) -> None:
        return None

    def after_optimizer_step(self, model: nn.Module) -> None:
        return None

    def on_epoch_end(self, model: nn.Module) -> dict[str, Any]:
        return {}

    def fixed_outputs(self, model: nn.Module) -> dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]]:
        return {}


@dataclass
class EmbeddingSet:
    """Frozen embeddings of one split, as evaluators consume them.

    probe:  [N, P] sensor features for the linear probe (concat of L2-normalised sensor embeddings)
    video:  [N, E] joint-space video embeddings (L2-normalised), for retrieval
    sensor: [N, E] joint-space sensor embeddings (L2-normalised), row i pairs with video row i
    recordings: [N] recording of each row, when the dataset's samples carry "recording"
    """

    probe: np.ndarray
    video: np.ndarray
    sensor: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    fixtures: np.ndarray
    recordings: np.ndarray | None = None


@dataclass
class EvalWindows:
    """The eval split's sensor windows with the run's sensor side, for evaluators that score changed copies of
    them (the robustness evaluator).

    sensor: [N, C, L] float32, the windows as the model embedded them (after the dataset's preprocessing); row i
            is row i of the eval split's EmbeddingSet
    embed(sensor [M, C, L]) -> [M, P] float32 probe features, computed as EmbeddingSet.probe is (the run's model,
            device, precision and batch size)
    layout: the dataset's SensorLayout; None when its source is no SensorLayoutSource
    dataset: the dataset's name, for messages
    shifted(offset_s) -> [N, C, L] float32: the same windows with the sensor stream read offset_s seconds later on
            the recordings (ShiftedSensorSource); None when the source cannot re-read its recordings
    """

    sensor: np.ndarray
    embed: Callable[[np.ndarray], np.ndarray]
    layout: SensorLayout | None = None
    dataset: str = ""
    shifted: Callable[[float], np.ndarray] | None = None


@dataclass
class EvalContext:
    """windows: the eval split's sensor windows and sensor side (`detach eval` and `detach train` set them; None
    when an evaluator is called on embeddings alone)."""

    class_names: Sequence[str]
    out_dir: Path
    seed: int = 42
    windows: EvalWindows | None = None


@dataclass
class EvalResult:
    """metrics: flat name -> number (go to summary.json); tables: name -> rows; plots: written files."""

    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)


@runtime_checkable
class Evaluator(Protocol):
    """evaluator factory(params) -> Evaluator."""

    def evaluate(self, train: EmbeddingSet, test: EmbeddingSet, ctx: EvalContext) -> EvalResult: ...


class WindowProbeEvaluator:
    """Base of an evaluator whose metrics come from a linear probe on each window's `probe` features.

    `detach export` asks the spec's first such evaluator for the classifier it fits, fitted exactly as its
    `evaluate` fits it (same train features, params and seed), and stores it for `detach predict`.
    """

    def fit_classifier(self, train: EmbeddingSet, ctx: EvalContext) -> LinearClassifier:
        raise NotImplementedError(f"{type(self).__name__} must return the linear probe its evaluate fits")


# ---- one recording's sensor channels, read without building the dataset (`detach predict`) ----------------

READ_RECORDING = "read_recording"  # the dataset tool (registry.add(..., tools={READ_RECORDING: reader}))


@dataclass
class SensorRecording:
    """One recording's raw sensor streams: sample k of `stream` [C, n] is at time `start_s + k / rate_hz`."""

    channel_names: list[str]
    rate_hz: float  # 0 when the file does not say (a CSV without a time column)
    stream: np.ndarray  # [C, n] float, NaN where missing
    start_s: float = 0.0


class RecordingReader(Protocol):
    """A dataset's READ_RECORDING tool: reader(path) -> SensorRecording for one recording file in the dataset's
    own format; a bad file is a one-line UserError naming it. A dataset without the tool cannot be read this
    way (`detach predict` says so)."""

    def __call__(self, path: Path) -> SensorRecording: ...
