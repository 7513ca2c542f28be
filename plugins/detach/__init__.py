"""DETACH: decomposed spatio-temporal alignment with staged learning (docs/METHOD.md), as registered parts."""

from __future__ import annotations

from detach_framework.plugins import hookimpl
from detach_framework.registry import Registry

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
from .odc import OdcParams, OnlineDeepClustering
from .spatial import SpatialAligner, SpatialParams
from .temporal import TemporalAligner, TemporalParams


@hookimpl
def detach_register_components(registry: Registry) -> None:
    add = registry.add
    add(
        kind="video_head",
        name="detach_spatial_head",
        factory=VideoSpatialHead,
        params=SpatialHeadParams,
        embedding_field="dim",
        description="DETACH f_v head: scene + object-saliency heads over the time-averaged map, LayerNorm.",
    )
    add(
        kind="video_head",
        name="detach_temporal_head",
        factory=VideoTemporalHead,
        params=TemporalHeadParams,
        embedding_field="dim",
        description="DETACH g_v: Conv3d on frame differences (frames or maps), cosine projection.",
    )
    add(
        kind="sensor_encoder",
        name="detach_sensor_spatial",
        factory=SensorSpatialEncoder,
        params=SensorSpatialParams,
        embedding_field="dim",
        description="DETACH f_s: dilated CNN + GRU plus the projected per-channel 99th percentile of |x|.",
    )
    add(
        kind="sensor_encoder",
        name="detach_sensor_temporal",
        factory=SensorTemporalEncoder,
        params=SensorTemporalParams,
        embedding_field="dim",
        description="DETACH g_s: CNN + BiGRU + self-attention pooling.",
    )
    add(
        kind="clusterer",
        name="odc",
        factory=OnlineDeepClustering,
        params=OdcParams,
        description="Online deep clustering: memory bank, k-means init, balanced weights, dissolve/split.",
    )
    add(
        kind="aligner",
        name="detach_spatial",
        factory=SpatialAligner,
        params=SpatialParams,
        description="DETACH stage 1: ODC <-> video spatial mutual supervision (warm-up, joint, refine).",
    )
    add(
        kind="aligner",
        name="detach_temporal",
        factory=TemporalAligner,
        params=TemporalParams,
        description="DETACH stage 2: spatial-temporal weighted contrastive loss, EMA momentum encoders.",
    )
