"""Writing evaluation outputs: ``results.json`` and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..jsonsafe import json_safe
from ..plotting import pyplot

__all__ = ["write_results", "plot_uncertainty_bins", "plot_bars"]


def write_results(out_dir: str | Path, results: Mapping) -> Path:
    """Write ``out_dir/results.json`` (NaN written as null); returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def plot_uncertainty_bins(series: Mapping[str, Mapping], path: str | Path, title: str, ylabel: str) -> Path:
    """Line plot of the metric per uncertainty bin, one line per entry of ``series``.

    Each value of ``series`` is an :func:`~probclip.eval.metrics.uncertainty_bins` result; the legend
    shows its Pearson correlation.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, bins in series.items():
        values = bins["bin_metric"]
        pearson = bins["pearson"]
        tag = "n/a" if pearson is None or (isinstance(pearson, float) and math.isnan(pearson)) else f"{pearson:+.2f}"
        ax.plot(range(len(values)), values, marker="o", label=f"{label} (r={tag})")
    ax.set_xlabel("uncertainty bin (0 = most certain)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bars(values: Mapping[str, float], path: str | Path, title: str, ylabel: str) -> Path:
    """Bar chart of named values."""
    plt = pyplot()
    names: Sequence[str] = list(values)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(names) + 2), 3.8))
    ax.bar(range(len(names)), [values[n] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
