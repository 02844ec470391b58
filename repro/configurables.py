"""Every gin name of the package, made known by importing the modules that declare them.

It sits at the top beside the CLI: nothing in the library or the pipeline imports it (that would
be an import circle), and :func:`repro.config.parse` does not import it either. The CLI imports it
before parsing; so does code that parses gin files itself (tests, notebooks): ``import
repro.configurables``. torch's optimisers and schedulers (``@SGD``, ``@Adam``,
``@CosineAnnealingLR``, ``@MultiStepLR`` ...) come from ``gin.torch.external_configurables``.
"""

import warnings

with warnings.catch_warnings():
    # gin's torch registrations touch a class torch deprecated (NLLLoss2d): harmless, silenced here.
    warnings.simplefilter("ignore", FutureWarning)
    import gin.torch.external_configurables  # noqa: F401  (registers torch.optim and lr_scheduler)

from repro import methods  # noqa: E402,F401  (every baseline and its presets)
from repro.data import datasets, pools  # noqa: E402,F401
from repro.kdci import method as kdci_method  # noqa: E402,F401
from repro.nets import spec  # noqa: E402,F401
from repro.pipeline import ablate, bench, diagnose, shift_sweep, stages  # noqa: E402,F401
from repro.train import engine  # noqa: E402,F401
