"""Linear probe on frozen features: one nn.Linear trained with Adam and cross-entropy, on the CPU.

Deterministic for a seed: initialisation and shuffling draw from a private torch.Generator, so the
global RNG is neither read nor disturbed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detach_framework.evaluation.metrics import finite_matrix

# Features whose train std is below this are constant: dividing by it would only amplify noise.
_MIN_STD = 1e-8


@dataclass
class LinearClassifier:
    """A fitted linear probe: softmax(((x - mean) / std) @ weight.T + bias); mean/std None when not standardised."""

    weight: np.ndarray  # [K, P] float32
    bias: np.ndarray  # [K] float32
    mean: np.ndarray | None = None  # [P] train feature statistics (float64)
    std: np.ndarray | None = None

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities [M, K] (float64) of features x [M, P]."""
        x = finite_matrix(x, "x", "P")
        if x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"the probe takes {self.weight.shape[1]} features, got {x.shape[1]}")
        if self.mean is not None:
            x = (x - self.mean) / self.std
        weight, bias = torch.from_numpy(self.weight), torch.from_numpy(self.bias)
        with torch.inference_mode():
            logits = F.linear(torch.from_numpy(x.astype(np.float32)), weight, bias)
            return torch.softmax(logits, dim=1).double().numpy()


def fit_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    num_classes: int,
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    standardize: bool = True,
    seed: int = 42,
) -> LinearClassifier:
    """Fit a linear classifier on (train_x, train_y) with Adam and cross-entropy.

    With `standardize`, features are centred and scaled with the TRAIN mean/std (test statistics
    never leak into the probe); constant train features are only centred.
    """
    xtr = finite_matrix(train_x, "train_x", "P")
    ytr = np.asarray(train_y)
    if ytr.ndim != 1 or ytr.shape[0] != xtr.shape[0]:
        raise ValueError(f"train_y must be [N] with N={xtr.shape[0]}, got shape {ytr.shape}")
    if xtr.shape[0] == 0 or xtr.shape[1] == 0:
        raise ValueError(f"linear probe needs at least one sample and one feature, got {xtr.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not np.issubdtype(ytr.dtype, np.integer) or ytr.min() < 0 or ytr.max() >= num_classes:
        raise ValueError(f"train_y must be integer class indices in [0, {num_classes})")
    if epochs < 1 or batch_size < 1 or lr <= 0 or weight_decay < 0:
        raise ValueError("linear probe needs epochs >= 1, batch_size >= 1, lr > 0, weight_decay >= 0")

    mean = std = None
    if standardize:
        mean = xtr.mean(axis=0)
        std = xtr.std(axis=0)
        std = np.where(std < _MIN_STD, 1.0, std)
        xtr = (xtr - mean) / std

    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    in_dim = xtr.shape[1]
    # skip_init: nn.Linear's own init would consume the global RNG.
    model = nn.utils.skip_init(nn.Linear, in_dim, num_classes)
    with torch.no_grad():
        # Same U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as nn.Linear's default, but from our generator.
        bound = 1.0 / math.sqrt(in_dim)
        model.weight.uniform_(-bound, bound, generator=generator)
        model.bias.uniform_(-bound, bound, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()

    features = torch.from_numpy(xtr.astype(np.float32))
    targets = torch.from_numpy(ytr.astype(np.int64))
    n = features.shape[0]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(features[idx]), targets[idx])
            loss.backward()
            optimizer.step()
    weight, bias = (t.detach().numpy().copy() for t in (model.weight, model.bias))
    return LinearClassifier(weight=weight, bias=bias, mean=mean, std=std)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    num_classes: int,
    **fit: Any,
) -> np.ndarray:
    """Fit a linear classifier on (train_x, train_y) (`fit_linear_probe`'s keywords) and return its softmax
    probabilities [M, num_classes] on test_x."""
    xtr, xte = finite_matrix(train_x, "train_x", "P"), finite_matrix(test_x, "test_x", "P")
    if xte.shape[1] != xtr.shape[1]:
        raise ValueError(f"train and test feature sizes differ: {xtr.shape[1]} vs {xte.shape[1]}")
    return fit_linear_probe(xtr, train_y, num_classes, **fit).predict_proba(xte)
