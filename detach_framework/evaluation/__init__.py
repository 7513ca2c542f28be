"""Downstream evaluation: classification metrics, the linear probe, retrieval, plots and text tables."""

from detach_framework.evaluation.metrics import (
    accuracy,
    average_precision_per_class,
    confusion_matrix,
    macro_map,
    per_class_rows,
    weighted_f1,
)
from detach_framework.evaluation.plots import plot_confusion_matrix, save_figure_atomic
from detach_framework.evaluation.probe import linear_probe
from detach_framework.evaluation.retrieval import recall_at_k, true_pair_ranks
from detach_framework.evaluation.tables import format_metrics, format_table

__all__ = [
    "accuracy",
    "average_precision_per_class",
    "confusion_matrix",
    "format_metrics",
    "format_table",
    "linear_probe",
    "macro_map",
    "per_class_rows",
    "plot_confusion_matrix",
    "recall_at_k",
    "save_figure_atomic",
    "true_pair_ranks",
    "weighted_f1",
]
