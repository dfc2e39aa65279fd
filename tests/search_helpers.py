"""Shared helpers of the search tests: random Gaussian collections and brute-force references."""

from __future__ import annotations

import numpy as np
import torch

import probclip
from probclip.search.writer import write_collection

MODEL_RECORD = {"name": "random-gaussians", "config_hash": "0" * 16, "fingerprint": "f" * 16, "embed_dim": 16,
                "source": None}


def random_gaussians(n: int, dim: int, seed: int, duplicates: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit means and log-variances ``N(-3, 0.7)`` per dimension (float32 ``[n, D]``); the last ``duplicates`` rows
    repeat the first ones (exact ties)."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((n, dim)).astype(np.float32)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    logvar = (rng.standard_normal((n, dim)) * 0.7 - 3).astype(np.float32)
    if duplicates:
        mean[-duplicates:] = mean[:duplicates]
        logvar[-duplicates:] = logvar[:duplicates]
    return mean, logvar


def make_collection(path, n=600, dim=16, seed=0, dtype="float16", shard_rows=128, duplicates=0, modality="image"):
    """A collection of random Gaussians written with ``write_collection``; returns ``(path, mean, logvar)``."""
    mean, logvar = random_gaussians(n, dim, seed, duplicates)
    record = dict(MODEL_RECORD, embed_dim=dim)
    captions = [f"item {i}" for i in range(n)]
    write_collection(path, {modality: (mean, logvar)}, model=record, dtype=dtype, shard_rows=shard_rows,
                     captions={modality: captions})
    return path, mean, logvar


def stored(mean: np.ndarray, logvar: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the collection stores: means and log-variances rounded to ``dtype`` (as float64), and the float32 ``u``."""
    u = np.exp(logvar.astype(np.float64)).sum(1).astype(np.float32)
    return mean.astype(dtype).astype(np.float64), logvar.astype(dtype).astype(np.float64), u


def brute_topk(scores: np.ndarray, k: int, higher: bool) -> np.ndarray:
    """Row ids of the best ``k`` scores, ties broken by the smaller row id."""
    ids = np.arange(scores.shape[0])
    return np.lexsort((ids, -scores if higher else scores))[:k]


def brute_csd(q_mean, q_logvar, gallery_mean, gallery_u) -> np.ndarray:
    """float64 CSD of one query against every stored row."""
    u_q = np.exp(q_logvar.astype(np.float64)).sum()
    return ((gallery_mean - q_mean.astype(np.float64)) ** 2).sum(1) + u_q + gallery_u


def brute_inclusion(q_mean, q_logvar, gallery_mean, gallery_logvar, direction: str, eps: float = 0.0) -> np.ndarray:
    """The inclusion test of one query against every stored row (float32, as probclip computes it)."""
    q = probclip.ProbEmbedding(torch.tensor(q_mean[None], dtype=torch.float32),
                               torch.tensor(q_logvar[None], dtype=torch.float32))
    g = probclip.ProbEmbedding(torch.tensor(gallery_mean, dtype=torch.float32),
                               torch.tensor(gallery_logvar, dtype=torch.float32))
    if direction == "includes":
        return probclip.inclusion_score(g, q, eps=eps)[:, 0].numpy()
    return probclip.inclusion_score(q, g, eps=eps)[0].numpy()


def brute_directional_inclusion(q_mean, q_logvar, gallery_mean, gallery_logvar, direction: str,
                                eps: float = 0.0) -> np.ndarray:
    """The test in ``direction`` where it beats the reverse test, -inf elsewhere (the directional ranking)."""
    reverse = {"includes": "included", "included": "includes"}[direction]
    asked = brute_inclusion(q_mean, q_logvar, gallery_mean, gallery_logvar, direction, eps).astype(np.float64)
    other = brute_inclusion(q_mean, q_logvar, gallery_mean, gallery_logvar, reverse, eps)
    return np.where(asked > other, asked, -np.inf)
