"""The quickstart report: PNG plots of the uncertainty analyses on the synthetic world and an HTML page.

Plots (``OUT/plots``): text uncertainty per caption specificity level, image uncertainty per degradation level,
accuracy per uncertainty bin (zero-shot and image-to-text R@1), and example text-to-image retrievals with the
uncertainties of the query and of the retrieved images.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..plotting import pyplot
from .world import render_scene

__all__ = ["write_report"]


def _plot_specificity(path: Path, details: dict) -> None:
    plt = pyplot()
    drawn = details["drawn_captions"]
    levels, u = details["caption_levels"][drawn], details["caption_uncertainty"][drawn]
    groups = [u[levels == k] for k in range(int(levels.max()) + 1)]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.boxplot(groups, positions=range(len(groups)), showfliers=False)
    ax.set_xlabel("caption specificity level (0 = 'a shape', 5 = full scene)")
    ax.set_ylabel("text uncertainty (sum of variances)")
    ax.set_title("Text uncertainty vs specificity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_degradation(path: Path, eval_set, details: dict) -> None:
    plt = pyplot()
    levels, u = eval_set.degraded_levels, details["degraded_uncertainty"]
    groups = [u[levels == k] for k in range(int(levels.max()) + 1)]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.boxplot(groups, positions=range(len(groups)), showfliers=False)
    ax.set_xlabel(f"image degradation level (0 = clean, 4 = strongest {eval_set.degradation_kind})")
    ax.set_ylabel("image uncertainty")
    ax.set_title("Image uncertainty vs degradation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_bins(path: Path, details: dict) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for key, label in (("zeroshot_bins", "zero-shot accuracy"), ("i2t_bins", "image-to-text R@1")):
        bins = details[key]["bin_metric"]
        ax.plot(range(len(bins)), bins, marker="o", label=f"{label} (r = {details[key]['pearson']:.2f})")
    ax.set_xlabel("image uncertainty bin (0 = most certain)")
    ax.set_ylabel("accuracy / R@1")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy per uncertainty bin")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _example_queries(eval_set) -> list[int]:
    """One caption per specificity level (the first of each level in gallery order)."""
    chosen, seen = [], set()
    for j, caption in enumerate(eval_set.captions):
        if caption.level not in seen and (caption.level == 0 or caption.level % 2 == 1 or caption.level == 5):
            chosen.append(j)
            seen.add(caption.level)
    return sorted(chosen, key=lambda j: eval_set.captions[j].level)[:4]


def _plot_examples(path: Path, eval_set, details: dict, top: int = 5) -> None:
    plt = pyplot()
    queries = _example_queries(eval_set)
    scores = details["t2i_scores"]
    image_u = details["embeddings"]["images"].uncertainty.numpy()
    text_u = details["caption_uncertainty"]
    fig, axes = plt.subplots(len(queries), top, figsize=(1.8 * top, 2.3 * len(queries)), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.02, hspace=0.75, wspace=0.15)
    for row, j in enumerate(queries):
        ranked = np.argsort(-scores[j].numpy(), kind="stable")[:top]
        for col, i in enumerate(ranked):
            ax = axes[row][col]
            ax.imshow(np.asarray(render_scene(eval_set.scenes[i])), interpolation="nearest")
            correct = bool(eval_set.truth[i, j])
            ax.set_title(f"u={image_u[i]:.3f} {'true' if correct else 'false'}", fontsize=8,
                         color="green" if correct else "red")
            ax.set_xticks([])
            ax.set_yticks([])
        box = axes[row][0].get_position()
        caption = eval_set.captions[j].text
        fig.text(0.02, box.y1 + 0.045, f"level {eval_set.captions[j].level}: \"{caption}\" (u={text_u[j]:.3f})",
                 fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(metrics: dict) -> str:
    rows = []
    keys = [
        "retrieval.i2t.r1", "retrieval.i2t.r5", "retrieval.i2t.map_at_r", "retrieval.i2t.r_precision",
        "retrieval.t2i.r1", "retrieval.t2i.r5", "retrieval.t2i.map_at_r", "retrieval.t2i.r_precision",
        "uncertainty.text_specificity_spearman", "uncertainty.image_degradation_spearman", "inclusion.accuracy",
        "zeroshot.acc1", "zeroshot.unc_acc_corr", "train.seconds", "train.samples",
    ]

    def get(tree, key):
        node = tree
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return "&ndash;"
            node = node[part]
        return f"{node:.3f}" if isinstance(node, float) else str(node)

    for key in keys:
        rows.append(
            f"<tr><td>{key}</td><td>{get(metrics, key)}</td><td>{get(metrics.get('baseline', {}), key)}</td></tr>"
        )
    return "\n".join(rows)


def _hierarchy_table(hierarchy: dict, baseline: dict | None) -> str:
    """R-precision (and in brackets the order, Kendall tau: +1 = general to specific) per score and query level."""
    groups = ["image", "captions", "0", "1", "2", "3", "4", "5"]
    head = "".join(f"<th>{g if g in ('image', 'captions') else 'level ' + g}</th>" for g in groups)
    rows = [f"<tr><th>direction</th><th>model: score</th>{head}</tr>"]
    for model, tree in (("ProLIP", hierarchy), ("SigLIP", baseline or {})):
        for direction, by_score in tree.items():
            for score, by_group in by_score.items():
                cells = []
                for g in groups:
                    entry = by_group.get(g)
                    if entry is None:
                        cells.append("<td>&ndash;</td>")
                        continue
                    order = entry["order"]
                    tau = "" if order != order else f" ({order:+.2f})"  # NaN: no order to measure
                    cells.append(f"<td>{entry['r_precision']:.3f}{tau}</td>")
                words = "more general" if direction == "general" else "more specific"
                rows.append(f"<tr><td>{words}</td><td>{model}: {score}</td>{''.join(cells)}</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def write_report(
    out_dir: str | Path, metrics: dict, eval_set, details: dict, baseline_details: dict | None = None
) -> Path:
    """Write ``out_dir/plots/*.png`` and ``out_dir/report.html``; returns the HTML path.

    ``details`` are the ProLIP model's raw evaluation values (``evaluate_synthetic``); ``metrics`` the nested
    metrics written to ``metrics.json``.
    """
    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    _plot_specificity(plots / "uncertainty_vs_specificity.png", details)
    _plot_degradation(plots / "uncertainty_vs_degradation.png", eval_set, details)
    _plot_bins(plots / "uncertainty_binned_accuracy.png", details)
    _plot_examples(plots / "example_retrievals.png", eval_set, details)
    figures = [
        (
            "uncertainty_vs_specificity.png",
            "Text uncertainty per caption level: general captions should be more uncertain.",
        ),
        (
            "uncertainty_vs_degradation.png",
            "Image uncertainty per degradation level: more degraded images should be more uncertain.",
        ),
        ("uncertainty_binned_accuracy.png", "Accuracy per image-uncertainty bin (10 equal bins)."),
        (
            "example_retrievals.png",
            "Text-to-image retrieval (ProLIP, CSD ranking): top 5 images per query caption, "
            "with their uncertainty; 'true' marks images of which the caption is true.",
        ),
    ]
    body = "\n".join(f"<figure><img src=\"plots/{name}\" alt=\"{html.escape(text)}\"><figcaption>{html.escape(text)}"
                     "</figcaption></figure>" for name, text in figures)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>probclip quickstart report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px}} figure{{margin:1.5em 0}}</style></head>
<body><h1>probclip quickstart: ProLIP vs SigLIP on the synthetic world</h1>
<p>Held-out test split: {len(eval_set.scenes)} images, {len(eval_set.captions)} captions (exact many-to-many truth),
{len(eval_set.degraded_scenes)} degraded images, {len(eval_set.zeroshot_scenes)} zero-shot images.
Training: {metrics['train']['steps']} steps of {metrics['config']['batch_size']} pairs per model.</p>
<table><tr><th>metric</th><th>ProLIP</th><th>SigLIP baseline</th></tr>
{_table(metrics)}
</table>
<h2>Hierarchical search: "more general" and "more specific" against exact truth</h2>
<p>R-precision per score and query level (in brackets the order: Kendall tau between rank and caption level, +1 =
general to specific). Queries: every test caption ("captions" pools them) and the {len(eval_set.scenes)} images;
truth: the captions strictly more general / more specific than a caption, or true of an image
(see <code>probclip eval --task hierarchy</code>). <code>directional</code> is what the search ranks by;
<code>denotation</code> looks at the test images through a match probability calibrated on the training split.</p>
{_hierarchy_table(details.get("hierarchy", {}), (baseline_details or {}).get("hierarchy"))}
{body}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
