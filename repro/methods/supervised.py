"""Supervised training on real labelled data: how the teacher stage uses the same Trainer."""

from __future__ import annotations

from typing import Any, Iterator

import gin
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from repro.methods.base import Batch, DFKDMethod
from repro.train import distributed


class _EpochPermutations:
    """Index batches from one seeded permutation per pass; resumable from a count of batches.

    Under torchrun every rank draws the same permutation and takes its own slice of each global
    batch of ``batch_size * world`` indices (DistributedSampler's split, kept resumable), so N ranks
    see exactly the batches one process with the global batch would.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        self.size, self.batch_size, self.seed, self.start = size, batch_size, seed, start
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.world
        per_pass = max(1, self.size // global_batch)  # drop the ragged tail: constant batch shape
        count = self.start
        while True:
            epoch, position = divmod(count, per_pass)
            permutation = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            for batch in range(position, per_pass):
                first = batch * global_batch + self.rank * self.batch_size
                yield permutation[first:first + self.batch_size].tolist()
                count += 1


@gin.configurable
class Supervised(DFKDMethod):
    """Cross-entropy on a real training split (the teacher recipe); no teacher, no synthesis."""

    def __init__(self, train_data: Dataset, seed: int = 0, num_workers: int = 0,
                 label_smoothing: float = 0.0) -> None:
        self.record_settings(locals())
        self.train_data, self.seed, self.num_workers = train_data, seed, num_workers
        self.label_smoothing = label_smoothing
        self._consumed = 0
        self._batches: Iterator[Any] | None = None
        self._batch_size: int | None = None

    def sample(self, batch_size: int) -> Batch:
        if self._batches is None or self._batch_size != batch_size:
            sampler = _EpochPermutations(len(self.train_data), batch_size, self.seed, start=self._consumed,
                                         rank=distributed.rank(), world=distributed.world_size())
            loader = DataLoader(self.train_data, batch_sampler=sampler, num_workers=self.num_workers,
                                pin_memory=self.device.type == "cuda", persistent_workers=self.num_workers > 0)
            self._batches, self._batch_size = iter(loader), batch_size
        images, labels = next(self._batches)
        self._consumed += 1
        return Batch(images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True))

    def student_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        loss = F.cross_entropy(self.student(batch.x), batch.y, label_smoothing=self.label_smoothing)
        return {"loss": loss, "cross_entropy": loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"consumed_batches": self._consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._consumed = int(state["consumed_batches"])
        self._batches = None
