"""Building gin-configured optimisers with a readable error for bad settings."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from repro.errors import UserError


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], params: Iterable[torch.nn.Parameter],
                    owner: str) -> torch.optim.Optimizer:
    """``factory(params)``; torch's ``ValueError`` for a bad setting becomes a one-line user error."""
    try:
        return factory(list(params))
    except ValueError as exc:
        raise UserError(f"the {owner} optimiser rejected its settings ({str(exc).splitlines()[0]}): "
                        "fix its gin bindings (e.g. lr > 0)") from None


def build_scheduler(factory: Callable[..., Any], optimizer: torch.optim.Optimizer, owner: str) -> Any:
    try:
        return factory(optimizer)
    except (ValueError, TypeError) as exc:
        raise UserError(f"the {owner} learning-rate schedule rejected its settings ({str(exc).splitlines()[0]}): "
                        "fix its gin bindings") from None
