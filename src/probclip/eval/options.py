"""The settings every evaluation task shares, in one object instead of repeated keyword arguments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

__all__ = ["EvalOptions"]


@dataclass(frozen=True)
class EvalOptions:
    """Shared settings of the ``evaluate_*`` functions.

    Attributes:
        out_dir: where ``results.json`` and the plots go (None: nothing is written).
        image_root: prefix of relative image paths in the data (None: the data file's folder).
        split: split of the data set to read (``test``, ``val``, ...).
        batch_size: images or texts per encoding batch.
        num_workers: image-loading worker processes.
        progress: show progress bars.
    """

    out_dir: str | Path | None = None
    image_root: str | Path | None = None
    split: str = "test"
    batch_size: int = 64
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError(f"EvalOptions.batch_size must be an integer >= 1; got {self.batch_size!r}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise UsageError(f"EvalOptions.num_workers must be an integer >= 0; got {self.num_workers!r}")

    @staticmethod
    def of(options: EvalOptions | None, **defaults) -> EvalOptions:
        """``options`` itself, or ``EvalOptions(**defaults)`` when None; anything else is a usage error (a
        common slip is passing ``out_dir`` where the options go: use ``EvalOptions(out_dir=...)``)."""
        if options is None:
            return EvalOptions(**defaults)
        if not isinstance(options, EvalOptions):
            raise UsageError(f"options must be an EvalOptions or None; got {type(options).__name__} "
                             f"({options!r}); pass the output folder as EvalOptions(out_dir=...)")
        return options
