"""Loss terms of the DFKD family, as pure functions of tensors.

Each docstring names the paper and equation it implements. Shapes: logits ``[B, K]``,
features ``[B, D]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Knowledge distillation (Hinton et al., 2015): ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    The ``T^2`` factor keeps gradient magnitudes comparable across temperatures (Hinton et al.,
    Sec. 2); the batch mean matches the benchmark's ``KLDiv`` (zju-vipa CMI, datafree/criterions.py).
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    # The target in log space: generator terms differentiate through the teacher's side, and a
    # probability target that underflows to 0 has an infinite gradient (NaN generators).
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature**2


def onehot_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL one-hot loss (Chen et al., ICCV 2019, Eq. 4): cross-entropy of the teacher's output
    against its own arg-max, pushing generated images to be confidently classified."""
    return F.cross_entropy(teacher_logits, teacher_logits.argmax(dim=1))


def activation_loss(teacher_features: torch.Tensor) -> torch.Tensor:
    """DAFL activation loss (Eq. 5): ``-mean |f_T|``, rewarding strong penultimate activations."""
    return -teacher_features.abs().mean()


def information_entropy_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL information-entropy loss (Eq. 6): ``-H_info(mean_i softmax(t_i))`` (natural log).

    Minimising it maximises the entropy of the batch's mean prediction, i.e. balances the classes the
    generator produces. DAFL's code uses log10, a constant factor absorbed by the weight.
    """
    mean_prob = F.softmax(teacher_logits, dim=1).mean(dim=0)
    return (mean_prob * torch.log(mean_prob.clamp_min(1e-12))).sum()


def class_prior_loss(teacher_logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``KL(mean_i softmax(t_i) || prior)``: DAFL's balance term (Eq. 6) aimed at a skewed class prior.

    Our generalisation for the class-skew knob: ``KL(p || u) = sum p log p + log K``, so for a uniform
    ``prior`` it is :func:`information_entropy_loss` plus a constant and gives the same gradients.
    ``prior`` ``[K]`` sums to 1.
    """
    mean_prob = F.softmax(teacher_logits, dim=1).mean(dim=0)
    return (mean_prob * (torch.log(mean_prob.clamp_min(1e-12)) - torch.log(prior))).sum()


def jensen_shannon_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                        temperature: float = 3.0) -> torch.Tensor:
    """Jensen-Shannon divergence of softened outputs, batch mean (DeepInversion's "Adaptive
    DeepInversion" competition term, Yin et al., CVPR 2020, Eq. 8; the synthesiser *maximises* it)."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    log_q = F.log_softmax(teacher_logits / temperature, dim=1)
    log_m = (0.5 * (log_p.exp() + log_q.exp())).clamp_min(1e-12).log()
    return 0.5 * (F.kl_div(log_m, log_p, reduction="batchmean", log_target=True)
                  + F.kl_div(log_m, log_q, reduction="batchmean", log_target=True))


def total_variation_loss(images: torch.Tensor) -> torch.Tensor:
    """L2 total variation of images [B, C, H, W] (DeepInversion's image prior R_prior, Eq. 3)."""
    dx = images[..., :, 1:] - images[..., :, :-1]
    dy = images[..., 1:, :] - images[..., :-1, :]
    return dx.square().mean() + dy.square().mean()


def bn_statistics_loss(batch_means: list[torch.Tensor], batch_vars: list[torch.Tensor],
                       running_means: list[torch.Tensor], running_vars: list[torch.Tensor]) -> torch.Tensor:
    """DeepInversion feature-distribution regulariser (Eq. 4): sum over BN layers of
    ``||mu(x) - running_mean||_2 + ||sigma^2(x) - running_var||_2``."""
    return torch.stack([torch.linalg.vector_norm(m - rm) + torch.linalg.vector_norm(v - rv)
                        for m, v, rm, rv in zip(batch_means, batch_vars, running_means, running_vars)]).sum()


def weighted_sum(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """``sum_i w_i * L_i`` of named loss terms (torchdistill's ``WeightedSumLoss``), added left to right in
    the order of ``weights``: ``{a: w1, b: w2}`` is exactly ``w1 * a + w2 * b``, whatever order the terms
    were logged in. A zero weight keeps its term (``0 * term``); every term needs a weight and every weight a term."""
    if not weights or terms.keys() != weights.keys():
        raise KeyError(f"loss terms {sorted(terms)} and weights {sorted(weights)} must name the same terms")
    total = None
    for name, weight in weights.items():
        weighted = weight * terms[name]
        total = weighted if total is None else total + weighted
    return total
