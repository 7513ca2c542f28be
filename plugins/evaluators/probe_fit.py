"""What the probe-based evaluators share: fitting the linear probe from their params, drawing its confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from detach_framework.evaluation import confusion_matrix, linear_probe, plot_confusion_matrix
from detach_framework.evaluation.probe import LinearClassifier, fit_linear_probe
from detach_framework.registry import ComponentParams

# A probe's Adam diverges to NaN long before these (and torch cannot even hold a weight decay above float32's range).
MAX_PROBE_LR = 10.0
MAX_PROBE_WEIGHT_DECAY = 10.0


class ProbeFitParams(ComponentParams):
    """Base of a probe evaluator's params. Subclasses declare epochs, lr, batch_size, weight_decay and
    standardize themselves, each with its own default (a window probe and a recording probe train differently)."""

    def fit_probe(
        self, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, num_classes: int, seed: int
    ) -> np.ndarray:
        """Class probabilities [N_test, num_classes] of a linear probe fitted on (x_train, y_train)."""
        return linear_probe(x_train, y_train, x_test, num_classes, **self.fit_settings(seed))

    def fit_classifier(self, x_train: np.ndarray, y_train: np.ndarray, num_classes: int, seed: int) -> LinearClassifier:
        """The linear probe `fit_probe` fits, itself (what `detach export` stores)."""
        return fit_linear_probe(x_train, y_train, num_classes, **self.fit_settings(seed))

    def fit_settings(self, seed: int) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "weight_decay": self.weight_decay,
            "standardize": self.standardize,
            "seed": seed,
        }


def write_confusion_png(
    y_true: np.ndarray, y_pred: np.ndarray, names: list[str], out_dir: str | Path, file: str, title: str
) -> Path:
    """The probe's confusion matrix as out_dir/file (the folder made if missing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return plot_confusion_matrix(confusion_matrix(y_true, y_pred, len(names)), names, out_dir / file, title=title)
