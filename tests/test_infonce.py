"""InfoNCE (and its negative-weighted form) against hand computations."""

from __future__ import annotations

import math

import torch

from detach_plugins.methods.imu2clip import InfoNceLoss, InfoNceParams, weighted_nce


def test_plain_infonce_matches_hand_computation():
    # Orthonormal pairs rotated: cos(v_i, s_j) is known exactly.
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sensor = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    loss = InfoNceLoss(InfoNceParams(temperature=0.5, learnable=False))(video, sensor)
    # S = cos / 0.5 = [[2, 1.2], [0, 1.6]]
    v2s = 0.5 * ((-2 + math.log(math.exp(2) + math.exp(1.2))) + (-1.6 + math.log(math.exp(0) + math.exp(1.6))))
    s2v = 0.5 * ((-2 + math.log(math.exp(2) + math.exp(0))) + (-1.6 + math.log(math.exp(1.2) + math.exp(1.6))))
    assert math.isclose(loss.item(), 0.5 * (v2s + s2v), rel_tol=1e-6)


def test_weighted_denominator_matches_formula():
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.3, 1.5, -1.0], [0.0, 0.2, 1.0]])
    weights = torch.tensor([[0.0, 3.0, 0.5], [1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    expected = 0.0
    for i in range(3):
        denominator = math.exp(logits[i, i]) + sum(
            weights[i, j].item() * math.exp(logits[i, j].item()) for j in range(3) if j != i
        )
        expected -= math.log(math.exp(logits[i, i]) / denominator)
    assert math.isclose(weighted_nce(logits, weights).item(), expected / 3, rel_tol=1e-6)


def test_unit_weights_equal_plain_infonce():
    torch.manual_seed(0)
    video, sensor = torch.randn(6, 4), torch.randn(6, 4)
    loss = InfoNceLoss(InfoNceParams())
    ones = torch.ones(6, 6) - torch.eye(6)  # W_ii = 0 never changes the positive term
    assert torch.allclose(loss(video, sensor), loss(video, sensor, ones), atol=1e-6)


def test_learnable_temperature_is_log_scale_and_clamped():
    loss = InfoNceLoss(InfoNceParams(temperature=0.07, max_logit_scale=100.0))
    assert isinstance(loss.log_scale, torch.nn.Parameter)
    assert math.isclose(loss.logit_scale().item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        loss.log_scale.fill_(10.0)
    assert math.isclose(loss.logit_scale().item(), 100.0, rel_tol=1e-5)
    fixed = InfoNceLoss(InfoNceParams(learnable=False))
    assert not any(True for _ in fixed.parameters())
