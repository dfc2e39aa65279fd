"""Search indexes: exact CSD / cosine top-k against brute force (float16 and float32 storage, ties by row id),
approximate kinds re-ranked exactly, the inclusion test, the uncertainty filter, and bad inputs."""

import json

import numpy as np
import pytest
import torch

import probclip
from probclip.errors import InputError, UsageError
from probclip.search import SearchIndex, build_index
from probclip.search.index import choose_kind, parse_memory
from search_helpers import (
    brute_csd,
    brute_directional_inclusion,
    brute_inclusion,
    brute_topk,
    make_collection,
    random_gaussians,
    stored,
)


def _query(seed: int, dim: int = 16, count: int = 5) -> probclip.ProbEmbedding:
    mean, logvar = random_gaussians(count, dim, seed)
    return probclip.ProbEmbedding(torch.from_numpy(mean), torch.from_numpy(logvar))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_flat_csd_topk_equals_brute_force_with_ties(tmp_path, dtype):
    path, mean, logvar = make_collection(tmp_path / "c", n=600, dtype=dtype, duplicates=40)
    build_index(path, kind="flat", progress=False)
    index = SearchIndex.load(path, "image")
    assert (index.kind, index.exact, index.rows, index.dim) == ("flat", True, 600, 16)
    g_mean, _, g_u = stored(mean, logvar, dtype)
    # queries equal to duplicated rows: two items at exactly the same CSD
    queries = probclip.ProbEmbedding.cat([_query(1), index.embedding([0, 3, 7])])
    results = index.search(queries, k=12)
    assert len(results) == len(queries)
    for q, res in enumerate(results):
        ref = brute_csd(queries.mean[q].numpy(), queries.logvar[q].numpy(), g_mean, g_u)
        expected = brute_topk(ref, 12, higher=False)
        np.testing.assert_array_equal(res.ids, expected)
        np.testing.assert_allclose(res.scores, ref[expected], rtol=1e-6)
        np.testing.assert_array_equal(res.uncertainty, g_u[expected])
        assert not res.higher_is_better and res.exact and res.score == "csd"
        assert [m["row_id"] for m in res.metadata] == expected.tolist()
        assert [m["caption"] for m in res.metadata] == [f"item {i}" for i in expected]
    # the duplicated rows 0 and 560 tie: the smaller id comes first
    assert results[5].ids[:2].tolist() == [0, 560]


def test_flat_mean_score_equals_brute_force_cosine(tmp_path):
    path, mean, logvar = make_collection(tmp_path / "c", n=300)
    build_index(path, kind="flat", progress=False)
    index = SearchIndex.load(path, "image")
    query = _query(2)
    g_mean, _, _ = stored(mean, logvar, "float16")
    for q, res in enumerate(index.search(query, k=7, score="mean")):
        qm = query.mean[q].double().numpy()
        cos = g_mean @ qm / (np.linalg.norm(g_mean, axis=1) * np.linalg.norm(qm))
        np.testing.assert_array_equal(res.ids, brute_topk(cos, 7, higher=True))
        assert res.higher_is_better and res.exact


@pytest.mark.parametrize("kind, min_recall", [("hnsw", 0.9), ("ivfpq", 0.6)])
def test_approximate_kinds_rerank_exactly(tmp_path, kind, min_recall):
    path, mean, logvar = make_collection(tmp_path / "c", n=3000, shard_rows=1000)
    build_index(path, kind=kind, progress=False)
    index = SearchIndex.load(path, "image")
    assert index.kind == kind and not index.exact
    g_mean, _, g_u = stored(mean, logvar, "float16")
    query = _query(3, count=10)
    hits = 0
    for q, res in enumerate(index.search(query, k=10)):
        ref = brute_csd(query.mean[q].numpy(), query.logvar[q].numpy(), g_mean, g_u)
        np.testing.assert_allclose(res.scores, ref[res.ids], rtol=1e-6)  # scores are exact
        assert np.all(np.diff(res.scores) >= 0)
        hits += len(set(res.ids.tolist()) & set(brute_topk(ref, 10, higher=False).tolist()))
    assert hits / 100 >= min_recall


