"""CIFAR VGG with BatchNorm (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
Image Recognition", ICLR 2015), in the variant the data-free KD benchmark trains its VGG-11 teacher as.

The benchmark (zju-vipa CMI / Fast-Datafree, whose teachers KDCI distils from) registers ``vgg11`` as
RepDistiller's ``vgg11_bn``: zju-vipa/CMI and zju-vipa/Fast-Datafree
``datafree/models/classifiers/vgg.py`` (identical in both), after HobbitLong/RepDistiller
``models/vgg.py``. This module is written independently from those facts, so that an imported
zju-vipa teacher (``repro import-teacher``) and one trained here are the same network:

* five stages of 3x3 convolutions (configuration "A": 64 | 128 | 256, 256 | 512, 512 | 512, 512),
  every convolution WITH a bias, each followed by BatchNorm and ReLU;
* a 2x2 max-pool after each of the first three stages; after the fourth only for 64-pixel-high
  inputs (zju-vipa's Tiny-ImageNet rule, ``h == 64``), so a 32x32 CIFAR image reaches stages four
  and five at 4x4; never a max-pool after the fifth;
* a global average pool after the fifth stage (512 features) and one ``nn.Linear(512, classes)``.
"""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .base import Classifier, init_weights
from .registry import register

# Convolution widths per stage (VGG configuration "A", 8 convolutions + the linear head = 11 layers).
VGG11_STAGES: tuple[tuple[int, ...], ...] = ((64,), (128,), (256, 256), (512, 512), (512, 512))
# Stages followed by a 2x2 max-pool whatever the input size (0-based), and the one pooled only for
# inputs exactly 64 pixels high (zju-vipa vgg.py ``forward``: ``if h == 64: x = self.pool3(x)``).
_ALWAYS_POOLED = (0, 1, 2)
_POOLED_AT_64 = 3


class VGG(Classifier):
    """VGG stages (conv+bias, BN, ReLU) with zju-vipa's pooling, global average pool, one linear layer.

    ``stages[s]`` is an ``nn.Sequential`` of ``[Conv2d, BatchNorm2d, ReLU]`` per convolution, so a
    stage's convolution ``j`` sits at index ``3j`` and its BatchNorm at ``3j + 1`` -- the positions
    zju-vipa's ``block{s}`` use (they drop each block's last ReLU and apply it in ``forward``; a
    ReLU holds no parameters, so the state-dict indices agree). Inputs must be at least 8x8.
    """

    def __init__(self, stages: tuple[tuple[int, ...], ...], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if len(stages) != 5:
            raise ValueError(f"VGG takes 5 stages of convolution widths, got {len(stages)}")
        self.stages = nn.ModuleList()
        c = in_channels
        for widths in stages:
            layers: list[nn.Module] = []
            for width in widths:
                layers += [nn.Conv2d(c, width, 3, padding=1, bias=True), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                c = width
            self.stages.append(nn.Sequential(*layers))
        self.max_pool = nn.MaxPool2d(2, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        self.feature_dim = c
        self.classifier = nn.Linear(c, num_classes)
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, 512]`` (at 32x32: 32 -> 16 -> 8 -> 4, stages four and five at 4x4)."""
        height = x.shape[2]
        out = x
        for index, stage in enumerate(self.stages):
            out = stage(out)
            if index in _ALWAYS_POOLED or (index == _POOLED_AT_64 and height == 64):
                out = self.max_pool(out)
        return self.pool(out).flatten(1)


@register
def vgg11_bn(num_classes: int = 10, in_channels: int = 3) -> Classifier:
    """CIFAR VGG-11 with BatchNorm as zju-vipa's ``vgg11`` (RepDistiller ``vgg11_bn``): biased
    convolutions, max-pools after stages 1-3 only at 32 px; feature_dim 512, 9,231,114 params for 10 classes."""
    return VGG(VGG11_STAGES, num_classes=num_classes, in_channels=in_channels)
