"""Stage 2 of DETACH: temporal alignment with the spatial-temporal weighted contrastive loss."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from detach_framework.contracts import AlignerBase
from detach_framework.engine.distributed import gather
from detach_framework.engine.precision import float32
from detach_framework.errors import UserError
from detach_framework.registry import ComponentParams
from detach_plugins.losses import require_contrastive

# Per negative type and epoch, at most this many W values are kept (a uniform sample) for the quantiles.
W_RESERVOIR = 4096
W_QUANTILES = torch.linspace(0, 1, 21)
# Batch keys of the frozen spatial embeddings the trainer precomputes for this stage (fixed_outputs).
FIXED_Z_V, FIXED_Z_S = "fixed_z_v", "fixed_z_s"


class TemporalParams(ComponentParams):
    momentum: float = Field(0.999, ge=0, lt=1, description="EMA: theta_m <- m * theta_m + (1 - m) * theta.")
    lambda_hard: float = Field(3.0, ge=1, description="W_sp = 1 + (lambda_hard - 1) * S_sp.")
    spatial_weight: bool = Field(True, description="Use W_sp (ablation: without W_sp).")
    temporal_weight: bool = Field(True, description="Use W_tm (ablation: without W_tm).")
    temporal_similarity: Literal["cross_modal", "intra_modal"] = Field(
        "cross_modal",
        description="S_tm from cos(h'_v,i, h'_s,j) (paper) or the mean of the within-modality cosines (code).",
    )
    temporal_weight_after_epochs: int = Field(
        0,
        ge=0,
        description="Plain InfoNCE (W = 1) for the stage's first N epochs, the weighted L_CL after them "
        "(0: weighted from the first step, as in the paper). For measuring whether W needs aligned g_v, g_s.",
    )
    s2v_weights: Literal["same", "transposed"] = Field(
        "same",
        description="In L_s2v, sensor anchor i weights negative video j by W_ij, the same W as L_v2s (paper), "
        "or by W_ji (W transposed: the weight of the pair video j, sensor i).",
    )


def pairwise_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def s_tm_matrix(hm_v: torch.Tensor, hm_s: torch.Tensor, mode: str = "cross_modal") -> torch.Tensor:
    """S_tm = ReLU(cos(h'_v,i, h'_s,j)) (cross_modal) or ReLU((cos(h'_v,i, h'_v,j) + cos(h'_s,i, h'_s,j)) / 2)."""
    if mode == "cross_modal":
        return pairwise_cos(hm_v, hm_s).relu()
    return ((pairwise_cos(hm_v, hm_v) + pairwise_cos(hm_s, hm_s)) / 2).relu()


@float32
def negative_weights(
    z_v: torch.Tensor,
    z_s: torch.Tensor,
    hm_v: torch.Tensor,
    hm_s: torch.Tensor,
    *,
    lambda_hard: float,
    spatial_weight: bool = True,
    temporal_weight: bool = True,
    temporal_similarity: str = "cross_modal",
) -> torch.Tensor:
    """W = W_sp * W_tm with W_ii = 0 (METHOD.md, stage 2).

    S_sp = max(ReLU(cos(z_v,i, z_v,j)), ReLU(cos(z_s,i, z_s,j))); W_sp = 1 + (lambda_hard - 1) * S_sp
    S_tm = ReLU(cos(h'_v,i, h'_s,j)) or ReLU((cos(h'_v,i, h'_v,j) + cos(h'_s,i, h'_s,j)) / 2)
    W_tm = 1 - S_sp * S_tm. A switched-off factor is 1; both off gives plain InfoNCE (W = 1 off-diagonal).
    """
    s_sp = torch.maximum(pairwise_cos(z_v, z_v).relu(), pairwise_cos(z_s, z_s).relu())
    weights = torch.ones_like(s_sp)
    if spatial_weight:
        weights = weights * (1 + (lambda_hard - 1) * s_sp)
    if temporal_weight:
        weights = weights * (1 - s_sp * s_tm_matrix(hm_v, hm_s, temporal_similarity))
    return weights.fill_diagonal_(0.0)


NEGATIVE_TYPES = ("false", "hard", "easy")


def negative_types(labels: torch.Tensor, fixtures: torch.Tensor) -> dict[str, torch.Tensor]:
    """Ground-truth types of off-diagonal pairs between labelled windows (analysis only):
    false = same fixture and same action, hard = same fixture, other action, easy = other fixture."""
    known = fixtures >= 0
    pair = known[:, None] & known[None, :] & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    same_place = fixtures[:, None] == fixtures[None, :]
    same_action = labels[:, None] == labels[None, :]
    return {
        "false": pair & same_place & same_action,
        "hard": pair & same_place & ~same_action,
        "easy": pair & ~same_place,
    }


class TemporalAligner(AlignerBase):
    """Trains g_v and g_s only; f_v and f_s stay frozen. Keeps EMA momentum copies of g_v and g_s."""

    def __init__(self, params: TemporalParams, model: nn.Module, loss: nn.Module | None) -> None:
        super().__init__()
        if not model.decomposed:
            raise UserError("aligner detach_temporal needs model.video_temporal_head and model.sensor_temporal_encoder")
        if loss is None:
            raise UserError("aligner detach_temporal needs a stage loss (e.g. name: infonce, temperature: 0.1)")
        require_contrastive("detach_temporal", loss)
        self.params = params
        self.loss = loss
        self.momentum_video = copy.deepcopy(model.video_temporal_head).requires_grad_(False)
        self.momentum_sensor = copy.deepcopy(model.sensor_temporal_encoder).requires_grad_(False)
        self._epoch = 1
        self._sums: dict[str, float] = {}  # "w_false", "s_tm_hard", ...: this epoch's sums per negative type
        self._counts = dict.fromkeys(NEGATIVE_TYPES, 0)
        self._reset_reservoir()

    def _reset_reservoir(self) -> None:
        # Bottom-k sampling by random keys: a uniform sample of bounded size whatever the epoch length.
        # A private generator so the analysis never shifts the training RNG.
        self._sample_gen = torch.Generator().manual_seed(0)
        self._samples = {kind: (torch.empty(0), torch.empty(0)) for kind in NEGATIVE_TYPES}

    def _reservoir_add(self, kind: str, values: torch.Tensor) -> None:
        kept, keys = self._samples[kind]
        values = torch.cat([kept, values.detach().float().cpu()])
        keys = torch.cat([keys, torch.rand(len(values) - len(kept), generator=self._sample_gen)])
        if len(values) > W_RESERVOIR:
            chosen = keys.topk(W_RESERVOIR, largest=False).indices
            values, keys = values[chosen], keys[chosen]
        self._samples[kind] = (values, keys)

    def trainable_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.video_temporal_head, model.sensor_temporal_encoder]

    def train(self, mode: bool = True) -> TemporalAligner:
        super().train(mode)
        # Momentum encoders always run in eval mode: their batch-norm statistics come from the EMA.
        self.momentum_video.eval()
        self.momentum_sensor.eval()
        return self

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module) -> None:
        m = self.params.momentum
        for online, ema in (
            (model.video_temporal_head, self.momentum_video),
            (model.sensor_temporal_encoder, self.momentum_sensor),
        ):
            for p_ema, p in zip(ema.parameters(), online.parameters(), strict=True):
                p_ema.mul_(m).add_(p.detach(), alpha=1 - m)
            for b_ema, b in zip(ema.buffers(), online.buffers(), strict=True):
                b_ema.copy_(b)

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch
        self._sums = {}
        self._counts = dict.fromkeys(NEGATIVE_TYPES, 0)
        self._reset_reservoir()

    @property
    def weighting(self) -> bool:
        """Whether this epoch trains with the weighted L_CL (else plain InfoNCE, see temporal_weight_after_epochs)."""
        return self._epoch > self.params.temporal_weight_after_epochs

    def on_epoch_end(self, model: nn.Module) -> dict[str, Any]:
        # Per negative type, the mean W the loss used and the mean S_tm of the momentum encoders (the analysis
        # of whether S_tm tells false negatives from hard ones).
        record: dict[str, Any] = {key: total / self._counts[key.rsplit("_", 1)[1]] for key, total in self._sums.items()}
        # Fixed quantiles (0, 0.05, ..., 1) of the sampled W per type: `detach report` draws their CDFs.
        for kind, (values, _) in self._samples.items():
            if len(values):
                record[f"w_{kind}_quantiles"] = [round(float(q), 5) for q in torch.quantile(values, W_QUANTILES)]
        return record

    def fixed_outputs(self, model: nn.Module) -> dict[str, Any]:
        # f_v and f_s are frozen in this stage and see each window as it is (no augmentation): z_v and z_s
        # are fixed per window, so the trainer computes them once instead of at every step.
        return {FIXED_Z_V: model.encode_video, FIXED_Z_S: model.encode_sensor}

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():  # the spatial branch is frozen in this stage
            video_input = model.video_temporal_input(batch)
            z_v = batch[FIXED_Z_V] if FIXED_Z_V in batch else model.encode_video(batch)
            z_s = batch[FIXED_Z_S] if FIXED_Z_S in batch else model.encode_sensor(batch)
            hm_v, hm_s = self.momentum_video(video_input), self.momentum_sensor(batch["sensor"])
        h_v = model.video_temporal_head(video_input)
        h_s = model.sensor_temporal_encoder(batch["sensor"])
        loss, weights = self.weighted_loss(z_v, z_s, hm_v, hm_s, h_v, h_s)
        if self.training and "fixture" in batch:
            s_tm = s_tm_matrix(gather(hm_v), gather(hm_s), self.params.temporal_similarity)
            for kind, mask in negative_types(gather(batch["label"]), gather(batch["fixture"])).items():
                if mask.any():
                    for name, values in (("w", weights), ("s_tm", s_tm)):
                        key = f"{name}_{kind}"
                        self._sums[key] = self._sums.get(key, 0.0) + float(values[mask].sum())
                    self._counts[kind] += int(mask.sum())
                    self._reservoir_add(kind, weights[mask])
        return {"loss": loss, "w_mean": weights.sum() / max(weights.numel() - len(weights), 1)}

    @float32
    def weighted_loss(
        self,
        z_v: torch.Tensor,
        z_s: torch.Tensor,
        hm_v: torch.Tensor,
        hm_s: torch.Tensor,
        h_v: torch.Tensor,
        h_s: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, W) from this process's embeddings, in float32 whatever precision the encoders ran in.

        W is built on the global batch when several processes train together (the frozen embeddings are
        gathered here); the loss gathers u_v and u_s itself, with gradients.
        """
        p = self.params
        weights = negative_weights(
            gather(z_v),
            gather(z_s),
            gather(hm_v),
            gather(hm_s),
            lambda_hard=p.lambda_hard,
            spatial_weight=p.spatial_weight and self.weighting,
            temporal_weight=p.temporal_weight and self.weighting,
            temporal_similarity=p.temporal_similarity,
        )
        u_v = torch.cat([F.normalize(z_v, dim=-1), F.normalize(h_v, dim=-1)], dim=-1)
        u_s = torch.cat([F.normalize(z_s, dim=-1), F.normalize(h_s, dim=-1)], dim=-1)
        if p.s2v_weights == "transposed":
            return self.loss(u_v, u_s, weights, s2v_weights=weights.T), weights
        # Only the transposed form needs the keyword, so any loss of the plain contract serves the paper's.
        return self.loss(u_v, u_s, weights), weights
