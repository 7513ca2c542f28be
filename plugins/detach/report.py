"""DETACH's sections of `detach report` (the `detach_report_sections` hook): the stage-2 weights W by negative
type and the stage-1 clusters, drawn from the diagnostics its aligners add to each epoch record
(temporal.py: `w_{type}_quantiles`; spatial.py: `cluster_sizes`, `cluster_purity`, `cluster_fixture_nmi`), and,
for a run with `model.clusterer.k: auto`, the estimate of K from its k_estimate.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps

from detach_framework.engine.locations import K_ESTIMATE_FILE, KEstimate, read_estimate
from detach_framework.evaluation.figures import NEGATIVE_COLOURS, epoch_records, is_scalar, panel_grid, plain_text
from detach_framework.evaluation.plots import save_figure_atomic

if TYPE_CHECKING:
    from detach_framework.report import ReportContext, Section

SECTIONS = (
    ("weight-cdfs", "Stage-2 weights W by negative type"),
    ("clusters", "Cluster sizes and purity"),
)
# Only for a run with `model.clusterer.k: auto` (it has k_estimate.json); other runs show no trace of it.
K_ESTIMATE_SECTION = ("k-estimate", "Number of sensor locations K, estimated (k: auto)")
NEGATIVE_TYPES = ("false", "hard", "easy")


def report_sections(context: ReportContext) -> list[Section]:
    """Both sections, each a figure or, for a run whose records lack its diagnostics, a line saying so."""
    titles = dict(SECTIONS)
    records = context.records
    if weight_quantile_records(records):
        weights = context.draw(
            "weight-cdfs",
            titles["weight-cdfs"],
            lambda p: plot_weight_cdfs(records, p),
            "Empirical CDF of W per stage-2 epoch (from 21 logged quantiles of a uniform sample), dark early, "
            "bright late.",
        )
    else:
        weights = context.skip(
            "weight-cdfs",
            titles["weight-cdfs"],
            "metrics.jsonl has no w_*_quantiles records (the run has no DETACH temporal stage)",
        )
    if cluster_records(records):
        clusters = context.draw(
            "clusters",
            titles["clusters"],
            lambda p: plot_clusters(records, p),
            "Stage-1 ODC clusters after each epoch; purity and NMI against the ground-truth fixtures.",
        )
    else:
        clusters = context.skip(
            "clusters",
            titles["clusters"],
            "metrics.jsonl has no cluster_sizes records (the run has no clustering stage)",
        )
    return [weights, clusters, *k_estimate_sections(context)]


def k_estimate_sections(context: ReportContext) -> list[Section]:
    """The eigengap curve with the chosen K, for a run whose K was estimated (k_estimate.json); else none."""
    estimate = read_estimate(context.run_path)
    if estimate is None:
        return []
    from detach_framework.report import Table

    table = Table(
        ("candidate K", "eigengap"),
        [(k, round(g, 4)) for k, g in zip(estimate.candidates, estimate.eigengaps, strict=True)],
    )
    caption = (
        f"{K_ESTIMATE_FILE}: {estimate.method} over {estimate.windows} training windows, {len(estimate.channels)} "
        f"channels firing (threshold {estimate.threshold:g} robust z-units); estimate {estimate.estimate}, "
        f"K used {estimate.chosen}."
    )
    return [context.draw(*K_ESTIMATE_SECTION, lambda p: plot_k_estimate(estimate, p), caption, table=table)]


def plot_k_estimate(estimate: KEstimate, path: Path) -> Path:
    """Eigengap per candidate K, the chosen K marked."""
    if not estimate.candidates:
        raise ValueError("no candidate K")
    fig, (ax,) = panel_grid(1, size=(5.0, 3.4))
    ax.plot(estimate.candidates, estimate.eigengaps, marker="o", color="tab:blue", label="eigengap")
    ax.axvline(estimate.chosen, color="tab:red", linestyle="--", label=f"chosen K = {estimate.chosen}")
    ax.set_xlabel("candidate K", fontsize=8)
    ax.set_ylabel("lambda_K - lambda_(K-1)", fontsize=8)
    ax.set_title("normalised Laplacian eigengap of channel co-activation", fontsize=10)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def weight_quantile_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in epoch_records(records) if any(f"w_{t}_quantiles" in r for t in NEGATIVE_TYPES)]


def plot_weight_cdfs(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """One panel per negative type: the CDF of stage-2 weights W of each epoch, early (dark) to late (bright)."""
    chosen = weight_quantile_records(records)
    if not chosen:
        raise ValueError("no w_*_quantiles records")
    fig, axes = panel_grid(3, size=(4.2, 3.4))
    cmap = colormaps["viridis"]
    for ax, kind in zip(axes, NEGATIVE_TYPES, strict=True):
        rows = [r for r in chosen if f"w_{kind}_quantiles" in r]
        for i, r in enumerate(rows):
            q = np.asarray(r[f"w_{kind}_quantiles"], dtype=np.float64)
            levels = np.linspace(0, 1, len(q))
            colour = cmap(i / max(len(rows) - 1, 1))
            # Label the first and last epochs only: the colour ramp carries the ones between.
            label = plain_text(f"{r.get('stage')} epoch {r.get('epoch')}") if i in (0, len(rows) - 1) else None
            ax.plot(q, levels, color=colour, label=label)
        ax.set_title(f"{kind} negatives", fontsize=10, color=NEGATIVE_COLOURS[kind])
        ax.set_xlabel("W", fontsize=8)
        ax.set_ylabel("fraction of pairs <= W", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=8)
        if rows:
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.text(0.5, 0.5, "none seen", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def cluster_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in epoch_records(records) if isinstance(r.get("cluster_sizes"), list)]


def plot_clusters(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Stacked cluster sizes per epoch (left) and purity / NMI against the ground-truth fixtures (right)."""
    rows = cluster_records(records)
    if not rows:
        raise ValueError("no cluster_sizes records")
    sizes = np.zeros((len(rows), max(len(r["cluster_sizes"]) for r in rows)))
    for i, r in enumerate(rows):
        sizes[i, : len(r["cluster_sizes"])] = r["cluster_sizes"]
    x = np.arange(len(rows))
    ticks = [plain_text(f"{r.get('epoch')}\n{r.get('phase', '')}") for r in rows]
    fig, (left, right) = panel_grid(2, ncols=2, size=(5.6, 3.6))
    cmap = colormaps["tab20"]
    bottom = np.zeros(len(rows))
    for k in range(sizes.shape[1]):
        left.bar(x, sizes[:, k], bottom=bottom, color=cmap(k % 20), width=0.8)
        bottom += sizes[:, k]
    left.set_title(f"cluster sizes ({sizes.shape[1]} clusters, stacked)", fontsize=10)
    left.set_ylabel("training windows", fontsize=8)
    for name, colour in (("cluster_purity", "tab:purple"), ("cluster_fixture_nmi", "tab:green")):
        pts = [(i, r[name]) for i, r in enumerate(rows) if is_scalar(r.get(name))]
        if pts:
            right.plot(*zip(*pts, strict=True), marker="o", color=colour, label=name)
    right.set_ylim(0, 1.02)
    right.set_title("clusters against ground-truth fixtures", fontsize=10)
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7)
    for ax in (left, right):
        ax.set_xticks(x, ticks, fontsize=7)
        ax.set_xlabel("stage-1 epoch", fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, path)
