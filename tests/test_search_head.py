"""The search ranks "more general" / "more specific" by the hierarchy head a collection carries: embed copies and
records it, the exact scores are its logits, the candidates come from its exact inner-product form, a damaged file
is a one-line error, and ``hierarchy_head=False`` (or a pair the head lacks) ranks by the inclusion test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import probclip
from probclip.cli import main
from probclip.embedding import ProbEmbedding
from probclip.errors import InputError
from probclip.hierarchy_head import HEAD_FILE, TERMS, HierarchyHead, PairWeights, pair_terms
from probclip.search import SearchIndex, build_index
from probclip.search.collection_head import HeadFileError, carry_head
from probclip.search.head_ranking import head_ranking
from probclip.search.layout import file_fingerprint
from probclip.search.manifest import read_manifest
from probclip.search.writer import write_collection
from search_helpers import MODEL_RECORD, brute_directional_inclusion, random_gaussians

D = 16


def _head(seed: int = 0, dim: int = D, generality: float = 0.7) -> HierarchyHead:
    """Random weights, each divided by its term's spread over pairs of random Gaussians (logits of order 1), and a
    ``generality`` for "more specific"."""
    rng = np.random.default_rng(seed)
    mean, logvar = random_gaussians(24, dim, 99)
    sample = ProbEmbedding(torch.from_numpy(mean), torch.from_numpy(logvar))
    spread = pair_terms(sample, sample).reshape(-1, len(TERMS), dim).std(0).clamp_min(1e-12).numpy()
    scale = spread * np.sqrt(len(TERMS) * dim) / 3
    return HierarchyHead({
        "text_in_text": PairWeights(rng.normal(size=(len(TERMS), dim)) / scale, 0.3, "random t", generality),
        "image_in_text": PairWeights(rng.normal(size=(len(TERMS), dim)) / scale, -0.2, "random i", generality / 2)})


def _collection(root, texts: int = 300, images: int = 200, head: HierarchyHead | None = None):
    text, image = random_gaussians(texts, D, 0), random_gaussians(images, D, 1)
    write_collection(root, {"text": text, "image": image}, model=dict(MODEL_RECORD, embed_dim=D), dtype="float32",
                     shard_rows=128)
    if head is not None:
        carry_head(root, head.to_file(root.parent / f"{root.name}-{HEAD_FILE}"))
    build_index(root, kind="flat", progress=False)
    return root, {"text": text, "image": image}


@pytest.fixture(scope="module")
def headed(tmp_path_factory):
    return _collection(tmp_path_factory.mktemp("headed") / "c", head=_head())


def _query(seed: int) -> ProbEmbedding:
    mean, logvar = random_gaussians(1, D, seed)
    return ProbEmbedding(torch.from_numpy(mean), torch.from_numpy(logvar))


def _reference(head: HierarchyHead, score: str, query: ProbEmbedding, items, query_modality: str,
               item_modality: str, directional: bool) -> tuple[np.ndarray, np.ndarray]:
    """The head's ranking keys by ``PairWeights.logits`` (torch, pair terms): the logits, plus for ``includes`` the
    generality times the item's mean log-variance; -inf where the direction check fails. And the logits."""
    lv_items = items[1].astype(np.float64)
    items = ProbEmbedding(torch.from_numpy(items[0]), torch.from_numpy(items[1]))
    if score == "included":
        pair = head.pairs[f"{query_modality}_in_{item_modality}"]
        asked = pair.logits(query, items)[0]
        reverse = head.pairs.get(f"{item_modality}_in_{query_modality}")
        back = None if reverse is None else reverse.logits(items, query)[:, 0]
        generality = 0.0
    else:
        pair = head.pairs[f"{item_modality}_in_{query_modality}"]
        asked = pair.logits(items, query)[:, 0]
        reverse = head.pairs.get(f"{query_modality}_in_{item_modality}")
        back = None if reverse is None else reverse.logits(query, items)[0]
        generality = pair.generality
    asked = asked.numpy()
    keys = asked + generality * lv_items.mean(1)
    if not directional:
        return keys, asked
    margin = asked if back is None else asked - back.numpy()
    return np.where(margin > 0, keys, -np.inf), asked


def _top(values: np.ndarray, k: int) -> np.ndarray:
    ids = np.arange(values.size)
    order = np.lexsort((ids, -values))[:k]
    return order[np.isfinite(values[order])]


CASES = [("included", "text", "text"), ("includes", "text", "text"), ("includes", "text", "image"),
         ("included", "image", "text")]


