"""DeepInversion (Yin et al., "Dreaming to Distill", CVPR 2020).

Images are optimised directly in pixel space so that the frozen teacher's BatchNorm statistics
match the ones stored in its BN layers, the teacher is confident about a random target class, and
(Adaptive DeepInversion) the student disagrees with the teacher; an L2 total-variation prior and
random jitter/flip regularise them. Finished batches go to a pool that the student samples from.
"""

from __future__ import annotations

import random
from typing import Callable

import gin
import torch
import torch.nn.functional as F
from torch import nn

from repro import losses
from repro.data.datasets import DataSpec
from repro.errors import UserError
from repro.methods.inversion import BNStatistics, PoolDistillation, draw_targets, keep_best
from repro.train.optim import build_optimizer


@gin.configurable
class DeepInversion(PoolDistillation):
    """Defaults from the zju-vipa CMI benchmark's DeepInversion script (scripts/deepinv:
    --bn 10 --oh 1 --adv 1 --T 20 --lr_g 0.1 --g_steps 1000) and its synthesiser (jitter of 1/8 of
    the image by rolling, random horizontal flip, JS temperature 3, images clipped to the valid range).

    ``flip``: the synthesiser's random horizontal flip (zju-vipa CMI datafree/synthesis/deepinversion.py
    lines 11-22, ``jitter_and_flip``), right for CIFAR/ImageNet; gin/data/digits.gin turns it off, since a
    mirrored digit is another digit or none, which the teacher never saw. ``class_skew``: prior of the
    target classes (:func:`~repro.methods.inversion.draw_targets`; 0 = uniform, the reference)."""

    name = "deepinv"

    def __init__(self, image_optimizer: Callable[..., torch.optim.Optimizer] = gin.REQUIRED,
                 synthesis_batch_size: int = 256, synthesis_steps: int = 1000, bn_weight: float = 10.0,
                 onehot_weight: float = 1.0, adversarial_weight: float = 1.0, tv_weight: float = 0.0,
                 jitter: float = 0.125, flip: bool = True, temperature: float = 20.0,
                 adversarial_temperature: float = 3.0, pool_size: int = 50_000, class_skew: float = 0.0) -> None:
        self.record_settings(locals())
        for name, value in (("synthesis_batch_size", synthesis_batch_size), ("synthesis_steps", synthesis_steps),
                            ("pool_size", pool_size)):
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"DeepInversion.{name} = {value!r} is invalid: it must be a positive integer")
        self.make_optimizer = image_optimizer
        self.synthesis_batch_size, self.synthesis_steps = synthesis_batch_size, synthesis_steps
        self.weights = {"bn_statistics": bn_weight, "onehot": onehot_weight, "adversarial": adversarial_weight,
                        "total_variation": tv_weight}
        self.jitter, self.flip, self.class_skew = jitter, flip, class_skew
        self.temperature, self.adversarial_temperature, self.pool_size = temperature, adversarial_temperature, pool_size

    def setup(self, teacher: nn.Module | None, student: nn.Module, spec: DataSpec,
              device: torch.device) -> nn.Module:
        trained = super().setup(teacher, student, spec, device)
        self.bn = BNStatistics(teacher)
        return trained

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        # Python's RNG, seeded by the Trainer and saved in checkpoints.
        limit_h, limit_w = int(images.shape[-2] * self.jitter), int(images.shape[-1] * self.jitter)
        shifted = torch.roll(images, shifts=(random.randint(-limit_h, limit_h), random.randint(-limit_w, limit_w)),
                             dims=(2, 3))
        return torch.flip(shifted, dims=(3,)) if self.flip and random.random() < 0.5 else shifted

    def make_batch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        spec, size = self.spec, self.synthesis_batch_size
        images = torch.randn(size, spec.channels, spec.image_size, spec.image_size, device=self.device, requires_grad=True)
        targets = draw_targets(size, spec.num_classes, self.class_skew, self.device)
        optimizer = build_optimizer(self.make_optimizer, [images], "image")
        self.bn.active = True
        terms: dict[str, torch.Tensor] = {}
        best = None
        try:
            for _ in range(self.synthesis_steps):
                view = self._augment(images)
                teacher_logits = self.teacher(view)
                terms = {"bn_statistics": self.bn.loss(), "onehot": F.cross_entropy(teacher_logits, targets),
                         "total_variation": losses.total_variation_loss(view)}
                terms["adversarial"] = (-losses.jensen_shannon_loss(self.student(view), teacher_logits,
                                                                   self.adversarial_temperature)
                                        if self.weights["adversarial"] > 0 else torch.zeros((), device=self.device))
                loss = losses.weighted_sum(terms, self.weights)
                best = keep_best(best, loss, images)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    images.copy_(self.clip(images))
                terms["synthesis_loss"] = loss
        finally:
            self.bn.active = False
        return best[1], terms
