"""The synthetic world: determinism, exact truth, entailment, held-out splits, shards."""

import itertools

import numpy as np
import pytest
import torch

from probclip.synthetic import world as syn
from probclip.synthetic.world import (
    HELDOUT_COMBINATIONS,
    NUM_LEVELS,
    SyntheticDataset,
    caption_is_true,
    captions_at_level,
    entailment_matrix,
    entails,
    parse_caption,
    truth_matrix,
)


def _scenes(count, split="test", seed=3):
    data = SyntheticDataset(seed=seed, split=split, size=count)
    return [data.scene(i) for i in range(count)]


def _all_captions(scenes):
    found = {}
    for scene in scenes:
        for level in range(NUM_LEVELS):
            for cap in captions_at_level(scene, level):
                found[cap.text] = cap
    return [found[t] for t in sorted(found)]


def test_same_seed_same_items_and_different_seed_differs():
    a, b = SyntheticDataset(seed=5, size=20), SyntheticDataset(seed=5, size=20)
    c = SyntheticDataset(seed=6, size=20)
    for i in (0, 7, 19):
        assert a[i]["captions"] == b[i]["captions"]
        assert a[i]["image"].tobytes() == b[i]["image"].tobytes()
    assert [a.scene(i) for i in range(20)] != [c.scene(i) for i in range(20)]


def test_item_layout_and_levels():
    item = SyntheticDataset(seed=0, size=4)[2]
    assert item["image"].size == (32, 32) and item["image"].mode == "RGB"
    assert item["levels"] == list(range(NUM_LEVELS))
    assert item["captions"][0] == "a shape"
    assert item["captions"][-1].startswith("only ")
    scene = SyntheticDataset(seed=0, size=4).scene(2)
    assert all(caption_is_true(scene, parse_caption(t)) for t in item["captions"])


def test_truth_matrix_matches_hand_written_predicates():
    scenes = _scenes(60)
    captions = _all_captions(scenes[:20])
    truth = truth_matrix(scenes, captions)
    for j, cap in enumerate(captions[:80]):
        for i, scene in enumerate(scenes):
            if cap.exclusive:
                wanted = sorted((o.size, o.colour, o.shape, o.position) for o in scene.objects)
                got = sorted(tuple(dict(d)[a] for a in ("size", "colour", "shape", "position"))
                             for d in cap.descriptions)
                expected = wanted == got
            else:
                words = cap.text.split()
                expected = any(
                    all(w in ("a", "shape", "at", "the") or w in (o.size, o.colour, o.shape) or w in o.position.split()
                        for w in words)
                    and (("at" not in words) or o.position == " ".join(words[words.index("the") + 1:]))
                    for o in scene.objects
                )
            assert truth[i, j] == expected, (cap.text, scene)
    assert truth[:, [c.text for c in captions].index("a shape")].all()


def test_general_captions_are_true_of_more_images():
    scenes = _scenes(300)
    captions = _all_captions(scenes[:50])
    truth = truth_matrix(scenes, captions)
    rate = {level: truth[:, [c.level == level for c in captions]].mean() for level in range(NUM_LEVELS)}
    assert all(rate[k] > rate[k + 1] for k in range(NUM_LEVELS - 1)), rate


def test_entailment_agrees_with_truth_sets():
    scenes = _scenes(400, seed=9)
    captions = _all_captions(scenes[:12])
    truth = truth_matrix(scenes, captions)
    entail = entailment_matrix(captions)
    assert entail.diagonal().all()
    for i, j in itertools.product(range(len(captions)), repeat=2):
        if entail[i, j]:  # every scene satisfying i satisfies j
            assert not (truth[:, i] & ~truth[:, j]).any(), (captions[i].text, captions[j].text)
    specific = parse_caption("a large red circle at the top left")
    assert entails(specific, parse_caption("a red shape"))
    assert not entails(parse_caption("a red shape"), specific)
    assert not entails(specific, parse_caption("a blue shape"))
    full = parse_caption("only a large red circle at the top left")
    assert entails(full, specific) and not entails(specific, full)


def test_parse_round_trip_and_errors():
    for cap in _all_captions(_scenes(30)):
        assert parse_caption(cap.text) == cap
    with pytest.raises(ValueError, match="not a caption"):
        parse_caption("a purple elephant")


def test_train_split_holds_out_combinations_and_heldout_split_uses_them():
    train = _scenes(500, split="train")
    seen = {(o.shape, o.colour) for s in train for o in s.objects}
    assert not seen & set(HELDOUT_COMBINATIONS)
    assert len(seen) == 16 - len(HELDOUT_COMBINATIONS)
    heldout = _scenes(100, split="test_heldout")
    assert all((s.objects[0].shape, s.objects[0].colour) in HELDOUT_COMBINATIONS for s in heldout)
    test = _scenes(500, split="test")
    assert {(o.shape, o.colour) for s in test for o in s.objects} >= set(HELDOUT_COMBINATIONS)