@pytest.mark.parametrize(("score", "query_modality", "item_modality"), CASES)
@pytest.mark.parametrize("directional", [True, False])
def test_the_head_ranks_the_inclusion_scores_by_its_logits(headed, score, query_modality, item_modality,
                                                           directional):
    root, rows = headed
    index = SearchIndex.load(root, item_modality)
    head = _head()
    for seed in (5, 6, 7):
        query = _query(seed)
        found = index.search(query, k=8, score=score, directional=directional, query_modality=query_modality)[0]
        expected, logits = _reference(head, score, query, rows[item_modality], query_modality, item_modality,
                                      directional)
        top = _top(expected, 8)
        assert found.ranked_by == "hierarchy head" and found.exact
        assert found.ids.tolist() == top.tolist()
        assert np.allclose(found.scores, expected[top], rtol=1e-5, atol=1e-5)
        # the probability is the logit's, without the generality term of "more specific"
        assert np.allclose(found.probabilities, 1 / (1 + np.exp(-logits[top])), atol=1e-6)
        row = found.to_dict()
        assert row["ranked_by"] == "hierarchy head" and row["results"][0]["probability"] == pytest.approx(
            float(found.probabilities[0]))


def test_without_the_head_or_a_pair_it_lacks_the_inclusion_test_ranks(headed):
    root, rows = headed
    query = _query(5)
    q_mean, q_logvar = query.mean.numpy()[0], query.logvar.numpy()[0]
    texts = SearchIndex.load(root, "text")
    expected = _top(brute_directional_inclusion(q_mean, q_logvar, *rows["text"], "included").astype(np.float64), 8)
    for kwargs in ({"hierarchy_head": False, "query_modality": "text"}, {}):  # switched off; modality unknown
        found = texts.search(query, k=8, score="included", **kwargs)[0]
        assert found.ranked_by == "inclusion test" and found.probabilities is None
        assert found.ids.tolist() == expected.tolist()
        assert "probability" not in found.to_dict()["results"][0]
    images = SearchIndex.load(root, "image")  # image_in_image: the head holds no such pair
    found = images.search(query, k=8, score="includes", query_modality="image")[0]
    assert found.ranked_by == "inclusion test"
    assert texts.search(query, k=3, score="csd", query_modality="text")[0].ranked_by == "closed-form sampled distance"


def test_the_candidate_path_equals_an_exhaustive_head_scan(tmp_path):
    root, rows = _collection(tmp_path / "c", texts=3000, images=50, head=_head(1))
    index = SearchIndex.load(root, "text")
    scans, scan_ids = [], index.scorer.scan_ids
    index.scorer.scan_ids = lambda allowed: scans.append(allowed) or scan_ids(allowed)
    complete = 0
    for seed in range(10, 16):
        query = _query(seed)
        for score in ("included", "includes"):
            for directional in (True, False):
                options = dict(k=5, score=score, directional=directional, query_modality="text", oversample=4)
                fast = index.search(query, exhaustive=False, **options)[0]
                assert scans == []  # the candidate path, which scanned no row beyond its candidates
                full = index.search(query, exhaustive=True, **options)[0]
                scans.clear()
                assert full.exact and fast.ranked_by == "hierarchy head"
                complete += fast.exact  # the head's exact top lists show when nothing can be missing
                assert fast.ids.tolist() == full.ids.tolist(), (seed, score, directional)
                assert np.array_equal(fast.scores, full.scores)
        # the inner-product candidates are the head's exact top-n by its ranking key (for "more specific": with the
        # generality term)
        n = 40
        for score in ("included", "includes"):
            ranking = head_ranking(index.head.get(), score, "text", "text")
            proposed = index.candidates.inclusion(query, score, n, None, 0.0, False, ranking)[0]
            keys, _ = _reference(_head(1), score, query, rows["text"], "text", "text", False)
            assert set(proposed.tolist()) == set(_top(keys, n).tolist()), score
    assert complete >= 20  # of 24 searches


def test_a_damaged_or_missing_head_file_is_a_one_line_error(tmp_path):
    root, _ = _collection(tmp_path / "c", texts=60, images=10, head=_head())
    record = read_manifest(root).hierarchy_head
    assert record.file == HEAD_FILE and record.kinds == ("image_in_text", "text_in_text")
    assert record.fitted_on == {"image_in_text": "random i", "text_in_text": "random t"}
    assert record.fingerprint == file_fingerprint(root / HEAD_FILE)
    _head(seed=9).to_file(root / HEAD_FILE)  # a valid head, but not the one recorded
    index = SearchIndex.load(root, "text")  # loading does not read it
    with pytest.raises(HeadFileError, match=r"hierarchy_head.safetensors is not the file `probclip embed` copied into "
                                            r"this collection .* replaced or damaged; run `probclip embed` again") as e:
        index.search(_query(3), score="included", query_modality="text")
    assert "\n" not in str(e.value)
    assert index.search(_query(3), score="included", query_modality="text", hierarchy_head=False)[0].ranked_by == \
        "inclusion test"
    assert index.search(_query(3), score="csd", query_modality="text")[0].ranked_by != "hierarchy head"
    (root / HEAD_FILE).write_bytes(b"not a head")  # unreadable, though recorded with its fingerprint
    data = json.loads((root / "manifest.json").read_text())
    data["hierarchy_head"] = {**record.to_dict(), "fingerprint": file_fingerprint(root / HEAD_FILE)}
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(HeadFileError, match=r"is not a readable hierarchy head .*; run `probclip embed` again"):
        SearchIndex.load(root, "text").search(_query(3), score="included", query_modality="text")
    (root / HEAD_FILE).unlink()
    with pytest.raises(HeadFileError, match="hierarchy_head.safetensors is missing"):
        SearchIndex.load(root, "text").search(_query(3), score="includes", query_modality="text")


