"""``python -m probclip.train`` and ``torchrun --nproc_per_node N -m probclip.train``: same as ``probclip train``
(the same options, the same one-line errors and exit statuses)."""

import sys

from ..cli import run_command
from .cli import main

sys.exit(run_command("train", main, sys.argv[1:]))
