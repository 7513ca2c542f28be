"""The staged trainer: one AdamW per stage, atomic checkpoints after every epoch, exact resume."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from detach_framework.contracts import DatasetSource
from detach_framework.data.settings import DataSettings
from detach_framework.engine.checkpoint import load_checkpoint, save_checkpoint
from detach_framework.engine.model import AlignmentModel
from detach_framework.engine.rundir import RunDirectory
from detach_framework.engine.seeding import (
    loader_generator,
    rng_state,
    seed_everything,
    seed_worker,
    set_rng_state,
)
from detach_framework.errors import PluginError, UserError
from detach_framework.plugins import PluginHost
from detach_framework.spec import Experiment

LAST = "last.pt"
BEST = "best.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"runtime.device={name} but CUDA is not available on this machine (use auto or cpu)")
    return device


def progress_enabled(setting: str) -> bool:
    return setting == "on" or (setting == "auto" and sys.stderr.isatty())


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
    for attribute in ("class_names", "channel_names", "fixture_names", "split"):
        if not hasattr(source, attribute):
            raise PluginError(f"dataset '{spec.data.dataset.name}' returned an object without `{attribute}`")
    return source


def make_loader(dataset: Dataset, spec: Experiment, *, shuffle: bool, epoch: int = 0) -> DataLoader:
    workers = spec.data.num_workers
    return DataLoader(
        dataset,
        batch_size=spec.data.batch_size,
        shuffle=shuffle,
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
class StageContext:
    """What an aligner's optional lifecycle hooks may use.

    Hooks (all optional on an aligner): on_stage_start(model, context) - e.g. k-means initialisation over
    `train_batches()` (unshuffled, on the device; skip it when `resumed`, the state came from the
    checkpoint); on_epoch_start(epoch); after_optimizer_step(model) - e.g. EMA updates;
    on_epoch_end(model) -> dict of diagnostics merged into the epoch's metrics record.
    """

    device: torch.device
    epochs: int
    num_train: int
    seed: int
    resumed: bool
    train_batches: Callable[[], Iterator[dict[str, Any]]]


@dataclass
class Position:
    """Where training stands: the stage being trained and how many of its epochs are complete."""

    stage_index: int = 0
    epochs_done: int = 0
    global_step: int = 0
    best_val: float = math.inf


class Trainer:
    """Trains every stage of a spec into a run directory, then leaves evaluation to `evaluate_run`."""

    def __init__(self, spec: Experiment, host: PluginHost, run: RunDirectory) -> None:
        self.spec = spec
        self.host = host
        self.run = run
        self.device = resolve_device(spec.runtime.device)
        seed_everything(spec.seed, spec.deterministic)
        self.source = build_source(spec, host)
        num_train = len(self.source.split("train"))
        if num_train < 2:
            raise UserError(f"data.dataset: the train split has {num_train} samples, at least 2 needed")
        # Built before the splits: a frozen backbone's cached features come from this very model.
        self.model = AlignmentModel(
            spec.model, host.registry, self.source, spec.data.sensor_length, num_train=num_train
        ).to(self.device)
        self.train_set = self.split("train")
        self.val_set = self.split("val")
        self.progress = progress_enabled(spec.runtime.progress)
        self.tensorboard = None  # opened by fit(): evaluation alone writes no event files

    def split(self, name: str) -> Dataset:
        """One split of the dataset as training and evaluation read it: from the LMDB cache when `spec.cache`
        and a frozen backbone allow (built on first use), else the dataset's own split."""
        from detach_framework.cache import cached_split  # late: the cache reaches back into this module

        return cached_split(self, name)

    def stage_context(self, index: int, resumed: bool) -> StageContext:
        return StageContext(
            device=self.device,
            epochs=self.spec.stages[index].epochs,
            num_train=len(self.train_set),
            seed=self.spec.seed,
            resumed=resumed,
            train_batches=lambda: (
                to_device(b, self.device) for b in make_loader(self.train_set, self.spec, shuffle=False)
            ),
        )

    # -- stage assembly -----------------------------------------------------------------------------

    def build_stage(self, index: int) -> tuple[nn.Module, torch.optim.Optimizer, list[nn.Module]]:
        stage = self.spec.stages[index]
        registry = self.host.registry
        loss = registry.build("loss", stage.loss) if stage.loss is not None else None
        aligner = registry.build("aligner", stage.aligner, model=self.model, loss=loss).to(self.device)
        trainable = [m for m in aligner.trainable_modules(self.model) if m is not None]
        if self.model.backbone_frozen:
            trainable = [m for m in trainable if m is not self.model.video_backbone]
        self.model.requires_grad_(False)
        for module in trainable:
            module.requires_grad_(True)
        params = {id(p): p for m in trainable for p in m.parameters() if p.requires_grad}
        params.update({id(p): p for p in aligner.parameters() if p.requires_grad})
        if not params:
            raise UserError(f"stages.{index}: aligner '{stage.aligner.name}' leaves nothing to train")
        optimizer = torch.optim.AdamW(
            list(params.values()), lr=stage.optimizer.lr, weight_decay=stage.optimizer.weight_decay
        )
        return aligner, optimizer, trainable

    def _set_modes(self, aligner: nn.Module, trainable: list[nn.Module], training: bool) -> None:
        # Parts not trained in this stage stay in eval mode so their batch-norm statistics stay frozen.
        self.model.eval()
        aligner.train(training)
        if training:
            for module in trainable:
                module.train()

    # -- checkpoints ---------------------------------------------------------------------------------

    def _state(self, pos: Position, aligner: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return {
            "uid": self.spec.uid,
            "stage_index": pos.stage_index,
            "stage": self.spec.stages[pos.stage_index].name,
            "epochs_done": pos.epochs_done,
            "global_step": pos.global_step,
            "best_val": pos.best_val,
            "model": self.model.state_dict(),
            "aligner": aligner.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(),
        }

    def _resume_position(self) -> tuple[Position, dict[str, Any] | None]:
        path = self.run.checkpoints / LAST
        if not path.is_file():
            return Position(), None
        state = load_checkpoint(path, map_location=self.device)
        if state.get("uid") != self.spec.uid:
            raise UserError(
                f"{path}: written by spec uid {state.get('uid')}, but this spec's uid is {self.spec.uid}; "
                "resume with the run's own spec.yaml"
            )
        self.model.load_state_dict(state["model"])
        pos = Position(state["stage_index"], state["epochs_done"], state["global_step"], state["best_val"])
        return pos, state

    # -- training --------------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> None:
        if self.spec.runtime.tensorboard:
            self.tensorboard = _tensorboard_writer(self.run)
        pos, state = self._resume_position() if resume else (Position(), None)
        if state is not None:
            self.run.truncate_metrics_after(pos.stage_index, pos.epochs_done)
        while pos.stage_index < len(self.spec.stages):
            stage = self.spec.stages[pos.stage_index]
            aligner, optimizer, trainable = self.build_stage(pos.stage_index)
            if stage.init_from is not None and state is None:
                self._adopt_stage(pos, aligner, optimizer)
            resumed = state is not None
            if resumed:  # resuming inside this stage: restore its optimizer, aligner, RNG
                aligner.load_state_dict(state["aligner"])
                optimizer.load_state_dict(state["optimizer"])
                set_rng_state(state["rng"])
                state = None
            if hasattr(aligner, "on_stage_start") and pos.epochs_done < stage.epochs:
                aligner.on_stage_start(self.model, self.stage_context(pos.stage_index, resumed))
            while pos.epochs_done < stage.epochs:
                record = self._train_epoch(pos, aligner, optimizer, trainable)
                pos.epochs_done += 1
                improved = record.get("val_loss", math.inf) < pos.best_val
                if improved:
                    pos.best_val = record["val_loss"]
                # Logged before the checkpoint: a kill in between is undone by truncation on resume.
                self.run.log(record)
                checkpoint = self._state(pos, aligner, optimizer)
                save_checkpoint(self.run.checkpoints / LAST, checkpoint)
                if improved or "val_loss" not in record:
                    save_checkpoint(self.run.checkpoints / BEST, checkpoint)
                self._scalars(record, pos.global_step)
                self.host.manager.hook.detach_after_epoch(stage=stage.name, epoch=pos.epochs_done, metrics=record)
            save_checkpoint(self.run.checkpoints / f"stage_{stage.name}.pt", self._state(pos, aligner, optimizer))
            pos = Position(pos.stage_index + 1, 0, pos.global_step, math.inf)
        if self.tensorboard is not None:
            self.tensorboard.close()

    def _adopt_stage(self, pos: Position, aligner: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Take this stage's end state from another run instead of training it (`init_from`)."""
        stage = self.spec.stages[pos.stage_index]
        source = Path(stage.init_from) / "checkpoints" / f"stage_{stage.name}.pt"
        state = load_checkpoint(source, map_location=self.device)
        try:
            self.model.load_state_dict(state["model"])
            aligner.load_state_dict(state["aligner"])
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise UserError(f"stages.{pos.stage_index}.init_from: {source} does not fit this model ({first})") from None
        pos.epochs_done = stage.epochs
        self.run.log(
            {
                "kind": "init_from",
                "stage": stage.name,
                "stage_index": pos.stage_index,
                "epoch": stage.epochs,
                "source": str(source),
                "source_uid": state.get("uid"),
            }
        )

    def _train_epoch(
        self, pos: Position, aligner: nn.Module, optimizer: torch.optim.Optimizer, trainable: list[nn.Module]
    ) -> dict[str, Any]:
        stage = self.spec.stages[pos.stage_index]
        epoch = pos.epochs_done + 1
        loader = make_loader(self.train_set, self.spec, shuffle=True, epoch=pos.stage_index * 10_000 + epoch)
        self._set_modes(aligner, trainable, training=True)
        totals: dict[str, float] = {}
        batches = 0
        started = time.perf_counter()
        if hasattr(aligner, "on_epoch_start"):
            aligner.on_epoch_start(epoch)
        bar = tqdm(loader, desc=f"{stage.name} {epoch}/{stage.epochs}", disable=not self.progress, leave=False)
        for batch in bar:
            out = aligner(self.model, to_device(batch, self.device))
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise UserError(
                    f"stage '{stage.name}' epoch {epoch}: loss became {loss.item()} (try a lower optimizer.lr)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if stage.optimizer.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(
                    [p for g in optimizer.param_groups for p in g["params"]], stage.optimizer.grad_clip
                )
            optimizer.step()
            if hasattr(aligner, "after_optimizer_step"):
                aligner.after_optimizer_step(self.model)
            pos.global_step += 1
            batches += 1
            scalars = {k: float(v.detach()) for k, v in out.items() if v.dim() == 0}
            for key, value in scalars.items():
                totals[key] = totals.get(key, 0.0) + value
            bar.set_postfix(loss=f"{scalars['loss']:.4f}")
            if pos.global_step % self.spec.runtime.log_every == 0:
                step_record = {
                    "kind": "step",
                    "stage": stage.name,
                    "stage_index": pos.stage_index,
                    "epoch": epoch,
                    "step": pos.global_step,
                    **scalars,
                }
                self.run.log(step_record)
                self._scalars(step_record, pos.global_step)
        record: dict[str, Any] = {
            "kind": "epoch",
            "stage": stage.name,
            "stage_index": pos.stage_index,
            "epoch": epoch,
            "step": pos.global_step,
            "seconds": round(time.perf_counter() - started, 3),
        }
        record.update({f"train_{k}": v / max(batches, 1) for k, v in totals.items()})
        if hasattr(aligner, "on_epoch_end"):
            record.update(aligner.on_epoch_end(self.model))
        if len(self.val_set) >= 2:
            record["val_loss"] = self._validate(aligner)
        return record

    @torch.no_grad()
    def _validate(self, aligner: nn.Module) -> float:
        self.model.eval()
        aligner.eval()
        total, count = 0.0, 0
        for batch in make_loader(self.val_set, self.spec, shuffle=False):
            if len(batch["label"]) < 2:
                continue
            out = aligner(self.model, to_device(batch, self.device))
            total += float(out["loss"]) * len(batch["label"])
            count += len(batch["label"])
        return total / max(count, 1)

    def _scalars(self, record: dict[str, Any], step: int) -> None:
        if self.tensorboard is None:
            return
        prefix = f"{record.get('stage')}/{record.get('kind')}"
        for key, value in record.items():
            if isinstance(value, int | float) and key not in {"epoch", "step", "stage_index"}:
                self.tensorboard.add_scalar(f"{prefix}/{key}", value, step)


def _tensorboard_writer(run: RunDirectory):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra is not installed: metrics.jsonl still has everything
        return None
    return SummaryWriter(log_dir=str(run.path / "tensorboard"))
