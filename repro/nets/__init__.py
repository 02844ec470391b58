"""Network zoo: classifiers and generators, built by name via :func:`create`."""
from __future__ import annotations

from . import digits, discriminator, generator, imagenet, resnet, vgg, wrn  # noqa: F401  (imports register the factories)
from .base import Classifier
from .registry import create, list_networks, register

__all__ = ["Classifier", "create", "list_networks", "register"]
