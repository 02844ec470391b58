"""Shared parts of the model-inversion family (DeepInversion, CMI, Fast): BN-statistics hooks,
differentiable view augmentation, an image pool and the pool-sampling student.

These methods synthesise a batch per round by optimising pixels or a generator against the frozen
teacher; the finished batch joins a pool that the student samples from (zju-vipa CMI benchmark,
``datafree/utils.ImagePool`` and each synthesiser's ``sample``).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from repro import losses
from repro.data.datasets import DataSpec
from repro.data.pools import class_weights
from repro.errors import UserError
from repro.methods.base import Batch, DFKDMethod, distinct_batches


def target_prior(num_classes: int, class_skew: float) -> torch.Tensor:
    """``[K]`` class proportions of synthesis targets: ``p_k ~ exp(-class_skew * k / (K - 1))``, uniform at 0.

    ``class_skew`` is our dose-response knob (not a baseline setting): a skewed prior makes the substitution
    data's class shift a controlled quantity. It is the skew formula of the shifted-digits pool
    (:func:`repro.data.pools.class_weights`), so one number means the same shift for pools and synthesis."""
    return class_weights(num_classes, class_skew)


def draw_targets(count: int, num_classes: int, class_skew: float, device: torch.device) -> torch.Tensor:
    """``[count]`` target classes for a synthesis batch (DeepInversion, CMI, Fast draw them here).

    At ``class_skew`` 0 this is exactly the benchmark's uniform draw (zju-vipa CMI
    datafree/synthesis/deepinversion.py line 76 and contrastive.py line 270, Fast-Datafree
    datafree/synthesis/fast_meta.py line 116: ``torch.randint(num_classes, (batch,))``), the same RNG calls
    as before the knob existed; above 0, classes follow :func:`target_prior`."""
    if class_skew == 0:
        return torch.randint(num_classes, (count,), device=device)
    prior = target_prior(num_classes, class_skew).to(device)
    return torch.multinomial(prior, count, replacement=True)


class BNStatistics:
    """Forward hooks on every ``BatchNorm2d`` of ``model`` recording its input's batch statistics.

    ``momentum`` > 0 is Fast's BN-statistics momentum (Fang et al., AAAI 2022, Sec. 3.3; benchmark
    ``DeepInversionHook(mmt_rate)``): the target of a batch is blended with an exponential average of
    earlier batches' statistics, so a few generator steps need not match the running statistics alone.
    ``instance_means`` (CMI only): also record each layer's per-sample channel mean, the features CMI
    contrasts. Off by default: DeepInversion and Fast never read them, and a list of them kept across
    steps grew by one tensor per BN layer per step (37 a step on wrn40_2), without bound.

    Everything a forward records is dropped by the step that reads it (:meth:`loss`,
    :meth:`instance_features`, :meth:`clear`), so what the hooks hold (:meth:`held`) does not grow.
    """

    def __init__(self, model: nn.Module, momentum: float = 0.0, instance_means: bool = False) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not self.layers:
            raise UserError(f"{type(model).__name__} has no BatchNorm2d layers: BN-statistics inversion needs a "
                            "teacher with batch normalisation (choose another method or teacher)")
        self.momentum = momentum
        self.instance_means = instance_means
        self.means: list[torch.Tensor] = []
        self.vars: list[torch.Tensor] = []
        self.instance: list[torch.Tensor] = []
        self.averages: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.active = False  # only synthesis records; the teacher's other forwards must not accumulate
        self.handles = [layer.register_forward_hook(self._record) for layer in self.layers]

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not self.active:
            return
        x = inputs[0]
        if self.instance_means:
            self.instance.append(x.mean(dim=(2, 3)))
        self.means.append(x.mean(dim=(0, 2, 3)))
        self.vars.append(x.var(dim=(0, 2, 3), unbiased=False))

    def instance_features(self) -> torch.Tensor:
        """``[B, sum of BN channels]``: the last forward's per-sample channel means; clears them."""
        if not self.instance_means:
            raise RuntimeError("BNStatistics was built without instance_means=True: it records no instance features")
        features = torch.cat(self.instance, dim=1)
        self.instance = []
        return features

    def loss(self) -> torch.Tensor:
        """Sum over layers of ``||mu - target_mu||_2 + ||var - target_var||_2`` for the last forward."""
        means, variances = self.means, self.vars
        if self.momentum > 0 and self.averages is not None:
            rate = self.momentum
            means = [(1 - rate) * m + rate * a[0] for m, a in zip(means, self.averages)]
            variances = [(1 - rate) * v + rate * a[1] for v, a in zip(variances, self.averages)]
        value = losses.bn_statistics_loss(means, variances, [l.running_mean for l in self.layers],
                                          [l.running_var for l in self.layers])
        self._last = [(m.detach(), v.detach()) for m, v in zip(self.means, self.vars)]
        self.means, self.vars = [], []
        return value

    def held(self) -> int:
        """How many recorded tensors the hooks hold now (0 between steps; tests check it stays so)."""
        return len(self.means) + len(self.vars) + len(self.instance)

    def clear(self) -> None:
        """Drop what the last forward recorded (a forward whose statistics are not a loss term)."""
        self.means, self.vars, self.instance = [], [], []

    def update_momentum(self) -> None:
        """Fold the last batch's statistics into the averages (once per synthesis round)."""
        if self.momentum <= 0 or not getattr(self, "_last", None):
            return
        if self.averages is None:
            self.averages = list(self._last)
        else:
            rate = self.momentum
            self.averages = [(rate * am + (1 - rate) * m, rate * av + (1 - rate) * v)
                             for (am, av), (m, v) in zip(self.averages, self._last)]

    def state_dict(self) -> dict[str, Any]:
        return {"averages": [] if self.averages is None else [torch.stack([m, v]) for m, v in self.averages]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averages = [(pair[0], pair[1]) for pair in state["averages"]] or None


def random_views(images: torch.Tensor, scale: tuple[float, float] = (1.0, 1.0), shift: float = 0.0,
                 flip: bool = False) -> torch.Tensor:
    """Per-sample random crops, resized crops and flips as one differentiable resampling.

    ``scale``: range of the crop's side as a fraction of the image (CMI's local view: RandomResizedCrop
    with area scale [0.25, 1], i.e. side [0.5, 1]); ``shift``: largest translation as a fraction of the
    image (a RandomCrop with padding p is a shift of p / size); ``flip``: random horizontal flips.
    Uses torch's RNG, so the Trainer's seeding and checkpoints cover it.
    """
    batch = images.shape[0]
    device, dtype = images.device, images.dtype
    side = torch.empty(batch, device=device, dtype=dtype).uniform_(*scale)
    room = (1 - side) + 2 * shift  # the crop's centre may move within the image plus the padding
    centre = (torch.rand(batch, 2, device=device, dtype=dtype) * 2 - 1) * room.unsqueeze(1)
    sign = torch.where(torch.rand(batch, device=device) < 0.5, -1.0, 1.0).to(dtype) if flip else torch.ones(batch, device=device, dtype=dtype)
    theta = torch.zeros(batch, 2, 3, device=device, dtype=dtype)
    theta[:, 0, 0] = side * sign
    theta[:, 1, 1] = side
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def masked_adversarial(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """CMI / Fast "decision adversarial" term: ``-mean(KL(t || s) * [argmax s == argmax t])``.

    The synthesiser maximises the student-teacher divergence only on samples the student already
    gets right, so it looks for hard samples without leaving the teacher's decision regions
    (zju-vipa CMI, datafree/synthesis/contrastive.py, ``loss_adv``)."""
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float()
    # In log space: a confident teacher's softmax underflows to exact zeros, where the gradient of
    # KL with respect to a probability target is -inf, and 0 (mask) * inf poisons the generator with
    # NaN (seen with an untrained CIFAR-100 WRN-40-2 teacher). log_target keeps it finite.
    per_sample = F.kl_div(F.log_softmax(student_logits, dim=1), F.log_softmax(teacher_logits, dim=1),
                          reduction="none", log_target=True).sum(dim=1)
    return -(per_sample * agree).mean()


class ImagePool:
    """A ring buffer of synthesised images ``[N, C, H, W]`` (normalised), newest kept."""

    def __init__(self, spec: DataSpec, capacity: int, device: torch.device) -> None:
        if capacity <= 0:
            raise UserError(f"pool_size = {capacity} is invalid: it must be a positive number of images")
        self.capacity = capacity
        self.images = torch.empty(0, spec.channels, spec.image_size, spec.image_size, device=device)

    def __len__(self) -> int:
        return self.images.shape[0]

    def add(self, images: torch.Tensor) -> None:
        self.images = torch.cat([self.images, images.detach()])[-self.capacity:]

    @torch.no_grad()
    def draw(self, count: int) -> torch.Tensor:
        index = torch.randint(len(self), (count,), device=self.images.device)
        return self.images[index]


class PoolDistillation(DFKDMethod):
    """Base of methods whose student distils from a pool of synthesised images.

    Subclasses implement :meth:`make_batch` (one synthesis round -> images in the network's input space
    and loss terms); this class keeps the pool, samples it, and gives the KD student loss at
    ``temperature``.
    """

    temperature: float = 20.0
    pool_size: int = 50_000

    def setup(self, teacher: nn.Module | None, student: nn.Module, spec: DataSpec,
              device: torch.device) -> nn.Module:
        trained = super().setup(teacher, student, spec, device)
        self.pool = ImagePool(spec, self.pool_size, device)
        zero, one = torch.zeros(1, spec.channels, 1, 1), torch.ones(1, spec.channels, 1, 1)
        self.lower, self.upper = spec.normalize(zero).to(device), spec.normalize(one).to(device)
        return trained

    def make_batch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One synthesis round: ``(images [B, C, H, W] normalised, {term: detached scalar})``."""
        raise NotImplementedError

    def synthesize(self) -> dict[str, torch.Tensor]:
        was_training = self.student.training
        self.student.eval()  # the adversarial terms query the student as deployed
        try:
            images, terms = self.make_batch()
        finally:
            self.student.train(was_training)  # gradients left on the student are cleared by the Trainer
        self.pool.add(images)
        return {f"synthesis/{name}": value.detach() for name, value in terms.items()}

    def sample(self, batch_size: int) -> Batch:
        if len(self.pool) == 0:  # asked before any round (e.g. KDCI with warmup_epochs = 0): make one
            self.synthesize()
        return Batch(self.pool.draw(batch_size))

    def distinct_samples(self, limit: int, batch_size: int) -> Iterator[Batch]:
        """Each pool image at most once: a pool smaller than ``limit`` gives all it has."""
        if len(self.pool) == 0:
            self.synthesize()
        return distinct_batches(self.pool.images, limit, batch_size)

    def student_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self._kd_terms(batch.x, self.temperature)

    def state_dict(self) -> dict[str, Any]:
        return {"pool": self.pool.images}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool.images = state["pool"].to(self.device)

    def clip(self, images: torch.Tensor) -> torch.Tensor:
        """Clamp normalised images to the valid pixel range [0, 1] (benchmark ``clip_images``)."""
        return torch.maximum(torch.minimum(images, self.upper), self.lower)


def keep_best(best: tuple[torch.Tensor, ...] | None, loss: torch.Tensor,
              *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(loss, *tensors)`` of the lowest-loss iterate of a synthesis round so far, without a host
    sync (the benchmark keeps ``best_inputs``; comparing on the device avoids a ``.item()`` per step)."""
    current = (loss.detach(), *(t.detach() for t in tensors))
    if best is None:
        return current
    better = current[0] < best[0]
    return tuple(torch.where(better, new, old) for new, old in zip(current, best))
