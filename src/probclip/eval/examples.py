"""Example queries of a retrieval run for its report: top results with scores and uncertainties.

A few image queries (their top captions) and caption queries (their top images), spread evenly over
the data set, ranked by CSD for probabilistic embeddings and by cosine otherwise. Images are saved as
small JPEG thumbnails beside ``results.json``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .encode import Embeddings, embedding_uncertainty
from .readers import RetrievalData
from .scoring import available_methods, ranking_scores

__all__ = ["retrieval_examples"]

THUMBNAIL_PIXELS = 128


def _evenly(n_items: int, n: int) -> list[int]:
    return sorted({int(i) for i in torch.linspace(0, n_items - 1, min(n, n_items)).round().tolist()})


def _thumbnail(data: RetrievalData, index: int, path: Path) -> str:
    image = data.items[index].open()
    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert("RGB").save(path, format="JPEG", quality=85)
    return path.name


def _u(values: torch.Tensor | None, index: int) -> float | None:
    return None if values is None else float(values[index])


def retrieval_examples(data: RetrievalData, images: Embeddings, texts: Embeddings, out_dir: str | Path,
                       n_queries: int = 3, k: int = 5) -> dict:
    """``{"method", "i2t": [...], "t2i": [...]}``: for each query its top-``k`` results (score, positive,
    uncertainty); image thumbnails are written to ``out_dir/example_*.jpg``."""
    out_dir = Path(out_dir)
    method = available_methods(images, texts)[0]
    u_img, u_txt = embedding_uncertainty(images), embedding_uncertainty(texts)
    caption_image = data.caption_image
    out: dict = {"method": method, "i2t": [], "t2i": []}
    queries = _evenly(len(data.items), n_queries)
    scores = ranking_scores(images[torch.tensor(queries)], texts, method)
    for row, q in enumerate(queries):
        top = torch.sort(scores[row], descending=True, stable=True).indices[:k].tolist()
        out["i2t"].append({
            "image": q, "thumbnail": _thumbnail(data, q, out_dir / f"example_i2t_{q}.jpg"),
            "uncertainty": _u(u_img, q),
            "top": [{"caption": data.captions[c], "score": float(scores[row, c]),
                     "positive": int(caption_image[c]) == q, "uncertainty": _u(u_txt, c)} for c in top],
        })
    queries = _evenly(len(data.captions), n_queries)
    scores = ranking_scores(texts[torch.tensor(queries)], images, method)
    for row, q in enumerate(queries):
        top = torch.sort(scores[row], descending=True, stable=True).indices[:k].tolist()
        out["t2i"].append({
            "caption": data.captions[q], "uncertainty": _u(u_txt, q),
            "top": [{"image": i, "thumbnail": _thumbnail(data, i, out_dir / f"example_image_{i}.jpg"),
                     "score": float(scores[row, i]), "positive": int(caption_image[q]) == i,
                     "uncertainty": _u(u_img, i)} for i in top],
        })
    return out
