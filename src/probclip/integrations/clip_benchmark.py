"""probclip models inside CLIP_benchmark (the ``clip-benchmark`` package, extra ``benchmark``).

:func:`register` adds a ``probclip`` model type to CLIP_benchmark: ``--model`` is anything
:func:`probclip.create_model_from_pretrained` accepts (a checkpoint folder, ``hf-hub:<repo>``;
``--pretrained`` is not used), and the model CLIP_benchmark gets returns the embeddings' means from
``encode_image`` / ``encode_text``, so every CLIP_benchmark task runs unchanged and its numbers compare
with any published open_clip row. The command line registers the type, then hands over to
CLIP_benchmark's own::

    python -m probclip.integrations.clip_benchmark eval --model_type probclip --model DIR \\
        --dataset wds/imagenet1k --dataset_root /data/wds_imagenet1k --output result.json
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ..embedding import ProbEmbedding
from ..models import create_model_from_pretrained
from ..tokenizers import get_tokenizer

__all__ = ["MODEL_TYPE", "MeanEmbeddingModel", "load_probclip", "register", "main"]

MODEL_TYPE = "probclip"


class MeanEmbeddingModel(nn.Module):
    """A probclip model whose encoders return the means ``[B, D]`` of its Gaussian embeddings."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @staticmethod
    def _mean(out) -> torch.Tensor:
        if not isinstance(out, ProbEmbedding):
            raise TypeError(f"a probclip model's encoders return ProbEmbedding; got {type(out).__name__}")
        return out.mean

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, D]`` image means (unit norm)."""
        return self._mean(self.model.encode_image(images))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` token ids -> ``[B, D]`` text means (unit norm)."""
        return self._mean(self.model.encode_text(tokens))


def load_probclip(model_name: str, pretrained: str | None = None, cache_dir: str | None = None,
                  device: str | torch.device = "cpu"):
    """CLIP_benchmark's loader signature: returns ``(model, eval transform, tokenizer)``.

    ``model_name`` is the probclip checkpoint (folder or ``hf-hub:<repo>``); ``pretrained`` is ignored.
    """
    model, transform = create_model_from_pretrained(model_name, cache_dir=cache_dir)
    tokenizer = get_tokenizer(model)
    return MeanEmbeddingModel(model).to(device).eval(), transform, tokenizer


def topk_accuracy_fraction(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """CLIP_benchmark's ``zeroshot_classification.accuracy``, computed the same way (``topk`` of the
    logits, fraction of targets among the first k), returning Python floats through ``.item()``."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum().item()) / len(target) for k in topk]


def _accuracy_needs_fix(accuracy) -> bool:
    """True if CLIP_benchmark's accuracy fails on this numpy: clip-benchmark 1.6.2 converts a shape-[1]
    array with ``float()``, which numpy 2.4 refuses (TypeError)."""
    try:
        accuracy(torch.ones(1, 1), torch.zeros(1, dtype=torch.long), topk=(1,))
    except TypeError:
        return True
    return False


def register() -> None:
    """Add the ``probclip`` model type to CLIP_benchmark's model registry (idempotent).

    Where the installed CLIP_benchmark's top-k accuracy fails on the installed numpy (clip-benchmark
    1.6.2 with numpy >= 2.4), it is replaced by :func:`topk_accuracy_fraction`, the same computation.
    """
    from clip_benchmark import models  # optional dependency: the 'benchmark' extra
    from clip_benchmark.metrics import zeroshot_classification

    models.TYPE2FUNC[MODEL_TYPE] = load_probclip
    if MODEL_TYPE not in models.MODEL_TYPES:
        models.MODEL_TYPES.append(MODEL_TYPE)  # the same list CLIP_benchmark's CLI offers as --model_type choices
    if _accuracy_needs_fix(zeroshot_classification.accuracy):
        zeroshot_classification.accuracy = topk_accuracy_fraction


def main(argv: list[str] | None = None) -> int:
    """Register the ``probclip`` model type, then run CLIP_benchmark's command line with ``argv``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        register()
        from clip_benchmark import cli  # optional dependency: the 'benchmark' extra
    except ImportError as err:
        print(f"probclip.integrations.clip_benchmark: needs the clip-benchmark package "
              f"(pip install 'probclip[benchmark]'): {err}", file=sys.stderr)
        return 1
    saved = sys.argv
    sys.argv = ["clip_benchmark", *argv]
    try:
        return int(cli.main() or 0)
    finally:
        sys.argv = saved


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
