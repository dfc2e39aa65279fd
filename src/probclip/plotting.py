"""Matplotlib for plots written to files: the ``Agg`` backend (no display needed), imported on first use."""

from __future__ import annotations

__all__ = ["pyplot"]


def pyplot():
    """``matplotlib.pyplot`` with the file-only ``Agg`` backend selected.

    Imported here on first use: matplotlib is heavy and only the commands that write plots need it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
