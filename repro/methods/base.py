"""The plug-in interface every training method implements.

The Trainer owns the student's optimiser, schedule, evaluation and checkpoints; a method owns how
substitution data is made (its generators and their optimisers) and what the student's loss is.
Neither reaches into the other: the Trainer never sees a generator, a method never sees the
student's optimiser.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from repro.data.datasets import DataSpec


@dataclasses.dataclass
class Batch:
    """A batch of substitution (or, for supervised training, real) data.

    ``x``: images ``[B, C, H, W]`` already normalised; ``y``: labels ``[B]`` when the method has them.
    """

    x: torch.Tensor
    y: torch.Tensor | None = None


class DFKDMethod(abc.ABC):
    """A data-free distillation method (or supervised training) as seen by the Trainer.

    Call order per round: ``synthesize()`` once, then ``student_steps_per_round`` times
    ``sample(n)`` -> ``student_loss(batch)`` -> the Trainer's optimiser step.
    """

    teacher: nn.Module | None
    student: nn.Module
    spec: DataSpec
    device: torch.device
    name: str = ""  # describe()'s "name" when it is not a constructor argument; "": the class name, lower case
    settings: dict[str, Any]

    def record_settings(self, arguments: dict[str, Any]) -> None:
        """Keep the constructor's arguments (gin bindings and defaults) for :meth:`describe`: call it
        first in ``__init__`` with ``locals()``."""
        self.settings = {key: value for key, value in arguments.items() if key not in ("self", "__class__")}

    def setup(self, teacher: nn.Module | None, student: nn.Module, spec: DataSpec,
              device: torch.device) -> nn.Module:
        """Receive the frozen teacher and the student; build generators/optimisers.

        Returns the module the Trainer optimises, evaluates and saves. A wrapper method (KDCI)
        may return a larger module that contains ``student``; baselines return ``student`` itself.
        """
        self.spec, self.device = spec, device
        self.teacher = teacher
        if teacher is not None:
            teacher.to(device).eval()
            for parameter in teacher.parameters():
                parameter.requires_grad_(False)
        self.student = student
        return student

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the Trainer before each epoch (0-based), also after a resume: periodic work
        such as rebuilding a dictionary or resetting layers belongs here."""

    def synthesize(self) -> dict[str, torch.Tensor]:
        """Update the substitution data source (generator steps, image optimisation, pool selection).

        Returns detached scalar tensors to log (no host sync here; the Trainer reduces them).
        """
        return {}

    @abc.abstractmethod
    def sample(self, batch_size: int) -> Batch:
        """A batch of substitution data for one student step."""

    def distinct_samples(self, limit: int, batch_size: int) -> Iterator[Batch]:
        """Up to ``limit`` substitution images, none repeated, in batches of at most ``batch_size``
        (KDCI builds its confounder dictionary from them). The default draws ``sample`` batches, right for
        a generator whose every sample is fresh; a method holding a finite set of images (a pool,
        a selection) overrides it to give each image once, and may give fewer than ``limit``."""
        drawn = 0
        while drawn < limit:
            batch = self.sample(min(batch_size, limit - drawn))
            drawn += batch.x.shape[0]
            yield batch

    @abc.abstractmethod
    def student_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The student's loss on ``batch``: a dict with ``"loss"`` (to minimise) and named terms."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the Trainer optimises with the student although they are not deployed (e.g.
        DFND's label-noise adaptation matrix). Their values belong in :meth:`state_dict`."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the student needed to resume bit-identically (generators, optimisers)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def artefact_files(self) -> dict[str, Callable[[Path], None]]:
        """Extra files the deployed model needs beside its weights: ``{file name: writer(path)}``."""
        return {}

    def artefact_config(self) -> dict[str, Any]:
        """Extra config.json entries needed to rebuild the deployed model."""
        return {}

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of the method and every constructor argument (config.json, MLflow tags)."""
        settings = {key: jsonable(value) for key, value in getattr(self, "settings", {}).items()}
        return {"name": self.name or type(self).__name__.lower(), **settings}

    def _kd_terms(self, x: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
        """The student loss shared by the KD-based methods: ``kd_loss(student(x), teacher(x), T)``."""
        from repro import losses

        with torch.no_grad():
            teacher_logits = self.teacher(x)
        student_logits = self.student(x)
        loss = losses.kd_loss(student_logits, teacher_logits, temperature)
        agreement = (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
        return {"loss": loss, "kd": loss.detach(), "teacher_agreement": agreement}

    def _teacher_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher logits ``[B, K]`` and penultimate features ``[B, D]`` (gradients flow to ``x``)."""
        assert self.teacher is not None, "this method needs a teacher"
        return self.teacher(x, return_features=True)


def distinct_batches(images: torch.Tensor, limit: int, batch_size: int) -> Iterator[Batch]:
    """``min(limit, len(images))`` rows of ``images`` [N, C, H, W] in a random order, each once, in batches."""
    order = torch.randperm(len(images), device=images.device)[:limit]
    for start in range(0, len(order), batch_size):
        yield Batch(images[order[start:start + batch_size]])


def jsonable(value: Any) -> Any:
    """``value`` for a JSON record: tuples as lists, specs by ``to_dict()``, pools and wrapped methods by
    ``describe()``, classes and functions (an optimiser class) by name, anything else by its type's name."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if inspect.isclass(value) or inspect.isroutine(value):
        return value.__qualname__
    for record in ("to_dict", "describe"):
        if callable(getattr(value, record, None)):
            return jsonable(getattr(value, record)())
    return type(value).__name__
