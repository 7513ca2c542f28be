"""InfoNCE between paired video and sensor embeddings, with optional weights on the negatives (DETACH's L_CL)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from detach_framework.contracts import ContrastiveLoss
from detach_framework.engine.distributed import gather_with_grad
from detach_framework.engine.precision import float32
from detach_framework.registry import ComponentParams


class InfoNceParams(ComponentParams):
    temperature: float = Field(0.07, gt=0, description="Initial (or fixed) temperature tau.")
    learnable: bool = Field(True, description="Learn the temperature (as log of the logit scale).")
    max_logit_scale: float = Field(100.0, gt=1, description="Clamp of the logit scale 1/tau.")


class InfoNceLoss(ContrastiveLoss):
    """Symmetric InfoNCE on L2-normalised embeddings of the global batch; `weights` [N, N] scale the negatives.

    L_v2s = -1/N sum_i log(exp(S_ii) / (exp(S_ii) + sum_{j!=i} W_ij exp(S_ij))), S = cos / tau,
    L_s2v the same on S transposed with the same W (sensor anchor i weights negative j by W_ij) unless
    `s2v_weights` gives another matrix, loss = (L_v2s + L_s2v) / 2. W = None is plain InfoNCE.
    """

    def __init__(self, params: InfoNceParams) -> None:
        super().__init__()
        self.max_log_scale = math.log(params.max_logit_scale)
        log_scale = torch.tensor(math.log(1.0 / params.temperature))
        if params.learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    @float32
    def forward(
        self,
        video: torch.Tensor,
        sensor: torch.Tensor,
        weights: torch.Tensor | None = None,
        s2v_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Negatives come from the global batch when several processes train together; gradients flow back.
        video, sensor = gather_with_grad(video), gather_with_grad(sensor)
        video, sensor = F.normalize(video, dim=-1), F.normalize(sensor, dim=-1)
        logits = self.logit_scale() * video @ sensor.T  # S[i, j] = cos(v_i, s_j) / tau
        s2v = weights if s2v_weights is None else s2v_weights
        return 0.5 * (weighted_nce(logits, weights) + weighted_nce(logits.T, s2v))


def weighted_nce(logits: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """-mean_i log(exp(S_ii) / (exp(S_ii) + sum_{j!=i} W_ij exp(S_ij))), via a stable logsumexp."""
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    if weights is None:
        return F.cross_entropy(logits, torch.arange(n, device=logits.device))
    # log W with the positive's own weight set to 1 (it is never a negative); W_ij = 0 drops j.
    log_w = torch.where(eye, torch.zeros_like(logits), torch.log(weights.clamp(min=0)))
    denominator = torch.logsumexp(logits + log_w, dim=1)
    return (denominator - logits.diagonal()).mean()
