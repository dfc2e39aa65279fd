"""Training objectives for probabilistic (and baseline deterministic) image-text models.

Every loss is called as ``loss_fn(image, text, logit_scale, logit_bias, masked_image=None,
masked_text=None, ...)`` with :class:`~probclip.ProbEmbedding` inputs (``logit_scale`` is the log of the
scale, as stored in checkpoints) and returns ``{"loss": total, <component>: ...}`` where the components
sum to the total. All are exact under torch.distributed (see :mod:`probclip.losses.distributed`) and raise
:class:`NonFiniteLossError` when a term is NaN or infinite.

- :class:`ProLIPLoss` (``"prolip"``): PPCL + inclusion + VIB.
- :class:`PCMEppLoss` (``"pcmepp"``): CSD match BCE + pseudo-positives + VIB, soft labels for mixed samples.
- :class:`SigLIPLoss` (``"siglip"``), :class:`CLIPLoss` (``"clip"``): baselines on the means.
"""

from __future__ import annotations

import inspect

from ..errors import UsageError
from .base import PairLoss
from .baselines import CLIPLoss, SigLIPLoss
from .errors import NonFiniteLossError
from .pcmepp import PCMEppLoss, soft_match_labels
from .prolip import ProLIPLoss, inclusion_loss_terms, vib_terms

__all__ = [
    "CLIPLoss",
    "LOSSES",
    "NonFiniteLossError",
    "PCMEppLoss",
    "PairLoss",
    "ProLIPLoss",
    "SigLIPLoss",
    "build_loss",
    "inclusion_loss_terms",
    "soft_match_labels",
    "vib_terms",
]

LOSSES: dict[str, type[PairLoss]] = {
    "prolip": ProLIPLoss,
    "pcmepp": PCMEppLoss,
    "siglip": SigLIPLoss,
    "clip": CLIPLoss,
}


def build_loss(name: str, **kwargs) -> PairLoss:
    """The loss registered as ``name`` (one of ``LOSSES``: prolip, pcmepp, siglip, clip), built with ``kwargs``."""
    key = str(name).lower()
    if key not in LOSSES:
        raise UsageError(f"unknown loss {name!r}; accepted names: {', '.join(sorted(LOSSES))}")
    accepted = [p for p in inspect.signature(LOSSES[key]).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UsageError(f"loss {key!r} has no argument(s) {unknown}; accepted: {accepted}")
    try:
        return LOSSES[key](**kwargs)
    except (TypeError, ValueError) as err:
        raise UsageError(f"loss {key!r} with arguments {kwargs}: {err}") from err
