"""DETACH: decomposed spatio-temporal alignment with staged learning (docs/METHOD.md), as registered parts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from detach_framework.plugins import hookimpl
from detach_framework.registry import Register

from .encoders import (
    SensorSpatialEncoder,
    SensorSpatialParams,
    SensorTemporalEncoder,
    SensorTemporalParams,
    SpatialHeadParams,
    TemporalHeadParams,
    VideoSpatialHead,
    VideoTemporalHead,
)
from .kmeans import KMeansClusterer, KMeansParams
from .odc import OdcParams, OnlineDeepClustering
from .report import report_sections
from .spatial import SpatialAligner, SpatialParams
from .temporal import TemporalAligner, TemporalParams

if TYPE_CHECKING:
    from detach_framework.report import ReportContext, Section


@hookimpl
def detach_register_components(register: Register) -> None:
    register(
        kind="video_head",
        name="detach_spatial_head",
        factory=VideoSpatialHead,
        params=SpatialHeadParams,
        embedding_field="dim",
        description="DETACH f_v head: scene + object-saliency heads over the time-averaged map, LayerNorm.",
    )
    register(
        kind="video_head",
        name="detach_temporal_head",
        factory=VideoTemporalHead,
        params=TemporalHeadParams,
        embedding_field="dim",
        description="DETACH g_v: Conv3d on frame differences (frames or maps), cosine projection.",
    )
    register(
        kind="sensor_encoder",
        name="detach_sensor_spatial",
        factory=SensorSpatialEncoder,
        params=SensorSpatialParams,
        embedding_field="dim",
        description="DETACH f_s: dilated CNN + GRU plus the projected per-channel 99th percentile of |x|.",
    )
    register(
        kind="sensor_encoder",
        name="detach_sensor_temporal",
        factory=SensorTemporalEncoder,
        params=SensorTemporalParams,
        embedding_field="dim",
        description="DETACH g_s: CNN + BiGRU + self-attention pooling.",
    )
    register(
        kind="clusterer",
        name="odc",
        factory=OnlineDeepClustering,
        params=OdcParams,
        description="Online deep clustering: memory bank, k-means init, balanced weights, dissolve/split.",
    )
    register(
        kind="clusterer",
        name="kmeans",
        factory=KMeansClusterer,
        params=KMeansParams,
        description="Plain k-means re-fitted on the memory bank once per epoch; uniform or inverse-size weights.",
    )
    register(
        kind="aligner",
        name="detach_spatial",
        factory=SpatialAligner,
        params=SpatialParams,
        description="DETACH stage 1: clusterer <-> video spatial mutual supervision (warm-up, joint, refine).",
    )
    register(
        kind="aligner",
        name="detach_temporal",
        factory=TemporalAligner,
        params=TemporalParams,
        description="DETACH stage 2: spatial-temporal weighted contrastive loss, EMA momentum encoders.",
    )


@hookimpl
def detach_report_sections(context: ReportContext) -> list[Section]:
    """Stage 2's weights W by negative type and stage 1's clusters, from the aligners' epoch diagnostics."""
    return report_sections(context)
