"""The error raised when a loss term is not finite, and the check that raises it."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .distributed import RankContext

__all__ = ["NonFiniteLossError", "raise_if_not_finite"]


class NonFiniteLossError(FloatingPointError):
    """A loss term evaluated to NaN or +-inf.

    Attributes:
        component: name of the first non-finite component (a key of the loss dict, e.g. ``"ppcl"``; ``"loss"``
            only when every component is finite but their sum overflows).
        components: names of every non-finite term.
        values: ``{name: float}`` value of each term on this process (NaN/inf included).
    """

    def __init__(self, components: list[str], values: Mapping[str, float]):
        self.component = components[0]
        self.components = list(components)
        self.values = dict(values)
        shown = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        super().__init__(
            f"non-finite loss term(s) {self.components} (values on this process: {shown}); every term must be "
            f"finite. Check the embeddings (logvar range), logit_scale/logit_bias and the loss weights."
        )


def raise_if_not_finite(terms: Mapping[str, torch.Tensor], context: RankContext) -> None:
    """Raise :class:`NonFiniteLossError` if any 0-dim tensor in ``terms`` is NaN or infinite.

    In a distributed run the verdict is agreed across ranks (one small all-reduce), so that every rank
    raises together and none is left waiting in a collective of the backward pass.
    """
    names = [k for k in terms if k != "loss"] + [k for k in terms if k == "loss"]  # components first
    with torch.no_grad():
        values = torch.stack([terms[k].detach().reshape(()).float() for k in names])
        bad = (~torch.isfinite(values)).float()
        bad = context.all_reduce_max(bad)
    if bool(bad.any()):
        flagged = [k for k, b in zip(names, bad.tolist()) if b]
        raise NonFiniteLossError(flagged, {k: float(v) for k, v in zip(names, values.tolist())})
