"""DCGAN-style image generator used by DAFL-family data-free KD methods.

Architecture of the generator in DAFL (Chen et al., "Data-Free Learning of
Student Networks", ICCV 2019) as adopted by the CMI / Fast-Datafree benchmark
(Fang et al., "Contrastive Model Inversion for Data-Free Knowledge
Distillation", IJCAI 2021).
"""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .base import init_weights
from .registry import register


class DCGANGenerator(nn.Module):
    """Map latent codes ``[B, latent_dim]`` to images ``[B, out_channels, image_size, image_size]`` in [0, 1]."""

    def __init__(
        self, latent_dim: int = 256, base_channels: int = 64, image_size: int = 32, out_channels: int = 3
    ) -> None:
        super().__init__()
        if image_size % 4 != 0 or image_size <= 0:
            raise ValueError(f"image_size must be a positive multiple of 4 (two 2x upsamplings), got {image_size}")
        self.latent_dim = latent_dim
        self.image_size = image_size
        self.out_channels = out_channels
        self.init_size = image_size // 4
        b2 = 2 * base_channels
        self.fc = nn.Linear(latent_dim, b2 * self.init_size**2)
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(b2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(b2, b2, 3, padding=1, bias=False),
            nn.BatchNorm2d(b2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(b2, base_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(base_channels),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(base_channels, out_channels, 3, padding=1),
            # Sigmoid keeps images in [0, 1]; the caller applies dataset normalisation.
            nn.Sigmoid(),
        )
        init_weights(self)

    def forward(self, z: Tensor) -> Tensor:
        """``[B, latent_dim] -> [B, out_channels, image_size, image_size]``."""
        x = self.fc(z).view(z.shape[0], -1, self.init_size, self.init_size)
        return self.conv_blocks(x)


@register
def dcgan_generator(
    latent_dim: int = 256, base_channels: int = 64, image_size: int = 32, out_channels: int = 3
) -> nn.Module:
    """DCGAN-style generator of DAFL (Chen et al., ICCV 2019) / the CMI benchmark (Fang et al., 2021).

    Raises:
        ValueError: if ``image_size`` is not a multiple of 4.
    """
    return DCGANGenerator(latent_dim, base_channels, image_size, out_channels)
