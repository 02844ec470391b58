"""``python -m repro`` (what ``torchrun --nproc_per_node N -m repro distill ...`` runs)."""
import sys

from repro import reproducible

# Before repro.cli is imported: the kernel pins must precede any import of torch (main() applies them
# again, which changes nothing).
reproducible.start_cli()

from repro.cli import main

sys.exit(main())
