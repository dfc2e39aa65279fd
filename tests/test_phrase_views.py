"""Phrase views (``masking.text_mask_mode: phrase``): strictly more general captions made by dropping phrases."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from probclip.data.masking import mask_text_tokens
from probclip.data.samples import PairBatch, PairCollator
from probclip.data.text_views import phrase_view_maker, phrase_view_sources, register_phrase_views
from probclip.errors import UsageError
from probclip.synthetic.world import (
    FULL_SCENE_LEVEL,
    entails,
    parse_caption,
    phrase_view,
    sample_captions,
    sample_scene,
)
from probclip.train import TrainConfig, train
from probclip.train.config import MaskingSection
from probclip.train.step import ViewGeometry, build_step_inputs
from test_data_readers import make_csv_dataset
from test_train_loop import TINY, tiny_config


def _world_captions(count: int = 60) -> list:
    rng = np.random.default_rng(3)
    return [c for _ in range(count) for c in sample_captions(sample_scene(rng), rng)]


def test_a_phrase_view_is_a_strictly_more_general_caption_of_the_world():
    rng = random.Random(0)
    seen_levels = set()
    for caption in _world_captions():
        view = phrase_view(caption.text, rng)
        if caption.level == 0:  # "a shape": nothing is more general
            assert view is None
            continue
        general = parse_caption(view)  # a caption of the world, not a bag of words
        assert entails(caption, general) and not entails(general, caption), (caption.text, view)
        most_specific = 4 if caption.level == FULL_SCENE_LEVEL else caption.level - 1  # one object, fewer attributes
        assert len(general.descriptions) == 1 and general.level <= most_specific
        seen_levels.add(general.level)
    assert seen_levels == {0, 1, 2, 3, 4}  # from "a shape" to one object's full description (of a full scene)
    text = "only a small red circle at the top left and a large blue square at the bottom right"
    assert [phrase_view(text, random.Random(7)) for _ in range(3)] == [phrase_view(text, random.Random(7))] * 3
    assert phrase_view("a dog on a sofa", random.Random(0)) is None  # not a caption of this world


def test_the_synthetic_source_registers_its_phrase_views_and_a_bad_maker_is_refused():
    assert phrase_view_maker("synthetic") is phrase_view and "synthetic" in phrase_view_sources()
    assert phrase_view_maker("csv") is None
    with pytest.raises(TypeError, match="must be callable"):
        register_phrase_views("mine", "not a function")


def test_the_collator_carries_each_drawn_captions_phrase_view():
    captions = ["a shape", "a large red circle at the top left", "a red shape"]
    texts = {}

    def tokenizer(batch_texts):
        for text in batch_texts:
            texts.setdefault(text, len(texts) + 1)
        return torch.tensor([[texts[t]] for t in batch_texts])

    collator = PairCollator(lambda image: torch.zeros(3, 4, 4), tokenizer, phrase_view=phrase_view)
    image = Image.new("RGB", (4, 4))
    batch = collator([(image, [c], seed) for seed, c in enumerate(captions)])
    assert batch.has_phrase_view.tolist() == [False, True, True]
    assert batch.phrase_views[0].tolist() == batch.tokens[0].tolist()  # no view: the caption itself
    names = {v: k for k, v in texts.items()}
    views = [names[int(row[0])] for row in batch.phrase_views[1:]]
    assert views[1] == "a shape"
    assert views[0] == phrase_view(captions[1], random.Random("phrase view 1"))
    assert entails(parse_caption(captions[1]), parse_caption(views[0]))
    again = collator([(image, [c], seed) for seed, c in enumerate(captions)])
    assert torch.equal(again.phrase_views, batch.phrase_views)  # seeded per sample
    assert PairCollator(lambda image: torch.zeros(3, 4, 4), tokenizer)([(image, ["a shape"], 0)]).phrase_views is None


def test_phrase_mode_takes_the_views_and_drops_words_where_a_caption_has_none():
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, 50, (16, 12), generator=generator)
    views = torch.randint(3, 50, (16, 12), generator=generator)
    has_view = torch.arange(16) % 3 != 0
    batch = PairBatch(torch.randn(16, 3, 8, 8, generator=generator), tokens, phrase_views=views,
                      has_phrase_view=has_view)
    masking = MaskingSection(fraction=0.5, text_mask_prob=0.5, text_mask_mode="phrase")
    geometry = ViewGeometry(num_patches=4, mask_id=2, pad_id=0)
    inputs = build_step_inputs(batch, step=0, seed=4, rank=0, device=torch.device("cpu"), masking=masking,
                               geometry=geometry)
    chosen = inputs.masked_index.tolist()
    assert len(chosen) == 8
    dropped = build_step_inputs(batch, step=0, seed=4, rank=0, device=torch.device("cpu"),
                                masking=MaskingSection(fraction=0.5, text_mask_prob=0.5, text_mask_mode="drop"),
                                geometry=geometry)
    for row, i in enumerate(chosen):
        expected = views[i] if has_view[i] else dropped.masked_tokens[row]
        assert torch.equal(inputs.masked_tokens[row], expected), i
    assert any(has_view[i] for i in chosen) and not all(has_view[i] for i in chosen)
    assert not torch.equal(dropped.masked_tokens, inputs.masked_tokens)
    with pytest.raises(ValueError, match="needs batches with phrase views"):
        build_step_inputs(PairBatch(batch.images, tokens), step=0, seed=4, rank=0, device=torch.device("cpu"),
                          masking=masking, geometry=geometry)
    with pytest.raises(ValueError, match="one of"):  # phrase views are not a token operation
        mask_text_tokens(tokens, 0.5, 2, 0, generator, "phrase")


def test_phrase_mode_trains_on_the_synthetic_world_and_names_the_sources_that_have_views(tmp_path):
    masking = {"fraction": 0.5, "text_mask_prob": 0.5, "text_mask_mode": "phrase"}
    config = TrainConfig.from_dict({
        "model": dict(TINY), "masking": masking,
        "loss": {"name": "prolip", "kwargs": {"inclusion_alpha_occ_text": 1.0}},
        "data": {"source": "synthetic", "synthetic": {"size": 64, "levels": [0, 1, 2, 3, 4]}, "batch_size": 8},
        "run": {"steps": 2, "output_dir": str(tmp_path / "run"), "save_every": 0, "tensorboard": False,
                "progress": "none", "cpu_threads": 1},
    })
    result = train(config)
    assert result.steps == 2 and math.isfinite(result.final_loss)
    table = make_csv_dataset(tmp_path / "pairs", 8)
    with pytest.raises(UsageError, match=r"data.source 'csv' does not \(sources that do: \['synthetic'\]\)"):
        train(TrainConfig.from_dict(tiny_config(tmp_path / "csv", table, masking=masking, run={"steps": 1})))
    with pytest.raises(UsageError, match=r"masking.phrase_views 'nonesuch' is not a phrase view maker; registered: "
                                         r"\['synthetic'\]"):
        train(TrainConfig.from_dict(tiny_config(tmp_path / "csv2", table, run={"steps": 1},
                                                masking={**masking, "phrase_views": "nonesuch"})))
    with pytest.raises(UsageError, match=r"masking.phrase_views = '' is not valid"):
        TrainConfig.from_dict(tiny_config(tmp_path / "csv3", table, masking={**masking, "phrase_views": ""}))


def test_phrase_views_of_the_world_on_webdataset_shards(tmp_path, monkeypatch):
    """The world's captions read from webdataset shards take the synthetic maker by name: ``masking.phrase_views``."""
    from probclip.data import text_views
    from probclip.synthetic.shards import write_shards
    from probclip.synthetic.world import SyntheticDataset

    shards = write_shards(SyntheticDataset(size=24, seed=0), tmp_path / "shards", samples_per_shard=24)
    made = []

    def counting(text, rng):
        view = phrase_view(text, rng)
        made.append((text, view))
        return view

    monkeypatch.setitem(text_views._MAKERS, "synthetic", counting)
    masking = {"fraction": 0.5, "text_mask_prob": 0.5, "text_mask_mode": "phrase", "phrase_views": "synthetic"}
    config = TrainConfig.from_dict({
        "model": dict(TINY), "masking": masking,
        "loss": {"name": "prolip", "kwargs": {"inclusion_alpha_occ_text": 1.0}},
        "data": {"source": "webdataset", "paths": [str(p) for p in shards], "caption_keys": ["txt"],
                 "batch_size": 8, "num_workers": 0},
        "run": {"steps": 2, "output_dir": str(tmp_path / "run"), "save_every": 0, "tensorboard": False,
                "progress": "none", "cpu_threads": 1},
    })
    result = train(config)
    assert result.steps == 2 and math.isfinite(result.final_loss)
    assert len(made) >= 16  # every drawn caption of both steps (full-scene captions: the shards' txt)
    assert all(view is not None and entails(parse_caption(text), parse_caption(view)) for text, view in made)
