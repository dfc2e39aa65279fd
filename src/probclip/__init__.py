"""probclip: probabilistic vision-language models (ProLIP, LongProLIP, PCME++).

Public API (the rest lives in submodules: ``probclip.models``, ``probclip.losses``, ``probclip.data``,
``probclip.train``, ``probclip.eval``, ``probclip.synthetic``; see docs/architecture.md):

- ``ProbEmbedding``: a batch of diagonal Gaussians (``mean``, ``logvar``, ``uncertainty``).
- distances: ``csd``, ``inclusion_score``, ``match_probability``, ``wasserstein2``.
- models: ``create_model``, ``create_model_from_pretrained``, ``create_model_and_transforms``, ``list_models``,
  ``ProbCLIP``; tokenizers: ``get_tokenizer``; images: ``image_transform``, ``load_image``.
"""

from .distances import (
    csd,
    csd_paired,
    inclusion_score,
    inclusion_score_paired,
    match_probability,
    wasserstein2,
)
from .embedding import ProbEmbedding
from .models import (
    ProbCLIP,
    ProbCLIPConfig,
    create_model,
    create_model_and_transforms,
    create_model_from_pretrained,
    list_models,
)
from .tokenizers import get_tokenizer
from .transforms import image_transform, load_image

__version__ = "0.1.0"

__all__ = [
    "ProbCLIP",
    "ProbCLIPConfig",
    "ProbEmbedding",
    "create_model",
    "create_model_and_transforms",
    "create_model_from_pretrained",
    "csd",
    "csd_paired",
    "get_tokenizer",
    "image_transform",
    "inclusion_score",
    "inclusion_score_paired",
    "list_models",
    "load_image",
    "match_probability",
    "wasserstein2",
]
