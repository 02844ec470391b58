"""``python -m repro`` (what ``torchrun --nproc_per_node N -m repro distill ...`` runs)."""
import sys

from repro.cli import main

sys.exit(main())
