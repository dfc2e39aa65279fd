"""The probabilistic embedding: a batch of diagonal Gaussians N(mean, diag(exp(logvar)))."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["ProbEmbedding"]


@dataclass(eq=False, repr=False, slots=True)
class ProbEmbedding:
    """A batch of diagonal Gaussian embeddings.

    Attributes:
        mean: ``[..., D]`` floating tensor, the Gaussian means (unit L2 norm when produced by a
            probclip model; the class itself does not enforce it).
        logvar: ``[..., D]`` tensor of the same shape, dtype and device: log sigma^2 per dimension.

    The scalar ``uncertainty`` is the trace of the covariance, ``sum_d exp(logvar_d)``, shape ``[...]``.
    Indexing and slicing act on the leading (batch) dimensions and return a ``ProbEmbedding``.
    It is a dataclass so that ``torch.nn.parallel.DistributedDataParallel`` finds its tensors in a
    model's outputs.
    """

    mean: torch.Tensor
    logvar: torch.Tensor

    def __post_init__(self):
        mean, logvar = self.mean, self.logvar
        if not isinstance(mean, torch.Tensor) or not isinstance(logvar, torch.Tensor):
            raise TypeError(
                f"ProbEmbedding expects two torch.Tensor (mean, logvar); got "
                f"{type(mean).__name__} and {type(logvar).__name__}"
            )
        if mean.dim() < 1:
            raise ValueError("ProbEmbedding.mean must have shape [..., D] with at least 1 dimension; got a scalar")
        if mean.shape != logvar.shape:
            raise ValueError(
                f"ProbEmbedding.mean and .logvar must have the same shape [..., D]; got mean "
                f"{tuple(mean.shape)} and logvar {tuple(logvar.shape)}"
            )
        if not mean.is_floating_point() or not logvar.is_floating_point():
            raise TypeError(
                f"ProbEmbedding expects floating-point tensors; got mean {mean.dtype} and logvar {logvar.dtype}"
            )
        if mean.dtype != logvar.dtype:
            raise TypeError(
                f"ProbEmbedding.mean and .logvar must share a dtype; got {mean.dtype} and {logvar.dtype}"
            )
        if mean.device != logvar.device:
            raise ValueError(
                f"ProbEmbedding.mean and .logvar must be on one device; got {mean.device} and {logvar.device}"
            )

    # ----------------------------------------------------------------- derived quantities
    @property
    def variance(self) -> torch.Tensor:
        """``[..., D]`` per-dimension variance sigma^2 = exp(logvar)."""
        return self.logvar.exp()

    @property
    def uncertainty(self) -> torch.Tensor:
        """``[...]`` scalar uncertainty: the trace of the covariance, sum_d exp(logvar_d)."""
        return self.logvar.exp().sum(-1)

    @property
    def shape(self) -> torch.Size:
        """Shape of ``mean`` (``[..., D]``)."""
        return self.mean.shape

    @property
    def dim(self) -> int:
        """The embedding size D."""
        return self.mean.shape[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.mean.dtype

    @property
    def device(self) -> torch.device:
        return self.mean.device

    # ----------------------------------------------------------------- container behaviour
    def __len__(self) -> int:
        if self.mean.dim() < 2:
            raise TypeError("len() of a single (unbatched) ProbEmbedding of shape [D] is undefined")
        return self.mean.shape[0]

    def __getitem__(self, index) -> ProbEmbedding:
        if isinstance(index, tuple) and len(index) >= self.mean.dim():
            raise IndexError(
                f"ProbEmbedding indexing acts on the {self.mean.dim() - 1} leading dimension(s), not on D; "
                f"got an index with {len(index)} entries"
            )
        if self.mean.dim() < 2:
            raise IndexError("cannot index a single (unbatched) ProbEmbedding of shape [D]")
        return ProbEmbedding(self.mean[index], self.logvar[index])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"ProbEmbedding(shape={tuple(self.mean.shape)}, dtype={self.mean.dtype}, device={self.mean.device})"

    def to(self, *args, **kwargs) -> ProbEmbedding:
        """Move or cast both tensors, with the arguments of ``torch.Tensor.to``."""
        return ProbEmbedding(self.mean.to(*args, **kwargs), self.logvar.to(*args, **kwargs))

    def detach(self) -> ProbEmbedding:
        return ProbEmbedding(self.mean.detach(), self.logvar.detach())

    def cpu(self) -> ProbEmbedding:
        return ProbEmbedding(self.mean.cpu(), self.logvar.cpu())

    def float(self) -> ProbEmbedding:
        return ProbEmbedding(self.mean.float(), self.logvar.float())

    @staticmethod
    def cat(embeddings: Sequence[ProbEmbedding] | Iterable[ProbEmbedding], dim: int = 0) -> ProbEmbedding:
        """Concatenate embeddings along a batch dimension (``dim`` must not be the last one)."""
        embeddings = list(embeddings)
        if not embeddings:
            raise ValueError("ProbEmbedding.cat needs at least one ProbEmbedding; got an empty sequence")
        for i, e in enumerate(embeddings):
            if not isinstance(e, ProbEmbedding):
                raise TypeError(f"ProbEmbedding.cat: item {i} is a {type(e).__name__}, expected ProbEmbedding")
        ndim = embeddings[0].mean.dim()
        if dim in (-1, ndim - 1):
            raise ValueError("ProbEmbedding.cat concatenates batch dimensions; dim must not be the embedding dim D")
        dims = {e.dim for e in embeddings}
        if len(dims) != 1:
            raise ValueError(f"ProbEmbedding.cat: embeddings have different sizes D {sorted(dims)}")
        return ProbEmbedding(
            torch.cat([e.mean for e in embeddings], dim=dim), torch.cat([e.logvar for e in embeddings], dim=dim)
        )

    def check_finite(self, name: str = "embedding") -> ProbEmbedding:
        """Raise ``ValueError`` naming ``name`` if ``mean`` or ``logvar`` holds NaN or infinite values."""
        for field in ("mean", "logvar"):
            t = getattr(self, field)
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                n_nan = int(torch.isnan(t).sum())
                n_inf = int(bad.sum()) - n_nan
                raise ValueError(
                    f"{name}.{field} holds non-finite values ({n_nan} NaN, {n_inf} infinite of {t.numel()}); "
                    f"finite values are required"
                )
        return self
