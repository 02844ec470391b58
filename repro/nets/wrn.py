"""Wide ResNets (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016)."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .base import Classifier, init_weights
from .registry import register


class PreActBlock(nn.Module):
    """Pre-activation block BN-ReLU-conv3x3-BN-ReLU-conv3x3: ``[B, C_in, H, W] -> [B, C_out, H/s, W/s]``."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        # In place, as the reference (zju-vipa CMI datafree/models/classifiers/wresnet.py): BatchNorm's
        # backward needs its input, not its output, so overwriting the output is safe and saves a copy
        # per activation (the profiler put 112 ms of a wrn16_1 forward in the out-of-place ReLUs, issue 16).
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = self.relu(self.bn1(x))
        # As in the reference WRN code, a projection shortcut reads the
        # pre-activated input, while an identity shortcut reads raw x.
        residual = x if self.shortcut is None else self.shortcut(o)
        out = self.conv1(o)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + residual


class WideResNet(Classifier):
    """WRN-d-k: (d-4)/6 blocks in each of three groups of widths 16k, 32k, 64k."""

    def __init__(
        self, depth: int, widen: int, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = widths[0]
        for g, planes in enumerate(widths[1:]):
            for i in range(n):
                stride = 2 if (g > 0 and i == 0) else 1
                blocks.append(PreActBlock(in_planes, planes, stride, dropout))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        # Pre-activation blocks leave the trunk output un-normalised, hence a final BN-ReLU.
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        self.feature_dim = in_planes
        self.classifier = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, 64k]``."""
        out = self.blocks(self.conv1(x))
        return self.pool(self.relu(self.bn(out))).flatten(1)


@register
def wrn16_1(num_classes: int = 10, in_channels: int = 3) -> Classifier:
    """WRN-16-1 (Zagoruyko & Komodakis, BMVC 2016); ~0.17M params for 10 classes."""
    return WideResNet(16, 1, num_classes=num_classes, in_channels=in_channels)


@register
def wrn16_2(num_classes: int = 10, in_channels: int = 3) -> Classifier:
    """WRN-16-2 (Zagoruyko & Komodakis, BMVC 2016); ~0.69M params for 10 classes."""
    return WideResNet(16, 2, num_classes=num_classes, in_channels=in_channels)


@register
def wrn40_1(num_classes: int = 10, in_channels: int = 3) -> Classifier:
    """WRN-40-1 (Zagoruyko & Komodakis, BMVC 2016); ~0.57M params for 10 classes."""
    return WideResNet(40, 1, num_classes=num_classes, in_channels=in_channels)


@register
def wrn40_2(num_classes: int = 10, in_channels: int = 3) -> Classifier:
    """WRN-40-2 (Zagoruyko & Komodakis, BMVC 2016); ~2.2M params for 10 classes."""
    return WideResNet(40, 2, num_classes=num_classes, in_channels=in_channels)