@pytest.mark.parametrize("direction", ["includes", "included"])
def test_raw_inclusion_search_exhaustive_is_exact_and_candidates_recall(tmp_path, direction):
    path, mean, logvar = make_collection(tmp_path / "c", n=2000, shard_rows=500)
    build_index(path, kind="flat", progress=False)
    index = SearchIndex.load(path, "image")
    g_mean, g_logvar, _ = stored(mean, logvar, "float16")
    query = _query(4, count=10)
    exhaustive = index.search(query, k=10, score=direction, exhaustive=True, directional=False)
    candidates = index.search(query, k=10, score=direction, exhaustive=False, directional=False)
    hits = 0
    for q in range(10):
        ref = brute_inclusion(query.mean[q].numpy(), query.logvar[q].numpy(), g_mean, g_logvar, direction)
        expected = brute_topk(ref, 10, higher=True)
        np.testing.assert_array_equal(exhaustive[q].ids, expected)
        assert exhaustive[q].exact and not candidates[q].exact
        np.testing.assert_allclose(candidates[q].scores, ref[candidates[q].ids], rtol=1e-5, atol=1e-4)
        hits += len(set(candidates[q].ids.tolist()) & set(expected.tolist()))
    assert hits / 100 >= 0.9


@pytest.mark.parametrize("direction", ["includes", "included"])
def test_directional_inclusion_search_keeps_only_items_passing_the_check(tmp_path, direction):
    path, mean, logvar = make_collection(tmp_path / "c", n=8000, shard_rows=2000)
    build_index(path, kind="flat", progress=False)
    index = SearchIndex.load(path, "image")
    g_mean, g_logvar, _ = stored(mean, logvar, "float16")
    query = _query(4, count=10)
    exhaustive = index.search(query, k=10, score=direction, exhaustive=True)
    candidates = index.search(query, k=10, score=direction, exhaustive=False)
    raw = index.search(query, k=10, score=direction, exhaustive=True, directional=False)
    hits = total = differs = 0
    for q in range(10):
        ref = brute_directional_inclusion(query.mean[q].numpy(), query.logvar[q].numpy(), g_mean, g_logvar,
                                          direction)
        expected = brute_topk(ref, 10, higher=True)
        expected = expected[np.isfinite(ref[expected])]  # fewer than k items may pass the check
        np.testing.assert_array_equal(exhaustive[q].ids, expected)
        assert exhaustive[q].exact
        if candidates[q].exact:  # the candidate search deepened into a scan of every row
            np.testing.assert_array_equal(candidates[q].ids, expected)
        assert np.isfinite(ref[candidates[q].ids]).all()  # nothing failing the check is returned
        np.testing.assert_allclose(candidates[q].scores, ref[candidates[q].ids], rtol=1e-5, atol=1e-4)
        hits += len(set(candidates[q].ids.tolist()) & set(expected.tolist()))
        total += len(expected)
        differs += not np.array_equal(raw[q].ids, exhaustive[q].ids)
    # independent per-dimension variances make this gallery hard for the candidate path (0.89 measured for
    # "included"; the benchmark's galleries reach 0.985-1.0)
    assert total >= 50 and hits / total >= 0.85
    if direction == "included":  # the raw test prefers specific items: the check changes this direction's ranking
        assert differs >= 5


def test_uncertainty_filter_keeps_only_low_u_items(tmp_path):
    path, mean, logvar = make_collection(tmp_path / "c", n=500)
    build_index(path, kind="flat", progress=False)
    index = SearchIndex.load(path, "image")
    g_mean, _, g_u = stored(mean, logvar, "float16")
    bound = np.quantile(g_u, 0.3)
    query = _query(5, count=2)
    for q, res in enumerate(index.search(query, k=8, uncertainty_quantile=0.3)):
        assert np.all(res.uncertainty <= bound)
        ref = brute_csd(query.mean[q].numpy(), query.logvar[q].numpy(), g_mean, g_u)
        ref[g_u > np.float32(bound)] = np.inf
        np.testing.assert_array_equal(res.ids, brute_topk(ref, 8, higher=False))
    res = index.search(query[0], k=5, max_uncertainty=float(np.sort(g_u)[2]))[0]
    assert len(res) == 3 and set(res.ids.tolist()) == set(np.argsort(g_u)[:3].tolist())


