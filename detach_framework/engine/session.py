"""A Session: one spec's run built once — seeded, on its device, with its dataset source, its model and its
splits (read through the cache where the spec allows). Training, evaluation, reports and the cache commands
all start from one, so there is a single place that decides how a run is built."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from detach_framework.cache.dataset import split_from_context
from detach_framework.cache.keys import CacheContext
from detach_framework.contracts import DatasetSource
from detach_framework.data.settings import DataSettings
from detach_framework.engine import distributed
from detach_framework.engine.locations import KEstimate, resolve_auto_k
from detach_framework.engine.model import AlignmentModel
from detach_framework.engine.precision import autocast, check_precision
from detach_framework.engine.seeding import loader_generator, seed_everything, seed_worker
from detach_framework.engine.threads import cache_build_workers, usable_cores
from detach_framework.errors import PluginError, UserError
from detach_framework.plugins import PluginHost
from detach_framework.spec import Experiment


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"runtime.device={name} but CUDA is not available on this machine (use auto or cpu)")
    if device.type == "cuda" and distributed.is_enabled():
        return torch.device("cuda", distributed.info().local_rank)  # one GPU per process
    return device


def progress_enabled(setting: str) -> bool:
    return setting == "on" or (setting == "auto" and sys.stderr.isatty())


def epoch_lines_enabled(setting: str) -> bool:
    """`auto` without a terminal (a batch job, a study's log file): no bars, but one line per epoch, so that a long
    run is not silent until it ends."""
    return setting == "auto" and not sys.stderr.isatty()


def data_settings(spec: Experiment) -> DataSettings:
    data = spec.data
    return DataSettings(
        window_seconds=data.window_seconds,
        stride_seconds=data.stride_seconds,
        frames=data.frames,
        frame_size=data.frame_size,
        sensor_length=data.sensor_length,
        seed=spec.seed,
    )


def build_source(spec: Experiment, host: PluginHost) -> DatasetSource:
    source = host.registry.build("dataset", spec.data.dataset, data=data_settings(spec))
    if not isinstance(source, DatasetSource):
        raise PluginError(
            f"dataset '{spec.data.dataset.name}' returned a {type(source).__name__}, expected a DatasetSource "
            "(class_names, channel_names, fixture_names, split)"
        )
    return source


def make_loader(
    dataset: Dataset, spec: Experiment, *, shuffle: bool, epoch: int = 0, sharded: bool = False
) -> DataLoader:
    """`data.batch_size` is the global batch: with `sharded` under torchrun, each rank reads its share of
    the samples (a DistributedSampler seeded by seed and epoch) in batches of batch_size / world_size."""
    workers = spec.data.num_workers
    world = distributed.info().world_size if sharded else 1
    sampler = None
    if world > 1:
        if spec.data.batch_size % world:
            raise UserError(f"data.batch_size={spec.data.batch_size} must be divisible by the {world} processes")
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=spec.seed, drop_last=shuffle)
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=spec.data.batch_size // world,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        drop_last=shuffle and len(dataset) > spec.data.batch_size,  # full batches keep contrastive losses comparable
        num_workers=workers,
        persistent_workers=False,
        worker_init_fn=seed_worker,
        generator=loader_generator(spec.seed, epoch),
        pin_memory=False,
    )


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class Session:
    """The built pieces of one spec's run. Build it with `Session.from_spec`."""

    spec: Experiment
    host: PluginHost
    device: torch.device
    source: DatasetSource
    model: AlignmentModel
    num_train: int
    k_estimate: KEstimate | None = None  # where model.clusterer.k is auto

    @classmethod
    def from_spec(
        cls, spec: Experiment, host: PluginHost, run_path: str | Path | None = None, *, training: bool = False
    ) -> Session:
        """Seed, resolve the device, build the dataset source and the model (in that order: the model's
        initial weights, and so a frozen backbone's cache uid, depend on the seed alone). `model.clusterer.k: auto`
        is resolved in between (engine/locations.py): from `run_path`'s k_estimate.json when it has one, else from
        the train split; `training` (on the main process) records a new estimate there."""
        device = resolve_device(spec.runtime.device)
        check_precision(spec.runtime.precision, device)
        seed_everything(spec.seed, spec.deterministic)
        source = build_source(spec, host)
        record = training and distributed.info().is_main
        model_spec, k_estimate = resolve_auto_k(
            spec.model, source, Path(run_path) if run_path is not None else None, record=record
        )
        num_train = len(source.split("train"))
        if num_train < 2:
            raise UserError(f"data.dataset: the train split has {num_train} samples, at least 2 needed")
        model = AlignmentModel(model_spec, host.registry, source, spec.data.sensor_length, num_train=num_train)
        model = model.to(device)
        if spec.runtime.sync_batchnorm and distributed.is_enabled():
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return cls(spec, host, device, source, model, num_train, k_estimate)

    @property
    def progress(self) -> bool:
        return progress_enabled(self.spec.runtime.progress)

    @property
    def epoch_lines(self) -> bool:
        return epoch_lines_enabled(self.spec.runtime.progress)

    def cache_context(self) -> CacheContext:
        workers = cache_build_workers(self.spec.cache.build_workers, self.spec.data.num_workers, usable_cores())
        return CacheContext(self.spec, self.source, self.model, self.device, self.progress, workers)

    def split(self, name: str) -> Dataset:
        """One split as training and evaluation read it: from the LMDB cache when `spec.cache` and a frozen
        backbone allow (built on first use), else the dataset's own split."""
        return split_from_context(self.cache_context(), name)

    def autocast(self):
        """The context every forward pass runs in (`runtime.precision`)."""
        return autocast(self.spec.runtime.precision, self.device)
