"""Fast / FastDFKD: "Up to 100x Faster Data-free Knowledge Distillation" (Fang et al., AAAI 2022).

CMI-style inversion made cheap: a *meta* generator is learned across rounds (first-order MAML or
Reptile) so that a copy of it needs only a few steps (Fast-2/5/10) to produce a new batch; BN
statistics targets carry a momentum across rounds; the generator's first layer is reset once,
part-way through training. Facts from zju-vipa Fast-Datafree (datafree/synthesis/fast_meta.py,
scripts/fast_cifar.sh).
"""

from __future__ import annotations

import copy
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


@gin.configurable
class Fast(PoolDistillation):
    """Defaults: Fast-Datafree ``scripts/fast_cifar.sh``, WRN-40-2 teacher, Fast-2 row (--g_steps 2
    --lr_g 5e-3 --lr_z 0.015 --bn 10 --oh 0.4 --adv 1.1 --bn_mmt 0.9 --warmup 20 --T 20 --is_maml 1
    --reset_l0 1). The gin presets: gin/methods/fast.gin is Fast-10 (the README's reported setting),
    fast2.gin and fast5.gin the others, with the script's per-preset learning rates.

    ``meta``: 'fomaml' (the script's --is_maml 1: the fast copy's gradients accumulate on the meta
    generator every step, one meta step per round) or 'reptile' (meta gradient = meta - adapted
    weights). ``generator_optimizer`` (its lr is the script's lr_g) serves the per-round copy, whose
    latent codes learn at ``latent_lr`` (lr_z), and the meta generator, at ``lr_g * synthesis_steps``
    as in the reference code. ``warmup_rounds``: synthesis rounds run before the first student step (the
    script's --warmup epochs, which synthesise without training the student).
    ``reset_first_layer_at``: round at which the generator's input layer is re-initialised
    (the reference resets it at epoch 120 of 220; 0 disables).
    ``shift`` / ``flip``: the view augmentation, RandomCrop(padding 4) + RandomHorizontalFlip in the reference
    (fast_meta.py lines 96-97); gin/data/digits.gin turns the flip off (a mirrored digit is not a digit the
    teacher saw). ``class_skew``: prior of the target classes (:func:`~repro.methods.inversion.draw_targets`;
    0 = uniform, the reference).
    """

    def __init__(self, generator: NetSpec = gin.REQUIRED,
                 generator_optimizer: Callable[..., torch.optim.Optimizer] = gin.REQUIRED,
                 synthesis_batch_size: int = 256, synthesis_steps: int = 2, latent_lr: float = 0.015,
                 bn_weight: float = 10.0, onehot_weight: float = 0.4, adversarial_weight: float = 1.1,
                 bn_momentum: float = 0.9, meta: str = "fomaml", warmup_rounds: int = 20, reset_first_layer_at: int = 120,
                 shift: float = 0.125, flip: bool = True, temperature: float = 20.0, pool_size: int = 50_000,
                 name: str = "fast", class_skew: float = 0.0) -> None:
        self.record_settings(locals())
        if meta not in ("fomaml", "reptile"):
            raise UserError(f"Fast.meta = {meta!r}: choose 'fomaml' or 'reptile'")
        if synthesis_steps <= 0 or warmup_rounds < 0 or not 0 <= bn_momentum < 1:
            raise UserError("Fast: synthesis_steps must be > 0, warmup_rounds >= 0 and bn_momentum in [0, 1)")
        self.generator_spec, self.synthesis_batch_size, self.synthesis_steps = generator, synthesis_batch_size, synthesis_steps
        self.make_optimizer, self.latent_lr = generator_optimizer, latent_lr
        self.weights = {"bn_statistics": bn_weight, "onehot": onehot_weight, "adversarial": adversarial_weight}
        self.bn_momentum, self.meta, self.warmup_rounds = bn_momentum, meta, warmup_rounds
        self.reset_first_layer_at, self.shift, self.flip = reset_first_layer_at, shift, flip
        self.temperature, self.pool_size = temperature, pool_size
        self.rounds, self.name, self.class_skew = 0, name, class_skew

    def setup(self, teacher: nn.Module | None, student: nn.Module, spec: DataSpec,
              device: torch.device) -> nn.Module:
        trained = super().setup(teacher, student, spec, device)
        self.bn = BNStatistics(teacher, momentum=self.bn_momentum)
        self.generator = self.generator_spec.build(image_size=spec.image_size, out_channels=spec.channels).to(device)
        self.meta_optim = build_optimizer(self.make_optimizer, self.generator.parameters(), "generator")
        for group in self.meta_optim.param_groups:  # meta lr = lr_g * g_steps (fast_meta.py)
            group["lr"] *= self.synthesis_steps
        return trained

    def _first_layer(self) -> nn.Module:
        return next(m for m in self.generator.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)))

    def synthesize(self) -> dict[str, torch.Tensor]:
        if self.rounds == 0:
            for _ in range(self.warmup_rounds):  # fill the pool before the student's first step
                super().synthesize()
        return super().synthesize()

    def make_batch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.rounds += 1
        if self.rounds == self.reset_first_layer_at:
            self._first_layer().reset_parameters()
        size, spec = self.synthesis_batch_size, self.spec
        z = torch.randn(size, self.generator.latent_dim, device=self.device, requires_grad=True)
        targets = draw_targets(size, spec.num_classes, self.class_skew, self.device)
        fast = copy.deepcopy(self.generator).train()
        optimizer = build_optimizer(self.make_optimizer, [{"params": fast.parameters()},
                                                          {"params": [z], "lr": self.latent_lr}], "generator")
        self.meta_optim.zero_grad(set_to_none=True)
        best = None
        terms: dict[str, torch.Tensor] = {}
        self.bn.active = True
        try:
            for _ in range(self.synthesis_steps):
                images = spec.normalize(fast(z))
                view = random_views(images, shift=self.shift, flip=self.flip)
                teacher_logits = self.teacher(view)
                terms = {"bn_statistics": self.bn.loss(), "onehot": F.cross_entropy(teacher_logits, targets)}
                terms["adversarial"] = (masked_adversarial(self.student(view), teacher_logits)
                                        if self.weights["adversarial"] > 0 else torch.zeros((), device=self.device))
                loss = losses.weighted_sum(terms, self.weights)
                best = keep_best(best, loss, images)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.meta == "fomaml":  # first-order MAML: the fast weights' gradients, summed over steps
                    for meta_p, fast_p in zip(self.generator.parameters(), fast.parameters()):
                        if fast_p.grad is not None:
                            meta_p.grad = fast_p.grad.clone() if meta_p.grad is None else meta_p.grad + fast_p.grad
                optimizer.step()
                terms["synthesis_loss"] = loss
        finally:
            self.bn.active = False
        self.bn.update_momentum()
        if self.meta == "reptile":  # Reptile: move the meta weights towards the adapted ones
            for meta_p, fast_p in zip(self.generator.parameters(), fast.parameters()):
                meta_p.grad = (meta_p.detach() - fast_p.detach())
        distributed.average_optimizer_gradients(self.meta_optim)  # one meta-generator for all ranks
        self.meta_optim.step()
        return best[1], terms

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.state_dict(),
                "meta_optimizer": self.meta_optim.state_dict(), "bn": self.bn.state_dict(),
                "rounds": torch.tensor(self.rounds)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])
        self.meta_optim.load_state_dict(state["meta_optimizer"])
        self.bn.load_state_dict(state["bn"])
        self.rounds = int(state["rounds"])
