"""Search results as CSV (``POST /search?format=csv``; the page's "CSV" download).

One row per result, best first: ``rank, row_id, score, probability, uncertainty, uncertainty_percentile, image_url``
(``probability``: the hierarchy head's, empty where it did not rank) and then
every served metadata field (``caption``, ``source``, ...). A text cell that a spreadsheet would run as a formula
(starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) is prefixed with ``'``.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

__all__ = ["RESULT_COLUMNS", "results_csv"]

RESULT_COLUMNS = ("rank", "row_id", "score", "probability", "uncertainty", "uncertainty_percentile", "image_url")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def results_csv(body: dict) -> str:
    """The CSV text of a ``/search`` answer ``body`` (its ``results`` list)."""
    hits = body.get("results", [])
    meta_columns: list[str] = []
    for hit in hits:
        for key in hit.get("metadata", {}):
            if key not in meta_columns and key not in RESULT_COLUMNS:
                meta_columns.append(key)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*RESULT_COLUMNS, *meta_columns])
    for rank, hit in enumerate(hits, 1):
        meta = hit.get("metadata", {})
        writer.writerow([rank, *(_cell(hit.get(c)) for c in RESULT_COLUMNS[1:]),
                         *(_cell(meta.get(c)) for c in meta_columns)])
    return out.getvalue()