def test_degradation_levels_change_the_image_progressively():
    base = SyntheticDataset(seed=1, size=1).scene(0)
    clean = np.asarray(syn.render_scene(base), dtype=float)
    diffs = []
    for level in range(1, 5):
        scene = syn.Scene(base.objects, level, "noise", base.jitter_seed)
        diffs.append(np.abs(np.asarray(syn.render_scene(scene), dtype=float) - clean).mean())
    assert all(a < b for a, b in zip(diffs, diffs[1:])), diffs
    probs = SyntheticDataset(seed=1, size=400, degradation_probs=(0.5, 0.5, 0, 0, 0))
    levels = [probs.scene(i).degradation for i in range(400)]
    assert set(levels) == {0, 1} and 150 < sum(levels) < 250


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        SyntheticDataset(split="valid")
    with pytest.raises(ValueError, match="degradation_probs"):
        SyntheticDataset(degradation_probs=(1.0, 0.5))
    with pytest.raises(ValueError, match="levels"):
        SyntheticDataset(levels=[7])


def test_vocabulary_covers_every_caption_word():
    vocab = set(syn.world_vocabulary())
    for cap in _all_captions(_scenes(40)):
        assert set(cap.text.split()) <= vocab


def test_shards_are_readable_by_the_training_reader(tmp_path):
    from probclip.data.webdataset import iter_tar_records, record_to_sample
    from probclip.synthetic.cli import main

    assert main(["--out", str(tmp_path), "--count", "7", "--per-shard", "4", "--seed", "2"]) == 0
    shards = sorted(tmp_path.glob("*.tar"))
    assert [p.name for p in shards] == ["00000.tar", "00001.tar"]
    data = SyntheticDataset(seed=2, size=7)
    records = [r for p in shards for r in iter_tar_records(str(p))]
    assert len(records) == 7
    for index, record in enumerate(records):
        image, captions = record_to_sample(record, image_keys=("png",), caption_keys=("json",), caption_separator=None)
        assert captions == data[index]["captions"]
        assert image.tobytes() == data[index]["image"].tobytes()
        _, txt = record_to_sample(record, image_keys=("png",), caption_keys=("txt",), caption_separator=None)
        assert txt == [data[index]["captions"][-1]]


class _OracleModel(torch.nn.Module):
    """Equal means; text log-variance falls with the number of attribute words ("only" counts as one), image
    log-variance rises with pixel roughness (noise)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        words = [*syn.SIZES, *syn.COLOURS, *syn.SHAPES, "top", "bottom", "only"]
        self.attribute_ids = torch.tensor([tokenizer.encode(w)[0] for w in words])

    def _mean(self, n):
        return torch.nn.functional.normalize(torch.ones(n, 8), dim=-1)

    def encode_text(self, tokens):
        from probclip.embedding import ProbEmbedding

        words = torch.isin(tokens, self.attribute_ids).sum(1, keepdim=True).float()
        return ProbEmbedding(self._mean(len(tokens)), (-0.3 * words).expand(-1, 8).contiguous())

    def encode_image(self, images):
        from probclip.embedding import ProbEmbedding

        roughness = (images[..., 1:, :] - images[..., :-1, :]).abs().mean((1, 2, 3))[:, None]
        return ProbEmbedding(self._mean(len(images)), roughness.expand(-1, 8).contiguous())


def test_evaluation_metrics_on_an_oracle_model():
    from probclip.synthetic.evaluation import build_evaluation_set, evaluate_synthetic
    from probclip.tokenizers import WordTokenizer
    from probclip.transforms import image_transform

    eval_set = build_evaluation_set(seed=2, num_scenes=40, num_degraded=20, num_zeroshot=30)
    assert not eval_set.truth.all(axis=0).all() and eval_set.truth.any(axis=0).all()
    transform = image_transform({"image_size": 32, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    tokenizer = WordTokenizer(syn.world_vocabulary(), 20)
    metrics, _ = evaluate_synthetic(_OracleModel(tokenizer), eval_set, tokenizer, transform)
    assert metrics["uncertainty.text_specificity_spearman"] < -0.9
    assert metrics["uncertainty.image_degradation_spearman"] > 0.9
    assert metrics["inclusion.accuracy"] == 1.0
    # equal means: every ranking is a tie broken by index, so retrieval is far from perfect
    assert metrics["retrieval.i2t.r1"] < 1.0
    baseline, _ = evaluate_synthetic(_OracleModel(tokenizer), eval_set, tokenizer, transform, probabilistic=False)
    assert "inclusion.accuracy" not in baseline and set(baseline) >= {"retrieval.t2i.map_at_r", "zeroshot.acc1"}
