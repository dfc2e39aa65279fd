"""`probclip eval` end to end with a saved ProLIP-Tiny checkpoint (random weights) on tiny fixtures."""

import json

import pytest

import probclip
from probclip.eval.cli import main
from test_eval_fixtures import (
    build_hierarcaps,
    build_image_folder,
    build_karpathy,
    build_urban1k,
    build_wds_classification,
)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "prolip-tiny"
    probclip.create_model("ProLIP-Tiny").save_pretrained(path)
    return path


def _results(out):
    data = json.loads((out / "results.json").read_text())
    assert data["plots"], "every task writes at least one plot"
    for name in data["plots"]:
        assert name.endswith(".png") and (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def test_cli_zeroshot_with_bprw(tmp_path, tiny_checkpoint):
    data = build_wds_classification(tmp_path / "wds", per_class=3)
    support = build_image_folder(tmp_path / "support", per_class=2, seed=7)
    (support / "classnames.txt").write_text("blue\ngreen\nred\n")
    out = tmp_path / "out"
    # Class order differs between the two layouts (classnames.txt vs sorted folders): refused.
    code = main(["--model", str(tiny_checkpoint), "--task", "zeroshot", "--data", str(data), "--out", str(out),
                 "--support", str(support), "--no-progress"])
    assert code == 1
    (data / "classnames.txt").write_text("blue\ngreen\nred\n")
    code = main(["--model", str(tiny_checkpoint), "--task", "zeroshot", "--data", str(data), "--out", str(out),
                 "--support", str(support), "--shots", "2", "--no-progress"])
    assert code == 0
    res = _results(out)
    assert res["probabilistic"] is True and res["n_images"] == 9
    assert set(res["metrics"]) == {"mean", "probabilistic", "bprw"}
    assert res["bprw"]["n_support_images"] == 6 and set(res["bprw"]["gain_acc1"]) == {"csd", "mean"}


def test_cli_retrieval_urban_and_errors(tmp_path, tiny_checkpoint, capsys):
    coco = build_karpathy(tmp_path / "coco")
    assert main(["--model", str(tiny_checkpoint), "--task", "retrieval", "--data", str(coco),
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    res = _results(tmp_path / "r")
    assert res["metrics"]["csd"]["t2i"]["r10"] == 1.0  # 6 images: the positive is always in the top 10
    assert 0 <= res["metrics"]["mean"]["i2t"]["map_at_r"] <= 1
    assert main(["--model", str(tiny_checkpoint), "--task", "urban1k", "--data", str(build_urban1k(tmp_path / "u")),
                 "--out", str(tmp_path / "u_out"), "--no-progress"]) == 0
    urban = _results(tmp_path / "u_out")
    assert urban["context_length"] == 32 and urban["truncated_fraction"] == 1.0
    # ECCV needs COCO caption ids: a clear error, exit code 1.
    assert main(["--model", str(tiny_checkpoint), "--task", "eccv", "--data", str(coco), "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 1
    assert "COCO caption ids" in capsys.readouterr().err
    assert main(["--model", str(tiny_checkpoint), "--task", "rococo", "--data", str(coco), "--no-progress"]) == 1
    (tmp_path / "words.txt").write_text("zebra\nkite\n")
    assert (
        main(
            [
                "--model",
                str(tiny_checkpoint),
                "--task",
                "rococo",
                "--data",
                str(coco),
                "--out",
                str(tmp_path / "rc"),
                "--replacements",
                str(tmp_path / "words.txt"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert _results(tmp_path / "rc")["n_adversarial_captions"] == 18
    hc = build_hierarcaps(tmp_path / "hc")
    assert main(["--model", str(tiny_checkpoint), "--task", "hierarcaps", "--data", str(hc), "--image-root",
                 str(tmp_path / "hc" / "imgs"), "--out", str(tmp_path / "hc_out"), "--no-progress"]) == 0
    assert set(_results(tmp_path / "hc_out")["metrics"]) == {"empty", "inclusion", "uncertainty"}
    assert main(["--model", str(tiny_checkpoint), "--task", "retrieval", "--data", str(tmp_path / "nope.json")]) == 2


def test_cli_open_clip_model_by_name(tmp_path):
    import open_clip

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "probclip-test-tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "cfg")
    data = build_image_folder(tmp_path / "f", per_class=2)
    out = tmp_path / "out"
    assert main(["--model", "open_clip:probclip-test-tiny-clip", "--task", "zeroshot", "--data", str(data),
                 "--out", str(out), "--no-progress"]) == 0
    res = _results(out)
    assert res["probabilistic"] is False and set(res["metrics"]) == {"mean"} and "uncertainty" not in res
    # BPRW needs uncertainty: refused for a deterministic model.
    assert main(["--model", "open_clip:probclip-test-tiny-clip", "--task", "zeroshot", "--data", str(data),
                 "--support", str(data), "--no-progress"]) == 1


def test_cli_eccv_progress_and_long_context(tmp_path, tiny_checkpoint, capsys):
    from probclip.models import extend_context_length
    from test_eval_fixtures import build_coco_eccv

    karpathy, captions_json, gt_dir = build_coco_eccv(tmp_path / "coco")
    out = tmp_path / "e"
    assert main(["--model", str(tiny_checkpoint), "--task", "eccv", "--data", str(karpathy), "--out", str(out),
                 "--coco-captions", str(captions_json), "--ground-truth", str(gt_dir)]) == 0
    captured = capsys.readouterr()
    assert "images" in captured.err and "texts" in captured.err  # progress bars on stderr
    assert str(out / "results.json") in captured.out
    res = _results(out)
    assert set(res["metrics"]["csd"]) == {"eccv", "cxc", "coco_5k", "coco_1k"}
    assert set(res["metrics"]["csd"]["eccv"]["t2i"]) == {"map_at_r", "r_precision", "r1"}
    assert main(["--model", str(tiny_checkpoint), "--task", "eccv", "--data", str(karpathy),
                 "--coco-captions", str(captions_json), "--ground-truth", str(tmp_path), "--no-progress"]) == 1
    assert "original_image_to_caption.json is missing" in capsys.readouterr().err
    # A long-context model (context 32 extended to 128) reads the ~90-token Urban-1k captions whole.
    long_ckpt = tmp_path / "long"
    model = probclip.create_model_from_pretrained(str(tiny_checkpoint))[0]
    extend_context_length(model, 128)
    model.save_pretrained(long_ckpt)
    urban = build_urban1k(tmp_path / "u")
    assert main(["--model", str(long_ckpt), "--task", "urban1k", "--data", str(urban), "--out", str(tmp_path / "uo"),
                 "--no-progress"]) == 0
    res = _results(tmp_path / "uo")
    assert res["context_length"] == 128 and res["truncated_fraction"] == 0.0
