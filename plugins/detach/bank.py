"""What DETACH's clusterers share (contracts.Clusterer): cluster labels and centroids over a memory bank of
every training sample's feature, kept in buffers so that they are saved and resumed with the model."""

from __future__ import annotations

from typing import Annotated, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Discriminator, Field, Tag
from sklearn.cluster import KMeans
from torch import nn

from detach_framework.engine.locations import AUTO
from detach_framework.engine.precision import float32
from detach_framework.errors import PluginError, UserError

# A clusterer's `k`: a count, or `auto`, which the Session resolves from the training windows before the clusterer
# is built (detach_framework/engine/locations.py), so a clusterer only ever sees an int.
# Told apart by the input's type, so that a bad value gets one error: `k: sometimes` is not `auto`, `k: 1` is below 2.
ClusterCount = Annotated[
    Annotated[int, Field(ge=2, le=1024), Tag("count")] | Annotated[Literal["auto"], Tag("auto")],
    Discriminator(lambda value: "auto" if isinstance(value, str) else "count"),
]
CLUSTER_COUNT_HELP = (
    "Clusters K = number of sensor locations; auto: estimated before stage 1 from which channels fire together "
    "in the training windows (recorded in the run's k_estimate.json)."
)


class BankSettings(Protocol):
    """What every bank clusterer's params hold (KMeansParams, OdcParams)."""

    k: int
    temperature: float
    kmeans_init: int


class BankClusterer(nn.Module):
    """Bank [num_samples, dim] of L2-normalised features, one label per sample and `k` unit centroids, started
    by seeded k-means. A subclass says how they move (`update_bank`, `update_centroids`) and how clusters weigh
    (`class_weights`); `augment` is the identity unless it overrides it."""

    def __init__(self, params: BankSettings, num_samples: int, dim: int) -> None:
        super().__init__()
        if params.k == AUTO:
            raise PluginError("model.clusterer.k: auto reached the clusterer; the Session resolves it to an int first")
        self.params = params
        self.k = params.k
        self.temperature = params.temperature
        self.kmeans_init = params.kmeans_init
        self.register_buffer("bank", torch.zeros(num_samples, dim))
        self.register_buffer("labels", torch.zeros(num_samples, dtype=torch.long))
        self.register_buffer("centroids", F.normalize(torch.randn(self.k, dim, generator=_gen(0)), dim=1))

    # -- assignment ------------------------------------------------------------------------------

    @float32
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1) @ F.normalize(self.centroids, dim=-1).T / self.temperature

    @float32
    def assign(self, features: torch.Tensor) -> torch.Tensor:
        return (F.normalize(features, dim=-1) @ F.normalize(self.centroids, dim=-1).T).argmax(dim=-1)

    def sizes(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.k)

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

    def augment(self, sensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return sensor

    # -- state -------------------------------------------------------------------------------------

    @torch.no_grad()
    def initialize(self, features: torch.Tensor, seed: int) -> None:
        """Bank <- normalised features of the whole training set; labels and centroids by seeded k-means."""
        if len(features) < self.k:
            raise UserError(
                f"model.clusterer.k is {self.k} but the training split has only {len(features)} windows to cluster: "
                "lower k, or give the dataset more windows (e.g. a shorter data.stride_seconds)"
            )
        bank = F.normalize(features.float(), dim=1)
        kmeans = KMeans(n_clusters=self.k, n_init=self.kmeans_init, random_state=seed)
        labels = kmeans.fit_predict(bank.cpu().numpy().astype(np.float64))
        self.bank.copy_(bank)
        self.labels.copy_(torch.from_numpy(labels).long())
        self.centroids.copy_(F.normalize(torch.from_numpy(kmeans.cluster_centers_).float(), dim=1))


def _gen(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
