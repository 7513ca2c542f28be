"""Mixed precision (`runtime.precision`): autocast around the encoders, float32 for everything that compares.

Under bf16 or fp16 the trainer runs the forward passes (training steps, validation, evaluation embeddings,
an aligner's stage-start passes) inside `autocast`, so convolutions, linear layers and GRUs compute in the
low-precision type. Similarity matrices, negative weights, softmax and the losses are sensitive to rounding
(a cosine of 0.99 in bf16 is 0.99 +- 0.004, times a 1/tau of 10), so the functions computing them carry
`@float32`: autocast is switched off inside and their low-precision tensor arguments come in as float32.
fp16 gradients can underflow, so fp16 on CUDA trains through a GradScaler (`grad_scaler`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from detach_framework.errors import UserError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LOW_PRECISION = (torch.bfloat16, torch.float16)
Function = TypeVar("Function", bound=Callable[..., Any])


def supported_precisions(device: torch.device) -> tuple[str, ...]:
    if device.type == "cuda":
        return ("fp32", "bf16", "fp16") if torch.cuda.is_bf16_supported(including_emulation=False) else ("fp32", "fp16")
    if device.type == "cpu":
        return ("fp32", "bf16")  # CPU autocast has no loss scaling, which fp16 training needs
    return ("fp32",)  # other backends: untested here


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse, before anything is built, a precision the resolved device cannot train in."""
    supported = supported_precisions(device)
    if precision not in supported:
        raise UserError(
            f"runtime.precision: {precision} is not supported on device {device} "
            f"(supported there: {' or '.join(supported)})"
        )


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context forward passes run in: autocast to the precision's dtype, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 on CUDA; elsewhere a disabled scaler, whose calls pass straight through."""
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16" and device.type == "cuda")


def float32(function: Function) -> Function:
    """Run `function` in float32: autocast off, its bfloat16/float16 tensor arguments cast to float32."""

    @functools.wraps(function)
    def in_float32(*args: Any, **kwargs: Any) -> Any:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        if not torch.is_autocast_enabled(device_type) and not any(t.dtype in LOW_PRECISION for t in tensors):
            return function(*args, **kwargs)  # the fp32 path: nothing to change
        with torch.autocast(device_type=device_type, enabled=False):
            return function(*(_to_float32(a) for a in args), **{k: _to_float32(v) for k, v in kwargs.items()})

    return in_float32  # type: ignore[return-value]


def _to_float32(value: Any) -> Any:
    return value.float() if isinstance(value, torch.Tensor) and value.dtype in LOW_PRECISION else value
