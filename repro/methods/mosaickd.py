"""MosaicKD: "Mosaicking to Distill: Knowledge Distillation from Out-of-Domain Data" (Fang et al.,
NeurIPS 2021).

A generator learns to compose images whose *local patches* look like the out-of-domain pool (a patch
discriminator judges them, Eq. 3) while the teacher sees them as confident, class-balanced
in-domain samples (Eq. 4 and the appendix's balance term) that the student still gets wrong
(Eq. 7). The student distils on generated and pool images together. Facts from zju-vipa MosaicKD
(kd_mosaic.py): BCE patch losses summed over patches, align = the teacher's per-sample entropy, balance =
``sum p(y) log2 p(y)``, weights --local 1 --align 1 --adv 1 --balance 10, five student steps per
generator step, Adam(1e-3, betas (0.5, 0.999)) for generator and discriminator.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import gin
import torch
import torch.nn.functional as F
from torch import nn

from repro import losses
from repro.data.datasets import DataSpec
from repro.data.pools import UnlabeledPool
from repro.methods.base import Batch, distinct_batches
from repro.methods.sampling import PoolSampling
from repro.nets.spec import NetSpec
from repro.train import distributed
from repro.train.optim import build_optimizer


def patch_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """BCE of patch logits ``[B, 1, h, w]`` against "real"/"fake", *summed* over the patches and averaged
    over the images, as the reference reduces it (zju-vipa MosaicKD kd_mosaic.py lines 397-398, ``loss_d``,
    and line 423, ``loss_local``: ``reduction='sum'`` divided by the batch size). A patch mean would scale
    the local term down by the h * w patches per image against the align, adversarial and balance terms."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(logits)


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
        # with the generator's local weight too (kd_mosaic.py: loss_d = local * 0.5 * (fake + real)). The
        # discriminator's pool images are not augmented (kd_mosaic.py line 161: the validation transform).
        fake_logits, real_logits = self.discriminator(fake.detach()), self.discriminator(real)
        patches = 0.5 * (patch_loss(fake_logits, real=False) + patch_loss(real_logits, real=True))
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
                "local": patch_loss(patch_logits, real=True),
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
        # The student's pool images get the pool's augmentation (kd_mosaic.py line 160: the unlabeled set's
        # training transform, RandomCrop + RandomHorizontalFlip for CIFAR; registry.py lines 60-66, 77-82).
        from_pool = int(round(batch_size * self.pool_fraction))
        return Batch(torch.cat([self._generate(batch_size - from_pool), self.draw_pool(from_pool, augment=True)]))

    @torch.no_grad()
    def distinct_samples(self, limit: int, batch_size: int) -> Iterator[Batch]:
        """Fresh generated images and each pool image at most once, in the student's proportions."""
        from_pool = int(round(limit * self.pool_fraction))
        for count in range(limit - from_pool, 0, -batch_size):
            yield Batch(self._generate(min(batch_size, count)))
        yield from distinct_batches(self.pool_images, from_pool, batch_size)

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
