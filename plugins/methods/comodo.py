"""COMODO adapted: distillation from a frozen video teacher into the sensor student via an instance queue.

The teacher is the model's video side (backbone + head) as it stands when the stage starts: frozen, in eval
mode, never trained here (like COMODO's fixed video encoder + fixed random MLP). The student is the sensor
encoder (+ an optional projector owned by the aligner). With Q = [queue; this batch's teacher vectors]
(all L2-normalised teacher embeddings):
  p_t = softmax(t_i . Q / tau_t),  log p_s = log_softmax(s_i . Q / tau_s),  L = -1/B sum_i sum_k p_t log p_s
and then the batch's teacher vectors enter the queue (FIFO, the oldest leave). The queue holds
round(queue_ratio * N_train) rows and starts filled with the teacher embeddings of a seeded random subset of
the training set (at stage start; a resumed stage takes the queue from the checkpoint). COMODO's schedule
(AdamW lr 3e-4, 10% linear warm-up) is the stage's optimizer settings (`warmup_fraction: 0.1`).
Unlike the original, the queue's samples are not held out of the first epoch.
L is the `comodo_distillation` loss (detach_plugins.losses): the stage's, or without one built at the aligner's
teacher_temperature and student_temperature.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from detach_framework.contracts import AlignerBase, DistillationLoss, UnusableLoss
from detach_framework.engine.precision import float32
from detach_framework.errors import UserError
from detach_framework.plugins import hookimpl
from detach_framework.registry import MAX_WIDTH, ComponentParams, Register
from detach_plugins.losses.distillation import (  # noqa: F401 - distillation_loss imported from here too
    STUDENT_TEMPERATURE,
    TEACHER_TEMPERATURE,
    ComodoDistillationLoss,
    ComodoDistillationParams,
    distillation_loss,
)

from .queues import FeatureQueue

TEMPERATURES = ("teacher_temperature", "student_temperature")


class ComodoParams(ComponentParams):
    queue_ratio: float = Field(0.1, gt=0, le=1, description="Queue size as a fraction of the training set.")
    teacher_temperature: float = Field(
        TEACHER_TEMPERATURE, gt=0, description="Temperature of the teacher's distribution (without a stage loss)."
    )
    student_temperature: float = Field(
        STUDENT_TEMPERATURE, gt=0, description="Temperature of the student's distribution (without a stage loss)."
    )
    projector: Literal["none", "linear", "mlp"] = Field(
        "none",
        description="Student head onto the teacher space; none keeps the sensor embedding in the video space "
        "(retrieval stays meaningful) and needs equal dims.",
    )
    projection_hidden: int = Field(512, ge=1, le=MAX_WIDTH, description="Hidden width of the mlp projector.")
    center_teacher: bool = Field(
        False,
        description="Not in COMODO: subtract the bank's mean teacher vector before the cosines. A fixed camera's "
        "clip vectors share one dominant background direction, which flattens the teacher distribution.",
    )


@float32
@torch.no_grad()
def top1_agreement(teacher: torch.Tensor, student: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """How often the student's most similar bank entry is the teacher's."""
    return ((teacher @ bank.T).argmax(1) == (F.normalize(student, dim=-1) @ bank.T).argmax(1)).float().mean()


def distillation(params: ComodoParams, loss: nn.Module | None) -> nn.Module:
    """The stage's distillation loss, or (none given) comodo_distillation at the aligner's temperatures."""
    if loss is None:
        return ComodoDistillationLoss(
            ComodoDistillationParams(**{name: getattr(params, name) for name in TEMPERATURES})
        )
    if not isinstance(loss, DistillationLoss):
        raise UnusableLoss(
            f"aligner comodo distils the teacher's similarities, which {type(loss).__name__} does not take: use a "
            "distillation loss (name: comodo_distillation) or none"
        )
    # A stage loss brings its own temperatures: one set in the aligner as well would be silently ignored.
    ignored = [
        f"{name} {getattr(params, name)}"
        for name in TEMPERATURES
        if getattr(params, name) != ComodoParams.model_fields[name].default
    ]
    if ignored:
        raise UnusableLoss(f"aligner comodo's {' and '.join(ignored)} would be ignored: set it in the stage loss")
    return loss


class ComodoAligner(AlignerBase):
    def __init__(self, params: ComodoParams, model: nn.Module, loss: nn.Module | None) -> None:
        super().__init__()
        self.params = params
        self.loss = distillation(params, loss)
        teacher_dim, student_dim = int(model.video_head.out_dim), int(model.sensor_encoder.out_dim)
        if params.projector == "none":
            if teacher_dim != student_dim:
                raise UserError(
                    f"aligner comodo with projector none needs model.sensor_encoder.dim ({student_dim}) == "
                    f"model.video_head.dim ({teacher_dim}); or set projector: linear"
                )
            self.projector: nn.Module = nn.Identity()
        elif params.projector == "linear":
            self.projector = nn.Linear(student_dim, teacher_dim)
        else:
            self.projector = nn.Sequential(
                nn.Linear(student_dim, params.projection_hidden),
                nn.GELU(),
                nn.Linear(params.projection_hidden, teacher_dim),
            )
        self.queue = FeatureQueue(1, teacher_dim)  # sized at stage start from the training set

    def trainable_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.sensor_encoder]  # the teacher (video backbone + head) stays frozen

    @torch.no_grad()
    def teacher(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(model.encode_video(batch).float(), dim=-1)  # the queue holds float32

    @torch.no_grad()
    def on_stage_start(self, model: nn.Module, context: Any) -> None:
        if context.resumed:
            return
        size = max(1, round(self.params.queue_ratio * context.num_train))
        model.video_backbone.eval()  # the trainer sets modes per epoch; the teacher is always in eval mode
        model.video_head.eval()
        features = torch.cat([self.teacher(model, batch) for batch in context.train_batches()])
        generator = torch.Generator().manual_seed(context.seed)
        chosen = torch.randperm(len(features), generator=generator)[:size].to(features.device)
        self.queue.reset(size, features[chosen])

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.params
        target = self.teacher(model, batch)
        student = self.projector(model.encode_sensor(batch))
        teacher, bank = target, torch.cat([self.queue.valid(), target])
        if p.center_teacher:
            centre = bank.mean(dim=0, keepdim=True)
            teacher, bank = F.normalize(teacher - centre, dim=-1), F.normalize(bank - centre, dim=-1)
        loss = self.loss(teacher, student, bank)
        agreement = top1_agreement(teacher, student, bank)
        if self.training:  # validation reads the queue but never fills it
            self.queue.push(target)
        return {"loss": loss, "top1_agreement": agreement}


@hookimpl
def detach_register_components(register: Register) -> None:
    register(
        kind="aligner",
        name="comodo",
        factory=ComodoAligner,
        params=ComodoParams,
        description="COMODO adapted: frozen video teacher distilled into the sensor student via an instance queue.",
    )
