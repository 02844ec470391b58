"""``NetSpec``: a network named in the registry plus its arguments, buildable and recordable.

Gin binds the spec (``teacher/NetSpec.name = 'resnet34'``); the artefact's config.json stores
``to_dict()`` so the exact network can be rebuilt from the Hub without gin.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gin
from torch import nn

from repro.errors import UserError
from repro.nets.registry import create


@gin.configurable
@dataclasses.dataclass(frozen=True)
class NetSpec:
    """A registered network name and its keyword arguments (besides the data-given ones)."""

    name: str = gin.REQUIRED
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def build(self, **data_kwargs: Any) -> nn.Module:
        """Create the network; ``data_kwargs`` are those fixed by the data (e.g. ``num_classes``)."""
        try:
            return create(self.name, **{**dict(self.kwargs), **data_kwargs})
        except KeyError as exc:
            raise UserError(str(exc.args[0]) + "; fix the NetSpec.name binding") from None
        except TypeError as exc:
            raise UserError(f"network {self.name!r} rejected its arguments ({exc}); fix NetSpec.kwargs") from None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "NetSpec":
        return cls(name=record["name"], kwargs=dict(record.get("kwargs", {})))
