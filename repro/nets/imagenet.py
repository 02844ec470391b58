"""ImageNet-stem ResNets (7x7 stride-2 conv + max-pool) for ImageNet-scale experiments.

The architectures are torchvision's (``torchvision.models.resnet*``, built without weights), wrapped in
the project's :class:`Classifier` interface so distillation losses reach the penultimate features.
Their state-dict keys keep torchvision's names (``conv1``, ``layer1`` ... ``layer4``) except the head,
which is ``classifier`` as in every project network; a torchvision checkpoint maps by renaming ``fc``.
"""
from __future__ import annotations

from torch import Tensor, nn

from .base import Classifier, init_weights
from .registry import register


class TorchvisionResNet(Classifier):
    """A torchvision ResNet split into ``features`` (up to global pooling) and ``classifier``."""

    def __init__(self, depth: int, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        from torchvision import models

        net = getattr(models, f"resnet{depth}")(weights=None, num_classes=num_classes)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.num_classes, self.feature_dim = num_classes, net.fc.in_features
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, feature_dim]`` (512 for ResNet-18/34, 2048 for ResNet-50)."""
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.pool(out).flatten(1)


@register
def resnet18_imagenet(num_classes: int = 1000, in_channels: int = 3) -> Classifier:
    """ImageNet ResNet-18 (He et al., CVPR 2016), torchvision layout; ~11.7M params for 1000 classes."""
    return TorchvisionResNet(18, num_classes, in_channels)


@register
def resnet34_imagenet(num_classes: int = 1000, in_channels: int = 3) -> Classifier:
    """ImageNet ResNet-34, torchvision layout; ~21.8M params for 1000 classes."""
    return TorchvisionResNet(34, num_classes, in_channels)


@register
def resnet50_imagenet(num_classes: int = 1000, in_channels: int = 3) -> Classifier:
    """ImageNet ResNet-50 (bottleneck blocks), torchvision layout; ~25.6M params for 1000 classes."""
    return TorchvisionResNet(50, num_classes, in_channels)
