"""PRIMUS's sensor self-supervision on two augmented views of each window: SimCLR's NT-Xent (L_SS) and NNCLR's
nearest-neighbour positives from a support set (L_NN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from detach_framework.contracts import ViewLoss
from detach_framework.engine.precision import float32
from detach_framework.registry import ComponentParams

SSL_TEMPERATURE = 0.1  # PRIMUS's default, also aligner primus's ssl_temperature


@float32
def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss over 2B views: row i's positive is its other view, every other view a negative."""
    z = torch.cat([F.normalize(a, dim=-1), F.normalize(b, dim=-1)])
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    n = len(a)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def nearest_neighbours(queries: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Each query's most cosine-similar support row (normalised); the query itself when support is empty."""
    queries = F.normalize(queries, dim=-1)
    if len(support) == 0:
        return queries.detach()
    support = F.normalize(support, dim=-1)
    return support[(queries @ support.T).argmax(dim=1)].detach()


@float32
def nnclr_loss(a: torch.Tensor, b: torch.Tensor, support: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric NNCLR: NN(a_i) must pick b_i among the batch's b, and NN(b_i) pick a_i among the a."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    targets = torch.arange(len(a), device=a.device)
    forward = F.cross_entropy(nearest_neighbours(a, support) @ b.T / temperature, targets)
    backward = F.cross_entropy(nearest_neighbours(b, support) @ a.T / temperature, targets)
    return 0.5 * (forward + backward)


class PrimusSslParams(ComponentParams):
    temperature: float = Field(SSL_TEMPERATURE, gt=0, description="Temperature of L_SS and L_NN.")
    nearest_neighbour: bool = Field(True, description="Add the NNCLR term L_NN (off: SimCLR only).")


class PrimusSslLoss(ViewLoss):
    """L_SS + L_NN on this process's views (the support set is this process's queue of past first views)."""

    def __init__(self, params: PrimusSslParams) -> None:
        super().__init__()
        self.temperature = params.temperature
        self.nearest_neighbour = params.nearest_neighbour

    def terms(self, first: torch.Tensor, second: torch.Tensor, support: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"ssl": L_SS} plus {"nn": L_NN} with nearest_neighbour: aligner primus weights and logs each."""
        terms = {"ssl": nt_xent(first, second, self.temperature)}
        if self.nearest_neighbour:
            terms["nn"] = nnclr_loss(first, second, support, self.temperature)
        return terms

    def forward(self, first: torch.Tensor, second: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        return sum(self.terms(first, second, support).values())
