"""kdci-repro: a reproduction of KDCI (Wang et al., CVPR 2024, arXiv:2403.19539).

De-confounded data-free knowledge distillation, its DFKD baselines, and the pipeline that
regenerates the paper's comparison. Import :mod:`repro.configurables` to make every gin name
available.
"""

__version__ = "0.1.0"
