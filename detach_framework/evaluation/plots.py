"""Evaluation figures, rendered with the Agg canvas and written atomically.

Figures are built on a bare `Figure` + `FigureCanvasAgg` rather than pyplot: no global backend is
switched and no figure is left registered in pyplot's state, so this is safe from any process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detach_framework.atomic import atomic_write

# Beyond this many classes the cell text becomes unreadable; colours alone carry the matrix.
ANNOTATE_MAX_CLASSES = 20


def save_figure_atomic(fig: Figure, path: Path, *, dpi: int = 120) -> Path:
    """Write `fig` as PNG to a temp file beside `path`, then os.replace it: readers never see half a file."""
    FigureCanvasAgg(fig)
    # atomic_write also fsyncs and turns a full disk into a one-line WriteError naming the file.
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))


def plot_confusion_matrix(
    cm: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    *,
    title: str = "Confusion matrix",
    annotate_max_classes: int = ANNOTATE_MAX_CLASSES,
) -> Path:
    """Confusion matrix PNG: colours are row-normalised (recall per true class), cells show raw counts.

    Rows without samples stay blank (zeros) instead of dividing by zero.
    """
    counts = np.asarray(cm)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {k} class names")
    row_sums = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, row_sums, out=np.zeros(counts.shape, dtype=np.float64), where=row_sums > 0)

    side = min(max(4.0, 0.45 * k + 2.5), 30.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels=[str(c) for c in class_names], rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels=[str(c) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= annotate_max_classes:
        for i in range(k):
            for j in range(k):
                # Light text on dark cells keeps counts legible.
                colour = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", color=colour, fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, path)
