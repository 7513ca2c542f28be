"""Losses as components (kind `loss`), each owning its cross-process gather (detach_framework.contracts.Loss).

infonce                symmetric InfoNCE with optional negative weights W (IMU2CLIP, DETACH's stage 2, and the
                       cross-modal term of PRIMUS and EVI-MAE); gathers the global batch with gradients
primus_ssl             PRIMUS's sensor self-supervision: NT-Xent between two views + NNCLR positives
comodo_distillation    COMODO's teacher-to-student distillation over a bank of teacher embeddings
masked_reconstruction  EVI-MAE's mean squared error over the masked tokens

A stage's `loss` is what its aligner calls on paired embeddings (or, for comodo, distils with); the aligners
with an objective of their own (primus's self-supervision, evi_mae's reconstruction, comodo without a stage
loss) build it from their params, where those hyperparameters stay.
"""

from __future__ import annotations

from torch import nn

from detach_framework.contracts import ContrastiveLoss, Loss, UnusableLoss
from detach_framework.plugins import hookimpl
from detach_framework.registry import Register

from .distillation import ComodoDistillationLoss, ComodoDistillationParams
from .infonce import InfoNceLoss, InfoNceParams
from .reconstruction import MaskedReconstructionLoss, MaskedReconstructionParams
from .views import PrimusSslLoss, PrimusSslParams

__all__ = [
    "ComodoDistillationLoss",
    "ComodoDistillationParams",
    "InfoNceLoss",
    "InfoNceParams",
    "MaskedReconstructionLoss",
    "MaskedReconstructionParams",
    "PrimusSslLoss",
    "PrimusSslParams",
    "detach_register_components",
    "require_contrastive",
]


def require_contrastive(aligner: str, loss: nn.Module) -> None:
    """Refuse a Loss of another calling convention; any other module of the ContrastiveLoss call is trusted."""
    if isinstance(loss, Loss) and not isinstance(loss, ContrastiveLoss):
        raise UnusableLoss(
            f"aligner {aligner} calls its stage loss on paired video and sensor embeddings, which "
            f"{type(loss).__name__} does not take: use a contrastive loss (e.g. name: infonce)"
        )


@hookimpl
def detach_register_components(register: Register) -> None:
    register(
        kind="loss",
        name="infonce",
        factory=InfoNceLoss,
        params=InfoNceParams,
        description="Symmetric InfoNCE, clamped learnable log-scale temperature, optional negative weights.",
    )
    register(
        kind="loss",
        name="primus_ssl",
        factory=PrimusSslLoss,
        params=PrimusSslParams,
        description="PRIMUS's self-supervision on two views: NT-Xent + NNCLR positives from a support set "
        "(built by aligner primus from its params).",
    )
    register(
        kind="loss",
        name="comodo_distillation",
        factory=ComodoDistillationLoss,
        params=ComodoDistillationParams,
        description="COMODO's distillation of the teacher's similarity distribution over a bank into the student.",
    )
    register(
        kind="loss",
        name="masked_reconstruction",
        factory=MaskedReconstructionLoss,
        params=MaskedReconstructionParams,
        description="Mean squared error over the masked tokens (built by aligner evi_mae for both modalities).",
    )
