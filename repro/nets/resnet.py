"""CIFAR-style ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016)."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .base import Classifier, init_weights
from .registry import register


class BasicBlock(nn.Module):
    """Two 3x3 convs with identity (or 1x1 projection) shortcut: ``[B, C_in, H, W] -> [B, C_out, H/s, W/s]``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            # Projection needed whenever the residual changes shape.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(Classifier):
    """ResNet with the CIFAR stem: 3x3 stride-1 conv and no max-pool, since
    32x32 inputs are too small for the ImageNet stem's 4x downsampling."""

    def __init__(
        self,
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = widths[-1]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers: list[nn.Module] = []
        in_planes = widths[0]
        for i, (planes, n) in enumerate(zip(widths, num_blocks)):
            stride = 1 if i == 0 else 2
            for j in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, 512]``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.pool(out).flatten(1)


@register
def resnet18(num_classes: int = 10, in_channels: int = 3) -> Classifier:
    """CIFAR ResNet-18 (He et al., CVPR 2016): BasicBlock x [2, 2, 2, 2]; ~11.2M params for 10 classes."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


@register
def resnet34(num_classes: int = 10, in_channels: int = 3) -> Classifier:
    """CIFAR ResNet-34 (He et al., CVPR 2016): BasicBlock x [3, 4, 6, 3]; ~21.3M params for 10 classes."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)
