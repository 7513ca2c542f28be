"""Classification metrics of the downstream protocol: weighted F1, macro mAP, accuracy, per-class rows.

Pure functions on numpy arrays. Labels are integer class indices in [0, num_classes); scores are
[N, num_classes] (probabilities or any monotone per-class score).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, precision_recall_fscore_support


def finite_matrix(x: np.ndarray, name: str, columns: str) -> np.ndarray:
    """x as float64 [N, columns], refusing other ranks and non-finite values (`columns` names the width)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [N, {columns}], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite values")
    return arr


def _as_labels(y: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    if t.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    return t, p


def _check_range(*arrays: np.ndarray, num_classes: int) -> None:
    for arr in arrays:
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes}), got range [{arr.min()}, {arr.max()}]")


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's f1_score(average='weighted'): per-class F1 weighted by true support.

    Classes absent from y_true weigh zero; an undefined precision/recall counts as 0 (no warning).
    """
    t, p = _pair(y_true, y_pred)
    return float(f1_score(t, p, average="weighted", zero_division=0))


def average_precision_per_class(y_true: np.ndarray, scores: np.ndarray) -> dict[int, float]:
    """One-vs-rest average precision (sklearn, non-interpolated) for each class present in y_true.

    Classes without a positive test sample are skipped: their AP is undefined, not zero.
    """
    t = _as_labels(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != t.shape[0]:
        raise ValueError(f"scores must be [N, num_classes] with N={t.shape[0]}, got shape {s.shape}")
    if t.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    if t.min() < 0 or t.max() >= s.shape[1]:
        raise ValueError(f"labels must lie in [0, {s.shape[1]}), got range [{t.min()}, {t.max()}]")
    return {int(c): float(average_precision_score(t == c, s[:, c])) for c in np.unique(t)}


def macro_map(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean over the classes present in y_true of their one-vs-rest average precision."""
    return float(np.mean(list(average_precision_per_class(y_true, scores).values())))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] int64 counts; rows are true classes, columns predicted ones."""
    t, p = _pair(y_true, y_pred)
    _check_range(t, p, num_classes=num_classes)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def per_class_rows(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of class, precision, recall, f1, support for every class name (absent ones with support 0)."""
    t, p = _pair(y_true, y_pred)
    _check_range(t, p, num_classes=len(class_names))  # sklearn would silently drop unknown labels
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(t, p, labels=labels, average=None, zero_division=0)
    return [
        {
            "class": str(name),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]
