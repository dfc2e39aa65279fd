"""The registry of training objectives: ``loss.name`` in a training config is one of its names."""

from __future__ import annotations

import inspect

from ..errors import UsageError
from .base import PairLoss
from .baselines import CLIPLoss, SigLIPLoss
from .pcmepp import PCMEppLoss
from .prolip import ProLIPLoss

__all__ = ["LOSSES", "build_loss", "list_losses", "register_loss"]

#: Loss classes by name (lower case).
LOSSES: dict[str, type[PairLoss]] = {
    "prolip": ProLIPLoss,
    "pcmepp": PCMEppLoss,
    "siglip": SigLIPLoss,
    "clip": CLIPLoss,
}


def register_loss(name: str, loss_class: type[PairLoss], overwrite: bool = False) -> None:
    """Make ``loss.name: name`` build ``loss_class(**loss.kwargs)`` (a ``PairLoss`` subclass)."""
    if not isinstance(name, str) or not name or name != name.lower():
        raise UsageError(f"a loss name must be a non-empty lower-case string; got {name!r}")
    if not (isinstance(loss_class, type) and issubclass(loss_class, PairLoss)):
        raise UsageError(f"loss {name!r} must be a PairLoss subclass; got {loss_class!r}")
    if name in LOSSES and not overwrite and LOSSES[name] is not loss_class:
        raise UsageError(f"loss name {name!r} is already registered; pass overwrite=True to replace it")
    LOSSES[name] = loss_class


def list_losses() -> list[str]:
    """Names accepted by ``loss.name``, sorted."""
    return sorted(LOSSES)


def build_loss(name: str, **kwargs) -> PairLoss:
    """The loss registered as ``name`` (see ``list_losses()``), built with ``kwargs``."""
    key = str(name).lower()
    if key not in LOSSES:
        raise UsageError(f"unknown loss {name!r}; accepted names: {', '.join(list_losses())}")
    accepted = [p for p in inspect.signature(LOSSES[key]).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UsageError(f"loss {key!r} has no argument(s) {unknown}; accepted: {accepted}")
    try:
        return LOSSES[key](**kwargs)
    except (TypeError, ValueError) as err:
        raise UsageError(f"loss {key!r} with arguments {kwargs}: {err}") from err
