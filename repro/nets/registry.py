"""Name -> factory registry for networks (timm-style).

Experiments refer to architectures by string (e.g. ``"resnet34"`` teacher,
``"resnet18"`` student) so configs stay plain data; this module maps those
strings to factory functions.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch.nn as nn

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Factory) -> Factory:
    """Register ``fn`` under ``fn.__name__`` and return it unchanged.

    Raises:
        ValueError: if the name is already taken (silently overwriting would
            make the meaning of a config string depend on import order).
    """
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"network {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the network registered as ``name``, forwarding ``kwargs`` to its factory.

    Raises:
        KeyError: if ``name`` is not registered; the message lists the known names.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_networks())
        raise KeyError(f"unknown network {name!r}: known networks are {known}") from None
    return factory(**kwargs)


def list_networks() -> list[str]:
    """Sorted names of all registered networks."""
    return sorted(_REGISTRY)
