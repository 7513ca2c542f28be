"""Online deep clustering (ODC) of sensor-spatial features, as METHOD.md describes it.

The state (memory bank, labels, centroids) is made of buffers, so it is saved with the model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from sklearn.cluster import KMeans
from torch import nn

from detach_framework.engine.precision import float32
from detach_framework.errors import UserError
from detach_framework.registry import ComponentParams


class OdcParams(ComponentParams):
    k: int = Field(7, ge=2, le=1024, description="Clusters K = number of sensor locations.")
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


class OnlineDeepClustering(nn.Module):
    """Memory bank + centroids for `num_samples` training samples of `dim`-d sensor-spatial features."""

    def __init__(self, params: OdcParams, num_samples: int, dim: int) -> None:
        super().__init__()
        self.params = params
        self.k = params.k
        self.register_buffer("bank", torch.zeros(num_samples, dim))
        self.register_buffer("labels", torch.zeros(num_samples, dtype=torch.long))
        self.register_buffer("centroids", F.normalize(torch.randn(params.k, dim, generator=_gen(0)), dim=1))
        self.register_buffer("initialized", torch.tensor(False))

    # -- assignment ------------------------------------------------------------------------------

    @float32
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1) @ F.normalize(self.centroids, dim=-1).T / self.params.temperature

    @float32
    def assign(self, features: torch.Tensor) -> torch.Tensor:
        return (F.normalize(features, dim=-1) @ F.normalize(self.centroids, dim=-1).T).argmax(dim=-1)

    # -- state updates -----------------------------------------------------------------------------

    @torch.no_grad()
    def initialize(self, features: torch.Tensor, seed: int) -> None:
        """Bank <- normalised features of the whole training set; labels and centroids by seeded k-means."""
        if len(features) < self.k:
            raise UserError(
                f"model.clusterer.k is {self.k} but the training split has only {len(features)} windows to cluster: "
                "lower k, or give the dataset more windows (e.g. a shorter data.stride_seconds)"
            )
        bank = F.normalize(features.float(), dim=1)
        kmeans = KMeans(n_clusters=self.k, n_init=self.params.kmeans_init, random_state=seed)
        labels = kmeans.fit_predict(bank.cpu().numpy().astype(np.float64))
        self.bank.copy_(bank)
        self.labels.copy_(torch.from_numpy(labels).long())
        self.centroids.copy_(F.normalize(torch.from_numpy(kmeans.cluster_centers_).float(), dim=1))
        self.initialized.fill_(True)

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

    # -- losses and splits -----------------------------------------------------------------------------

    def sizes(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.k)

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

    def confidence(self, quantile: float = 0.75) -> torch.Tensor:
        """Per cluster: confident (True) when the sample's cosine distance to its centroid is below the
        cluster's `quantile` of those distances over the memory bank."""
        distance = 1 - (self.bank * F.normalize(self.centroids, dim=1)[self.labels]).sum(dim=1)
        confident = torch.zeros_like(self.labels, dtype=torch.bool)
        for k in range(self.k):
            members = self.labels == k
            if members.any():
                threshold = torch.quantile(distance[members], quantile)
                confident[members] = distance[members] < threshold
        return confident

    def time_warp(self, sensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Warp the time axis of [B, C, L]: t' = t + a_b * A * L * sin(linspace(0, 4 pi, L)), a_b ~ U(0, 1)
        per sample, clipped to [0, L-1], linear interpolation."""
        batch, _, length = sensor.shape
        if self.params.time_warp == 0 or length < 2:
            return sensor
        fraction = torch.rand(batch, 1, generator=generator).to(sensor.device)
        steps = torch.arange(length, dtype=sensor.dtype, device=sensor.device)
        offset = (
            self.params.time_warp * length * torch.sin(torch.linspace(0, 4 * torch.pi, length, device=sensor.device))
        )
        position = (steps + fraction * offset).clamp(0, length - 1)  # [B, L]
        low = position.floor().long().clamp(max=length - 2)
        weight = (position - low).unsqueeze(1)  # [B, 1, L]
        index = low.unsqueeze(1).expand(-1, sensor.shape[1], -1)
        left = sensor.gather(2, index)
        right = sensor.gather(2, index + 1)
        return left + weight * (right - left)


def _gen(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
