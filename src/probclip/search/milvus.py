"""The Milvus backend: the augmented CSD vectors in a Milvus collection, where exact CSD search is Milvus's own
L2 search (a ``FLAT`` index), filtered on ``u`` by Milvus; every re-rank runs in probclip.

``uri`` is a Milvus Lite file (``./collection.db``: the embedded engine installed with ``pip install
probclip[milvus]``) or a server / cluster address (``http://host:19530``; a token through ``MILVUS_TOKEN``).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from ..errors import InputError, UsageError
from .layout import StoredRows
from .vectors import augment_gallery

__all__ = ["MilvusSearcher", "build_milvus", "collection_name", "connect"]

INSERT_ROWS = 5000


def connect(uri: str):
    """A ``pymilvus.MilvusClient`` for ``uri``; ``UsageError`` when pymilvus is missing or the URI is unreachable."""
    try:
        from pymilvus import MilvusClient  # optional dependency: pip install probclip[milvus]
    except ImportError as err:
        raise UsageError("the Milvus backend needs pymilvus (and milvus-lite for a local .db file): "
                         "pip install 'probclip[milvus]'") from err
    kwargs = {"token": os.environ["MILVUS_TOKEN"]} if os.environ.get("MILVUS_TOKEN") else {}
    try:
        return MilvusClient(uri=uri, **kwargs)
    except Exception as err:  # pymilvus raises many types (MilvusException, RuntimeError, OSError) for a bad URI
        raise UsageError(f"cannot connect to Milvus at --uri {uri!r}: {str(err).splitlines()[0][:200]}") from err


def collection_name(root: str | Path, modality: str) -> str:
    """A valid Milvus collection name (letters, digits, underscores) for a collection folder and modality, unique
    per folder: ``probclip_<folder name>_<modality>_<first 12 hex digits of the SHA-256 of its absolute path>``, so
    that two collections with the same folder name never share a Milvus collection."""
    root = Path(root).resolve()
    tag = hashlib.sha256(str(root).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    base = re.sub(r"[^0-9A-Za-z_]", "_", f"probclip_{root.name}"[:200])
    return f"{base}_{modality}_{tag}"


def build_milvus(stored: StoredRows, uri: str, root: str | Path, modality: str) -> dict:
    """(Re)create the Milvus collection of one modality of the collection at ``root`` and insert ``[mu, sqrt(u)]``;
    returns the manifest entry."""
    from pymilvus import DataType  # optional dependency (checked by connect)


    client = connect(uri)
    name = collection_name(root, modality)
    if client.has_collection(name):
        client.drop_collection(name)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=stored.dim + 1)
    schema.add_field("u", DataType.FLOAT)
    index_params = client.prepare_index_params()
    index_params.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
    client.create_collection(name, schema=schema, index_params=index_params)
    for first, mean, _, u in stored.chunks():
        vectors = augment_gallery(mean, u)
        for start in range(0, vectors.shape[0], INSERT_ROWS):
            block = vectors[start: start + INSERT_ROWS]
            client.insert(name, [{"id": first + start + i, "vector": v.tolist(), "u": float(w)}
                                 for i, (v, w) in enumerate(zip(block, u[start: start + INSERT_ROWS], strict=True))])
    client.flush(name)
    client.load_collection(name)
    return {"uri": uri, "collection": name}


class MilvusSearcher:
    """L2 search of augmented queries in one Milvus collection."""

    def __init__(self, uri: str, name: str, max_candidates: int = 16384):
        self.client, self.name, self.max_candidates = connect(uri), name, int(min(max_candidates, 16384))
        if not self.client.has_collection(name):
            raise InputError(f"Milvus at {uri!r} has no collection {name!r}; rebuild it with "
                             "`probclip index DIR --backend milvus --uri URI`")
        self.client.load_collection(name)

    def search(self, queries: np.ndarray, n: int, min_u: float | None = None,
               max_u: float | None = None) -> list[np.ndarray]:
        """Row ids of the ``n`` nearest rows per query (``[Q, D + 1]``, at most ``max_candidates``: Milvus answers
        at most 16,384), optionally only rows with ``u`` in ``[min_u, max_u]``."""
        bounds = [f"u >= {float(min_u)!r}"] if min_u is not None else []
        bounds += [f"u <= {float(max_u)!r}"] if max_u is not None else []
        hits = self.client.search(self.name, data=[q.tolist() for q in queries], limit=int(min(n, self.max_candidates)),
                                  filter=" and ".join(bounds),
                                  search_params={"metric_type": "L2"}, anns_field="vector")
        return [np.array([h["id"] for h in row], dtype=np.int64) for row in hits]
