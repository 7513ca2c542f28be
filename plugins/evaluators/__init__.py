"""First-party evaluators: the linear probe of the downstream protocol and cross-modal retrieval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field, PositiveInt

from detach_framework.contracts import EmbeddingSet, EvalContext, EvalResult, WindowProbeEvaluator
from detach_framework.evaluation import (
    accuracy,
    confusion_matrix,
    macro_map,
    per_class_rows,
    plot_confusion_matrix,
    recall_at_k,
    weighted_f1,
)
from detach_framework.evaluation.probe import LinearClassifier
from detach_framework.plugins import hookimpl
from detach_framework.registry import MAX_BATCH_SIZE, MAX_EPOCHS, ComponentParams, Register

from .probe_fit import MAX_PROBE_LR, MAX_PROBE_WEIGHT_DECAY, ProbeFitParams
from .recording_probe import RecordingProbeEvaluator, RecordingProbeParams

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


class RetrievalParams(ComponentParams):
    ks: list[PositiveInt] = Field(
        default_factory=lambda: [1, 5, 10],
        min_length=1,
        max_length=64,
        description="Cut-offs k of recall@k (a k above the test size counts as the test size).",
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
        out_dir = Path(ctx.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        png = plot_confusion_matrix(
            confusion_matrix(y_true, y_pred, len(names)),
            names,
            out_dir / CONFUSION_PNG,
            title="Linear probe confusion matrix (test)",
        )
        return EvalResult(metrics=metrics, tables={"per_class": per_class_rows(y_true, y_pred, names)}, plots=[png])


class RetrievalEvaluator:
    """Video->sensor and sensor->video recall@k on the test split's paired joint-space embeddings."""

    def __init__(self, params: RetrievalParams) -> None:
        self.params = params

    def evaluate(self, train: EmbeddingSet, test: EmbeddingSet, ctx: EvalContext) -> EvalResult:
        return EvalResult(metrics=recall_at_k(test.video, test.sensor, self.params.ks))


@hookimpl
def detach_register_components(register: Register) -> None:
    register(
        kind="evaluator",
        name="linear_probe",
        factory=LinearProbeEvaluator,
        params=LinearProbeParams,
        description="Linear probe on frozen sensor features: weighted F1, macro mAP, accuracy, confusion.",
    )
    register(
        kind="evaluator",
        name="retrieval",
        factory=RetrievalEvaluator,
        params=RetrievalParams,
        description="Cross-modal retrieval recall@k (video->sensor and sensor->video) on the test split.",
    )
    register(
        kind="evaluator",
        name="recording_probe",
        factory=RecordingProbeEvaluator,
        params=RecordingProbeParams,
        description="Recording-level linear probe on the mean of each recording's window features (HWU-USP).",
    )
