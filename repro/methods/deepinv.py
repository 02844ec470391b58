"""DeepInversion (Yin et al., "Dreaming to Distill", CVPR 2020).

Images are optimised directly in pixel space so that the frozen teacher's BatchNorm statistics
match the ones stored in its BN layers, the teacher is confident about a random target class, and
(Adaptive DeepInversion) the student disagrees with the teacher; an L2 total-variation prior and
random jitter/flip regularise them. Finished batches go to a pool that the student samples from.
"""

from __future__ import annotations

import random
from typing import Any

import gin
import torch
import torch.nn.functional as F
from torch import nn

from repro import losses
from repro.data import DataSpec
from repro.methods.base import Batch, DFKDMethod


class _BNStatistics:
    """Forward hooks that record the batch mean/variance of each BN layer's input."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.means: list[torch.Tensor] = []
        self.vars: list[torch.Tensor] = []
        self.active = False  # only synthesis records; the teacher's other forwards must not accumulate
        self.handles = [layer.register_forward_hook(self._record) for layer in self.layers]

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not self.active:
            return
        x = inputs[0]
        self.means.append(x.mean(dim=(0, 2, 3)))
        self.vars.append(x.var(dim=(0, 2, 3), unbiased=False))

    def loss(self) -> torch.Tensor:
        value = losses.bn_statistics_loss(self.means, self.vars, [l.running_mean for l in self.layers],
                                          [l.running_var for l in self.layers])
        self.means, self.vars = [], []
        return value


@gin.configurable
class DeepInversion(DFKDMethod):
    """Defaults from the zju-vipa CMI benchmark's DeepInversion script (scripts/deepinv:
    --bn 10 --oh 1 --adv 1 --T 20 --lr_g 0.1 --g_steps 1000) and its synthesiser (jitter of 1/8 of
    the image by rolling, random horizontal flip, JS temperature 3, images clipped to the valid range)."""

    def __init__(self, synthesis_batch_size: int = 256, synthesis_steps: int = 1000, image_lr: float = 0.1,
                 bn_weight: float = 10.0, onehot_weight: float = 1.0, adversarial_weight: float = 1.0,
                 tv_weight: float = 0.0, jitter: float = 0.125, flip: bool = True, temperature: float = 20.0,
                 adversarial_temperature: float = 3.0, pool_size: int = 50_000) -> None:
        self.synthesis_batch_size, self.synthesis_steps, self.image_lr = synthesis_batch_size, synthesis_steps, image_lr
        self.bn_weight, self.onehot_weight, self.adversarial_weight = bn_weight, onehot_weight, adversarial_weight
        self.tv_weight, self.jitter, self.flip = tv_weight, jitter, flip
        self.temperature, self.adversarial_temperature, self.pool_size = temperature, adversarial_temperature, pool_size

    def setup(self, teacher: nn.Module | None, student: nn.Module, spec: DataSpec,
              device: torch.device) -> nn.Module:
        trained = super().setup(teacher, student, spec, device)
        self.bn = _BNStatistics(teacher)
        self.pool = torch.empty(0, spec.channels, spec.image_size, spec.image_size, device=device)
        zero, one = torch.zeros(1, spec.channels, 1, 1), torch.ones(1, spec.channels, 1, 1)
        self.lower, self.upper = spec.normalize(zero).to(device), spec.normalize(one).to(device)
        return trained

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        # Python's RNG, seeded by the Trainer and saved in checkpoints.
        limit_h, limit_w = int(images.shape[-2] * self.jitter), int(images.shape[-1] * self.jitter)
        shifted = torch.roll(images, shifts=(random.randint(-limit_h, limit_h), random.randint(-limit_w, limit_w)),
                             dims=(2, 3))
        return torch.flip(shifted, dims=(3,)) if self.flip and random.random() < 0.5 else shifted

    def synthesize(self) -> dict[str, torch.Tensor]:
        spec, size = self.spec, self.synthesis_batch_size
        images = torch.randn(size, spec.channels, spec.image_size, spec.image_size, device=self.device, requires_grad=True)
        targets = torch.randint(spec.num_classes, (size,), device=self.device)
        optimizer = torch.optim.Adam([images], lr=self.image_lr, betas=(0.5, 0.99))
        was_training = self.student.training
        self.student.eval()
        self.bn.active = True
        terms: dict[str, torch.Tensor] = {}
        for _ in range(self.synthesis_steps):
            view = self._augment(images)
            teacher_logits = self.teacher(view)
            terms = {"bn_statistics": self.bn.loss(), "onehot": F.cross_entropy(teacher_logits, targets),
                     "total_variation": losses.total_variation_loss(view)}
            terms["adversarial"] = (-losses.jensen_shannon_loss(self.student(view), teacher_logits,
                                                               self.adversarial_temperature)
                                    if self.adversarial_weight > 0 else torch.zeros((), device=self.device))
            loss = (self.bn_weight * terms["bn_statistics"] + self.onehot_weight * terms["onehot"]
                    + self.adversarial_weight * terms["adversarial"] + self.tv_weight * terms["total_variation"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                images.copy_(torch.maximum(torch.minimum(images, self.upper), self.lower))
            terms["synthesis_loss"] = loss
        self.bn.active = False
        self.student.train(was_training)  # gradients left on the student are cleared by the Trainer's zero_grad
        self.pool = torch.cat([self.pool, images.detach()])[-self.pool_size:]
        return {f"synthesis/{name}": value.detach() for name, value in terms.items()}

    def sample(self, batch_size: int) -> Batch:
        if len(self.pool) == 0:  # asked before any round (e.g. KDCI with warmup_epochs = 0): make one
            self.synthesize()
        return self._draw(batch_size)

    @torch.no_grad()
    def _draw(self, batch_size: int) -> Batch:
        index = torch.randint(len(self.pool), (batch_size,), device=self.pool.device)
        return Batch(self.pool[index])

    def student_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self._kd_terms(batch.x, self.temperature)

    def state_dict(self) -> dict[str, Any]:
        return {"pool": self.pool}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool = state["pool"].to(self.device)

    def describe(self) -> dict[str, Any]:
        return {"name": "deepinv", "bn_weight": self.bn_weight, "onehot_weight": self.onehot_weight,
                "adversarial_weight": self.adversarial_weight, "tv_weight": self.tv_weight,
                "synthesis_steps": self.synthesis_steps, "temperature": self.temperature}
