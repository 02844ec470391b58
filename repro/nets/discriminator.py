"""Patch discriminator of MosaicKD (Fang et al., NeurIPS 2021): it judges local patches, not whole
images, so a generator can compose in-domain-looking images from out-of-domain local patterns."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .registry import register


class PatchDiscriminator(nn.Module):
    """``[B, C, H, W]`` -> patch logits ``[B, 1, H / 2^d, W / 2^d]`` (d = ``downsamplings``); each
    logit sees a receptive field of about ``4 * 2^d - 1`` pixels."""

    def __init__(self, in_channels: int = 3, base_channels: int = 64, downsamplings: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for index in range(downsamplings):
            out = base_channels * 2**index
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=index == 0)]
            if index:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            channels = out
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register
def patch_discriminator(in_channels: int = 3, base_channels: int = 64, downsamplings: int = 2) -> nn.Module:
    """MosaicKD's patch discriminator (benchmark scale: 2 downsamplings at 32x32, 1 at 8x8 digits)."""
    return PatchDiscriminator(in_channels, base_channels, downsamplings)
