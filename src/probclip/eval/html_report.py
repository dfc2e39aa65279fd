"""Self-contained HTML reports: ``report.html`` for one evaluation run and for a suite.

Every image is embedded as a base64 ``data:`` URI, so a report is one file that opens anywhere. Tables
are sortable: clicking a column header sorts its rows (numbers numerically), with a few lines of inline
JavaScript.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["write_task_report", "write_suite_report", "flatten_metrics"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots img { max-width: 560px; margin: 6px; border: 1px solid #ddd; }
.example { border: 1px solid #ddd; padding: 8px; margin: 8px 0; }
.example img { width: 96px; height: 96px; object-fit: cover; margin-right: 6px; vertical-align: top; }
.pos { color: #0a7d22; font-weight: bold; }
.muted { color: #777; }
"""

_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var asc = th.dataset.order !== 'asc';
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value || a.cells[col].textContent;
        var y = b.cells[col].dataset.value || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? cmp : -cmp;
      });
      rows.forEach(function (r) { body.appendChild(r); });
      table.querySelectorAll('th').forEach(function (h) { delete h.dataset.order; });
      th.dataset.order = asc ? 'asc' : 'desc';
    });
  });
});
"""


def _esc(value) -> str:
    return html.escape(str(value))


def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
    kind = mime.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{'–' if value is None else _esc(value)}</td>"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "<td class='num' data-value=''>–</td>"
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        return f"<td class='num' data-value='{value!r}'>{shown}</td>"
    return f"<td>{_esc(value)}</td>"


def _table(header: Iterable[str], rows: Iterable[Iterable], table_id: str) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(v if isinstance(v, _Raw) else _cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table class='sortable' id='{table_id}'><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


class _Raw(str):
    """An already-formatted ``<td>`` cell."""


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}\n<script>{_SORT_JS}</script>\n</body></html>\n")


def flatten_metrics(metrics: Mapping, prefix: str = "") -> list[tuple[str, float]]:
    """``[("mean/csd/acc1", 0.83), ...]``: the numeric leaves of a metrics dict (uncertainty bins left out)."""
    out = []
    for key, value in metrics.items():
        if key == "uncertainty":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(flatten_metrics(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((name, value))
    return out


def _plots_html(out_dir: Path, names: Iterable[str]) -> str:
    imgs = [f"<img alt='{_esc(n)}' src='{_data_uri(out_dir / n)}'>" for n in names if (out_dir / n).is_file()]
    return f"<div class='plots'>{''.join(imgs)}</div>" if imgs else ""


def _examples_html(out_dir: Path, examples: Mapping) -> str:
    parts = ["<h2>Example queries</h2>",
             "<p class='muted'>Top results of a few queries; u = uncertainty (sum of the variances); "
             "<span class='pos'>green</span> = a positive of the query.</p>"]
    for ex in examples.get("i2t", []):
        rows = "".join(
            f"<li class='{'pos' if r['positive'] else ''}'>{_esc(r['caption'])} "
            f"<span class='muted'>(score {r['score']:.4f}, u {_fmt_u(r['uncertainty'])})</span></li>"
            for r in ex["top"])
        parts.append(f"<div class='example'><img alt='query image' src='{_data_uri(out_dir / ex['thumbnail'])}'>"
                     f"image query, u {_fmt_u(ex['uncertainty'])}<ol>{rows}</ol></div>")
    for ex in examples.get("t2i", []):
        thumbs = "".join(
            f"<figure style='display:inline-block;margin:0 6px'>"
            f"<img alt='result' src='{_data_uri(out_dir / r['thumbnail'])}'>"
            f"<figcaption class='{'pos' if r['positive'] else 'muted'}'>{r['score']:.3f}, u {_fmt_u(r['uncertainty'])}"
            f"</figcaption></figure>" for r in ex["top"])
        parts.append(f"<div class='example'>text query: <b>{_esc(ex['caption'])}</b> "
                     f"<span class='muted'>(u {_fmt_u(ex['uncertainty'])})</span><div>{thumbs}</div></div>")
    return "\n".join(parts)


def _fmt_u(value) -> str:
    return "–" if value is None else f"{value:.3g}"


def write_task_report(out_dir: str | Path, results: Mapping) -> Path:
    """Write ``out_dir/report.html`` for one run: the task's own tables (``results["tables"]``: ``{heading: rows}``,
    header row first) and the metrics table, the plots, example queries if any."""
    out_dir = Path(out_dir)
    title = f"probclip eval: {results.get('task', '?')} — {results.get('model', '?')}"
    info = {k: v for k, v in results.items() if isinstance(v, (str, int, float, bool)) and k != "model"}
    body = [f"<h1>{_esc(title)}</h1>",
            "<p>" + ", ".join(f"{_esc(k)}: <b>{_esc(v)}</b>" for k, v in info.items()) + "</p>",
            "<h2>Metrics</h2>",
            _table(("metric", "value"), flatten_metrics(results.get("metrics", {})), "metrics")]
    own = [part for n, (heading, rows) in enumerate(results.get("tables", {}).items())  # header row first
           for part in (f"<h2>{_esc(heading)}</h2>", _table(rows[0], rows[1:], f"table{n}"))]
    body[2:2] = own
    plots = _plots_html(out_dir, results.get("plots", []))
    if plots:
        body += ["<h2>Plots</h2>", plots]
    if results.get("examples"):
        body.append(_examples_html(out_dir, results["examples"]))
    path = out_dir / "report.html"
    path.write_text(_page(title, "\n".join(body)), encoding="utf-8")
    return path


def write_suite_report(out_dir: str | Path, summary: Mapping) -> Path:
    """Write ``out_dir/report.html`` for a suite: the sortable task table and each task's
    metric-per-uncertainty-bin plot."""
    out_dir = Path(out_dir)
    title = f"probclip {summary['suite']} suite — {summary['model']}"
    header = ("task", "key", "main metric", "CSD", "cosine", "r (uncertainty)", "images", "seconds", "status")
    rows, plots = [], []
    for r in summary["tasks"]:
        name = r["name"]
        if r.get("results"):
            link = Path(r["results"]).parent / "report.html"
            name_cell = _Raw(f"<td data-value='{_esc(r['name'])}'>"
                             f"<a href='{_esc(link.as_posix())}'>{_esc(name)}</a></td>")
        else:
            name_cell = _Raw(f"<td>{_esc(name)}</td>")
        status = r["status"] if r["status"] == "done" else f"{r['status']}: {r['reason']}"
        rows.append((name_cell, r["key"], r["main_metric"], r["csd"], r["cosine"], r["pearson"], r["n_images"],
                     r["seconds"], status))
        if r.get("results"):
            task_dir = out_dir / Path(r["results"]).parent
            task_results = json.loads((out_dir / r["results"]).read_text(encoding="utf-8"))
            for plot in task_results.get("plots", []):
                if plot.startswith("uncertainty") and (task_dir / plot).is_file():
                    plots.append(f"<figure style='display:inline-block'><figcaption>{_esc(r['name'])}</figcaption>"
                                 f"<img alt='{_esc(r['name'])} per uncertainty bin' src='{_data_uri(task_dir / plot)}'>"
                                 f"</figure>")
                    break
    avg = summary["average"]
    avg_text = (f"Average (DataComp: unweighted mean of the main metrics) over <b>{avg['n_tasks']}</b> of "
                f"{avg['n_tasks_in_suite']} tasks: CSD <b>{_fmt4(avg['csd'])}</b>, "
                f"cosine <b>{_fmt4(avg['cosine'])}</b>.")
    body = [f"<h1>{_esc(title)}</h1>", f"<p>{avg_text}</p>",
            "<p class='muted'>Click a column header to sort. r = Pearson correlation between the image-uncertainty "
            "bin (0 = most certain) and the metric in the bin.</p>",
            _table(header, rows, "suite"), "<h2>Metric per uncertainty bin</h2>",
            f"<div class='plots'>{''.join(plots)}</div>"]
    path = out_dir / "report.html"
    path.write_text(_page(title, "\n".join(body)), encoding="utf-8")
    return path


def _fmt4(value) -> str:
    return "–" if value is None else f"{value:.4f}"
