"""Small BatchNorm CNNs for 8x8 single-channel digits (sklearn ``load_digits``).

These are a CPU-scale stand-in for the CIFAR teacher/student pairs. They keep
BatchNorm layers because DeepInversion-style methods (Yin et al., CVPR 2020)
match their running statistics, and use global pooling like the CIFAR nets.
"""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .base import Classifier, init_weights
from .registry import register


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class DigitsCNN(Classifier):
    """conv-conv-maxpool-conv-conv-GAP-linear: ``[B, C, 8, 8] -> [B, widths[3]]`` features.

    One 2x pool only: an 8x8 input has little spatial extent to spare.
    """

    def __init__(
        self, widths: tuple[int, int, int, int], num_classes: int = 10, in_channels: int = 1
    ) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.body = nn.Sequential(
            *_conv_bn_relu(in_channels, w1),
            *_conv_bn_relu(w1, w2),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w2, w3),
            *_conv_bn_relu(w3, w4),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        self.feature_dim = w4
        self.classifier = nn.Linear(w4, num_classes)
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, feature_dim]``."""
        return self.pool(self.body(x)).flatten(1)


@register
def digits_cnn_large(num_classes: int = 10, in_channels: int = 1) -> Classifier:
    """Teacher-sized digits CNN (widths 32/64/128/160, ~0.28M params).

    BN-ReLU conv design after the CIFAR VGG/ResNets (Simonyan & Zisserman,
    ICLR 2015; He et al., CVPR 2016), shrunk for 8x8 inputs.
    """
    return DigitsCNN((32, 64, 128, 160), num_classes=num_classes, in_channels=in_channels)


@register
def digits_cnn_small(num_classes: int = 10, in_channels: int = 1) -> Classifier:
    """Student-sized digits CNN (widths 16/32/64/64, ~61k params).

    BN-ReLU conv design after the CIFAR VGG/ResNets (Simonyan & Zisserman,
    ICLR 2015; He et al., CVPR 2016), shrunk for 8x8 inputs.
    """
    return DigitsCNN((16, 32, 64, 64), num_classes=num_classes, in_channels=in_channels)
