"""Multi-process data parallelism on torch.distributed, for runs launched by ``torchrun``.

``torchrun --nproc_per_node N repro distill ...`` starts N copies of a stage; each reads RANK,
WORLD_SIZE and LOCAL_RANK from the environment. :func:`init_from_env` joins them into one process
group (NCCL on CUDA, gloo on the CPU). The Trainer then gives every rank ``batch_size / N`` of the
global batch, lets each rank synthesise its own substitution data, averages gradients of the student
(and of any generator a method declares via :func:`average_gradients`) with one all-reduce of the
flattened gradients per step, and reduces epoch metrics; only rank 0 logs, checkpoints and writes
artefacts. A single process (no torchrun) takes none of these paths.
"""

from __future__ import annotations

import os
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

from repro.errors import UserError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True in a single process and on rank 0 of a process group: the rank that logs and writes."""
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group ``torchrun`` describes in the environment; False when not launched by it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed: run without torchrun")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace each gradient by its mean over ranks: one all-reduce of the flattened gradients.

    The same arithmetic as DistributedDataParallel's bucketed all-reduce, without the overlap with
    backward; it needs no wrapper around the module, so methods keep calling their networks directly.
    No-op in a single process.
    """
    if world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers (e.g. BatchNorm running statistics) to every rank."""
    if world_size() == 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def mean_over_ranks(values: dict[str, torch.Tensor | float]) -> dict[str, torch.Tensor | float]:
    """Per-key mean over ranks (every rank must pass the same keys, in any order)."""
    if world_size() == 1:
        return values
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    out: dict[str, torch.Tensor | float] = {}
    for key in sorted(values):  # same order on every rank: collectives must match
        tensor = torch.as_tensor(values[key]).detach().to(device, torch.float64).clone()
        dist.all_reduce(tensor)
        out[key] = tensor / world_size()
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def average_optimizer_gradients(optimizer: torch.optim.Optimizer) -> None:
    """:func:`average_gradients` over every parameter ``optimizer`` updates (call before ``step()``).

    Methods call it for the generators and heads that persist across rounds (DAFL's generator, Fast's
    meta-generator, MosaicKD's generator and discriminator, CMI's projection head), so the ranks keep
    one shared copy of each; per-round state (DeepInversion's images, CMI's per-round generator) stays
    per rank.
    """
    average_gradients(p for group in optimizer.param_groups for p in group["params"])
