"""CMI: Contrastive Model Inversion (Fang et al., IJCAI 2021).

Each round a generator is re-initialised and optimised (with its latent codes) for a few hundred
steps so that its images match the teacher's BN statistics, are classified as random target
classes, are hard for the student (masked adversarial term), and are *distinguishable from every
image synthesised before*: an InfoNCE loss over the teacher's per-layer instance features of a
global and a local crop, with earlier batches' features in a memory bank as negatives
(paper Eq. 6-8; facts from zju-vipa CMI, datafree/synthesis/contrastive.py).
"""

from __future__ import annotations

from typing import Any, Callable

import gin
import torch
import torch.nn.functional as F
from torch import nn

from repro import losses
from repro.data.datasets import DataSpec
from repro.errors import UserError
from repro.methods.inversion import (
    BNStatistics,
    PoolDistillation,
    draw_targets,
    keep_best,
    masked_adversarial,
    random_views,
)
from repro.nets.spec import NetSpec
from repro.train import distributed
from repro.train.optim import build_optimizer


def reset_generator(generator: nn.Module) -> None:
    """DCGAN initialisation, applied at every round (CMI's ``reset_model``): N(0, 0.02) weights,
    BN scales N(1, 0.02), zero biases."""
    for module in generator.modules():
        if isinstance(module, (nn.ConvTranspose2d, nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)


class _ProjectionHead(nn.Module):
    """Two-layer MLP onto the unit sphere (CMI's ``MLPHead``), trained with the generator.

    Widths as the reference: hidden = the input width (the concatenated BN-layer instance means), output
    ``dim_out`` (zju-vipa CMI datafree/synthesis/contrastive.py lines 17-31, ``MLPHead``: ``dim_h``
    defaults to ``dim_in``; line 235 builds it as ``MLPHead(cmi_feature dim, head_dim)``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


@gin.configurable
class CMI(PoolDistillation):
    """Defaults: zju-vipa CMI ``scripts/cmi/adv_cmi_cifar10_wrn402_wrn161.sh`` / Fast-Datafree
    ``scripts/cmi_cifar.sh`` (--bn 1 --oh 1 --adv 0.5 --cr 0.8 --cr_T 0.2 --T 20 --lr_g 1e-3
    --g_steps 200, bank 40960, 4096 negatives, head dim 256 (datafree_kd.py line 276), global view = crop with 4/32 padding +
    flip, local view = resized crop of area [0.25, 1] + flip).

    ``generator_lr`` is the reference's lr_g, the learning rate of the generator, its codes and the
    projection head alike (profiles tune it): it is set on the parameter groups given to the
    ``generator_optimizer`` and ``head_optimizer`` classes, which bring the rest (e.g. betas).
    ``flip``: random horizontal flips of both views (the reference's RandomHorizontalFlip for CIFAR;
    off for digits, gin/data/digits.gin). ``class_skew``: prior of the target classes
    (:func:`~repro.methods.inversion.draw_targets`; 0 = uniform, the reference)."""

    def __init__(self, generator: NetSpec = gin.REQUIRED,
                 generator_optimizer: Callable[..., torch.optim.Optimizer] = gin.REQUIRED,
                 head_optimizer: Callable[..., torch.optim.Optimizer] = gin.REQUIRED, synthesis_batch_size: int = 256,
                 synthesis_steps: int = 200, generator_lr: float = 1e-3, bn_weight: float = 1.0,
                 onehot_weight: float = 1.0, adversarial_weight: float = 0.5, contrastive_weight: float = 0.8,
                 contrastive_temperature: float = 0.2, bank_size: int = 40960, negatives: int = 4096,
                 head_dim: int = 256, global_shift: float = 0.125, local_scale: tuple[float, float] = (0.5, 1.0),
                 flip: bool = True, temperature: float = 20.0, pool_size: int = 50_000,
                 class_skew: float = 0.0) -> None:
        self.record_settings(locals())
        if synthesis_steps <= 0 or synthesis_batch_size <= 0:
            raise UserError("CMI.synthesis_steps and CMI.synthesis_batch_size must be positive")
        if contrastive_temperature <= 0:
            raise UserError(f"CMI.contrastive_temperature = {contrastive_temperature}: must be > 0")
        self.generator_spec, self.synthesis_batch_size = generator, synthesis_batch_size
        self.make_generator_optim, self.make_head_optim = generator_optimizer, head_optimizer
        self.synthesis_steps, self.generator_lr = synthesis_steps, generator_lr
        self.weights = {"bn_statistics": bn_weight, "onehot": onehot_weight, "adversarial": adversarial_weight,
                        "contrastive": contrastive_weight}
        self.contrastive_temperature = contrastive_temperature
        self.bank_size, self.negatives, self.head_dim = bank_size, negatives, head_dim
        self.global_shift, self.local_scale, self.flip = global_shift, tuple(local_scale), flip
        self.temperature, self.pool_size, self.class_skew = temperature, pool_size, class_skew

    def setup(self, teacher: nn.Module | None, student: nn.Module, spec: DataSpec,
              device: torch.device) -> nn.Module:
        trained = super().setup(teacher, student, spec, device)
        self.bn = BNStatistics(teacher, instance_means=True)
        self.generator = self.generator_spec.build(image_size=spec.image_size, out_channels=spec.channels).to(device)
        feature_dim = sum(layer.num_features for layer in self.bn.layers)
        self.head = _ProjectionHead(feature_dim, self.head_dim).to(device)
        self.head_optim = build_optimizer(self.make_head_optim, [{"params": self.head.parameters(),
                                                                  "lr": self.generator_lr}], "head")
        # Memory bank of [local | global] instance features of earlier rounds' best images.
        self.bank = torch.empty(0, 2 * feature_dim, device=device)
        return trained

    def _contrastive(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        """InfoNCE between each image's local and global crop; earlier images are negatives.

        As the benchmark: the cross-entropy is averaged separately over the current batch and the
        cached rows, so the bank's size does not dilute the generator's gradient."""
        count = len(self.bank)
        if count:
            index = torch.randperm(count, device=self.bank.device)[: self.negatives]
            cached_local, cached_global = self.bank[index].chunk(2, dim=1)
            local, global_ = torch.cat([local, cached_local]), torch.cat([global_, cached_global])
        projected = self.head(torch.cat([local, global_]))
        proj_local, proj_global = projected.chunk(2)
        logits = proj_local @ proj_global.detach().T / self.contrastive_temperature
        per_row = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="none")
        size = self.synthesis_batch_size
        return per_row[:size].mean() + (per_row[size:].mean() if count else 0.0)

    def make_batch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        size, spec = self.synthesis_batch_size, self.spec
        reset_generator(self.generator)
        self.generator.train()
        z = torch.randn(size, self.generator.latent_dim, device=self.device, requires_grad=True)
        targets = draw_targets(size, spec.num_classes, self.class_skew, self.device)
        lr = self.generator_lr
        optimizer = build_optimizer(self.make_generator_optim, [{"params": self.generator.parameters(), "lr": lr},
                                                                {"params": [z], "lr": lr}], "generator")
        best = None
        terms: dict[str, torch.Tensor] = {}
        self.bn.active = True
        try:
            for _ in range(self.synthesis_steps):
                images = spec.normalize(self.generator(z))
                global_view = random_views(images, shift=self.global_shift, flip=self.flip)
                local_view = random_views(images, scale=self.local_scale, flip=self.flip)
                teacher_logits = self.teacher(global_view)
                terms = {"bn_statistics": self.bn.loss(), "onehot": F.cross_entropy(teacher_logits, targets)}
                global_features = self.bn.instance_features()
                self.teacher(local_view)
                local_features = self.bn.instance_features()
                self.bn.clear()  # the local view's BN statistics are not part of the inversion loss
                terms["adversarial"] = (masked_adversarial(self.student(global_view), teacher_logits)
                                        if self.weights["adversarial"] > 0 else torch.zeros((), device=self.device))
                terms["contrastive"] = self._contrastive(local_features, global_features)
                loss = losses.weighted_sum(terms, self.weights)
                best = keep_best(best, loss, images, torch.cat([local_features, global_features], dim=1))
                optimizer.zero_grad(set_to_none=True)
                self.head_optim.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()  # this round's generator and codes: per rank
                distributed.average_optimizer_gradients(self.head_optim)  # the head persists: shared
                self.head_optim.step()
                terms["synthesis_loss"] = loss
        finally:
            self.bn.active = False
        self.bank = torch.cat([self.bank, best[2]])[-self.bank_size:]
        return best[1], terms

    def state_dict(self) -> dict[str, Any]:
        # The generator is re-initialised every round: only the head, its optimiser and the bank persist.
        return {**super().state_dict(), "bank": self.bank, "head": self.head.state_dict(),
                "head_optimizer": self.head_optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.bank = state["bank"].to(self.device)
        self.head.load_state_dict(state["head"])
        self.head_optim.load_state_dict(state["head_optimizer"])
