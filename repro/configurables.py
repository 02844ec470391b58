"""The single place where names become available to gin.

Importing this module registers every configurable of the package (they are decorated in their
own modules, imported here) and torch's optimisers and schedulers (``@SGD``, ``@Adam``,
``@CosineAnnealingLR``, ``@MultiStepLR`` ...) from ``gin.torch.external_configurables``.
"""

import warnings

with warnings.catch_warnings():
    # gin's torch registrations touch a class torch deprecated (NLLLoss2d): harmless, silenced here.
    warnings.simplefilter("ignore", FutureWarning)
    import gin.torch.external_configurables  # noqa: F401  (registers torch.optim and lr_scheduler)

from repro import architecture, data, engine, methods, pools, stages  # noqa: E402,F401
from repro import ablate, bench, diagnose, shift_sweep  # noqa: E402,F401
from repro.kdci import method as kdci_method  # noqa: E402,F401

__all__ = ["architecture", "data", "engine", "methods", "pools", "stages", "kdci_method", "ablate", "bench", "diagnose", "shift_sweep"]
