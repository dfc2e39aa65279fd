"""Index backends: a backend registered from outside the package is built, recorded, opened and searched like the
built-in ones; the knobs reach the manifest; build-time tuning records the recall it reached; an older manifest
is upgraded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import probclip
from probclip.cli import main as cli_main
from probclip.errors import InputError, UsageError
from probclip.search import SearchIndex, build_index
from probclip.search.backends import (
    BuildContext,
    IndexBackend,
    IndexOptions,
    OpenContext,
    backend_names,
    register_backend,
    unregister_backend,
)
from probclip.search.vectors import augment_gallery, augment_query
from search_helpers import brute_csd, brute_topk, make_collection, random_gaussians, stored


class ToyProjectionBackend:
    """A toy approximate backend: the augmented rows projected on 8 random directions, ranked by L2 in that space
    (so its candidates are not the exact top-n: the searcher's exact re-rank and the oversample must fix that)."""

    name, exact, default_oversample = "toy-projection", False, 20

    def __init__(self):
        self.opened = 0

    def estimate_bytes(self, rows: int, dim: int, options: IndexOptions) -> int:
        return rows * 8 * 4

    def build(self, context: BuildContext) -> dict:
        stored_rows = context.stored
        projection = np.random.default_rng(0).standard_normal((stored_rows.dim + 1, 8)).astype(np.float32)
        parts = []
        for _, mean, _, u in stored_rows.chunks():
            parts.append(augment_gallery(mean, u) @ projection)
            context.progress(mean.shape[0])
        path = context.path("toy.npz")
        np.savez(path, rows=np.concatenate(parts), projection=projection)
        return {"file": str(path.relative_to(context.root)), "factory": "Toy8", "search_params": {"width": 8}}

    def open(self, context: OpenContext, entry: dict):
        self.opened += 1
        data = np.load(context.file("file"))
        return _ToyIndex(data["rows"], data["projection"])


class _ToyIndex:
    def __init__(self, rows, projection):
        self.rows, self.projection = rows, projection
        self.search_params = {}

    def candidates(self, mean, n, allowed):
        q = augment_query(mean) @ self.projection
        out = []
        for row in q:
            dist = ((self.rows - row) ** 2).sum(1)
            if allowed is not None:
                dist = np.where(allowed, dist, np.inf)
            order = np.argsort(dist, kind="stable")[:n]
            out.append(order[np.isfinite(dist[order])].astype(np.int64))
        return out


@pytest.fixture
def toy():
    backend = register_backend(ToyProjectionBackend())
    yield backend
    unregister_backend(backend.name)


def test_a_backend_registered_from_outside_is_built_and_searched(tmp_path, toy):
    assert isinstance(toy, IndexBackend) and "toy-projection" in backend_names()
    path, mean, logvar = make_collection(tmp_path / "c", n=400)
    build_index(path, kind="toy-projection", progress=False, options=IndexOptions(recall_target=0.9))
    entry = json.loads((path / "manifest.json").read_text())["indexes"]["image"]
    assert entry["kind"] == "toy-projection" and entry["factory"] == "Toy8" and entry["file"].endswith("toy.npz")
    assert entry["tuning"]["recall_at_10"] >= 0.9 and entry["search"]["oversample"] >= 20
    index = SearchIndex.load(path, "image")
    assert index.kind == "toy-projection" and not index.exact and index.recall_at_10 >= 0.9
    g_mean, _, g_u = stored(mean, logvar, "float16")
    qm, ql = random_gaussians(4, 16, 7)
    results = index.search(probclip.ProbEmbedding(torch.from_numpy(qm), torch.from_numpy(ql)), k=5)
    assert toy.opened == 2  # once to tune at build time, once for the search
    hits = sum(len(np.intersect1d(r.ids, brute_topk(brute_csd(qm[i], ql[i], g_mean, g_u), 5, higher=False)))
               for i, r in enumerate(results))
    assert hits >= 0.9 * 20 and all(not r.exact for r in results)
    # the CLI accepts the registered kind as well
    assert cli_main(["index", str(path), "--kind", "toy-projection", "--no-progress", "--no-inclusion"]) == 0


def test_unregistered_kind_in_a_manifest_is_refused(tmp_path, toy):
    path, _, _ = make_collection(tmp_path / "c", n=200)
    build_index(path, kind="toy-projection", progress=False, inclusion=False)
    unregister_backend("toy-projection")
    with pytest.raises(InputError, match="indexes.image.kind is 'toy-projection'"):
        SearchIndex.load(path, "image")


def test_knobs_reach_the_manifest_and_tuning_reaches_the_target(tmp_path):
    path, _, _ = make_collection(tmp_path / "c", n=1200)
    options = IndexOptions(hnsw_m=8, ef_construction=16, ef_search=1, oversample=1, recall_target=0.95,
                           exhaustive_elements=5, deepen_factor=2, deepen_limit=8)
    build_index(path, kind="hnsw", progress=False, options=options, inclusion=False)
    entry = json.loads((path / "manifest.json").read_text())["indexes"]["image"]
    assert entry["factory"] == "HNSW8"
    assert entry["search"]["exhaustive_elements"] == 5 and entry["search"]["deepen_factor"] == 2
    # efSearch 1 and oversample 1 miss items: tuning raised them until the target was reached
    assert entry["tuning"]["recall_at_10"] >= 0.95 and entry["tuning"]["queries"] >= 100
    assert entry["search_params"]["efSearch"] > 1 or entry["search"]["oversample"] > 1
    index = SearchIndex.load(path, "image")
    assert index.knobs["exhaustive_elements"] == 5 and index.recall_at_10 == entry["tuning"]["recall_at_10"]
    untuned = tmp_path / "u"
    make_collection(untuned, n=1200)
    build_index(untuned, kind="hnsw", progress=False, inclusion=False,
                options=IndexOptions(hnsw_m=8, ef_search=1, oversample=1, recall_target=0))
    assert "tuning" not in json.loads((untuned / "manifest.json").read_text())["indexes"]["image"]
    with pytest.raises(UsageError, match="hnsw_m must be an integer >= 1; got 0"):
        build_index(path, kind="hnsw", progress=False, options=IndexOptions(hnsw_m=0))
    with pytest.raises(UsageError, match=r"recall_target must be a number in \[0, 1\]; got 2"):
        build_index(path, kind="hnsw", progress=False, options=IndexOptions(recall_target=2))


def test_index_cli_knobs(tmp_path, capsys):
    path, _, _ = make_collection(tmp_path / "c", n=600)
    assert cli_main(["index", str(path), "--kind", "ivfpq", "--nlist", "8", "--nprobe", "2", "--oversample", "3",
                     "--milvus-max-candidates", "100", "--no-progress", "--no-inclusion"]) == 0
    assert "recall@10" in capsys.readouterr().out
    entry = json.loads((path / "manifest.json").read_text())["indexes"]["image"]
    assert entry["factory"].startswith("IVF8,PQ") and entry["search"]["max_candidates"] == 100
    assert entry["search_params"]["nprobe"] >= 2 and entry["tuning"]["recall_at_10"] >= 0.95


def test_a_format_1_manifest_is_upgraded_and_asks_for_a_new_index(tmp_path):
    path, _, _ = make_collection(tmp_path / "c", n=200)
    build_index(path, kind="flat", progress=False)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 1
    manifest["indexes"]["image"]["file"] = "index/image.flat.faiss"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"no image index \(its index was built by an older probclip, manifest "
                                         r"format 1\); run `probclip index"):
        SearchIndex.load(path, "image")
    build_index(path, kind="flat", progress=False)
    upgraded = json.loads((path / "manifest.json").read_text())
    assert upgraded["format_version"] == 2 and "upgraded_from" not in upgraded
    assert SearchIndex.load(path, "image").search(SearchIndex.load(path, "image").embedding([3]), k=1)[0].ids[0] == 3
