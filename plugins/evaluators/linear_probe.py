"""The linear probe of the downstream protocol, on each window's frozen `probe` features."""

from __future__ import annotations

import numpy as np
from pydantic import Field, PositiveInt

from detach_framework.contracts import EmbeddingSet, EvalContext, EvalResult, WindowProbeEvaluator
from detach_framework.evaluation import (
    accuracy,
    macro_map,
    per_class_rows,
    weighted_f1,
)
from detach_framework.evaluation.probe import LinearClassifier
from detach_framework.registry import MAX_BATCH_SIZE, MAX_EPOCHS

from .probe_fit import MAX_PROBE_LR, MAX_PROBE_WEIGHT_DECAY, ProbeFitParams, write_confusion_png

CONFUSION_PNG = "confusion_matrix.png"


class LinearProbeParams(ProbeFitParams):
    epochs: PositiveInt = Field(30, le=MAX_EPOCHS, description="Training epochs of the linear classifier.")
    lr: float = Field(1e-3, gt=0, le=MAX_PROBE_LR, description="Adam learning rate.")
    batch_size: PositiveInt = Field(256, le=MAX_BATCH_SIZE, description="Mini-batch size.")
    weight_decay: float = Field(
        0.0, ge=0, le=MAX_PROBE_WEIGHT_DECAY, description="Adam weight decay (L2 on the classifier)."
    )
    standardize: bool = Field(
        True, description="Standardise each feature with the train split's mean and std before fitting."
    )


class LinearProbeEvaluator(WindowProbeEvaluator):
    """Linear probe on frozen `probe` features: weighted F1, macro mAP, accuracy, per-class table, CM plot."""

    def __init__(self, params: LinearProbeParams) -> None:
        self.params = params

    def fit_classifier(self, train: EmbeddingSet, ctx: EvalContext) -> LinearClassifier:
        return self.params.fit_classifier(train.probe, train.labels, len(ctx.class_names), ctx.seed)

    def evaluate(self, train: EmbeddingSet, test: EmbeddingSet, ctx: EvalContext) -> EvalResult:
        names = list(ctx.class_names)
        probs = self.params.fit_probe(train.probe, train.labels, test.probe, len(names), ctx.seed)
        y_true = np.asarray(test.labels)  # metrics reject non-integer labels rather than truncating
        y_pred = probs.argmax(axis=1)
        metrics = {
            "weighted_f1": weighted_f1(y_true, y_pred),
            "macro_map": macro_map(y_true, probs),
            "accuracy": accuracy(y_true, y_pred),
        }
        png = write_confusion_png(
            y_true, y_pred, names, ctx.out_dir, CONFUSION_PNG, "Linear probe confusion matrix (test)"
        )
        return EvalResult(metrics=metrics, tables={"per_class": per_class_rows(y_true, y_pred, names)}, plots=[png])
