"""Plain k-means as stage 1's clusterer: re-fitted on the memory bank once per epoch, nothing moved online.

The simplest clusterer contracts.Clusterer admits, next to the ODC (odc.py): the bank takes each step's
features as they are, labels and centroids change only when k-means is re-fitted at the epoch's end.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from sklearn.cluster import KMeans

from detach_framework.engine.precision import float32
from detach_framework.registry import ComponentParams

from .bank import CLUSTER_COUNT_HELP, BankClusterer, ClusterCount


class KMeansParams(ComponentParams):
    k: ClusterCount = Field(7, description=CLUSTER_COUNT_HELP)
    temperature: float = Field(0.1, gt=0, description="Cluster logits are cos(z_s, centroid) / temperature.")
    kmeans_init: int = Field(10, ge=1, le=1000, description="Restarts of the first fit (scikit-learn n_init).")
    weights: Literal["uniform", "inverse_size"] = Field(
        "uniform", description="L_cluster's class weights: all 1, or w_k = 1 / |C_k| rescaled to sum to K."
    )


class KMeansClusterer(BankClusterer):
    """k-means over `num_samples` training samples of `dim`-d features, re-fitted per epoch."""

    params: KMeansParams

    @float32
    @torch.no_grad()
    def update_bank(self, indices: torch.Tensor, features: torch.Tensor) -> float:
        """bank_i <- normalize(f_i), for the next re-fit. Labels wait for it, so none changes here."""
        self.bank[indices] = F.normalize(features.float(), dim=1)
        return 0.0

    @torch.no_grad()
    def update_centroids(self) -> None:
        """Re-fit k-means on the bank from the current centroids, so that cluster k stays cluster k for the video
        classifier that learns the labels (a fresh random start would permute them every epoch)."""
        if not torch.isfinite(self.bank).all():  # scikit-learn would raise; the trainer reports the divergence
            return
        start = self.centroids.cpu().numpy().astype(np.float64)
        kmeans = KMeans(n_clusters=self.k, init=start, n_init=1)
        labels = kmeans.fit_predict(self.bank.cpu().numpy().astype(np.float64))
        self.labels.copy_(torch.from_numpy(labels).long())
        self.centroids.copy_(F.normalize(torch.from_numpy(kmeans.cluster_centers_).float(), dim=1))

    def class_weights(self) -> torch.Tensor:
        """uniform: every weight 1; inverse_size: w_k = 1 / |C_k| (an empty cluster counts as size 1), rescaled
        to sum to K."""
        if self.params.weights == "uniform":
            return torch.ones(self.k, device=self.labels.device)
        weights = 1 / self.sizes().clamp(min=1).double()
        return (weights * self.k / weights.sum()).float()
