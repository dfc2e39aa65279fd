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

from .base import PairLoss
from .baselines import CLIPLoss, SigLIPLoss
from .errors import NonFiniteLossError
from .pcmepp import PCMEppLoss, soft_match_labels
from .prolip import ProLIPLoss, inclusion_loss_terms, vib_terms
from .registry import LOSSES, build_loss, list_losses, register_loss

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
    "list_losses",
    "register_loss",
    "soft_match_labels",
    "vib_terms",
]
