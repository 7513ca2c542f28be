"""A FIFO feature queue whose contents are module buffers, so checkpoints carry it and resume is exact."""

from __future__ import annotations

import torch
from torch import nn


class FeatureQueue(nn.Module):
    """Rows oldest first; the newest `filled` rows (at the end) are valid.

    push() appends a batch and drops the oldest rows beyond `size` (a batch larger than the queue keeps
    only its newest `size` rows). The size may be set after construction (`reset`); loading a state dict
    takes the stored size, so a queue sized from the training set at stage start resumes as saved.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("features", torch.zeros(max(size, 1), dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return int(self.features.shape[0])

    def valid(self) -> torch.Tensor:
        return self.features[self.size - int(self.filled) :]

    @torch.no_grad()
    def reset(self, size: int, contents: torch.Tensor | None = None) -> None:
        """Resize to `size` rows; `contents` (at most `size` rows) fill the newest positions."""
        device, dim = self.features.device, self.features.shape[1]
        self.features = torch.zeros(max(size, 1), dim, device=device)
        self.filled = torch.zeros((), dtype=torch.long, device=device)
        if contents is not None:
            self.push(contents)

    @torch.no_grad()
    def push(self, rows: torch.Tensor) -> None:
        rows = rows.detach().to(self.features.dtype)
        self.features.copy_(torch.cat([self.features, rows])[-self.size :])
        self.filled.fill_(min(self.size, int(self.filled) + rows.shape[0]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        stored = state_dict.get(prefix + "features")
        if stored is not None and stored.shape != self.features.shape:
            self.features = torch.zeros_like(stored, device=self.features.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
