"""Building gin-configured optimisers with a readable error for bad settings."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import gin
import torch

from repro.errors import UserError


def _wrongly_typed(factory: Callable[..., Any], owner: str) -> str:
    """``owner/Name.param = 'value'`` for string-valued bindings of ``factory`` (optimiser settings are
    numbers, tuples or flags), or '' when gin cannot tell."""
    name = getattr(factory, "__name__", "")
    try:
        bindings = gin.get_bindings(f"{owner}/{name}") if name else {}
    except (ValueError, KeyError):
        return ""
    return ", ".join(f"{owner}/{name}.{key} = {value!r}" for key, value in sorted(bindings.items()) if isinstance(value, str))


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], params: Iterable[torch.nn.Parameter],
                    owner: str) -> torch.optim.Optimizer:
    """``factory(params)``; a bad setting (torch's ``ValueError``, a string where a number belongs,
    a learning rate that is not a finite number >= 0) becomes a one-line user error."""
    name = getattr(factory, "__name__", "optimizer")
    try:
        optimizer = factory(list(params))
    except ValueError as exc:
        raise UserError(f"the {owner} optimiser rejected its settings ({str(exc).splitlines()[0]}): "
                        f"fix the {owner}/{name} bindings (e.g. {owner}/{name}.lr = 0.1; lr must be >= 0)") from None
    except TypeError as exc:
        culprit = _wrongly_typed(factory, owner)
        what = f"{culprit} is not a number" if culprit else f"a setting has the wrong type: {str(exc).splitlines()[0]}"
        raise UserError(f"the {owner} optimiser rejected its settings ({what}): bind numbers, "
                        f"e.g. {owner}/{name}.lr = 0.1") from None
    for group in optimizer.param_groups:
        lr = group.get("lr")
        rate = float(lr) if isinstance(lr, (int, float, torch.Tensor)) and not isinstance(lr, bool) else None
        if rate is None or not math.isfinite(rate) or rate < 0:
            raise UserError(f"the {owner} optimiser's learning rate {lr!r} is invalid: it must be a finite number >= 0; "
                            "fix its gin bindings")
    return optimizer


def build_scheduler(factory: Callable[..., Any], optimizer: torch.optim.Optimizer, owner: str) -> Any:
    try:
        return factory(optimizer)
    except (ValueError, TypeError) as exc:
        raise UserError(f"the {owner} learning-rate schedule rejected its settings ({str(exc).splitlines()[0]}): "
                        "fix its gin bindings") from None
