"""`probclip eval` end to end with a saved ProLIP-Tiny checkpoint (random weights) on tiny fixtures."""

import json

import pytest
from test_eval_fixtures import build_image_folder, build_karpathy, build_urban1k, build_wds_classification

import probclip
from probclip.eval.cli import main


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "prolip-tiny"
    probclip.create_model("ProLIP-Tiny").save_pretrained(path)
    return path


def _results(out):
    data = json.loads((out / "results.json").read_text())
    for name in data.get("plots", []):
        assert (out / name).stat().st_size > 0
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
    assert _results(tmp_path / "u_out")["context_length"] == 32
    # ECCV needs COCO caption ids: a clear error, exit code 1.
    assert main(["--model", str(tiny_checkpoint), "--task", "eccv", "--data", str(coco), "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 1
    assert "COCO caption ids" in capsys.readouterr().err
    assert main(["--model", str(tiny_checkpoint), "--task", "rococo", "--data", str(coco), "--no-progress"]) == 1
    assert main(["--model", str(tiny_checkpoint), "--task", "retrieval", "--data", str(tmp_path / "nope.json")]) == 2
