"""RoCOCO-style stress test: add adversarial captions and mixed images to the retrieval gallery.

- Adversarial captions: each caption with a replaceable word yields one copy with that word replaced.
  The replacement list is a JSON object ``{"word": ["replacement", ...]}`` (targeted: same-concept,
  different-concept or "danger" word sets) or a text file with one word per line (random words: any
  word of at least 3 letters may be replaced by a random word of the list). Position and replacement
  are drawn with a fixed seed.
- Mixed images: ``x' = 0.9 x + 0.1 x_perm`` on the preprocessed pixels, with ``perm`` a seeded
  permutation without fixed points.

Adversarial items are negatives. Reported per score method and direction: R@1 on the clean gallery,
R@1 on the augmented gallery, their difference (``r1_drop``), and the false rate: the fraction of
queries whose top-1 item is an adversarial one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..embedding import ProbEmbedding
from ..textfiles import read_json_file, read_text_file
from .caption_check import skipped_captions_report
from .encode import Embeddings, EvalModel, encode_image_dataset, encode_texts
from .image_check import skipped_report
from .options import EvalOptions
from .readers import ImageItem, RetrievalData, read_retrieval
from .report import plot_bars, write_results
from .retrieval import encode_retrieval_data
from .scoring import PositiveLists, available_methods, rank_positives

__all__ = ["load_replacements", "replace_one_word", "derangement", "encode_mixed_images", "rococo_metrics",
           "evaluate_rococo"]

_WORD = re.compile(r"[A-Za-z]+")


def load_replacements(path: str | Path) -> dict[str, list[str]] | list[str]:
    """Read a replacement list: JSON ``{word: [replacements]}`` or text with one word per line."""
    path = Path(path)
    text = read_text_file(path)
    if path.suffix.lower() == ".json":
        table = read_json_file(path)
        if not isinstance(table, dict) or not all(
            isinstance(v, list) and v and all(isinstance(w, str) for w in v) for v in table.values()
        ):
            raise ValueError(f"{path} must hold a JSON object mapping each word to a non-empty list of replacements")
        return {k.lower(): list(v) for k, v in table.items()}
    words = [w.strip() for w in text.splitlines() if w.strip()]
    if not words:
        raise ValueError(f"{path} lists no replacement word")
    return words


def replace_one_word(caption: str, replacements: dict[str, list[str]] | list[str], rng: random.Random) -> str | None:
    """The caption with one word replaced, or None when no word can be replaced."""
    matches = list(_WORD.finditer(caption))
    if isinstance(replacements, dict):
        candidates = [m for m in matches if m.group().lower() in replacements]
    else:
        candidates = [m for m in matches if len(m.group()) >= 3]
    if not candidates:
        return None
    m = rng.choice(candidates)
    word = m.group()
    options = replacements[word.lower()] if isinstance(replacements, dict) else replacements
    options = [w for w in options if w.lower() != word.lower()]
    if not options:
        return None
    return caption[: m.start()] + rng.choice(options) + caption[m.end() :]


def derangement(n: int, seed: int = 0) -> torch.Tensor:
    """A seeded permutation of ``range(n)`` without fixed points (n >= 2)."""
    if n < 2:
        raise ValueError(f"mixing images needs at least 2 images; got {n}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)  # each image mixes with the next one in a random cycle
    return perm


class _MixedImages(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[ImageItem], preprocess: Callable, perm: torch.Tensor, weight: float):
        self.items, self.preprocess, self.perm, self.weight = items, preprocess, perm, weight

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.preprocess(self.items[i].open())
        other = self.preprocess(self.items[int(self.perm[i])].open())
        return (1 - self.weight) * x + self.weight * other


def encode_mixed_images(model: EvalModel, items: Sequence[ImageItem], perm: torch.Tensor, weight: float = 0.1,
                        batch_size: int = 64, num_workers: int = 0, progress: bool = True) -> Embeddings:
    """Encode ``(1 - weight) * x_i + weight * x_perm[i]`` for every image (preprocessed pixels)."""
    dataset = _MixedImages(items, model.preprocess, perm, weight)
    return encode_image_dataset(model.model, dataset, batch_size, num_workers, "mixed images", progress)


def _cat(a: Embeddings, b: Embeddings) -> Embeddings:
    return ProbEmbedding.cat([a, b]) if isinstance(a, ProbEmbedding) else torch.cat([a, b])


def _r1_and_false_rate(query, gallery, positives: PositiveLists, n_clean: int, method: str) -> tuple[float, float]:
    ranks, top1 = rank_positives(query, gallery, positives, method, return_top1=True, depth=1)
    return float((ranks[:, 0] < 1).double().mean()), float((top1 >= n_clean).double().mean())


def rococo_metrics(images: Embeddings, texts: Embeddings, caption_image: torch.Tensor,
                   adversarial_texts: Embeddings | None, mixed_images: Embeddings | None) -> dict:
    """R@1 clean vs augmented, drop and false rate, ``{method: {"i2t": {...}, "t2i": {...}}}``.

    ``adversarial_texts`` are appended to the caption gallery (i2t), ``mixed_images`` to the image
    gallery (t2i); either may be None to skip that direction's attack.
    """
    n_img, n_txt = images.shape[0], texts.shape[0]
    caption_image = torch.as_tensor(caption_image, dtype=torch.long)
    results = {}
    for method in available_methods(images, texts):
        entry = {}
        if adversarial_texts is not None:
            clean_pos = PositiveLists.from_labels(torch.arange(n_img), caption_image)
            clean_r1, _ = _r1_and_false_rate(images, texts, clean_pos, n_txt, method)
            labels = torch.cat([caption_image, torch.full((adversarial_texts.shape[0],), n_img)])
            aug_pos = PositiveLists.from_labels(torch.arange(n_img), labels)
            r1, false_rate = _r1_and_false_rate(images, _cat(texts, adversarial_texts), aug_pos, n_txt, method)
            entry["i2t"] = {"r1_clean": clean_r1, "r1_attacked": r1, "r1_drop": clean_r1 - r1, "false_rate": false_rate}
        if mixed_images is not None:
            clean_r1, _ = _r1_and_false_rate(texts, images, PositiveLists.single(caption_image, n_img), n_img, method)
            aug_pos = PositiveLists.single(caption_image, 2 * n_img)
            r1, false_rate = _r1_and_false_rate(texts, _cat(images, mixed_images), aug_pos, n_img, method)
            entry["t2i"] = {"r1_clean": clean_r1, "r1_attacked": r1, "r1_drop": clean_r1 - r1, "false_rate": false_rate}
        results[method] = entry
    return results


def evaluate_rococo(
    model: EvalModel,
    data: RetrievalData | str | Path,
    replacements: dict | list | str | Path,
    options: EvalOptions | None = None,
    *,
    mix_weight: float = 0.1,
    seed: int = 0,
) -> dict:
    """Run the stress test on any retrieval data set; writes results and a plot to ``out_dir``."""
    options = EvalOptions.of(options)
    if not isinstance(data, RetrievalData):
        data = read_retrieval(data, image_root=options.image_root, split=options.split)
    if isinstance(replacements, (str, Path)):
        replacements = load_replacements(replacements)
    if not 0 < mix_weight < 1:
        raise ValueError(f"mix_weight must lie in (0, 1); got {mix_weight}")
    rng = random.Random(seed)
    adversarial = [a for a in (replace_one_word(c, replacements, rng) for c in data.captions) if a is not None]
    images, texts = encode_retrieval_data(model, data, options.batch_size, options.num_workers, options.progress)
    adv_emb = encode_texts_or_none(model, adversarial, options.progress)
    perm = derangement(len(data.items), seed)
    mixed = encode_mixed_images(
        model, data.items, perm, mix_weight, options.batch_size, options.num_workers, options.progress
    )
    metrics = rococo_metrics(images, texts, data.caption_image, adv_emb, mixed)
    results = {"task": "rococo", "model": model.name, "probabilistic": model.probabilistic,
               "n_images": len(data.items), "n_captions": len(data.captions),
               "n_adversarial_captions": len(adversarial), "n_mixed_images": len(data.items),
               "mix_weight": mix_weight, "seed": seed, "adversarial_examples": adversarial[:5], "metrics": metrics}
    results["skipped_images"] = skipped_report(data)
    results["skipped_captions"] = skipped_captions_report(data)
    if options.out_dir is not None:
        out_dir = Path(options.out_dir)
        bars = {f"{m} {d} {k}": v[k] for m, per in metrics.items() for d, v in per.items()
                for k in ("r1_clean", "r1_attacked")}
        results["plots"] = [plot_bars(bars, out_dir / "rococo_r1.png", "R@1 clean vs attacked gallery", "R@1").name]
        write_results(options.out_dir, results)
    return results


def encode_texts_or_none(model: EvalModel, texts: list[str], progress: bool) -> Embeddings | None:
    """Encode ``texts`` with the model's tokenizer, or None when there are none."""
    if not texts:
        return None
    return encode_texts(model.model, texts, model.tokenizer, desc="adversarial captions", progress=progress)
