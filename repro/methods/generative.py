"""The generative family: a generator trained against the frozen teacher, the student distilled on
its fresh images every step. DAFL, ZSKT, DFAD and DFQ are the same maths with different weights
and step counts, so they are gin presets of one class (gin/methods/{dafl,zskt,dfad,dfq}.gin).

Generator loss (each term weighted, a zero weight switches it off):
- one-hot: cross-entropy of the teacher against its own arg-max (DAFL Eq. 4; DFQ);
- activation: ``-mean |f_T|`` of penultimate features (DAFL Eq. 5);
- information entropy / balance: entropy of the batch-mean prediction, maximised (DAFL Eq. 6; DFQ);
  with ``class_skew`` > 0 (our dose-response knob), the divergence of the batch-mean prediction from the
  skewed class prior of :func:`~repro.methods.inversion.target_prior`, minimised (DAFL draws no target
  labels: its one-hot term takes the teacher's own arg-max and its class mix comes from the balance term,
  zju-vipa CMI datafree/synthesis/generative.py lines 63 and 71, so the prior goes here);
- BN statistics: match the teacher's BN running statistics (DFQ, Choi et al., CVPRW 2020);
- adversarial: *maximise* the student-teacher discrepancy, KL at ``temperature`` (ZSKT, Micaelli &
  Storkey, NeurIPS 2019; DFQ) or mean absolute logit difference (DFAD, Fang et al., 2019).
Student loss: the same discrepancy, minimised.
"""

from __future__ import annotations

from typing import Any, Callable

import gin
import torch
from torch import nn

from repro import losses
from repro.data.datasets import DataSpec
from repro.errors import UserError
from repro.methods.base import Batch, DFKDMethod
from repro.methods.inversion import BNStatistics, target_prior
from repro.nets.spec import NetSpec
from repro.train import distributed
from repro.train.optim import build_optimizer

DISCREPANCIES = ("kl", "l1")


def discrepancy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    """Student-teacher discrepancy: ``kd_loss`` at ``temperature`` or DFAD's mean absolute error of logits."""
    if kind == "l1":
        return (student_logits - teacher_logits).abs().mean()
    return losses.kd_loss(student_logits, teacher_logits, temperature)


@gin.configurable
class GenerativeDFKD(DFKDMethod):
    """Generator + student trained in alternation (``generator_steps`` generator steps per round, the
    Trainer's ``student_steps_per_round`` student steps). Defaults are DAFL's, from the zju-vipa CMI
    benchmark (scripts/dafl: oh 1, act 0.001, balance 20, T 20, g_steps 1, lr_g 1e-3)."""

    def __init__(
        self,
        generator: NetSpec = gin.REQUIRED,
        generator_optimizer: Callable[..., torch.optim.Optimizer] = gin.REQUIRED,
        name: str = "dafl",
        synthesis_batch_size: int = 256,
        generator_steps: int = 1,
        onehot_weight: float = 1.0,
        activation_weight: float = 0.001,
        entropy_weight: float = 20.0,
        bn_weight: float = 0.0,
        adversarial_weight: float = 0.0,
        discrepancy: str = "kl",
        temperature: float = 20.0,
        class_skew: float = 0.0,
    ) -> None:
        self.record_settings(locals())
        if discrepancy not in DISCREPANCIES:
            raise UserError(f"GenerativeDFKD.discrepancy = {discrepancy!r}: choose {', '.join(DISCREPANCIES)}")
        if generator_steps <= 0 or synthesis_batch_size <= 0:
            raise UserError("GenerativeDFKD.generator_steps and synthesis_batch_size must be positive")
        self.generator_spec, self.make_optimizer, self.name = generator, generator_optimizer, name
        self.synthesis_batch_size, self.generator_steps = synthesis_batch_size, generator_steps
        self.weights = {"onehot": onehot_weight, "activation": activation_weight, "information_entropy": entropy_weight,
                        "bn_statistics": bn_weight, "adversarial": adversarial_weight}
        if class_skew != 0 and entropy_weight == 0:
            raise UserError(f"GenerativeDFKD.class_skew = {class_skew} has no effect with entropy_weight = 0 (the "
                            "balance term carries the class prior): use a preset with a balance term (dafl, dfq)")
        self.discrepancy, self.temperature, self.class_skew = discrepancy, temperature, class_skew

    def setup(self, teacher: nn.Module | None, student: nn.Module, spec: DataSpec,
              device: torch.device) -> nn.Module:
        trained = super().setup(teacher, student, spec, device)
        self.generator = self.generator_spec.build(image_size=spec.image_size, out_channels=spec.channels).to(device)
        self.generator_optim = build_optimizer(self.make_optimizer, self.generator.parameters(), "generator")
        self.bn = BNStatistics(teacher) if self.weights["bn_statistics"] > 0 else None
        return trained

    def _generate(self, batch_size: int) -> torch.Tensor:
        z = torch.randn(batch_size, self.generator.latent_dim, device=self.device)
        return self.spec.normalize(self.generator(z))

    def synthesize(self) -> dict[str, torch.Tensor]:
        self.generator.train()
        was_training = self.student.training
        self.student.eval()  # the adversarial term queries the student as deployed
        terms: dict[str, torch.Tensor] = {}
        zero = torch.zeros((), device=self.device)
        try:
            for _ in range(self.generator_steps):
                images = self._generate(self.synthesis_batch_size)
                if self.bn is not None:
                    self.bn.active = True
                logits, features = self._teacher_outputs(images)
                if self.bn is not None:
                    self.bn.active = False
                terms = {
                    "onehot": losses.onehot_loss(logits),
                    "activation": losses.activation_loss(features),
                    "information_entropy": self._balance(logits),
                    "bn_statistics": self.bn.loss() if self.bn is not None else zero,
                    "adversarial": (-discrepancy(self.student(images), logits, self.discrepancy, self.temperature)
                                    if self.weights["adversarial"] > 0 else zero),
                }
                loss = losses.weighted_sum(terms, self.weights)
                self.generator_optim.zero_grad(set_to_none=True)
                loss.backward()
                distributed.average_optimizer_gradients(self.generator_optim)
                self.generator_optim.step()
                terms["generator_loss"] = loss
        finally:
            if self.bn is not None:
                self.bn.active = False
            self.student.train(was_training)  # gradients left on the student are cleared by the Trainer
        return {f"synthesis/{name}": value.detach() for name, value in terms.items()}

    def _balance(self, logits: torch.Tensor) -> torch.Tensor:
        if self.class_skew == 0:  # DAFL's own term, bit for bit
            return losses.information_entropy_loss(logits)
        prior = target_prior(self.spec.num_classes, self.class_skew).to(logits.device)
        return losses.class_prior_loss(logits, prior)

    @torch.no_grad()
    def sample(self, batch_size: int) -> Batch:
        return Batch(self._generate(batch_size))

    def student_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.discrepancy == "kl":
            return self._kd_terms(batch.x, self.temperature)
        with torch.no_grad():
            teacher_logits = self.teacher(batch.x)
        student_logits = self.student(batch.x)
        loss = discrepancy(student_logits, teacher_logits, self.discrepancy, self.temperature)
        agreement = (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
        return {"loss": loss, self.discrepancy: loss.detach(), "teacher_agreement": agreement}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "generator_optimizer": self.generator_optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.generator_optim.load_state_dict(state["generator_optimizer"])
