"""Where a run computes and how it is made repeatable: the device, the autocast dtype, the seeds."""

from __future__ import annotations

import random

import numpy as np
import torch

from repro.errors import UserError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run is repeatable on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available: bind Trainer.device = 'cpu' or 'auto'")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` ('auto' | 'fp32' | 'bf16') on ``device``; None = full fp32.

    'auto' is bf16 on a CUDA device that supports it and fp32 elsewhere: on the CPU, bf16 autocast is
    slower than fp32 for these network sizes and would change the CPU reference numbers.
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"Trainer.precision = {precision!r} is invalid: use 'auto', 'fp32' or 'bf16'")
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return torch.bfloat16
