"""Example third-party plugin: registers the `example_tcn` sensor encoder."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from detach_framework.plugins import hookimpl
from detach_framework.registry import ComponentParams, Register


class TcnParams(ComponentParams):
    dim: int = Field(256, ge=1, description="Output embedding size.")
    width: int = Field(32, ge=1, description="Channels of every temporal convolution.")
    levels: int = Field(3, ge=1, le=8, description="Dilated convolutions (dilation 1, 2, 4, ...).")


class TcnSensorEncoder(nn.Module):
    """[B, C, L] -> dilated residual temporal convolutions -> mean over time -> [B, dim]."""

    def __init__(self, params: TcnParams, in_channels: int, length: int) -> None:
        super().__init__()
        self.out_dim = params.dim
        self.stem = nn.Conv1d(in_channels, params.width, 1)
        self.levels = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(params.width, params.width, 3, padding=2**i, dilation=2**i),
                nn.BatchNorm1d(params.width),
                nn.ReLU(),
            )
            for i in range(params.levels)
        )
        self.project = nn.Linear(params.width, params.dim)

    def forward(self, sensor: torch.Tensor) -> torch.Tensor:
        x = self.stem(sensor)
        for level in self.levels:
            x = x + level(x)
        return self.project(x.mean(dim=-1))


@hookimpl
def detach_register_components(register: Register) -> None:
    register(
        kind="sensor_encoder",
        name="example_tcn",
        factory=TcnSensorEncoder,
        params=TcnParams,
        description="Example third-party encoder: dilated residual temporal convolutions.",
    )
