"""torch.distributed glue: process group from torchrun's environment, gathers with gradients, broadcasts.

Every helper is the identity in a single process, so components call them unconditionally and run the
same on a laptop. Contrastive losses gather features across ranks with `gather_with_grad` and compute the
loss on the global batch on every rank; DDP then averages gradients, which gives exactly the gradient of
the single-process loss on the global batch (each rank's local features receive the sum of all ranks'
gradients through the backward all-reduce, and the average over ranks divides it back).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_enabled() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def info() -> DistInfo:
    if not is_enabled():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def init_from_environment(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1): nccl on CUDA, gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_enabled():
        return info()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return info()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward all-reduces the incoming gradient and keeps this rank's slice.

    Only all_gather and all_reduce are used, so it works on gloo (which has no reduce_scatter).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.size = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's [B, ...] tensor in rank order (equal B per rank); gradients flow back."""
    if not is_enabled():
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's [B, ...] tensor in rank order, without gradients (labels, indices)."""
    if not is_enabled():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `tensor` in place with rank `src`'s value (identity in one process)."""
    if is_enabled():
        dist.broadcast(tensor, src=src)
    return tensor


def all_reduce_mean(value: float) -> float:
    if not is_enabled():
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def barrier() -> None:
    if is_enabled():
        dist.barrier()


class AlignerStep(torch.nn.Module):
    """The model and a stage's aligner as one module, so DDP sees every trained parameter and its
    forward: `AlignerStep(model, aligner)(batch) == aligner(model, batch)`."""

    def __init__(self, model: torch.nn.Module, aligner: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.aligner = aligner

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.aligner(self.model, batch)


def wrap_step(model: torch.nn.Module, aligner: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """AlignerStep, wrapped in DistributedDataParallel when several processes train.

    Buffers are not broadcast each step: the clusterer's bank is kept identical on every rank by gathered
    updates, and batch-norm running statistics stay per rank (use SyncBatchNorm for synchronised ones);
    rank 0's are the ones checkpointed.
    """
    step = AlignerStep(model, aligner)
    if not is_enabled():
        return step
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        step,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,  # stage phases leave branches unused (e.g. DETACH's warm-up)
        broadcast_buffers=False,
    )
