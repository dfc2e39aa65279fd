"""``python -m probclip.train`` and ``torchrun --nproc_per_node N -m probclip.train``: same as ``probclip train``."""

import sys

from .cli import main

sys.exit(main())
