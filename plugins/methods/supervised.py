"""The ceiling reference row: the sensor encoder trained with labels (cross-entropy through a linear classifier).

Evaluation then freezes the encoder and fits the usual linear probe on its features, like every other method,
so the row shows what the encoder architecture can reach when told the answer. The classifier belongs to the
aligner (it is not part of the embedding). The floor row needs no component: `stages: []` evaluates the
untrained encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from detach_framework.contracts import AlignerBase, UnusableLoss
from detach_framework.errors import UserError
from detach_framework.plugins import hookimpl
from detach_framework.registry import ComponentParams, Register


class SupervisedParams(ComponentParams):
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the embedding before the classifier.")


class SupervisedAligner(AlignerBase):
    def __init__(self, params: SupervisedParams, model: nn.Module, loss: nn.Module | None) -> None:
        super().__init__()
        if loss is not None:
            raise UnusableLoss("aligner supervised trains with cross-entropy on the labels: remove the stage's `loss`")
        classes = int(getattr(model, "num_classes", 0))
        if classes < 2:
            raise UserError(f"aligner supervised needs a dataset with at least 2 classes (got {classes})")
        self.params = params
        self.dropout = nn.Dropout(params.dropout)
        self.classifier = nn.Linear(int(model.sensor_encoder.out_dim), classes)

    def trainable_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.sensor_encoder]

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.classifier(self.dropout(model.encode_sensor(batch))).float()  # the loss in float32
        labels = batch["label"]
        loss = F.cross_entropy(logits, labels, label_smoothing=self.params.label_smoothing)
        accuracy = (logits.argmax(dim=1) == labels).float().mean().detach()
        return {"loss": loss, "accuracy": accuracy}


@hookimpl
def detach_register_components(register: Register) -> None:
    register(
        kind="aligner",
        name="supervised",
        factory=SupervisedAligner,
        params=SupervisedParams,
        description="Ceiling reference: the sensor encoder + a linear classifier trained with cross-entropy on labels.",
    )
