"""The staged trainer: one AdamW per stage, atomic checkpoints after every epoch, exact resume."""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from detach_framework.contracts import AlignerBase, UnusableLoss
from detach_framework.engine import distributed
from detach_framework.engine.checkpoint import BEST, LAST, load_checkpoint, load_latest, save_checkpoint
from detach_framework.engine.fixed_outputs import WithFixedOutputs, compute_fixed_outputs
from detach_framework.engine.precision import grad_scaler
from detach_framework.engine.rundir import RunDirectory
from detach_framework.engine.seeding import rng_state, set_rng_state
from detach_framework.engine.session import Session, make_loader, to_device
from detach_framework.errors import PluginError, UserError


@dataclass
class StageContext:
    """What `AlignerBase.on_stage_start` receives: `train_batches()` iterates the train split unshuffled, on
    the device; `resumed` says the stage's state came from a checkpoint."""

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

    def __init__(self, session: Session, run: RunDirectory) -> None:
        self.session = session
        self.spec, self.host, self.run = session.spec, session.host, run
        self.device, self.source, self.model = session.device, session.source, session.model
        self.precision = session.spec.runtime.precision
        self.is_main = distributed.info().is_main  # only rank 0 writes the run directory
        self.train_set = session.split("train")
        self.val_set = session.split("val")
        # What the current stage reads: the splits, plus the outputs of its frozen parts (fixed_outputs.py).
        self.stage_train, self.stage_val = self.train_set, self.val_set
        self.progress = session.progress
        self.epoch_lines = session.epoch_lines and self.is_main
        self.epoch_seconds: list[float] = []  # of the epochs trained by this process: the ETA's pace
        self.tensorboard = None  # opened by fit(): evaluation alone writes no event files
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None  # the current stage's warm-up
        self.scaler = grad_scaler(self.precision, self.device)  # the current stage's fp16 loss scaling
        self.autocast = session.autocast

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
        try:
            aligner = registry.build("aligner", stage.aligner, model=self.model, loss=loss)
        except UnusableLoss as exc:  # the aligner says why; the stage and the loss's name are known here
            raise UserError(f"stages.{index}.loss '{stage.loss.name}' of stage '{stage.name}': {exc}") from None
        if not isinstance(aligner, AlignerBase):
            origin = registry.get("aligner", stage.aligner.name).origin
            raise PluginError(
                f"stages.{index}.aligner '{stage.aligner.name}' from {origin} must derive from "
                "detach_framework.contracts.AlignerBase (it declares the lifecycle the trainer calls)"
            )
        aligner = aligner.to(self.device)
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
        self.scheduler = self._warmup(optimizer, index)
        self.scaler = grad_scaler(self.precision, self.device)
        return aligner, optimizer, trainable

    def _warmup(self, optimizer: torch.optim.Optimizer, index: int) -> torch.optim.lr_scheduler.LambdaLR | None:
        """Linear warm-up over `warmup_fraction` of the stage's optimizer steps, then the constant lr."""
        stage = self.spec.stages[index]
        if stage.optimizer.warmup_fraction <= 0:
            return None
        steps = stage.epochs * len(make_loader(self.train_set, self.spec, shuffle=True))
        warmup = max(1, round(stage.optimizer.warmup_fraction * steps))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))

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
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),  # {} unless fp16 on CUDA
            "rng": rng_state(),
        }

    def _resume_position(self) -> tuple[Position, dict[str, Any] | None]:
        found = load_latest(self.run.checkpoints / LAST, map_location=self.device)  # last.prev.pt if damaged
        if found is None:
            return Position(), None
        state, path = found
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
        if self.spec.runtime.tensorboard and self.is_main:
            self.tensorboard = _tensorboard_writer(self.run)
        pos, state = self._resume_position() if resume else (Position(), None)
        if resume and self.is_main:  # also with no checkpoint yet: a killed first epoch must not be logged twice
            self.run.truncate_metrics_after(pos.stage_index, pos.epochs_done)
        while pos.stage_index < len(self.spec.stages):
            stage = self.spec.stages[pos.stage_index]
            aligner, optimizer, trainable = self.build_stage(pos.stage_index)
            step = distributed.wrap_step(self.model, aligner, self.device)
            if stage.init_from is not None and state is None:
                self._adopt_stage(pos, aligner, optimizer)
            resumed = state is not None
            if resumed:  # resuming inside this stage: restore its optimizer, aligner, RNG
                aligner.load_state_dict(state["aligner"])
                optimizer.load_state_dict(state["optimizer"])
                if self.scheduler is not None and state.get("scheduler") is not None:
                    self.scheduler.load_state_dict(state["scheduler"])
                if state.get("scaler"):
                    self.scaler.load_state_dict(state["scaler"])
                set_rng_state(state["rng"])
                state = None
            if pos.epochs_done < stage.epochs:
                with self.autocast():
                    aligner.on_stage_start(self.model, self.stage_context(pos.stage_index, resumed))
                    self._serve_fixed_outputs(aligner)
            while pos.epochs_done < stage.epochs:
                started = time.perf_counter()
                record = self._train_epoch(pos, step, aligner, optimizer, trainable)
                pos.epochs_done += 1
                improved = record.get("val_loss", math.inf) < pos.best_val
                if improved:
                    pos.best_val = record["val_loss"]
                self._check_finite(stage.name, pos.epochs_done, record, aligner)  # never checkpoint a diverged model
                if not self.is_main:
                    continue
                # Logged before the checkpoint: a kill in between is undone by truncation on resume.
                self.run.log(record)
                checkpoint = self._state(pos, aligner, optimizer)
                # Best before last: a kill between the two must not leave last.pt ahead of a stale best.pt.
                if improved or "val_loss" not in record:
                    save_checkpoint(self.run.checkpoints / BEST, checkpoint)
                save_checkpoint(self.run.checkpoints / LAST, checkpoint, keep_previous=True)
                self.run.commit_replacement()  # the run --overwrite moved aside can go once this one has a checkpoint
                self._scalars(record, pos.global_step)
                self.host.manager.hook.detach_after_epoch(stage=stage.name, epoch=pos.epochs_done, metrics=record)
                self._epoch_line(pos, record, time.perf_counter() - started)
            if self.is_main:
                save_checkpoint(self.run.checkpoints / f"stage_{stage.name}.pt", self._state(pos, aligner, optimizer))
            distributed.barrier()  # other ranks never read a checkpoint before rank 0 has written it
            self.stage_train, self.stage_val = self.train_set, self.val_set
            pos = Position(pos.stage_index + 1, 0, pos.global_step, math.inf)
        if not self.spec.stages and self.is_main:  # a floor row: nothing to train, the initial weights are evaluated
            initial = {"uid": self.spec.uid, "stage_index": 0, "stage": None, "epochs_done": 0, "global_step": 0}
            save_checkpoint(
                self.run.checkpoints / LAST, {**initial, "best_val": math.inf, "model": self.model.state_dict()}
            )
            self.run.commit_replacement()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def _epoch_line(self, pos: Position, record: dict[str, Any], seconds: float) -> None:
        """One stderr line per epoch when bars are off for want of a terminal (`Session.epoch_lines`)."""
        self.epoch_seconds.append(seconds)
        if not self.epoch_lines:
            return
        stage = self.spec.stages[pos.stage_index]
        later = sum(s.epochs for s in self.spec.stages[pos.stage_index + 1 :] if s.init_from is None)
        remaining = (stage.epochs - pos.epochs_done + later) * sum(self.epoch_seconds) / len(self.epoch_seconds)
        losses = " ".join(f"{key} {record[key]:.4f}" for key in ("train_loss", "val_loss") if key in record)
        print(
            f"{stage.name} epoch {pos.epochs_done}/{stage.epochs}: {losses} ({seconds:.1f} s; run ETA "
            f"{_clock(remaining)})",
            file=sys.stderr,
            flush=True,
        )

    def _serve_fixed_outputs(self, aligner: AlignerBase) -> None:
        """Compute once what the stage's frozen parts output for every sample; the epochs read it back."""
        functions = aligner.fixed_outputs(self.model)
        if not functions:
            return
        served = []
        for dataset in (self.train_set, self.val_set):
            batches = (to_device(b, self.device) for b in make_loader(dataset, self.spec, shuffle=False))
            served.append(
                WithFixedOutputs(dataset, compute_fixed_outputs(self.model, functions, batches, len(dataset)))
            )
        self.stage_train, self.stage_val = served

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
        if not self.is_main:
            return
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
        self,
        pos: Position,
        step: nn.Module,
        aligner: nn.Module,
        optimizer: torch.optim.Optimizer,
        trainable: list[nn.Module],
    ) -> dict[str, Any]:
        """One epoch; `step(batch)` is `aligner(model, batch)`, DDP-wrapped under torchrun."""
        stage = self.spec.stages[pos.stage_index]
        epoch = pos.epochs_done + 1
        loader = make_loader(
            self.stage_train, self.spec, shuffle=True, epoch=pos.stage_index * 10_000 + epoch, sharded=True
        )
        self._set_modes(aligner, trainable, training=True)
        totals: dict[str, float] = {}
        batches = 0
        started = time.perf_counter()
        aligner.on_epoch_start(epoch)
        bar = tqdm(
            loader,
            desc=f"{stage.name} {epoch}/{stage.epochs}",
            disable=not (self.progress and self.is_main),
            leave=False,
        )
        for batch in bar:
            with self.autocast():
                out = step(to_device(batch, self.device))
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise UserError(
                    f"stage '{stage.name}' epoch {epoch}: loss became {loss.item()} (try a lower optimizer.lr)"
                )
            optimizer.zero_grad(set_to_none=True)
            # The scaler is a pass-through except for fp16 on CUDA, where it scales the loss against underflow.
            self.scaler.scale(loss).backward()
            if stage.optimizer.grad_clip is not None:
                self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(
                    [p for g in optimizer.param_groups for p in g["params"]], stage.optimizer.grad_clip
                )
            self.scaler.step(optimizer)  # skipped when fp16 gradients overflowed
            self.scaler.update()
            if self.scheduler is not None:
                self.scheduler.step()
            aligner.after_optimizer_step(self.model)
            pos.global_step += 1
            batches += 1
            scalars = {k: float(v.detach()) for k, v in out.items() if v.dim() == 0}
            for key, value in scalars.items():
                totals[key] = totals.get(key, 0.0) + value
            bar.set_postfix(loss=f"{scalars['loss']:.4f}")
            if pos.global_step % self.spec.runtime.log_every == 0 and self.is_main:
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
        record.update(aligner.on_epoch_end(self.model))
        if len(self.stage_val) >= 2:
            record["val_loss"] = self._validate(aligner)
        if distributed.is_enabled():
            record["world_size"] = distributed.info().world_size
            record["ranks_agree"] = self._ranks_agree()
        return record

    @torch.no_grad()
    def _check_finite(self, stage: str, epoch: int, record: dict[str, Any], aligner: nn.Module) -> None:
        """A diverged epoch stops the run before it is logged or saved: the last good checkpoint stays."""
        bad = [key for key in ("val_loss",) if key in record and not math.isfinite(record[key])]
        for prefix, module in (("model", self.model), ("aligner", aligner)):
            for name, tensor in module.state_dict().items():
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not tensor.isfinite().all():
                    bad.append(f"{prefix}.{name}")
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise UserError(
                f"stage '{stage}' epoch {epoch}: training diverged (non-finite {', '.join(bad[:3])}{more}); "
                "nothing of this epoch was saved, the last good checkpoint is kept (try a lower optimizer.lr)"
            )

    @torch.no_grad()
    def _ranks_agree(self) -> bool:
        """Parameters and clusterer state must be identical on every rank; a cheap fingerprint checks it."""
        tensors = [p for p in self.model.parameters()]
        if self.model.clusterer is not None:
            tensors += list(self.model.clusterer.buffers())
        weights = torch.linspace(1.0, 2.0, steps=len(tensors), dtype=torch.float64)
        fingerprint = sum(w * t.double().sum().cpu() for w, t in zip(weights, tensors, strict=True))
        everyone = distributed.gather(torch.as_tensor([fingerprint], dtype=torch.float64, device=self.device))
        return bool(torch.all(everyone == everyone[0]))

    @torch.no_grad()
    def _validate(self, aligner: nn.Module) -> float:
        self.model.eval()
        aligner.eval()
        total, count = 0.0, 0
        for batch in make_loader(self.stage_val, self.spec, shuffle=False, sharded=True):
            if len(batch["label"]) < 2:
                continue
            with self.autocast():
                out = aligner(self.model, to_device(batch, self.device))
            total += float(out["loss"]) * len(batch["label"])
            count += len(batch["label"])
        # Every rank saw the same global batches (gathered inside the aligner): the mean is the same.
        return distributed.all_reduce_mean(total / max(count, 1))

    def _scalars(self, record: dict[str, Any], step: int) -> None:
        if self.tensorboard is None:
            return
        prefix = f"{record.get('stage')}/{record.get('kind')}"
        for key, value in record.items():
            if isinstance(value, int | float) and key not in {"epoch", "step", "stage_index"}:
                self.tensorboard.add_scalar(f"{prefix}/{key}", value, step)


def _clock(seconds: float) -> str:
    """3725.2 -> '1:02:05'."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def check_tensorboard(enabled: bool) -> None:
    """Refuse, before anything is built, `runtime.tensorboard: true` without the extra: a researcher who asks for
    event files and finds none after hours of training has lost the curves they meant to watch."""
    if enabled and importlib.util.find_spec("tensorboard") is None:
        raise UserError(
            "runtime.tensorboard is true but tensorboard is not installed: pip install "
            "'detach-framework[tensorboard]', or set runtime.tensorboard=false (metrics.jsonl has every scalar)"
        )


def _tensorboard_writer(run: RunDirectory):
    check_tensorboard(True)
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run.path / "tensorboard"))