def test_bad_queries_and_options_are_user_errors(tmp_path):
    path, _, _ = make_collection(tmp_path / "c", n=100)
    build_index(path, kind="flat", progress=False)
    index = SearchIndex.load(path, "image")
    with pytest.raises(UsageError, match="query dimension 8 differs from the index's 16"):
        index.search(_query(0, dim=8), k=3)
    with pytest.raises(UsageError, match="score must be one of"):
        index.search(_query(0), score="cosine")
    with pytest.raises(UsageError, match="k must be a positive integer"):
        index.search(_query(0), k=0)
    with pytest.raises(UsageError, match="names no loadable model"):
        index.search("a red square")
    with pytest.raises(UsageError, match="uncertainty_quantile"):
        index.search(_query(0), uncertainty_quantile=1.5)
    with pytest.raises(InputError, match="no text rows"):
        SearchIndex.load(path, "text")


def test_missing_truncated_newer_and_unindexed_collections(tmp_path):
    path, _, _ = make_collection(tmp_path / "c", n=300, shard_rows=100)
    with pytest.raises(InputError, match="no image index; run `probclip index"):
        SearchIndex.load(path, "image")
    build_index(path, kind="flat", progress=False)
    shard = path / "img_emb" / "img_emb_1.npy"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(InputError, match="img_emb_1.npy is truncated or corrupt"):
        SearchIndex.load(path, "image").embedding([150])
    shard.unlink()
    with pytest.raises(InputError, match="img_emb_1.npy is missing"):
        build_index(path, kind="flat", progress=False)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="format version 99, newer than this probclip reads"):
        SearchIndex.load(path, "image")
    with pytest.raises(InputError, match="does not exist"):
        SearchIndex.load(tmp_path / "nowhere", "image")


def test_flat_index_is_a_npy_of_augmented_rows_and_kind_choice(tmp_path):
    """The flat index is the rows ``[mu, sqrt(u)]`` as a float32 .npy (no hand-written FAISS file) that FAISS's
    brute-force search agrees with exactly, and the inclusion features are a .npy of 6D + 1 columns."""
    import faiss

    path, mean, logvar = make_collection(tmp_path / "c", n=300, dtype="float32")
    build_index(path, kind="flat", progress=False)
    data = np.load(path / "index" / "image.flat.npy")
    g_mean, _, g_u = stored(mean, logvar, "float32")
    np.testing.assert_array_equal(data[:, :-1], g_mean)
    np.testing.assert_allclose(data[:, -1], np.sqrt(g_u), rtol=1e-6)
    assert np.load(path / "index" / "image.inclusion.npy", mmap_mode="r").shape == (300, 6 * 16 + 1)
    ref = faiss.IndexFlatL2(17)
    ref.add(data)
    q = np.zeros((3, 17), np.float32)
    q[:, :-1] = g_mean[:3]
    index = SearchIndex.load(path, "image")
    found = index.candidate_index.candidates(g_mean[:3], 12, None)
    np.testing.assert_array_equal(np.stack(found), ref.search(q, 12)[1])
    assert choose_kind(50_000, 768, parse_memory("8GB"))[0] == "flat"
    assert choose_kind(1_000_000, 768, parse_memory("8GB"))[0] == "hnsw"
    assert choose_kind(1_000_000, 768, parse_memory("1GB")) == ("ivfpq", 64)
    with pytest.raises(UsageError, match="memory-budget"):
        parse_memory("lots")


