"""Stage 2 of KDCI: attention over the confounders, the NWGM expectation, and the fusion.

Backdoor adjustment ``P(S | do(X)) = sum_i P(S | X, z_i) P(z_i)`` approximated by NWGM (paper
Sec. 3.4): the expectation moves inside the network as ``F(z) = sum_i lambda_i z_i P(z_i)``, where
``lambda_i`` says how relevant confounder ``z_i`` is to the current sample. The student's biased
prediction is then compensated with ``F(z)``.

Shapes: student features ``h`` [B, Ds], logits [B, K], prototypes ``Z`` [N, d], prior [N].
"""

from __future__ import annotations

import math

import torch
from torch import nn

ATTENTIONS = ("additive", "dot_product", "uniform")
FUSIONS = ("logit", "feature")


class AdditiveAttention(nn.Module):
    """``lambda = softmax_i(w^T tanh(W_h h + W_z z_i))``: the paper's choice (Bahdanau-style)."""

    def __init__(self, feature_dim: int, prototype_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(feature_dim, hidden_dim)
        self.key = nn.Linear(prototype_dim, hidden_dim, bias=False)
        self.score = nn.Linear(hidden_dim, 1, bias=False)

    def forward(self, features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """[B, Ds], [N, d] -> attention weights [B, N] (rows sum to 1)."""
        hidden = torch.tanh(self.query(features)[:, None, :] + self.key(prototypes)[None, :, :])  # [B, N, a]
        return torch.softmax(self.score(hidden).squeeze(-1), dim=1)


class DotProductAttention(nn.Module):
    """``lambda = softmax_i((W_q h)^T (W_k z_i) / sqrt(a))``: the alternative CCIM (CVPR 2023) offers."""

    def __init__(self, feature_dim: int, prototype_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(feature_dim, hidden_dim)
        self.key = nn.Linear(prototype_dim, hidden_dim)
        self.scale = 1.0 / math.sqrt(hidden_dim)

    def forward(self, features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """[B, Ds], [N, d] -> [B, N]."""
        return torch.softmax(self.query(features) @ self.key(prototypes).T * self.scale, dim=1)


class UniformAttention(nn.Module):
    """``lambda_i = 1/N``: the paper's "random lambda" ablation (no sample-specific relevance)."""

    def forward(self, features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """[B, Ds], [N, d] -> [B, N] of 1/N."""
        count = prototypes.shape[0]
        return features.new_full((features.shape[0], count), 1.0 / count)


def make_attention(kind: str, feature_dim: int, prototype_dim: int, hidden_dim: int) -> nn.Module:
    if kind == "additive":
        return AdditiveAttention(feature_dim, prototype_dim, hidden_dim)
    if kind == "dot_product":
        return DotProductAttention(feature_dim, prototype_dim, hidden_dim)
    if kind == "uniform":
        return UniformAttention()
    raise ValueError(f"unknown attention {kind!r}: choose one of {', '.join(ATTENTIONS)}")


def nwgm_expectation(attention: torch.Tensor, prototypes: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``F(z) = sum_i lambda_i z_i P(z_i)``: [B, N], [N, d], [N] -> [B, d]."""
    return attention @ (prototypes * prior[:, None])


class LogitCompensation(nn.Module):
    """Compensated logits = student logits + ``W_f F(z)`` (default fusion).

    ``W_f`` starts at zero, so the compensated student starts exactly at the baseline student and the
    distillation loss decides how much compensation to learn (our choice; the paper gives no form).
    """

    def __init__(self, feature_dim: int, prototype_dim: int, num_classes: int) -> None:
        super().__init__()
        self.project = nn.Linear(prototype_dim, num_classes)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, logits: torch.Tensor, features: torch.Tensor, expectation: torch.Tensor,
                classifier: nn.Module) -> torch.Tensor:
        """[B, K], [B, Ds], [B, d] -> [B, K]."""
        return logits + self.project(expectation)


class FeatureFusion(nn.Module):
    """CCIM-style fusion: ``classifier(W_h h + W_z F(z))``, the classifier after the sum.

    ``W_h`` starts as the identity and ``W_z`` at zero, so training starts from the baseline student.
    """

    def __init__(self, feature_dim: int, prototype_dim: int, num_classes: int) -> None:
        super().__init__()
        self.project_features = nn.Linear(feature_dim, feature_dim)
        self.project_expectation = nn.Linear(prototype_dim, feature_dim, bias=False)
        nn.init.eye_(self.project_features.weight)
        nn.init.zeros_(self.project_features.bias)
        nn.init.zeros_(self.project_expectation.weight)

    def forward(self, logits: torch.Tensor, features: torch.Tensor, expectation: torch.Tensor,
                classifier: nn.Module) -> torch.Tensor:
        """[B, K], [B, Ds], [B, d] -> [B, K] through the student's own classifier."""
        return classifier(self.project_features(features) + self.project_expectation(expectation))


def make_fusion(kind: str, feature_dim: int, prototype_dim: int, num_classes: int) -> nn.Module:
    if kind == "logit":
        return LogitCompensation(feature_dim, prototype_dim, num_classes)
    if kind == "feature":
        return FeatureFusion(feature_dim, prototype_dim, num_classes)
    raise ValueError(f"unknown fusion {kind!r}: choose one of {', '.join(FUSIONS)}")
