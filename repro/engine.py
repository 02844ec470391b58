"""The Trainer: the only training loop. It runs any :class:`~repro.methods.base.DFKDMethod`.

It owns the student's optimiser and schedule, seeding, NaN checks, monitoring cadence,
checkpoint/resume and progress output, and never asks which method it runs.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import gin
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from repro import checkpoint, distributed
from repro.data import DataSpec
from repro.errors import TrainingDiverged, UserError
from repro.evaluate import accuracy
from repro.methods.base import DFKDMethod
from repro.optim import build_optimizer, build_scheduler
from repro.tracking import NullTracker


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


def _rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))


@gin.configurable
class Trainer:
    """Alternates ``method.synthesize()`` with ``student_steps_per_round`` student steps.

    One epoch is ``steps_per_epoch`` student steps. The model that is optimised, monitored and
    returned is the one ``method.setup`` returns (the student, or a wrapper containing it). The
    final epoch's model is what the stage saves: no best-epoch selection on test data.
    """

    def __init__(
        self,
        epochs: int = gin.REQUIRED,
        steps_per_epoch: int = gin.REQUIRED,
        batch_size: int = gin.REQUIRED,
        optimizer: Callable[..., torch.optim.Optimizer] = gin.REQUIRED,
        scheduler: Callable[..., Any] | None = None,
        student_steps_per_round: int = 1,
        device: str = "auto",
        monitor_every: int = 1,
        precision: str = "auto",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch), ("batch_size", batch_size),
                            ("student_steps_per_round", student_steps_per_round), ("monitor_every", monitor_every)):
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"Trainer.{name} = {value!r} is invalid: it must be a positive integer")
        if steps_per_epoch % student_steps_per_round:
            raise UserError(f"Trainer.steps_per_epoch ({steps_per_epoch}) must be a multiple of "
                            f"Trainer.student_steps_per_round ({student_steps_per_round})")
        self.epochs, self.steps_per_epoch, self.batch_size = epochs, steps_per_epoch, batch_size
        self.make_optimizer, self.make_scheduler = optimizer, scheduler
        self.student_steps_per_round, self.monitor_every = student_steps_per_round, monitor_every
        self.device = resolve_device(device)
        # GPU efficiency (issue: paper scale). bf16 autocast needs no loss scaling; channels_last helps
        # convolutions on tensor cores; Module.compile() compiles in place, so methods keep calling
        # the same module objects. All three apply on CUDA only: CPU runs stay the fp32 reference.
        self.autocast = autocast_dtype(precision, self.device)
        self.channels_last = channels_last and self.device.type == "cuda"
        self.compile = compile
        self.world = distributed.world_size()
        if batch_size % self.world:
            raise UserError(f"Trainer.batch_size ({batch_size}) must be divisible by the {self.world} processes "
                            "torchrun started: it is the global batch, split evenly over ranks")

    def fit(
        self,
        method: DFKDMethod,
        student: nn.Module,
        spec: DataSpec,
        teacher: nn.Module | None = None,
        *,
        monitor_data: Dataset | None = None,
        checkpoint_path: Path | None = None,
        fingerprint: str = "",
        tracker: NullTracker | None = None,
        label: str = "train",
    ) -> nn.Module:
        """Train and return the model ``method.setup`` handed back.

        ``monitor_data``: a real split on which top-1 is logged every ``monitor_every`` epochs
        (monitoring only). ``checkpoint_path``: where the full state is saved after every epoch and
        resumed from when it matches ``fingerprint``.
        """
        main = distributed.is_main()
        tracker = (tracker or NullTracker()) if main else NullTracker()
        if self.channels_last:
            student = student.to(memory_format=torch.channels_last)
            teacher = teacher.to(self.device, memory_format=torch.channels_last) if teacher is not None else None
        model = method.setup(teacher, student.to(self.device), spec, self.device).to(self.device)
        if self.compile:
            for module in (student, teacher):
                if module is not None:
                    module.compile()
        distributed.broadcast_state(model)
        if self.world > 1:
            # Same initial weights on every rank (seeded alike, then broadcast); different synthesis
            # noise per rank from here on, so ranks contribute different substitution data.
            seed_everything(torch.initial_seed() + 1_000_003 * distributed.rank())
        trained = [p for p in model.parameters() if p.requires_grad] + list(method.trainable_parameters())
        optimizer = build_optimizer(self.make_optimizer, trained, "student")
        scheduler = build_scheduler(self.make_scheduler, optimizer, "student") if self.make_scheduler else None
        start_epoch = self._resume(checkpoint_path, fingerprint, model, optimizer, scheduler, method)
        if start_epoch and self.world > 1:  # the checkpoint holds rank 0's generators: re-offset the others
            seed_everything(torch.initial_seed() + 1_000_003 * distributed.rank())
        rounds = self.steps_per_epoch // self.student_steps_per_round
        batch_size = self.batch_size // self.world
        interactive = sys.stdout.isatty() and main
        for epoch in range(start_epoch, self.epochs):
            began = time.perf_counter()
            method.on_epoch_start(epoch)
            distributed.broadcast_state(model)  # e.g. a dictionary built this epoch: rank 0's for all
            sums: dict[str, torch.Tensor | float] = defaultdict(float)
            counts: dict[str, int] = defaultdict(int)
            for round_index in self._progress(range(rounds), label, epoch, interactive):
                with self._autocast():
                    synthesized = method.synthesize()
                for name, value in synthesized.items():
                    sums[name] += value
                    counts[name] += 1
                model.train()
                for _ in range(self.student_steps_per_round):
                    with self._autocast():
                        terms = method.student_loss(method.sample(batch_size))
                    optimizer.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                    distributed.average_gradients(trained)
                    optimizer.step()
                    for name, value in terms.items():
                        sums[f"student/{name}"] += value.detach().float()
                        counts[f"student/{name}"] += 1
                # One host sync per round: a NaN is caught before it is checkpointed (on any rank:
                # the loss sum is reduced, so every rank stops together).
                loss_sum = distributed.mean_over_ranks({"loss": sums["student/loss"]})["loss"]
                if not torch.isfinite(torch.as_tensor(loss_sum)):
                    step = epoch * self.steps_per_epoch + (round_index + 1) * self.student_steps_per_round
                    kept = f"the last good checkpoint {checkpoint_path} is kept" if checkpoint_path else "nothing was saved"
                    raise TrainingDiverged(
                        f"{method.describe()['name']}: student loss became non-finite at epoch {epoch + 1}, "
                        f"step {step}: lower the learning rates or loss weights; {kept}")
            if scheduler is not None:
                scheduler.step()
            metrics: dict[str, float] = {}
            sums = distributed.mean_over_ranks(sums)  # per-rank sums of equal counts: their mean
            for name, total in sums.items():
                mean = (total / counts[name]).cpu()
                # Vector terms (e.g. per-prototype usage) become one metric per entry.
                metrics.update({name: float(mean)} if mean.ndim == 0 else
                               {f"{name}/{index:02d}": float(value) for index, value in enumerate(mean)})
            metrics["student/lr"] = optimizer.param_groups[0]["lr"]
            if main and monitor_data is not None and ((epoch + 1) % self.monitor_every == 0 or epoch + 1 == self.epochs):
                metrics["monitor/top1"] = accuracy(model, monitor_data, spec.num_classes, self.device)["top1"]
            metrics["epoch_seconds"] = time.perf_counter() - began
            tracker.log_metrics(metrics, step=epoch + 1)
            if main:
                self._report(label, epoch, metrics, interactive)
            if checkpoint_path is not None and main:
                checkpoint.save_training_state(checkpoint_path, {
                    "fingerprint": fingerprint, "epoch": epoch + 1, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "method": method.state_dict(), "rng": _rng_state(),
                })
            distributed.barrier()  # no rank starts the next epoch before rank 0's checkpoint is on disk
        return model.eval()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _resume(self, path: Path | None, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any, method: DFKDMethod) -> int:
        state = checkpoint.load_training_state(path, fingerprint) if path is not None else None
        if state is None:
            return 0
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            method.load_state_dict(state["method"])
            _restore_rng(state["rng"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"checkpoint {path} does not fit this run ({first[:200]}): the code changed since it was "
                            "written; delete it to start the stage over") from None
        print(f"resuming from {path} after epoch {state['epoch']}/{self.epochs}")
        return int(state["epoch"])

    def _progress(self, rounds: range, label: str, epoch: int, interactive: bool):
        if not interactive:
            return rounds
        from tqdm import tqdm

        return tqdm(rounds, desc=f"[{label}] epoch {epoch + 1}/{self.epochs}", leave=False, unit="round")

    def _report(self, label: str, epoch: int, metrics: dict[str, float], interactive: bool) -> None:
        shown = [("loss", "student/loss"), ("agree", "student/teacher_agreement"), ("top1", "monitor/top1")]
        parts = [f"{short} {metrics[key]:.4g}" for short, key in shown if key in metrics]
        line = f"[{label}] epoch {epoch + 1}/{self.epochs}  " + "  ".join(parts) + f"  ({metrics['epoch_seconds']:.1f} s)"
        print(line, flush=True)
