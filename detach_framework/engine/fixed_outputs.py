"""Outputs of the model parts a stage keeps frozen, computed once per sample instead of at every step.

An aligner declares them (`AlignerBase.fixed_outputs`): e.g. DETACH's stage 2 trains only the temporal
encoders, so the spatial embeddings z_v and z_s of every window are fixed for the whole stage. The trainer
computes each declared output for every sample of the train and validation splits at stage start (eval
mode, no gradients) and serves the splits through `WithFixedOutputs`, which adds them to each sample.
They live in memory for the stage only, so they can never be stale: a resumed or re-run stage recomputes
them from the weights it has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

FixedFunctions = dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]]


class WithFixedOutputs(Dataset):
    """A split whose samples also carry precomputed outputs, looked up by the sample's position."""

    def __init__(self, base: Dataset, outputs: dict[str, torch.Tensor]) -> None:
        self.base = base
        self.outputs = outputs

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.base[index]
        for key, values in self.outputs.items():
            sample[key] = values[index]
        return sample


@torch.no_grad()
def compute_fixed_outputs(
    model: nn.Module, functions: FixedFunctions, batches: Iterable[dict[str, torch.Tensor]], size: int
) -> dict[str, torch.Tensor]:
    """Every declared output for every sample (`batches`: the split in order, on the device), kept on the CPU."""
    was_training = model.training
    model.eval()
    out: dict[str, torch.Tensor] = {}
    try:
        for batch in batches:
            rows = batch["index"].cpu()
            for key, function in functions.items():
                value = function(batch).detach().cpu()
                if key not in out:
                    out[key] = torch.empty((size, *value.shape[1:]), dtype=value.dtype)
                out[key][rows] = value
    finally:
        model.train(was_training)
    return out
