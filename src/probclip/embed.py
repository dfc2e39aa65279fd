"""``python -m probclip.embed`` and ``torchrun --nproc_per_node N -m probclip.embed``: same as ``probclip embed``."""

import sys

from .search.embed_cli import main

if __name__ == "__main__":
    sys.exit(main())
