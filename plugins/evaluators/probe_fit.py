"""What the probe-based evaluators share: fitting the linear probe from their params."""

from __future__ import annotations

from typing import Any

import numpy as np

from detach_framework.evaluation import linear_probe
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