def test_the_record_is_checked_and_older_manifests_without_it_load(tmp_path):
    root, _ = _collection(tmp_path / "c", texts=40, images=10)
    manifest = read_manifest(root)
    assert manifest.hierarchy_head is None and "hierarchy_head" not in manifest.to_dict()
    index = SearchIndex.load(root, "text")
    assert not index.head.present
    assert index.search(_query(2), score="included", query_modality="text")[0].ranked_by == "inclusion test"
    carry_head(root, _head().to_file(tmp_path / HEAD_FILE))
    data = json.loads((root / "manifest.json").read_text())
    assert read_manifest(root).to_dict() == data  # every key written is read back
    data["hierarchy_head"]["kinds"] = ["image_in_image"]
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"hierarchy_head.kinds is \['image_in_image'\]; expected a non-empty list"):
        read_manifest(root)
    data["hierarchy_head"].update(kinds=["text_in_text"], file="../elsewhere.safetensors")
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="lies outside the collection"):
        read_manifest(root)


def test_embed_copies_and_records_the_model_folders_head(tmp_path, capsys):
    torch.manual_seed(0)
    model = probclip.create_model("ProLIP-Tiny")
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "captions.txt").write_text("a red square\na blue circle\na shape\n")
    argv = ["embed", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "captions.txt"), "--out",
            str(tmp_path / "c"), "--num-workers", "0", "--no-progress"]
    dim = model.embed_dim
    (tmp_path / "model" / HEAD_FILE).write_bytes(b"not a head")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'model' / HEAD_FILE} is not a readable hierarchy head" in err
    assert not (tmp_path / "c" / "manifest.json").exists()  # refused before anything was embedded
    _head(dim=dim + 1).to_file(tmp_path / "model" / HEAD_FILE)
    assert main(argv) == 1
    assert f"this model's are {dim}-dimensional" in capsys.readouterr().err
    _head(dim=dim).to_file(tmp_path / "model" / HEAD_FILE)
    assert main(argv) == 0
    record = read_manifest(tmp_path / "c").hierarchy_head
    copied = tmp_path / "c" / HEAD_FILE
    assert copied.read_bytes() == (tmp_path / "model" / HEAD_FILE).read_bytes()
    assert record.fingerprint == file_fingerprint(copied) and record.kinds == ("image_in_text", "text_in_text")
    build_index(tmp_path / "c", kind="flat", progress=False)
    assert read_manifest(tmp_path / "c").hierarchy_head == record  # indexing keeps it
    _head(seed=4, dim=dim).to_file(tmp_path / "model" / HEAD_FILE)  # refitted: the same command brings it in
    assert main(argv) == 0
    assert read_manifest(tmp_path / "c").hierarchy_head.fingerprint == file_fingerprint(copied) != record.fingerprint
    assert read_manifest(tmp_path / "c").indexes  # without embedding or indexing again
    (tmp_path / "model" / HEAD_FILE).unlink()
    assert main(argv) == 0
    assert read_manifest(tmp_path / "c").hierarchy_head is None and not copied.exists()


@pytest.mark.parametrize("hierarchy_head", [True, False])
def test_a_copy_of_the_query_is_neither_more_general_nor_more_specific(tmp_path, hierarchy_head):
    """A stored row searched with its own unrounded embedding (a caption embedded again as a query) fails the
    direction check of both scores, with the head and with the inclusion test; a row one step away does not count."""
    from probclip.search.scoring import copies_of_query

    text, image = random_gaussians(300, D, 0), random_gaussians(20, D, 1)
    root = tmp_path / "c"
    write_collection(root, {"text": text, "image": image}, model=dict(MODEL_RECORD, embed_dim=D), dtype="float16",
                     shard_rows=128)
    carry_head(root, _head().to_file(tmp_path / HEAD_FILE))
    build_index(root, kind="flat", progress=False)
    index = SearchIndex.load(root, "text")
    for row in range(40):
        query = ProbEmbedding(torch.from_numpy(text[0][row: row + 1]), torch.from_numpy(text[1][row: row + 1]))
        for score in ("includes", "included"):
            found = index.search(query, k=300, score=score, query_modality="text", hierarchy_head=hierarchy_head)[0]
            assert row not in found.ids.tolist(), (row, score)
    means, logvars = index.stored.means(np.arange(300)), index.stored.logvars(np.arange(300))
    query = ProbEmbedding(torch.from_numpy(text[0][:1]), torch.from_numpy(text[1][:1]))
    assert copies_of_query(query, means, logvars, np.float16).tolist() == [True] + [False] * 299
    moved = text[1][:1].copy()
    moved[0, 3] += 0.05  # far beyond float16's rounding of a log-variance
    assert not copies_of_query(ProbEmbedding(query.mean, torch.from_numpy(moved)), means, logvars, np.float16)[0]
