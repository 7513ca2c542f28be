"""COMODO's distillation: the student matches the teacher's similarity distribution over a bank of teacher
embeddings (the aligner's instance queue plus the batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from detach_framework.contracts import DistillationLoss
from detach_framework.engine.precision import float32
from detach_framework.registry import ComponentParams

# COMODO's temperatures, also the defaults of aligner comodo's teacher_temperature and student_temperature.
TEACHER_TEMPERATURE = 0.1
STUDENT_TEMPERATURE = 0.05


@float32
def distillation_loss(
    teacher: torch.Tensor, student: torch.Tensor, bank: torch.Tensor, teacher_tau: float, student_tau: float
) -> torch.Tensor:
    """Cross-entropy between the teacher's and the student's similarity distributions over `bank`."""
    teacher, student = F.normalize(teacher, dim=-1), F.normalize(student, dim=-1)
    bank = F.normalize(bank, dim=-1).detach()
    target = F.softmax(teacher @ bank.T / teacher_tau, dim=1)
    return -(target * F.log_softmax(student @ bank.T / student_tau, dim=1)).sum(dim=1).mean()


class ComodoDistillationParams(ComponentParams):
    teacher_temperature: float = Field(
        TEACHER_TEMPERATURE, gt=0, description="Temperature of the teacher's distribution."
    )
    student_temperature: float = Field(
        STUDENT_TEMPERATURE, gt=0, description="Temperature of the student's distribution."
    )


class ComodoDistillationLoss(DistillationLoss):
    """-1/B sum_i sum_k p_t(k | i) log p_s(k | i), p = softmax(cos(x_i, bank_k) / tau) for teacher and student."""

    def __init__(self, params: ComodoDistillationParams) -> None:
        super().__init__()
        self.teacher_temperature = params.teacher_temperature
        self.student_temperature = params.student_temperature

    def forward(self, teacher: torch.Tensor, student: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        return distillation_loss(teacher, student, bank, self.teacher_temperature, self.student_temperature)
