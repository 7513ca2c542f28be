"""Recording-level linear probe (HWU-USP's protocol): labels exist per recording only, so each recording is
represented by the mean of its window features and the probe classifies recordings."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, PositiveInt

from detach_framework.contracts import EmbeddingSet, EvalContext, EvalResult
from detach_framework.errors import UserError
from detach_framework.evaluation import (
    accuracy,
    macro_map,
    per_class_rows,
    weighted_f1,
)
from detach_framework.registry import MAX_BATCH_SIZE, MAX_EPOCHS

from .probe_fit import MAX_PROBE_LR, MAX_PROBE_WEIGHT_DECAY, ProbeFitParams, write_confusion_png

CONFUSION_PNG = "recording_confusion_matrix.png"


class RecordingProbeParams(ProbeFitParams):
    features: Literal["probe", "sensor", "video"] = Field(
        "probe", description="Which embeddings are averaged per recording (probe: the sensor probe features)."
    )
    epochs: PositiveInt = Field(
        200, le=MAX_EPOCHS, description="Training epochs of the linear classifier (few samples)."
    )
    lr: float = Field(1e-2, gt=0, le=MAX_PROBE_LR, description="Adam learning rate.")
    batch_size: PositiveInt = Field(64, le=MAX_BATCH_SIZE, description="Mini-batch size.")
    weight_decay: float = Field(0.0, ge=0, le=MAX_PROBE_WEIGHT_DECAY, description="Adam weight decay.")
    standardize: bool = Field(True, description="Standardise features with the train recordings' statistics.")


def recording_means(
    features: np.ndarray, recordings: np.ndarray, labels: np.ndarray, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean feature [R, P], label [R], recording id [R]) per recording, ids ascending."""
    ids, inverse = np.unique(recordings, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    sums = np.zeros((len(ids), features.shape[1]))
    np.add.at(sums, inverse, features.astype(np.float64))
    first = np.zeros(len(ids), np.int64)
    first[inverse[::-1]] = np.arange(len(inverse))[::-1]  # first row of each recording
    rec_labels = np.asarray(labels)[first]
    mixed = np.flatnonzero(np.asarray(labels) != rec_labels[inverse])
    if len(mixed):
        raise UserError(
            f"recording_probe: {split} recording {int(recordings[mixed[0]])} has windows with different labels; "
            "the probe needs one label per recording"
        )
    return sums / counts[:, None], rec_labels.astype(np.int64), ids


class RecordingProbeEvaluator:
    """Linear probe on per-recording mean features: recording accuracy, weighted F1, macro mAP, confusion."""

    def __init__(self, params: RecordingProbeParams) -> None:
        self.params = params

    def evaluate(self, train: EmbeddingSet, test: EmbeddingSet, ctx: EvalContext) -> EvalResult:
        if train.recordings is None or test.recordings is None:
            raise UserError(
                "recording_probe: the dataset's samples carry no 'recording' key (use a recording-level "
                "dataset such as hwu_usp)"
            )
        p = self.params
        names = list(ctx.class_names)
        xtr, ytr, _ = recording_means(getattr(train, p.features), train.recordings, train.labels, "train")
        xte, yte, _ = recording_means(getattr(test, p.features), test.recordings, test.labels, "test")
        probs = p.fit_probe(xtr, ytr, xte, len(names), ctx.seed)
        pred = probs.argmax(axis=1)
        metrics = {
            "recording_accuracy": accuracy(yte, pred),
            "recording_weighted_f1": weighted_f1(yte, pred),
            "recording_macro_map": macro_map(yte, probs),
            "recording_count": float(len(yte)),
        }
        png = write_confusion_png(
            yte, pred, names, ctx.out_dir, CONFUSION_PNG, "Recording-level probe confusion matrix (test)"
        )
        return EvalResult(
            metrics=metrics, tables={"per_class_recording": per_class_rows(yte, pred, names)}, plots=[png]
        )
