"""Online deep clustering (ODC) of sensor-spatial features, as METHOD.md describes it.

The state (memory bank, labels, centroids) is made of buffers, so it is saved with the model (bank.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from detach_framework.engine.precision import float32
from detach_framework.registry import ComponentParams

from .augment import time_warp
from .bank import CLUSTER_COUNT_HELP, BankClusterer, ClusterCount


class OdcParams(ComponentParams):
    k: ClusterCount = Field(7, description=CLUSTER_COUNT_HELP)
    min_cluster_size: int = Field(
        100, ge=0, le=10_000_000, description="Clusters smaller than this are dissolved each epoch."
    )
    temperature: float = Field(0.1, gt=0, description="Cluster logits are cos(z_s, centroid) / temperature.")
    bank_momentum: float = Field(0.1, ge=0, lt=1, description="Bank update normalize(m*old + (1-m)*new).")
    balance_power: float = Field(0.5, ge=0, description="Class-balanced weights w_k = 1 / |C_k|^power.")
    max_weight_ratio: float = Field(
        10.0, ge=1, description="Weights below max(w) / this are raised to it (authors' code): max/min <= this."
    )
    kmeans_init: int = Field(10, ge=1, le=1000, description="k-means restarts (scikit-learn n_init).")
    time_warp: float = Field(0.2, ge=0, lt=1, description="Time-warp amplitude (fraction of L), 0 disables.")


class OnlineDeepClustering(BankClusterer):
    """Memory bank + centroids for `num_samples` training samples of `dim`-d sensor-spatial features, moved
    online: the bank and labels at every step, the centroids (with dissolve and split) at every epoch end."""

    params: OdcParams

    def __init__(self, params: OdcParams, num_samples: int, dim: int) -> None:
        super().__init__(params, num_samples, dim)
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, features: torch.Tensor, seed: int) -> None:
        super().initialize(features, seed)
        self.initialized.fill_(True)

    def augment(self, sensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The clustering input's random time warp (param `time_warp`, 0 disables)."""
        return time_warp(sensor, self.params.time_warp, generator)

    # -- state updates -----------------------------------------------------------------------------

    @float32
    @torch.no_grad()
    def update_bank(self, indices: torch.Tensor, features: torch.Tensor) -> float:
        """bank_i <- normalize(m * bank_i + (1 - m) * f_i); label_i <- argmax_k cos(bank_i, c_k).

        Returns the fraction of these samples whose label changed.
        """
        m = self.params.bank_momentum
        mixed = F.normalize(m * self.bank[indices] + (1 - m) * F.normalize(features.float(), dim=1), dim=1)
        self.bank[indices] = mixed
        new = self.assign(mixed)
        changed = (new != self.labels[indices]).float().mean().item() if len(indices) else 0.0
        self.labels[indices] = new
        return changed

    @torch.no_grad()
    def update_centroids(self) -> None:
        """Per epoch: centroids = mean of assigned bank features (empty keep theirs); the members of clusters
        under min_cluster_size move to the nearest centroid among the clusters that are not small (never into
        another small or an empty one); each emptied cluster then takes the farthest half of the currently
        largest cluster. Where no cluster reaches min_cluster_size there is nowhere to go: nothing is dissolved."""
        self._recompute_centroids()
        sizes = self.sizes()
        small = (sizes > 0) & (sizes < self.params.min_cluster_size)
        large = sizes >= max(self.params.min_cluster_size, 1)
        if small.any() and large.any():
            members = small[self.labels]
            similarity = self.bank[members] @ F.normalize(self.centroids, dim=1).T
            similarity[:, ~large] = -torch.inf
            self.labels[members] = similarity.argmax(dim=1)
        for k in range(self.k):
            if int((self.labels == k).sum()) == 0:
                self._split_largest_into(k)
        self._recompute_centroids()

    def _recompute_centroids(self) -> None:
        for k in range(self.k):
            members = self.labels == k
            if members.any():
                self.centroids[k] = F.normalize(self.bank[members].mean(dim=0), dim=0)

    def _split_largest_into(self, empty: int) -> None:
        sizes = self.sizes()
        largest = int(sizes.argmax())
        if sizes[largest] < 2:
            return
        members = (self.labels == largest).nonzero().squeeze(1)
        distance = 1 - self.bank[members] @ F.normalize(self.centroids[largest], dim=0)
        farthest = members[distance.argsort(descending=True)[: len(members) // 2]]
        self.labels[farthest] = empty
        self.centroids[empty] = F.normalize(self.bank[farthest].mean(dim=0), dim=0)
        self.centroids[largest] = F.normalize(self.bank[(self.labels == largest)].mean(dim=0), dim=0)

    # -- losses -------------------------------------------------------------------------------------------

    def class_weights(self) -> torch.Tensor:
        """w_k = 1 / |C_k|^power; weights below max(w) / max_weight_ratio are raised to it (the authors' code);
        then renormalised to sum to K.

        An empty cluster (possible between the per-epoch refills) gets the weight of the smallest non-empty
        one, i.e. max(w), and takes no part in the max/min rule (1 / 0^power would be infinite and raise every
        other weight). No training sample carries its label, so it only weighs the validation windows that the
        centroids assign to it. With every cluster empty all weights are 1.
        """
        sizes = self.sizes().double()
        filled = sizes > 0
        if not filled.any():
            return torch.ones(self.k, device=sizes.device)
        smallest = sizes[filled].min()
        sizes = sizes.where(filled, smallest)
        # w / max(w) = (smallest / size)^power: the same after renormalising, and it can neither overflow nor
        # underflow to all zeros whatever the power (max(w) / max(w) is exactly 1).
        relative = (smallest / sizes).pow(self.params.balance_power).clamp(min=1 / self.params.max_weight_ratio)
        return (relative * self.k / relative.sum()).float()
