"""probclip models inside CLIP_benchmark: its own zero-shot evaluation agrees with `probclip eval`."""

import json

import pytest
import torch

import probclip
from probclip.eval.cli import main as probclip_eval
from probclip.eval.encode import encode_images, load_eval_model
from probclip.eval.readers import read_classification
from probclip.eval.scoring import ranking_scores
from probclip.eval.zeroshot import class_text_embeddings, combine_templates
from probclip.integrations.clip_benchmark import MeanEmbeddingModel, load_probclip, main, register
from suite_fixtures import build_random_classification, save_tiny_model


def test_clip_benchmark_zeroshot_acc1_equals_probclip_cosine_acc1(tmp_path, capsys):
    ckpt = save_tiny_model(tmp_path / "ckpt")
    data = build_random_classification(tmp_path / "wds_things")
    out = tmp_path / "cb.json"
    code = main(["eval", "--model_type", "probclip", "--model", str(ckpt), "--dataset", "wds/things",
                 "--dataset_root", str(data), "--output", str(out), "--no_amp", "--num_workers", "0",
                 "--batch_size", "7", "--quiet"])
    assert code == 0
    theirs = json.loads(out.read_text())
    assert theirs["task"] == "zeroshot_classification"
    assert probclip_eval(["--model", str(ckpt), "--task", "zeroshot", "--data", str(data), "--out",
                          str(tmp_path / "p"), "--no-progress"]) == 0
    ours = json.loads((tmp_path / "p" / "results.json").read_text())["metrics"]["mean"]["mean"]
    assert theirs["metrics"]["acc1"] == ours["acc1"]
    assert theirs["metrics"]["acc5"] == ours["acc5"]
    assert theirs["metrics"]["mean_per_class_recall"] == pytest.approx(ours["mean_per_class_recall"], abs=1e-12)
    # The check means something: the model's predictions spread over several classes.
    model = load_eval_model(str(ckpt))
    dataset = read_classification(data)
    images = encode_images(model.model, dataset.items, model.preprocess, progress=False)
    classes = combine_templates(class_text_embeddings(model, dataset.classnames, dataset.templates, progress=False))
    predictions = ranking_scores(images, classes, "mean").argmax(1)
    assert len(set(predictions.tolist())) >= 3


def test_registered_type_returns_means(tmp_path):
    ckpt = save_tiny_model(tmp_path / "ckpt")
    register()
    register()  # idempotent
    from clip_benchmark.models import MODEL_TYPES, TYPE2FUNC, load_clip

    assert MODEL_TYPES.count("probclip") == 1 and TYPE2FUNC["probclip"] is load_probclip
    model, transform, tokenizer = load_clip("probclip", str(ckpt), "unused", None, device="cpu")
    assert isinstance(model, MeanEmbeddingModel)
    reference, _ = probclip.create_model_from_pretrained(str(ckpt))
    images = torch.randn(2, 3, 32, 32)
    tokens = tokenizer(["a red thing", "a photo of a cat"])
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), reference.encode_image(images).mean)
        assert torch.equal(model.encode_text(tokens), reference.encode_text(tokens).mean)
