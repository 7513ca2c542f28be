"""The report's own figures: training curves, t-SNE, cosine histograms, similarity scatter.

Like plots.py they draw on bare `Figure` objects (no pyplot state) and are written with `save_figure_atomic`.
Inputs are plain records from metrics.jsonl and numpy embeddings, so nothing here depends on a plugin. The
helpers `epoch_records`, `is_scalar`, `plain_text` and `panel_grid` serve a plugin's report figures too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from detach_framework.evaluation.plots import save_figure_atomic

# Bookkeeping fields of an epoch record that are not curves.
NOT_CURVES = frozenset({"time", "epoch", "step", "stage_index", "seconds", "train_loss", "val_loss"})
MAX_SCALAR_PANELS = 15
# Beyond this many categories a legend hides the plot: colours alone carry the grouping.
LEGEND_MAX = 20
NEGATIVE_COLOURS = {"false": "tab:red", "hard": "tab:orange", "easy": "tab:blue", "untyped": "0.7"}


def plain_text(text: Any) -> str:
    """A user string as literal text: matplotlib would read "$...$" as mathtext (or fail on a lone "$")."""
    return str(text).replace("$", r"\$")


def epoch_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("kind") == "epoch"]


def is_scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def panel_grid(panels: int, ncols: int = 3, size: tuple[float, float] = (4.2, 3.0)) -> tuple[Figure, list[Any]]:
    ncols = min(ncols, panels)
    nrows = -(-panels // ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(panels)]
    return fig, axes


def plot_training_curves(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Per-epoch train/val loss of every stage, then one panel per other logged scalar.

    Stages follow each other on one x axis (epochs counted over the whole run), boundaries dashed.
    """
    epochs = epoch_records(records)
    if not epochs:
        raise ValueError("no epoch records to plot")
    stages: list[str] = list(dict.fromkeys(str(r.get("stage")) for r in epochs))
    x = np.arange(1, len(epochs) + 1)
    scalars = list(dict.fromkeys(k for r in epochs for k, v in r.items() if is_scalar(v) and k not in NOT_CURVES))
    scalars = scalars[:MAX_SCALAR_PANELS]
    fig, axes = panel_grid(1 + len(scalars))
    colours = colormaps["tab10"]
    for panel, key in enumerate(["loss", *scalars]):
        ax = axes[panel]
        for s, stage in enumerate(stages):
            mine = [(xi, r) for xi, r in zip(x, epochs, strict=True) if str(r.get("stage")) == stage]
            if panel == 0:
                for name, style in (("train_loss", "-"), ("val_loss", "--")):
                    pts = [(xi, r[name]) for xi, r in mine if is_scalar(r.get(name))]
                    if pts:
                        ax.plot(
                            *zip(*pts, strict=True),
                            style,
                            marker=".",
                            color=colours(s % 10),
                            label=plain_text(f"{stage} {name}"),
                        )
            else:
                pts = [(xi, r[key]) for xi, r in mine if is_scalar(r.get(key))]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker=".", color=colours(s % 10), label=plain_text(stage))
        for i in range(1, len(epochs)):
            if epochs[i - 1].get("stage") != epochs[i].get("stage"):
                ax.axvline(x[i] - 0.5, color="0.6", linestyle=":", linewidth=1)
        ax.set_title(plain_text(key), fontsize=10)
        ax.set_xlabel("epoch (whole run)", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        if panel == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def _categorical_scatter(ax: Any, xy: np.ndarray, groups: np.ndarray, names: Sequence[str], title: str) -> None:
    cmap = colormaps["tab20"]
    present = np.unique(groups)
    for i, group in enumerate(present):
        mask = groups == group
        name = names[group] if 0 <= group < len(names) else "none"
        ax.scatter(xy[mask, 0], xy[mask, 1], s=8, alpha=0.75, color=cmap(i % 20), label=plain_text(name))
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(present) <= LEGEND_MAX:
        ax.legend(fontsize=6, markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def plot_tsne(
    features: np.ndarray,
    fixtures: np.ndarray,
    labels: np.ndarray,
    fixture_names: Sequence[str],
    class_names: Sequence[str],
    path: Path,
    *,
    seed: int = 0,
    max_points: int = 1500,
) -> Path:
    """t-SNE of the features, drawn twice: coloured by fixture (-1: none) and by action class."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(features)
    if n < 5:
        raise ValueError(f"t-SNE needs at least 5 samples, got {n}")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(n, max_points, replace=False)) if n > max_points else np.arange(n)
    x = np.asarray(features, dtype=np.float64)[keep]
    # Perplexity must stay below the sample count; 30 is sklearn's default for larger sets.
    perplexity = float(min(30.0, max(2.0, (len(keep) - 1) / 3)))
    # One thread: Barnes-Hut's OpenMP gradient slows down 10-100x on busy or few cores, and is fast enough alone.
    with threadpool_limits(1):
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    fig = Figure(figsize=(12.0, 4.8))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    _categorical_scatter(left, xy, np.asarray(fixtures)[keep], fixture_names, "coloured by fixture")
    _categorical_scatter(right, xy, np.asarray(labels)[keep], class_names, "coloured by action")
    fig.suptitle(f"t-SNE of test sensor embeddings (linear-probe features, {len(keep)} windows)", fontsize=11)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def different_label_cosines(embeddings: np.ndarray, labels: np.ndarray, *, max_samples: int = 2000) -> np.ndarray:
    """Cosine similarity of every pair i < j with different labels (a seeded subsample beyond max_samples)."""
    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels)
    if len(x) > max_samples:
        keep = np.sort(np.random.default_rng(0).choice(len(x), max_samples, replace=False))
        x, y = x[keep], y[keep]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    i, j = np.triu_indices(len(x), k=1)
    different = y[i] != y[j]
    return np.einsum("nd,nd->n", x[i[different]], x[j[different]])


def plot_cosine_histogram(cosines: np.ndarray, path: Path, *, title: str) -> Path:
    """The paper's P1 figure: global alignment piles different-label pairs near 0.7, DETACH spreads 0.2-0.5."""
    if len(cosines) == 0:
        raise ValueError("no different-label pairs")
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    ax.axvspan(0.2, 0.5, color="tab:green", alpha=0.12, label="paper: DETACH 0.2-0.5")
    ax.axvline(0.7, color="tab:red", linestyle="--", linewidth=1, label="paper: global peak 0.7")
    ax.hist(cosines, bins=np.linspace(-1, 1, 61), density=True, color="tab:blue", alpha=0.8, label="this run")
    ax.axvline(float(np.median(cosines)), color="k", linewidth=1, label=f"median {np.median(cosines):.2f}")
    ax.set_xlim(-1, 1)
    ax.set_xlabel("cosine similarity of video embeddings")
    ax.set_ylabel("density")
    ax.set_title(f"{title} ({len(cosines)} different-label pairs)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def pair_negative_types(
    anchor_labels: np.ndarray, anchor_fixtures: np.ndarray, labels: np.ndarray, fixtures: np.ndarray
) -> np.ndarray:
    """[A, N] of "false" (same fixture and action), "hard" (same fixture), "easy" (other fixture), "untyped"
    (a window without a fixture): the stage-2 negative types, recomputed here from the ground truth."""
    same_place = anchor_fixtures[:, None] == fixtures[None, :]
    same_action = anchor_labels[:, None] == labels[None, :]
    known = (anchor_fixtures[:, None] >= 0) & (fixtures[None, :] >= 0)
    kinds = np.where(same_place, np.where(same_action, "false", "hard"), "easy")
    return np.where(known, kinds, "untyped")


def plot_similarity_scatter(
    spaces: dict[str, tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray,
    fixtures: np.ndarray,
    anchor_class: int,
    class_name: str,
    path: Path,
    *,
    max_anchors: int = 30,
    seed: int = 0,
) -> Path:
    """Per modality: cos of spatial embeddings z (x) against cos of temporal embeddings h (y) between samples of
    the anchor class and every other sample, coloured by negative type."""
    labels, fixtures = np.asarray(labels), np.asarray(fixtures)
    anchors = np.flatnonzero((labels == anchor_class) & (fixtures >= 0))
    if len(anchors) == 0:
        raise ValueError(f"no samples of class {anchor_class} with a fixture")
    if len(anchors) > max_anchors:
        anchors = np.sort(np.random.default_rng(seed).choice(anchors, max_anchors, replace=False))
    kinds = pair_negative_types(labels[anchors], fixtures[anchors], labels, fixtures)
    not_self = anchors[:, None] != np.arange(len(labels))[None, :]
    fig, axes = panel_grid(len(spaces), ncols=2, size=(5.0, 4.4))
    for ax, (modality, (z, h)) in zip(axes, spaces.items(), strict=True):
        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
        cos_z, cos_h = z[anchors] @ z.T, h[anchors] @ h.T
        for kind in ("untyped", "easy", "hard", "false"):  # rare types drawn last, on top
            mask = (kinds == kind) & not_self
            if mask.any():
                ax.scatter(
                    cos_z[mask],
                    cos_h[mask],
                    s=6,
                    alpha=0.5,
                    color=NEGATIVE_COLOURS[kind],
                    label=f"{kind} ({mask.sum()})",
                )
        # Autoscaled: a trained branch often packs its cosines into a narrow band the full [-1, 1] would hide.
        ax.margins(0.05)
        ax.set_xlabel("spatial similarity cos(z_i, z_j)", fontsize=8)
        ax.set_ylabel("temporal similarity cos(h_i, h_j)", fontsize=8)
        ax.set_title(f"{modality}", fontsize=10)
        ax.legend(fontsize=7, loc="lower right", markerscale=2)
    title = f"anchor class: {plain_text(class_name)} ({len(anchors)} anchors against all test windows)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure_atomic(fig, path)
