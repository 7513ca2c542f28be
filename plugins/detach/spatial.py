"""Stage 1 of DETACH: spatial alignment by mutual supervision between a clusterer of the sensor-spatial
features (contracts.Clusterer: the ODC, or plain k-means) and the video spatial branch."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from sklearn.metrics import normalized_mutual_info_score
from torch import nn

from detach_framework.contracts import AlignerBase, Clusterer
from detach_framework.engine.distributed import broadcast_, gather, gather_with_grad
from detach_framework.engine.precision import float32
from detach_framework.errors import PluginError, UserError
from detach_framework.registry import MAX_EPOCHS, ComponentParams


class SpatialParams(ComponentParams):
    alpha: float = Field(1.0, ge=0, description="Weight of L_cluster in L_sensor.")
    beta: float = Field(1.5, ge=0, description="Weight of L_refine in L_sensor.")
    warmup_epochs: int = Field(5, ge=0, le=MAX_EPOCHS, description="Clustering only, all samples.")
    joint_epochs: int = Field(10, ge=0, le=MAX_EPOCHS, description="+ L_videospatial on confident samples.")
    refine_epochs: int = Field(
        10, ge=0, le=MAX_EPOCHS, description="+ L_refine on ambiguous samples (joint again if refine off)."
    )
    refine: bool = Field(True, description="Use L_refine (ablation: without refinement).")
    cluster_on: Literal["all", "confident"] = Field(
        "all", description="L_cluster after warm-up on all samples (paper) or confident only (authors' code)."
    )
    confidence_quantile: float = Field(0.75, gt=0, lt=1, description="Per-cluster distance quantile for m=1.")
    refine_gate: float | None = Field(
        None, gt=0, le=1, description="Authors' code: L_refine only where video max softmax >= gate (0.9 / 0.99)."
    )


@float32
def weighted_cluster_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """L_cluster = -(1/N) sum_i w_{y_i} log p(y_i | z_s,i) (a plain mean, not a weight-normalised one)."""
    if len(labels) == 0:
        return logits.sum() * 0.0
    log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    return -(weights[labels] * log_p).mean()


@float32
def masked_ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if not mask.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask], labels[mask])


class SpatialAligner(AlignerBase):
    """Trains f_v (backbone + spatial head) and f_s with the clusterer's pseudo-labels (sensor -> video on
    confident samples) and the video classifier's predictions (video -> sensor on ambiguous samples)."""

    def __init__(self, params: SpatialParams, model: nn.Module, loss: nn.Module | None) -> None:
        super().__init__()
        if model.clusterer is None:
            raise UserError("stage aligner detach_spatial needs model.clusterer (e.g. name: odc)")
        if not isinstance(model.clusterer, Clusterer):
            raise PluginError(
                f"model.clusterer ({type(model.clusterer).__name__}) lacks members of "
                "detach_framework.contracts.Clusterer, which stage aligner detach_spatial uses"
            )
        if loss is not None:
            raise UserError("stage aligner detach_spatial computes its own losses: remove the stage's `loss`")
        clusterer: Clusterer = model.clusterer
        self.params = params
        self.video_classifier = nn.Linear(model.video_head.out_dim, clusterer.k)
        self.register_buffer("confident", torch.ones(clusterer.bank.shape[0], dtype=torch.bool))
        self.register_buffer("fixtures", torch.full((clusterer.bank.shape[0],), -1, dtype=torch.long))
        self.epoch = 1
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._changes: list[float] = []
        self._generator = torch.Generator()

    @property
    def phase(self) -> str:
        p = self.params
        if self.epoch <= p.warmup_epochs:
            return "warmup"
        if self.epoch <= p.warmup_epochs + p.joint_epochs or not p.refine:
            return "joint"
        return "refine"

    def trainable_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.video_backbone, model.video_head, model.sensor_encoder]

    def get_extra_state(self) -> dict[str, Any]:
        return {"warp_generator": self._generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["warp_generator"])

    # -- lifecycle ------------------------------------------------------------------------------------

    def on_stage_start(self, model: nn.Module, context: Any) -> None:
        p = self.params
        if context.epochs != p.warmup_epochs + p.joint_epochs + p.refine_epochs:
            raise UserError(
                f"stage epochs ({context.epochs}) must equal warmup_epochs + joint_epochs + refine_epochs "
                f"({p.warmup_epochs} + {p.joint_epochs} + {p.refine_epochs}) for aligner detach_spatial"
            )
        if context.resumed:  # bank, labels, centroids and the warp generator came from the checkpoint
            return
        self._generator.manual_seed(context.seed)
        clusterer: Clusterer = model.clusterer
        features = torch.zeros_like(clusterer.bank)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for batch in context.train_batches():
                features[batch["index"]] = model.encode_sensor(batch).float()
                self.fixtures[batch["index"]] = batch["fixture"]
        model.train(was_training)
        clusterer.initialize(features, seed=context.seed)
        for state in (clusterer.bank, clusterer.labels, clusterer.centroids, self.fixtures):
            broadcast_(state)  # every rank starts from rank 0's k-means, whatever float noise they saw

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self._changes = []

    def after_optimizer_step(self, model: nn.Module) -> None:
        # The loss used the labels read before this step; the bank and labels move only now.
        clusterer: Clusterer = model.clusterer
        for indices, features in self._pending:
            self._changes.append(clusterer.update_bank(indices, features))
        self._pending = []

    def on_epoch_end(self, model: nn.Module) -> dict[str, Any]:
        clusterer: Clusterer = model.clusterer
        clusterer.update_centroids()
        self.confident.copy_(clusterer.confidence(self.params.confidence_quantile))
        record: dict[str, Any] = {
            "phase": self.phase,
            "cluster_sizes": clusterer.sizes().tolist(),
            "odc_label_change": float(np.mean(self._changes)) if self._changes else 0.0,
            "confident_fraction": float(self.confident.float().mean()),
        }
        known = self.fixtures >= 0  # analysis only: ground-truth fixtures never reach a loss
        if known.any():
            labels = clusterer.labels[known].cpu().numpy()
            fixtures = self.fixtures[known].cpu().numpy()
            record["cluster_fixture_nmi"] = float(normalized_mutual_info_score(fixtures, labels))
            record["cluster_purity"] = purity(labels, fixtures)
        return record

    # -- the losses ---------------------------------------------------------------------------------------

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clusterer: Clusterer = model.clusterer
        p = self.params
        sensor = batch["sensor"]
        if self.training and self.epoch >= 2:  # the clusterer's view (ODC: time-warped) from the second epoch on
            sensor = clusterer.augment(sensor, self._generator)
        z_s = model.sensor_encoder(sensor)
        # Across processes, every rank computes the losses on the global batch (exact DDP gradients).
        logits_s = gather_with_grad(clusterer.logits(z_s))
        if self.training:
            indices = gather(batch["index"])
            labels = clusterer.labels[indices]  # read before this step's bank update
            confident = self.confident[indices]
            self._pending.append((indices, gather(z_s.detach())))
        else:  # validation samples are not in the bank: label them by the current centroids
            labels = gather(clusterer.assign(z_s.detach()))
            confident = torch.ones_like(labels, dtype=torch.bool)
        weights = clusterer.class_weights().to(z_s.device)
        phase = self.phase
        cluster_mask = torch.ones_like(confident) if (phase == "warmup" or p.cluster_on == "all") else confident
        l_cluster = weighted_cluster_loss(logits_s[cluster_mask], labels[cluster_mask], weights)
        out = {"l_cluster": l_cluster}
        total = p.alpha * l_cluster
        if phase != "warmup":
            logits_v = gather_with_grad(self.video_classifier(model.encode_video(batch))).float()  # softmax in fp32
            out["l_videospatial"] = masked_ce(logits_v, labels, confident)
            total = total + out["l_videospatial"]
            if phase == "refine":
                probabilities = logits_v.detach().softmax(dim=1)
                ambiguous = ~confident
                if p.refine_gate is not None:
                    ambiguous = ambiguous & (probabilities.max(dim=1).values >= p.refine_gate)
                out["l_refine"] = masked_ce(logits_s, probabilities.argmax(dim=1), ambiguous)
                total = total + p.beta * out["l_refine"]
        out["loss"] = total
        return out


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of samples whose cluster's majority ground-truth class is their own."""
    total = 0
    for cluster in np.unique(labels):
        total += np.bincount(truth[labels == cluster]).max()
    return float(total / max(len(labels), 1))
