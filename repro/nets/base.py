"""Common interface for every classifier in the project."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor


class Classifier(nn.Module):
    """Image classifier split into a feature extractor and a final linear head.

    Distillation losses need the penultimate features as well as the logits,
    so every architecture exposes both through the same interface.

    Subclasses must set ``num_classes``, ``feature_dim`` and ``classifier``
    (an ``nn.Linear(feature_dim, num_classes)``) and implement ``features``.
    """

    num_classes: int
    feature_dim: int
    classifier: nn.Linear

    def features(self, x: Tensor) -> Tensor:
        """Map images ``[B, C, H, W]`` to pooled penultimate features ``[B, feature_dim]``."""
        raise NotImplementedError

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Classify images ``x`` of shape ``[B, C, H, W]``.

        Returns:
            logits ``[B, num_classes]``, or ``(logits, features)`` with features
            ``[B, feature_dim]`` when ``return_features`` is True.
        """
        f = self.features(x)
        logits = self.classifier(f)
        if return_features:
            return logits, f
        return logits


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convs, unit/zero BatchNorm affine params, zero conv biases.

    Applied to every network so runs from different architectures start from
    the same, ReLU-appropriate initialisation regardless of PyTorch defaults.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


__all__ = ["Classifier", "init_weights"]