def test_directional_inclusion_finds_the_general_and_the_specific_of_a_hierarchy(tmp_path):
    """Nested Gaussians around one concept (general ⊃ middle ⊃ specific) among unrelated items: from the middle
    one, ``included`` (more general) puts the general item first and never lists the specific one, ``includes``
    (more specific) the reverse, while the raw test puts the specific item first in both directions."""
    from probclip.search.writer import write_collection

    rng = np.random.default_rng(3)
    dim = 16
    concept = rng.standard_normal(dim)
    concept /= np.linalg.norm(concept)
    others = rng.standard_normal((20, dim))
    others /= np.linalg.norm(others, axis=1, keepdims=True)
    mean = np.vstack([others[:10], np.tile(concept, (3, 1)), others[10:]]).astype(np.float32)
    logvar = np.full((23, dim), -4.0, np.float32)
    logvar[10:13] = [[-1.0], [-3.0], [-5.0]]  # rows 10, 11, 12: general, middle, specific
    names = [f"other {i}" for i in range(10)] + ["general", "middle", "specific"]
    names += [f"other {i}" for i in range(10, 20)]
    record = {"name": "hierarchy", "config_hash": "0" * 16, "fingerprint": "f" * 16, "embed_dim": dim,
              "source": None}
    write_collection(tmp_path / "c", {"text": (mean, logvar)}, model=record, dtype="float32", shard_rows=64,
                     captions={"text": names})
    build_index(tmp_path / "c", kind="flat", progress=False)
    index = SearchIndex.load(tmp_path / "c", "text")
    query = index.embedding([11])
    for exhaustive in (True, False):  # 23 rows: the candidate path deepens to a scan
        general = index.search(query, k=5, score="included", exhaustive=exhaustive)[0]
        specific = index.search(query, k=5, score="includes", exhaustive=exhaustive)[0]
        general, specific = [m["caption"] for m in general.metadata], [m["caption"] for m in specific.metadata]
        assert general[0] == "general" and "specific" not in general and "middle" not in general
        assert specific[0] == "specific" and "general" not in specific and "middle" not in specific
    for score in ("included", "includes"):
        raw = index.search(query, k=3, score=score, exhaustive=True, directional=False)[0]
        assert raw.metadata[0]["caption"] == "specific"


def test_directional_candidates_search_deeper_past_the_query_s_duplicates(tmp_path):
    """150 exact copies of the query (which fail the direction check against it) crowd out the first candidates;
    the search deepens (20 -> 80 -> 320 per source) until it reaches the items that qualify."""
    from probclip.search.writer import write_collection

    mean, logvar = random_gaussians(10000, 16, seed=5)
    mean[:150], logvar[:150] = mean[0], logvar[0]  # rows 0-149: one item, 150 times
    logvar[150:] += 1.0  # everything else more uncertain: candidates for "included"
    record = {"name": "duplicates", "config_hash": "0" * 16, "fingerprint": "f" * 16, "embed_dim": 16,
              "source": None}
    write_collection(tmp_path / "c", {"image": (mean, logvar)}, model=record, dtype="float32", shard_rows=5000)
    build_index(tmp_path / "c", kind="flat", progress=False)
    index = SearchIndex.load(tmp_path / "c", "image")
    query = index.embedding([0])
    truth = index.search(query, k=10, score="included", exhaustive=True)[0]
    found = index.search(query, k=10, score="included", exhaustive=False, oversample=2)[0]
    assert len(truth) == 10 and truth.ids.min() >= 150
    assert not found.exact
    np.testing.assert_array_equal(found.ids, truth.ids)


def test_rebuilding_an_index_removes_the_files_it_replaces(tmp_path):
    path, _, _ = make_collection(tmp_path / "c", n=300)
    build_index(path, kind="hnsw", progress=False)
    names = sorted(p.name for p in (path / "index").iterdir())
    assert names == ["image.hnsw.faiss", "image.inclusion.npy", "image.mean_variance.npy"]
    (path / "index" / "image.includes.faiss").write_bytes(b"an older layout")
    build_index(path, kind="flat", progress=False, inclusion=False)
    assert sorted(p.name for p in (path / "index").iterdir()) == ["image.flat.npy"]
    assert SearchIndex.load(path, "image").search(_query(1), k=3)[0].exact
