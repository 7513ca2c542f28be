"""EVI-MAE's masked-token reconstruction: the mean squared error over the masked tokens only."""

from __future__ import annotations

import torch

from detach_framework.contracts import ReconstructionLoss
from detach_framework.engine.precision import float32
from detach_framework.registry import ComponentParams


@float32
def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked tokens of the per-token mean squared error; pred/target [..., F], mask [...]."""
    per_token = (pred - target).pow(2).mean(dim=-1)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1)


class MaskedReconstructionParams(ComponentParams):
    pass


class MaskedReconstructionLoss(ReconstructionLoss):
    """Per-token MSE averaged over the masked tokens (targets as given: EVI-MAE does not normalise per patch)."""

    def __init__(self, params: MaskedReconstructionParams) -> None:
        super().__init__()

    def forward(self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mse(prediction, target, mask)
