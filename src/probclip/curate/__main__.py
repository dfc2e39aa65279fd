"""``python -m probclip.curate`` and ``torchrun --nproc_per_node N -m probclip.curate score ...``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
