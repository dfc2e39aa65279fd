"""The Milvus backend, on Milvus Lite (a local .db file): the same top-k as the FAISS flat index."""

import shutil

import numpy as np
import pytest
import torch

import probclip
from probclip.errors import UsageError
from probclip.search import SearchIndex, build_index
from search_helpers import make_collection, random_gaussians

pytest.importorskip("pymilvus", reason="the Milvus backend is the optional extra probclip[milvus]")

def test_milvus_lite_returns_the_flat_index_top_k(tmp_path):
    path, _, _ = make_collection(tmp_path / "c", n=700, shard_rows=256, duplicates=20)
    shutil.copytree(path, tmp_path / "m")  # the same collection, to be indexed in Milvus
    build_index(path, kind="flat", progress=False)
    flat = SearchIndex.load(path, "image")
    build_index(tmp_path / "m", backend="milvus", uri=str(tmp_path / "milvus.db"), progress=False)
    milvus = SearchIndex.load(tmp_path / "m", "image")
    assert milvus.kind == "milvus" and milvus.exact
    mean, logvar = random_gaussians(6, 16, seed=9)
    query = probclip.ProbEmbedding.cat([probclip.ProbEmbedding(torch.from_numpy(mean), torch.from_numpy(logvar)),
                                        flat.embedding([2, 5])])
    for kwargs in ({}, {"uncertainty_quantile": 0.4}):
        for a, b in zip(milvus.search(query, k=10, **kwargs), flat.search(query, k=10, **kwargs), strict=True):
            np.testing.assert_array_equal(a.ids, b.ids)
            np.testing.assert_array_equal(a.scores, b.scores)
            assert a.exact and [m["row_id"] for m in a.metadata] == a.ids.tolist()
    for a, b in zip(milvus.search(query, k=5, score="includes", exhaustive=False),
                    flat.search(query, k=5, score="includes", exhaustive=False), strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)  # same candidates: inclusion index + exact CSD top-k
    with pytest.raises(UsageError, match="--backend milvus needs --uri"):
        build_index(path, backend="milvus", progress=False)
