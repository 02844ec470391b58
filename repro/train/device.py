"""Where a run computes and how it is made repeatable: the device, the autocast dtype, the seeds, and
the record of the platform that decides the last bits of a CPU result."""

from __future__ import annotations

import functools
import platform
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repro import reproducible
from repro.errors import UserError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run is repeatable on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# The devices a run can use: the engine's autocast and channels_last know CPU and CUDA only.
_DEVICE = re.compile(r"auto|cpu|cuda(:(?P<index>[0-9]+))?")
_DEVICE_SETTINGS = "Trainer.device, evaluate.device or bench_kdci_overhead.device"


def resolve_device(name: str) -> torch.device:
    """``'auto'`` (CUDA when present, else the CPU), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``, checked
    against this machine: anything else is a one-line error naming the value, not torch's traceback."""
    match = _DEVICE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise UserError(f"device {name!r} is not one repro runs on: bind {_DEVICE_SETTINGS} to 'auto', 'cpu', "
                        "'cuda' or 'cuda:<index>'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available: bind Trainer.device = 'cpu' or 'auto'")
    if match["index"] is not None and int(match["index"]) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"device {name!r} requested but this machine has {count} CUDA device(s) (cuda:0 to "
                        f"cuda:{count - 1}): bind {_DEVICE_SETTINGS} to one of them or 'auto'")
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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def _library_versions() -> dict[str, str]:
    """MKL and oneDNN versions as torch reports them (``torch.__config__.show()``)."""
    shown = torch.__config__.show()
    found = {"mkl": r"Math Kernel Library Version (\S+)", "onednn": r"MKL-DNN v(\S+)"}
    return {name: (match.group(1) if (match := re.search(pattern, shown)) else "none") for name, pattern in found.items()}


def platform_record(device: torch.device | None = None) -> dict[str, Any]:
    """What decides the last bits of a result besides code, config and seed: CPU model, the instruction
    set torch dispatches to, thread count, torch / MKL / oneDNN versions (and the GPU when one ran it).
    The same code and seed gave a different digits teacher on another x86-64 CPU, so every artefact and
    MLflow run names the platform that produced it, and whether reproducible mode
    (:mod:`repro.reproducible`) pinned the kernels: ``reproducible`` (bool), ``pins`` (the pin and
    thread variables in force, ``NAME=VALUE`` separated by spaces) and, when the mode is off or came
    too late, ``reproducible_note``. ``cpu_capability`` is what torch actually dispatches to."""
    record = {"machine": platform.machine(), "cpu": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, **_library_versions(),
              **reproducible.status(threads_in_use=torch.get_num_threads())}
    if device is not None and device.type == "cuda":
        record.update(gpu=torch.cuda.get_device_name(device), cuda=str(torch.version.cuda))
    return record
