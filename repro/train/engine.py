"""The Trainer: the only training loop. It runs any :class:`~repro.methods.base.DFKDMethod`.

It owns the student's optimiser and schedule, seeding, NaN checks, monitoring cadence,
checkpoint/resume and progress output, and never asks which method it runs.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import gin
import torch
from torch import nn
from torch.utils.data import Dataset

from repro import startup
from repro.data.datasets import DataSpec
from repro.errors import TrainingDiverged, UserError
from repro.methods.base import DFKDMethod
from repro.train import distributed, resume
from repro.train.device import autocast_dtype, resolve_device, seed_everything
from repro.train.evaluate import accuracy
from repro.train.hooks import NullTracker, Tracker
from repro.train.optim import build_optimizer, build_scheduler


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
        max_grad_norm: float | None = None,
    ) -> None:
        for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch), ("batch_size", batch_size),
                            ("student_steps_per_round", student_steps_per_round), ("monitor_every", monitor_every)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:  # True is an int to Python
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
        if max_grad_norm is not None and (isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, (int, float))
                                          or not 0 < max_grad_norm < float("inf")):
            raise UserError(f"Trainer.max_grad_norm = {max_grad_norm!r} is invalid: bind a positive number, or None "
                            "for no clipping")
        # Clip the global gradient norm of everything trained before each step (None: never). A norm
        # below the bound is multiplied by exactly 1.0, so a run it never clips keeps its bits.
        self.max_grad_norm = max_grad_norm
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
        tracker: Tracker | None = None,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        label: str = "train",
    ) -> nn.Module:
        """Train and return the model ``method.setup`` handed back.

        ``monitor_data``: a real split on which top-1 is logged every ``monitor_every`` epochs
        (monitoring only). ``checkpoint_path``: where the full state is saved after every epoch and
        resumed from when it matches ``fingerprint``. ``on_epoch(epoch, metrics)``: called on the
        main process after each epoch's metrics are logged (how a stage adds per-epoch artefacts).
        """
        main = distributed.is_main()
        tracker = (tracker or NullTracker()) if main else NullTracker()
        model = self._prepare(method, student, spec, teacher)
        trained = [p for p in model.parameters() if p.requires_grad] + list(method.trainable_parameters())
        optimizer = build_optimizer(self.make_optimizer, trained, "student")
        scheduler = build_scheduler(self.make_scheduler, optimizer, "student") if self.make_scheduler else None
        start_epoch = self._resume(checkpoint_path, fingerprint, model, optimizer, scheduler, method)
        if start_epoch and self.world > 1:  # the checkpoint holds rank 0's generators: re-offset the others
            seed_everything(torch.initial_seed() + 1_000_003 * distributed.rank())
        interactive = sys.stdout.isatty() and main
        # The process's fixed cost, start to its first training step (imports, tracking, set-up):
        # a stage pays it once per process; `repro bench` reports it (startup_s).
        self.startup_seconds = startup.process_age_s()
        tracker.log_metrics({"startup_seconds": self.startup_seconds}, step=0)
        for epoch in range(start_epoch, self.epochs):
            began = time.perf_counter()
            method.on_epoch_start(epoch)
            distributed.broadcast_state(model)  # e.g. a dictionary built this epoch: rank 0's for all
            sums, counts = self._train_epoch(method, model, optimizer, trained, epoch, label, interactive,
                                             checkpoint_path)
            if scheduler is not None:
                scheduler.step()
            metrics = self._epoch_metrics(sums, counts, optimizer)
            if main and monitor_data is not None and ((epoch + 1) % self.monitor_every == 0 or epoch + 1 == self.epochs):
                metrics["monitor/top1"] = accuracy(model, monitor_data, spec.num_classes, self.device)["top1"]
            metrics["epoch_seconds"] = time.perf_counter() - began
            tracker.log_metrics(metrics, step=epoch + 1)
            if main:
                if on_epoch is not None:
                    on_epoch(epoch + 1, metrics)
                self._report(label, epoch, metrics, interactive)
                if checkpoint_path is not None:
                    self._save(checkpoint_path, fingerprint, epoch, model, optimizer, scheduler, method)
            distributed.barrier()  # no rank starts the next epoch before rank 0's checkpoint is on disk
        return model.eval()

    def _prepare(self, method: DFKDMethod, student: nn.Module, spec: DataSpec, teacher: nn.Module | None) -> nn.Module:
        """Place the networks, let the method set up, and give every rank the same start."""
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
        return model

    def _train_epoch(self, method: DFKDMethod, model: nn.Module, optimizer: torch.optim.Optimizer,
                     trained: list[nn.Parameter], epoch: int, label: str, interactive: bool,
                     checkpoint_path: Path | None) -> tuple[dict[str, Any], dict[str, int]]:
        """One epoch of rounds (a synthesis, then ``student_steps_per_round`` student steps): summed terms."""
        sums: dict[str, torch.Tensor | float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        batch_size = self.batch_size // self.world
        for round_index in self._progress(range(self.steps_per_epoch // self.student_steps_per_round), label, epoch,
                                          interactive):
            with self._autocast():
                synthesized = method.synthesize()
            for name, value in synthesized.items():
                sums[name] += value
                counts[name] += 1
            model.train()
            for _ in range(self.student_steps_per_round):
                for name, value in self._student_step(method, optimizer, trained, batch_size).items():
                    sums[f"student/{name}"] += value
                    counts[f"student/{name}"] += 1
            # One host sync per round: a NaN is caught before it is checkpointed (on any rank: the
            # loss sum is reduced, so every rank stops together).
            loss_sum = distributed.mean_over_ranks({"loss": sums["student/loss"]})["loss"]
            if not torch.isfinite(torch.as_tensor(loss_sum)):
                step = epoch * self.steps_per_epoch + (round_index + 1) * self.student_steps_per_round
                kept = f"the last good checkpoint {checkpoint_path} is kept" if checkpoint_path else "nothing was saved"
                raise TrainingDiverged(
                    f"{method.describe()['name']}: student loss became non-finite at epoch {epoch + 1}, "
                    f"step {step}: lower the learning rates or loss weights; {kept}")
        return sums, counts

    def _student_step(self, method: DFKDMethod, optimizer: torch.optim.Optimizer, trained: list[nn.Parameter],
                      batch_size: int) -> dict[str, torch.Tensor]:
        """One optimiser step on the method's student loss; its terms, detached."""
        with self._autocast():
            terms = method.student_loss(method.sample(batch_size))
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        distributed.average_gradients(trained)
        if self.max_grad_norm is not None:  # after the average: every rank clips the same gradient alike
            torch.nn.utils.clip_grad_norm_(trained, self.max_grad_norm)
        optimizer.step()
        return {name: value.detach().float() for name, value in terms.items()}

    def _epoch_metrics(self, sums: dict[str, Any], counts: dict[str, int],
                       optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Per-epoch means of every summed term (averaged over ranks), one metric per vector entry."""
        metrics: dict[str, float] = {}
        sums = distributed.mean_over_ranks(sums)  # per-rank sums of equal counts: their mean
        for name, total in sums.items():
            mean = (total / counts[name]).cpu()
            # Vector terms (e.g. per-prototype usage) become one metric per entry.
            metrics.update({name: float(mean)} if mean.ndim == 0 else
                           {f"{name}/{index:02d}": float(value) for index, value in enumerate(mean)})
        metrics["student/lr"] = optimizer.param_groups[0]["lr"]
        return metrics

    def _save(self, path: Path, fingerprint: str, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: Any, method: DFKDMethod) -> None:
        resume.save_training_state(path, {
            "fingerprint": fingerprint, "epoch": epoch + 1, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "method": method.state_dict(), "rng": resume.capture_rng(),
        })

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _resume(self, path: Path | None, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any, method: DFKDMethod) -> int:
        state = resume.load_training_state(path, fingerprint) if path is not None else None
        if state is None:
            return 0
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            method.load_state_dict(state["method"])
            resume.restore_rng(state["rng"])
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
