"""DFND: "Learning Student Networks in the Wild" (Chen et al., CVPR 2021).

No generator: the useful images of a large unlabeled pool are *selected* by the teacher's outputs,
then the student learns by *noisy* distillation. The teacher's labels on wild images are noisy, so
the student's prediction passes through a learned label-noise adaptation matrix before it is
compared with the teacher's arg-max, and plain KD is applied only to the samples the teacher is most
sure of. Facts: the paper's Sec. 3; the DFND loss as implemented in open-mmlab/mmrazor
(models/losses/dfnd_loss.py: adaptation rows = teacher accuracy on the diagonal, the rest a softmax
of learned logits times (1 - accuracy); KD on the ``batch_select`` = 0.5 lowest-CE samples at
tau = 4; NLL of the adapted prediction against the teacher's arg-max).
"""

from __future__ import annotations

from typing import Any, Iterator

import gin
import torch
import torch.nn.functional as F
from torch import nn

from repro import losses
from repro.data.datasets import DataSpec
from repro.data.pools import UnlabeledPool
from repro.errors import UserError
from repro.methods.base import Batch, distinct_batches
from repro.methods.sampling import PoolSampling


SELECTIONS = ("lowest_ce", "class_balanced")


@gin.configurable
class DFND(PoolSampling):
    """Selection (``selection``):

    - ``'lowest_ce'`` (the reference, default): the ``num_selected`` pool images on which the teacher's
      cross-entropy against its own arg-max is lowest, ranked over the whole pool, so the classes the
      teacher is sure of stay over-represented: the class shift KDCI targets (huawei-noah
      Efficient-Computing, Data-Efficient-Model-Compression/DFND/DFND-train.py: ``identify_outlier``,
      lines 116-130, and ``main``, line 203, ``topk(num_select, largest=False)``; --num_select 600000,
      line 23);
    - ``'class_balanced'`` (an option): for every class, the ``selected_per_class`` pool images with the
      highest teacher probability for that class (an image chosen for two classes counts once).

    Selected images reach the student with the pool's augmentation (:meth:`UnlabeledPool.augment`; the
    reference selects on plain images and trains on RandomCrop + RandomHorizontalFlip ones, DFND-train.py
    lines 51-63 and 207). ``teacher_accuracy``: the diagonal of the noise-adaptation matrix (the chance the
    teacher's label is right on selected wild images); ``confident_fraction``: share of each batch used for
    plain KD.
    """

    def __init__(self, pool: UnlabeledPool = gin.REQUIRED, selection: str = "lowest_ce",
                 num_selected: int = 600_000, selected_per_class: int = 200,
                 temperature: float = 4.0, teacher_accuracy: float = 0.95, confident_fraction: float = 0.5,
                 noise_weight: float = 1.0) -> None:
        self.record_settings(locals())
        if selection not in SELECTIONS:
            raise UserError(f"DFND.selection = {selection!r}: choose {', '.join(SELECTIONS)}")
        if not 0 < teacher_accuracy < 1:
            raise UserError(f"DFND.teacher_accuracy = {teacher_accuracy}: must lie strictly between 0 and 1")
        if not 0 < confident_fraction <= 1 or selected_per_class <= 0 or num_selected <= 0:
            raise UserError("DFND.confident_fraction must be in (0, 1], num_selected and selected_per_class > 0")
        self.unlabeled, self.selection, self.temperature = pool, selection, temperature
        self.num_selected, self.selected_per_class = num_selected, selected_per_class
        self.teacher_accuracy, self.confident_fraction, self.noise_weight = teacher_accuracy, confident_fraction, noise_weight

    def setup(self, teacher: nn.Module | None, student: nn.Module, spec: DataSpec,
              device: torch.device) -> nn.Module:
        trained = super().setup(teacher, student, spec, device)
        classes = spec.num_classes
        # Off-diagonal logits of each row of the adaptation matrix, learned with the student.
        self.noise_logits = nn.Parameter(torch.zeros(classes, classes - 1, device=device))
        self.selected = self._select()
        return trained

    @torch.no_grad()
    def _select(self) -> torch.Tensor:
        logits = torch.cat([self.teacher(chunk) for chunk in self.pool_images.split(1024)])
        if self.selection == "lowest_ce":
            uncertainty = F.cross_entropy(logits, logits.argmax(1), reduction="none")  # [N]
            index = uncertainty.topk(min(self.num_selected, len(logits)), largest=False).indices
            return self.pool_images[index.sort().values]
        per_class = min(self.selected_per_class, len(logits))
        index = F.softmax(logits, dim=1).topk(per_class, dim=0).indices.flatten()  # [per_class * K]
        return self.pool_images[torch.unique(index)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.noise_logits]

    def adaptation_matrix(self) -> torch.Tensor:
        """``[K, K]`` row-stochastic: ``T[i, j]`` = P(teacher says j | true class i)."""
        classes = self.spec.num_classes
        off = F.softmax(self.noise_logits, dim=1) * (1 - self.teacher_accuracy)
        matrix = torch.full((classes, classes), self.teacher_accuracy, device=off.device)
        mask = ~torch.eye(classes, dtype=torch.bool, device=off.device)
        return matrix.masked_scatter(mask, off)

    @torch.no_grad()
    def sample(self, batch_size: int) -> Batch:
        index = torch.randint(len(self.selected), (batch_size,), device=self.selected.device)
        return Batch(self.augment(self.selected[index]))

    def distinct_samples(self, limit: int, batch_size: int) -> Iterator[Batch]:
        """Each selected image at most once (not augmented: the selection itself is the substitution data)."""
        return distinct_batches(self.selected, limit, batch_size)

    def student_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            teacher_logits = self.teacher(batch.x)
        student_logits = self.student(batch.x)
        labels = teacher_logits.argmax(1)
        keep = max(1, int(self.confident_fraction * len(labels)))
        confident = F.cross_entropy(teacher_logits, labels, reduction="none").topk(keep, largest=False).indices
        kd = losses.kd_loss(student_logits[confident], teacher_logits[confident], self.temperature) * keep / len(labels)
        adapted = F.softmax(student_logits, dim=1) @ self.adaptation_matrix()
        noisy = F.nll_loss(adapted.clamp_min(1e-12).log(), labels)
        # The KD term is unweighted in mmrazor's DFND loss: a weight of 1.0 (exact) keeps the sum's bits.
        loss = losses.weighted_sum({"kd": kd, "noisy_ce": noisy}, {"kd": 1.0, "noisy_ce": self.noise_weight})
        agreement = (student_logits.argmax(1) == labels).float().mean()
        return {"loss": loss, "kd": kd.detach(), "noisy_ce": noisy.detach(), "teacher_agreement": agreement}

    def state_dict(self) -> dict[str, Any]:
        return {"noise_logits": self.noise_logits.detach()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.noise_logits.copy_(state["noise_logits"])

    def describe(self) -> dict[str, Any]:
        record = super().describe()
        if hasattr(self, "selected"):  # after setup
            record["selected"] = len(self.selected)
        return record
