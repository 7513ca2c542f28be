"""The formulas of the method's reference against hand computations: ODC class weights, the dissolving of
small clusters, and the weights of the sensor-to-video direction of L_CL."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from detach_plugins.detach.odc import OdcParams, OnlineDeepClustering
from detach_plugins.detach.temporal import TemporalAligner, TemporalParams
from detach_plugins.methods.imu2clip import InfoNceLoss, InfoNceParams


def clusterer_with_sizes(sizes: list[int], **params) -> OnlineDeepClustering:
    clusterer = OnlineDeepClustering(OdcParams(k=len(sizes), **params), sum(sizes), 2)
    clusterer.labels.copy_(torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)))
    return clusterer


# -- ODC class weights ---------------------------------------------------------------------------------


def test_class_weights_raise_the_small_weights_to_a_tenth_of_the_largest():
    clusterer = clusterer_with_sizes([1, 4, 100, 10000, 50, 50, 50])
    # w = 1/sqrt(n) = [1, 0.5, 0.1, 0.01, 0.141421, 0.141421, 0.141421]; max/min = 100 > 10, so every
    # weight below max(w)/10 = 0.1 is raised to 0.1: only 0.01 moves.
    # Raised: [1, 0.5, 0.1, 0.1, 0.141421, 0.141421, 0.141421], sum = 1.7 + 3 * 0.1414214 = 2.1242641.
    # Times K / sum = 7 / 2.1242641 = 3.2952589:
    expected = [3.2952589, 1.6476294, 0.3295259, 0.3295259, 0.4660200, 0.4660200, 0.4660200]
    weights = clusterer.class_weights()
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert float(weights.sum()) == pytest.approx(7.0)
    # The large weights are not capped at 10 min(w) (that gave 1.1475 to every cluster but the largest and
    # 0.1148 to it): sizes 1 and 4 keep their weights' ratio 2.
    assert float(weights[0] / weights[1]) == pytest.approx(2.0)


def test_class_weights_of_an_empty_cluster_are_those_of_the_smallest_one():
    clusterer = clusterer_with_sizes([129, 0, 1])
    # Non-empty: w = [1/sqrt(129), 1] = [0.0880451, 1]; max/min = 11.36 > 10, so 0.0880451 is raised to 0.1.
    # The empty cluster takes max(w) = 1 and is left out of the rule: [0.1, 1, 1], sum 2.1, times 3 / 2.1:
    expected = [0.1428571, 1.4285714, 1.4285714]
    weights = clusterer.class_weights()
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert torch.isfinite(weights).all()


def test_an_empty_cluster_changes_no_other_weight():
    # Equal sizes give w = 1/sqrt(1000) each, max/min = 1, renormalised to 1; the empty one takes max(w).
    assert clusterer_with_sizes([1000, 1000, 0]).class_weights().tolist() == pytest.approx([1.0, 1.0, 1.0])


# -- dissolving small clusters -------------------------------------------------------------------------


def test_small_clusters_dissolve_only_into_clusters_that_are_not_small():
    # Sizes [50, 5, 5, 40], minimum 10, every member on the unit circle at its cluster's angle:
    # cluster 0 at 0, cluster 1 at 1.2, cluster 2 at 2.0, cluster 3 at pi.
    angles = torch.tensor([0.0] * 50 + [1.2] * 5 + [2.0] * 5 + [math.pi] * 40)
    clusterer = clusterer_with_sizes([50, 5, 5, 40], min_cluster_size=10)
    clusterer.bank.copy_(torch.stack([angles.cos(), angles.sin()], dim=1))
    clusterer.update_centroids()
    # Only clusters 0 and 3 may receive. Cluster 1 (at 1.2): cos 0.362 to cluster 0, -0.362 to cluster 3 -> 0.
    # Cluster 2 (at 2.0): cos -0.416 to cluster 0, 0.416 to cluster 3 -> 3. (The nearest *other* centroid
    # would have been the other small cluster, cos(0.8) = 0.697, and gave [25, 10, 25, 40].)
    # Sizes [55, 0, 0, 45]; cluster 1 takes the farthest 55 // 2 = 27 of cluster 0 -> [28, 27, 0, 45];
    # cluster 2 takes the farthest 45 // 2 = 22 of cluster 3 -> [28, 27, 22, 23].
    assert clusterer.sizes().tolist() == [28, 27, 22, 23]
    # The farthest members of clusters 0 and 3 are the ones that came from the small clusters.
    assert clusterer.labels[50:55].tolist() == [1] * 5
    assert clusterer.labels[55:60].tolist() == [2] * 5


def test_nothing_is_dissolved_when_no_cluster_reaches_the_minimum():
    angles = torch.tensor([0.0] * 4 + [2.0] * 3 + [4.0] * 3)
    clusterer = clusterer_with_sizes([4, 3, 3], min_cluster_size=5)
    clusterer.bank.copy_(torch.stack([angles.cos(), angles.sin()], dim=1))
    clusterer.update_centroids()
    assert clusterer.sizes().tolist() == [4, 3, 3]


# -- the sensor-to-video direction of L_CL -------------------------------------------------------------

# A 3x3 batch. z gives S_sp, the momentum h' give S_tm (cross-modal), the online h the logits with z.
Z_V = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
Z_S = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
H_V = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
H_S = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, -1.0]])
# By hand, lambda_hard 3: S_sp = [[1, 1, 0], [1, 1, 0.8], [0, 0.8, 1]], S_tm = relu(cos(h'_v,i, h'_s,j)) =
# [[0.8, 1, 0], [0.6, 0, 0], [0.8, 1, 0]], W = (1 + 2 S_sp)(1 - S_sp S_tm) with W_ii = 0:
# W = [[0, 0, 1], [1.2, 0, 2.6], [1, 0.52, 0]]  (not symmetric: W_01 = 0 but W_10 = 1.2).
# With tau = 1 the logit S_ij = cos(u_v,i, u_s,j) = (cos(z_v,i, z_s,j) + cos(h_v,i, h_s,j)) / 2:
# S = [[0.9, 1, -0.5], [0.6, 0.3, -0.8], [0.4, 0.5, 0]].
# L_v2s rows (anchor video i): log(e^S_ii + sum_j W_ij e^S_ij) - S_ii
#   0: log(e^0.9 + e^-0.5) - 0.9 = 0.220417
#   1: log(e^0.3 + 1.2 e^0.6 + 2.6 e^-0.8) - 0.3 = 1.248553
#   2: log(1 + e^0.4 + 0.52 e^0.5) - 0 = 1.208709       -> L_v2s = 0.892560
V2S = (0.220417 + 1.248553 + 1.208709) / 3
# L_s2v rows (anchor sensor i, logits S_ji), the paper's same W (negative video j weighted by W_ij):
#   0: log(e^0.9 + 0 e^0.6 + 1 e^0.4) - 0.9 = 0.474077
#   1: log(e^0.3 + 1.2 e^1 + 2.6 e^0.5) - 0.3 = 1.885880
#   2: log(e^0 + 1 e^-0.5 + 0.52 e^-0.8) - 0 = 0.609864   -> L_s2v = 0.989940
S2V_SAME = (0.474077 + 1.885880 + 0.609864) / 3
# ... and W transposed (negative video j weighted by W_ji):
#   0: log(e^0.9 + 1.2 e^0.6 + 1 e^0.4) - 0.9 = 0.914494
#   1: log(e^0.3 + 0 e^1 + 0.52 e^0.5) - 0.3 = 0.491722
#   2: log(e^0 + 1 e^-0.5 + 2.6 e^-0.8) - 0 = 1.020574   -> L_s2v = 0.808930
S2V_TRANSPOSED = (0.914494 + 0.491722 + 1.020574) / 3


def temporal_aligner(**params) -> TemporalAligner:
    # weighted_loss reads only the params and the loss; the model lends the aligner its two temporal encoders.
    model = SimpleNamespace(decomposed=True, video_temporal_head=nn.Identity(), sensor_temporal_encoder=nn.Identity())
    loss = InfoNceLoss(InfoNceParams(temperature=1.0, learnable=False))
    return TemporalAligner(TemporalParams(**params), model, loss)


@pytest.mark.parametrize(
    ("s2v_weights", "s2v"), [("same", S2V_SAME), ("transposed", S2V_TRANSPOSED)], ids=["same", "transposed"]
)
def test_l_cl_sensor_to_video_weights_hand_computation(s2v_weights, s2v):
    aligner = temporal_aligner(**({} if s2v_weights == "same" else {"s2v_weights": s2v_weights}))
    loss, weights = aligner.weighted_loss(Z_V, Z_S, H_V, H_S, H_V, H_S)
    assert torch.allclose(weights, torch.tensor([[0, 0, 1], [1.2, 0, 2.6], [1, 0.52, 0]]), atol=1e-6)
    assert loss.item() == pytest.approx((V2S + s2v) / 2, abs=2e-6)


def test_infonce_uses_the_same_weights_in_both_directions_unless_told_otherwise():
    video, sensor = torch.eye(3), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    # S = cos = [[1, 0, 0], [0, 0, 1], [0, 1, 0]] (tau = 1), W = [[0, 2, 0], [0, 0, 0], [0, 0, 0]]
    weights = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    loss = InfoNceLoss(InfoNceParams(temperature=1.0, learnable=False))
    # v2s: row 0 log(e + 2) - 1 = 0.551445; rows 1, 2: log(e^0) - 0 = 0   -> 0.183815
    # s2v with W (same): row 0 of S^T = [1, 0, 0], negative 1 weighted 2: log(e + 2 e^0) - 1 = 0.551445 -> 0.183815
    assert loss(video, sensor, weights).item() == pytest.approx((0.183815 + 0.183815) / 2, abs=1e-6)
    # s2v with W^T: only row 1 has a negative (video 0, weight 2): log(e^0 + 2 e^0) - 0 = log 3 = 1.098612
    transposed = loss(video, sensor, weights, s2v_weights=weights.T)
    assert transposed.item() == pytest.approx((0.183815 + 1.098612 / 3) / 2, abs=1e-6)
