"""DAFL: Data-Free Learning of Student Networks (Chen et al., ICCV 2019).

A generator is trained against the frozen teacher so that its images are confidently classified
(one-hot loss), strongly activate the teacher (activation loss) and cover the classes evenly
(information-entropy loss); the student learns by KD on freshly generated images.
"""

from __future__ import annotations

from typing import Any, Callable

import gin
import torch
from torch import nn

from repro import losses
from repro.architecture import NetSpec
from repro.data import DataSpec
from repro.methods.base import Batch, DFKDMethod
from repro.optim import build_optimizer


@gin.configurable
class DAFL(DFKDMethod):
    """DAFL generator + KD student. Defaults: the zju-vipa CMI benchmark's DAFL script
    (scripts/dafl/dafl_cifar.sh: oh 1, act 0.001, balance 20, T 20, g_steps 1, lr_g 1e-3)."""

    def __init__(
        self,
        generator: NetSpec = gin.REQUIRED,
        generator_optimizer: Callable[..., torch.optim.Optimizer] = gin.REQUIRED,
        synthesis_batch_size: int = 256,
        generator_steps: int = 1,
        onehot_weight: float = 1.0,
        activation_weight: float = 0.001,
        entropy_weight: float = 20.0,
        temperature: float = 20.0,
    ) -> None:
        self.generator_spec, self.make_optimizer = generator, generator_optimizer
        self.synthesis_batch_size, self.generator_steps = synthesis_batch_size, generator_steps
        self.onehot_weight, self.activation_weight = onehot_weight, activation_weight
        self.entropy_weight, self.temperature = entropy_weight, temperature

    def setup(self, teacher: nn.Module | None, student: nn.Module, spec: DataSpec,
              device: torch.device) -> nn.Module:
        trained = super().setup(teacher, student, spec, device)
        self.generator = self.generator_spec.build(image_size=spec.image_size, out_channels=spec.channels).to(device)
        self.generator_optim = build_optimizer(self.make_optimizer, self.generator.parameters(), "generator")
        return trained

    def _generate(self, batch_size: int) -> torch.Tensor:
        z = torch.randn(batch_size, self.generator.latent_dim, device=self.device)
        return self.spec.normalize(self.generator(z))

    def synthesize(self) -> dict[str, torch.Tensor]:
        self.generator.train()
        terms: dict[str, torch.Tensor] = {}
        for _ in range(self.generator_steps):
            logits, features = self._teacher_outputs(self._generate(self.synthesis_batch_size))
            terms = {
                "onehot": losses.onehot_loss(logits),
                "activation": losses.activation_loss(features),
                "information_entropy": losses.information_entropy_loss(logits),
            }
            loss = (self.onehot_weight * terms["onehot"] + self.activation_weight * terms["activation"]
                    + self.entropy_weight * terms["information_entropy"])
            self.generator_optim.zero_grad(set_to_none=True)
            loss.backward()
            self.generator_optim.step()
            terms["generator_loss"] = loss
        return {f"synthesis/{name}": value.detach() for name, value in terms.items()}

    @torch.no_grad()
    def sample(self, batch_size: int) -> Batch:
        return Batch(self._generate(batch_size))

    def student_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self._kd_terms(batch.x, self.temperature)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "generator_optimizer": self.generator_optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.generator_optim.load_state_dict(state["generator_optimizer"])

    def describe(self) -> dict[str, Any]:
        return {
            "name": "dafl",
            "onehot_weight": self.onehot_weight,
            "activation_weight": self.activation_weight,
            "entropy_weight": self.entropy_weight,
            "temperature": self.temperature,
            "generator": self.generator_spec.to_dict(),
        }
