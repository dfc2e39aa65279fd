"""probclip quickstart end to end with a tiny step budget: files, keys, determinism, loadable model."""

import json

import pytest

from probclip.quickstart import (
    ASSUMED_PROLIP_STEP_SECONDS,
    ASSUMED_SIGLIP_STEP_SECONDS,
    ASSUMED_STEP_SECONDS,
    OVERHEAD_SECONDS,
    main,
    steps_for_budget,
)

RETRIEVAL_KEYS = {"r1", "r5", "map_at_r", "r_precision"}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    first, second = tmp_path_factory.mktemp("qs1"), tmp_path_factory.mktemp("qs2")
    for out in (first, second):
        assert main(["--out", str(out), "--steps", "3", "--seed", "4"]) == 0
    return first, second


def test_writes_metrics_report_plots_and_model(two_runs, capsys):
    out = two_runs[0]
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    for direction in ("i2t", "t2i"):
        assert set(metrics["retrieval"][direction]) >= RETRIEVAL_KEYS
        assert set(metrics["baseline"]["retrieval"][direction]) >= RETRIEVAL_KEYS
    assert set(metrics["uncertainty"]) == {"text_specificity_spearman", "image_degradation_spearman"}
    assert 0.0 <= metrics["inclusion"]["accuracy"] <= 1.0
    assert set(metrics["zeroshot"]) == {"acc1", "unc_acc_corr"}
    assert "acc1" in metrics["baseline"]["zeroshot"]
    assert metrics["train"]["samples"] == 3 * 128
    assert metrics["train"]["seconds"] == pytest.approx(3 * ASSUMED_PROLIP_STEP_SECONDS)
    assert metrics["baseline"]["train"]["seconds"] == pytest.approx(3 * ASSUMED_SIGLIP_STEP_SECONDS)
    html = (out / "report.html").read_text()
    for name in ("uncertainty_vs_specificity", "uncertainty_vs_degradation", "uncertainty_binned_accuracy",
                 "example_retrievals"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
        assert f"plots/{name}.png" in html
    assert {"total_seconds", "prolip.fit_seconds"} <= set(json.loads((out / "timings.json").read_text()))
    hierarchy = metrics["hierarchy"]
    assert set(hierarchy) == {"general", "specific"}
    assert set(hierarchy["general"]) == {"directional", "test", "csd", "mean", "walk", "denotation", "head"}
    for score in ("directional", "mean", "denotation", "head"):
        assert {"image", "captions", "1", "5"} <= set(hierarchy["general"][score])
        assert 0.0 <= hierarchy["general"][score]["image"]["r_precision"] <= 1.0
        assert {"captions", "0", "3"} <= set(hierarchy["specific"][score])
    assert set(metrics["baseline"]["hierarchy"]["general"]) == {"mean", "walk"}
    assert "Hierarchical search" in html and "SigLIP: mean" in html


def test_same_seed_writes_the_same_metrics(two_runs):
    first, second = two_runs
    assert (first / "metrics.json").read_bytes() == (second / "metrics.json").read_bytes()


def test_saved_model_loads_and_encodes(two_runs):
    import torch

    from probclip import create_model_from_pretrained, get_tokenizer
    from probclip.synthetic.world import SyntheticDataset

    model, preprocess = create_model_from_pretrained(str(two_runs[0] / "model"))
    item = SyntheticDataset(seed=1, size=1)[0]
    with torch.no_grad():
        image = model.encode_image(preprocess(item["image"])[None])
        text = model.encode_text(get_tokenizer(model)(item["captions"]))
    assert image.mean.shape == (1, model.config.embed_dim) and text.mean.shape[0] == len(item["captions"])
    from probclip.hierarchy_head import find_hierarchy_head

    head = find_hierarchy_head(two_runs[0] / "model", dim=model.config.embed_dim)  # what its searches rank by
    assert set(head.pairs) == {"text_in_text", "image_in_text"}
    assert "training-split scenes" in head.pairs["text_in_text"].fitted_on
    assert get_tokenizer(model).unknown_words(item["captions"][-1]) == []


def test_budget_is_a_fixed_step_count():
    assert steps_for_budget(8) == int((8 * 60 - OVERHEAD_SECONDS) / ASSUMED_STEP_SECONDS)
    assert steps_for_budget(8) == 2048  # the default run measured in docs/quickstart.md
    assert steps_for_budget(16) > steps_for_budget(8)
    with pytest.raises(ValueError, match="--minutes"):
        steps_for_budget(0)


def test_bad_arguments_exit_with_status_2(capsys, tmp_path):
    assert main(["--out", str(tmp_path), "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_a_slow_machine_is_told_that_the_run_takes_longer(capsys):
    from probclip.quickstart import _warn_if_slow

    _warn_if_slow("prolip", 100 * ASSUMED_PROLIP_STEP_SECONDS, 100)
    assert capsys.readouterr().out == ""
    _warn_if_slow("siglip", 100 * 2 * ASSUMED_SIGLIP_STEP_SECONDS, 100)
    assert "siglip steps took" in capsys.readouterr().out
