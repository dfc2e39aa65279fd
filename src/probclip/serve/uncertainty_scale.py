"""Where an item's uncertainty stands in its index: the percentile of u among a sample of the index's rows.

The web page draws each result's uncertainty bar with this percentile, so bars compare across queries.
"""

from __future__ import annotations

import asyncio

import numpy as np
from starlette.concurrency import run_in_threadpool

__all__ = ["UncertaintyScale", "SAMPLE_ROWS"]

#: Rows read (evenly spaced) to estimate an index's distribution of u.
SAMPLE_ROWS = 4096


class UncertaintyScale:
    """The distribution of ``u = sum_d exp(logvar_d)`` over an index, from up to ``SAMPLE_ROWS`` evenly spaced rows.

    ``ready()`` reads the sample once, in the thread pool; ``percentile(u)`` is then the fraction of sampled
    rows with a lower u (0..1) and ``quantiles()`` gives u at 5%, 50% and 95%.
    """

    def __init__(self, index, sample_rows: int = SAMPLE_ROWS):
        self.index, self.sample_rows = index, sample_rows
        self._sorted: np.ndarray | None = None
        self._lock = asyncio.Lock()

    def _read(self) -> np.ndarray:
        rows = self.index.rows
        ids = np.unique(np.linspace(0, rows - 1, num=min(rows, self.sample_rows)).round().astype(np.int64))
        # The stored u (computed from float32 log-variances before storage), as search results report it.
        return np.sort(np.array([float(m["u"]) for m in self.index.metadata(ids.tolist())], dtype=np.float64))

    async def ready(self) -> None:
        """Read the sample if not done yet (off the event loop)."""
        if self._sorted is not None:
            return
        async with self._lock:
            if self._sorted is None:
                self._sorted = await run_in_threadpool(self._read)

    def percentile(self, u: float) -> float | None:
        """Fraction of the sampled rows whose u is below ``u`` (0..1); None before ``ready()``."""
        if self._sorted is None or len(self._sorted) == 0:
            return None
        return round(float(np.searchsorted(self._sorted, u, side="left")) / len(self._sorted), 4)

    def quantiles(self) -> dict[str, float]:
        """u at the 5%, 50% and 95% quantiles of the sample (empty before ``ready()``)."""
        if self._sorted is None or len(self._sorted) == 0:
            return {}
        return {str(q): float(np.quantile(self._sorted, q)) for q in (0.05, 0.5, 0.95)}
