"""DFKD methods as plug-ins of the one :class:`~repro.engine.Trainer` (see :mod:`repro.methods.base`)."""

from repro.methods.base import Batch, DFKDMethod
from repro.methods.dafl import DAFL
from repro.methods.deepinv import DeepInversion
from repro.methods.supervised import Supervised

__all__ = ["Batch", "DFKDMethod", "DAFL", "DeepInversion", "Supervised"]
