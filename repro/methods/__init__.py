"""DFKD methods as plug-ins of the one :class:`~repro.train.engine.Trainer` (see :mod:`repro.methods.base`).

Generation-based: the generative family (DAFL, ZSKT, DFAD, DFQ presets), DeepInversion, CMI, Fast.
Sampling-based: MosaicKD, DFND (their unlabeled pools are in :mod:`repro.data.pools`).
"""

from repro.methods.base import Batch, DFKDMethod
from repro.methods.cmi import CMI
from repro.methods.deepinv import DeepInversion
from repro.methods.dfnd import DFND
from repro.methods.fast import Fast
from repro.methods.generative import GenerativeDFKD
from repro.methods.mosaickd import MosaicKD
from repro.methods.supervised import Supervised

__all__ = ["Batch", "DFKDMethod", "CMI", "DeepInversion", "DFND", "Fast", "GenerativeDFKD", "MosaicKD", "Supervised"]
