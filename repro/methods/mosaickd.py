"""MosaicKD: "Mosaicking to Distill: Knowledge Distillation from Out-of-Domain Data" (Fang et al.,
NeurIPS 2021).

A generator learns to compose images whose *local patches* look like the out-of-domain pool (a patch
discriminator judges them, Eq. 3) while the teacher sees them as confident, class-balanced
in-domain samples (Eq. 4 and the appendix's balance term) that the student still gets wrong
(Eq. 7). The student distils on generated and pool images together. Facts from zju-vipa MosaicKD
(kd_mosaic.py): BCE patch losses, align = the teacher's per-sample entropy, balance =
``sum p(y) log2 p(y)``, weights --local 1 --align 1 --adv 1 --balance 10, five student steps per
generator step, Adam(1e-3, betas (0.5, 0.999)) for generator and discriminator.
"""

from __future__ import annotations

from typing import Any, Callable

import gin
import torch
import torch.nn.functional as F
from torch import nn

from repro import losses
from repro.data.datasets import DataSpec
from repro.data.pools import UnlabeledPool
from repro.methods.base import Batch
from repro.methods.sampling import PoolSampling
from repro.nets.spec import NetSpec
from repro.train import distributed
from repro.train.optim import build_optimizer


@gin.configurable
class MosaicKD(PoolSampling):
    """Generator + patch discriminator against the unlabeled pool; KD on generated + pool images.

    ``pool_fraction``: share of each student batch drawn from the pool (the reference concatenates
    equal numbers of generated and pool images: 0.5).
    """

    def __init__(self, generator: NetSpec = gin.REQUIRED, discriminator: NetSpec = gin.REQUIRED,
                 pool: UnlabeledPool = gin.REQUIRED,
                 generator_optimizer: Callable[..., torch.optim.Optimizer] = gin.REQUIRED,
                 discriminator_optimizer: Callable[..., torch.optim.Optimizer] = gin.REQUIRED,
                 synthesis_batch_size: int = 256, local_weight: float = 1.0, align_weight: float = 1.0,
                 adversarial_weight: float = 1.0, balance_weight: float = 10.0, temperature: float = 1.0,
                 pool_fraction: float = 0.5) -> None:
        self.record_settings(locals())
        self.generator_spec, self.discriminator_spec, self.unlabeled = generator, discriminator, pool
        self.make_generator_optim, self.make_discriminator_optim = generator_optimizer, discriminator_optimizer
        self.synthesis_batch_size = synthesis_batch_size
        self.weights = {"local": local_weight, "align": align_weight, "adversarial": adversarial_weight,
                        "balance": balance_weight}
        self.temperature, self.pool_fraction = temperature, pool_fraction

    def setup(self, teacher: nn.Module | None, student: nn.Module, spec: DataSpec,
              device: torch.device) -> nn.Module:
        trained = super().setup(teacher, student, spec, device)
        self.generator = self.generator_spec.build(image_size=spec.image_size, out_channels=spec.channels).to(device)
        self.discriminator = self.discriminator_spec.build(in_channels=spec.channels).to(device)
        self.generator_optim = build_optimizer(self.make_generator_optim, self.generator.parameters(), "generator")
        self.discriminator_optim = build_optimizer(self.make_discriminator_optim, self.discriminator.parameters(),
                                                   "discriminator")
        return trained

    def _generate(self, count: int) -> torch.Tensor:
        z = torch.randn(count, self.generator.latent_dim, device=self.device)
        return self.spec.normalize(self.generator(z))

    def synthesize(self) -> dict[str, torch.Tensor]:
        self.generator.train()
        self.discriminator.train()
        size = self.synthesis_batch_size
        fake = self._generate(size)
        real = self.draw_pool(size)
        # Patch discrimination: pool patches are "real", generated ones "fake"; the reference weights it
        # with the generator's local weight too (kd_mosaic.py: loss_d = local * 0.5 * (fake + real)).
        fake_logits, real_logits = self.discriminator(fake.detach()), self.discriminator(real)
        patches = 0.5 * (F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
                         + F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)))
        loss_d = self.weights["local"] * patches
        self.discriminator_optim.zero_grad(set_to_none=True)
        loss_d.backward()
        distributed.average_optimizer_gradients(self.discriminator_optim)
        self.discriminator_optim.step()

        was_training = self.student.training
        self.student.eval()
        try:
            teacher_logits = self.teacher(fake)
            patch_logits = self.discriminator(fake)
            probabilities = F.softmax(teacher_logits, dim=1)
            terms = {
                "local": F.binary_cross_entropy_with_logits(patch_logits, torch.ones_like(patch_logits)),
                "align": -(probabilities * F.log_softmax(teacher_logits, dim=1)).sum(1).mean(),
                "adversarial": (-losses.kd_loss(self.student(fake), teacher_logits, 1.0)
                                if self.weights["adversarial"] > 0 else torch.zeros((), device=self.device)),
                # sum p(y) log2 p(y): minimising it spreads the generated classes (reference appendix).
                "balance": losses.information_entropy_loss(teacher_logits) / torch.log(torch.tensor(2.0)),
            }
            loss_g = losses.weighted_sum(terms, self.weights)
            self.generator_optim.zero_grad(set_to_none=True)
            loss_g.backward()
            distributed.average_optimizer_gradients(self.generator_optim)
            self.generator_optim.step()
        finally:
            self.student.train(was_training)
        terms.update(discriminator_loss=loss_d, generator_loss=loss_g)
        return {f"synthesis/{name}": value.detach() for name, value in terms.items()}

    @torch.no_grad()
    def sample(self, batch_size: int) -> Batch:
        from_pool = int(round(batch_size * self.pool_fraction))
        return Batch(torch.cat([self._generate(batch_size - from_pool), self.draw_pool(from_pool)]))

    def student_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self._kd_terms(batch.x, self.temperature)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                "generator_optimizer": self.generator_optim.state_dict(),
                "discriminator_optimizer": self.discriminator_optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.generator_optim.load_state_dict(state["generator_optimizer"])
        self.discriminator_optim.load_state_dict(state["discriminator_optimizer"])
