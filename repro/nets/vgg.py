"""CIFAR-style VGG with BatchNorm (Simonyan & Zisserman, "Very Deep Convolutional
Networks for Large-Scale Image Recognition", ICLR 2015)."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .base import Classifier, init_weights
from .registry import register

# Ints are conv widths, "M" is a 2x2 max-pool.
VGG11_CFG: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(Classifier):
    """VGG conv stack + global average pool + single linear layer.

    The CIFAR variant drops the ImageNet 4096-wide FC head (it would dwarf the
    conv trunk on 32x32 inputs). Adaptive pooling lets inputs larger than
    32x32 work unchanged; inputs must be at least 32x32 to survive five pools.
    """

    def __init__(self, cfg: list[int | str], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        self.feature_dim = c
        self.classifier = nn.Linear(c, num_classes)
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, 512]``."""
        return self.pool(self.body(x)).flatten(1)


@register
def vgg11_bn(num_classes: int = 10, in_channels: int = 3) -> Classifier:
    """CIFAR VGG-11 with BatchNorm (Simonyan & Zisserman, ICLR 2015); feature_dim 512."""
    return VGG(VGG11_CFG, num_classes=num_classes, in_channels=in_channels)
