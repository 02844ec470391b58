"""Shared part of the sampling-based methods (MosaicKD, DFND): the unlabeled pool, loaded once
through :mod:`repro.data.pools`, normalised with the teacher's convention and kept on the device."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from repro.data.datasets import DataSpec
from repro.data.pools import UnlabeledPool
from repro.errors import UserError
from repro.methods.base import DFKDMethod


class PoolSampling(DFKDMethod):
    """Loads ``self.unlabeled`` (an :class:`UnlabeledPool`) at setup into ``self.pool_images``."""

    unlabeled: UnlabeledPool

    def setup(self, teacher: nn.Module | None, student: nn.Module, spec: DataSpec,
              device: torch.device) -> nn.Module:
        trained = super().setup(teacher, student, spec, device)
        images = self.unlabeled.images(spec)
        if images.ndim != 4 or tuple(images.shape[1:]) != (spec.channels, spec.image_size, spec.image_size):
            raise UserError(f"the unlabeled pool gave images of shape {tuple(images.shape)}, the teacher expects "
                            f"[N, {spec.channels}, {spec.image_size}, {spec.image_size}]: fix the pool's settings")
        if len(images) == 0:
            raise UserError("the unlabeled pool is empty: point it at a folder or split with images")
        self.pool_images = spec.normalize(images).to(device)
        # Black in the network's input space: torchvision pads the image before normalising it.
        self.pool_fill = spec.normalize(torch.zeros(1, spec.channels, 1, 1)).to(device)
        return trained

    def draw_pool(self, count: int, augment: bool = False) -> torch.Tensor:
        """``count`` pool images drawn with replacement; ``augment``: with the pool's crop/flip (if it has one)."""
        index = torch.randint(len(self.pool_images), (count,), device=self.pool_images.device)
        return self.augment(self.pool_images[index]) if augment else self.pool_images[index]

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """The pool's training augmentation (:meth:`UnlabeledPool.augment`) of normalised ``images``."""
        return self.unlabeled.augment(images, self.pool_fill)

    def describe(self) -> dict[str, Any]:
        loaded = getattr(self, "pool_images", None)  # describe() may run before setup
        return {**super().describe(), **({"pool_size": len(loaded)} if loaded is not None else {})}
