"""Evaluation outputs are never mixed: a non-empty --out is refused without --overwrite, a run writes into a temporary
sibling moved into place only when it succeeded, and a webdataset missing a numbered shard is an error naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from probclip.data.webdataset import ShardError, check_shard_numbering
from probclip.errors import InputError, UsageError
from probclip.eval.benchmark_wds import list_shards
from probclip.eval.cli import main
from probclip.eval.output_folder import fresh_output_folder
from suite_fixtures import build_benchmark_classification, save_tiny_model


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_fresh_output_folder_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with fresh_output_folder(out) as work:
        (work / "a.json").write_text("1")
    assert _tree(out) == {"a.json": b"1"}
    with pytest.raises(UsageError, match=r"--out '.*out' is not empty \(it holds \['a.json'\]\): give --overwrite"):
        with fresh_output_folder(out):
            pass
    with pytest.raises(RuntimeError, match="midway"):
        with fresh_output_folder(out, overwrite=True) as work:
            (work / "b.json").write_text("2")
            raise RuntimeError("failed midway")
    assert _tree(out) == {"a.json": b"1"}  # the failed run left nothing
    with fresh_output_folder(out, overwrite=True) as work:
        (work / "b.json").write_text("2")
    assert _tree(out) == {"b.json": b"2"}  # no leftover of the previous run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary sibling left
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        with fresh_output_folder(tmp_path / "file", overwrite=True):
            pass
    (tmp_path / "empty").mkdir()
    with fresh_output_folder(tmp_path / "empty") as work:  # an empty folder is fine
        (work / "c.json").write_text("3")
    assert _tree(tmp_path / "empty") == {"c.json": b"3"}


def test_a_missing_middle_shard_is_an_error_naming_it(tmp_path):
    root = build_benchmark_classification(tmp_path / "wds_x", n_shards=3, nshards_file=False)
    assert [p.name for p in list_shards(root)] == ["0.tar", "1.tar", "2.tar"]
    (root / "test" / "1.tar").unlink()
    with pytest.raises(InputError, match=r"1 numbered shard\(s\) are missing from .*test' \(shards 0 to 2 expected\), "
                                         r"e.g. \['1.tar'\]"):
        list_shards(root)
    (root / "test" / "0.tar").unlink()
    with pytest.raises(InputError, match=r"e.g. \['0.tar', '1.tar'\]"):  # CLIP_benchmark numbers from 0
        list_shards(root)
    folder = tmp_path / "shards"
    folder.mkdir()
    for name in ("00010.tar", "00011.tar", "00013.tar"):
        (folder / name).write_bytes(b"")
    with pytest.raises(ShardError, match=r"e.g. \['00012.tar'\]"):
        check_shard_numbering(sorted(folder.glob("*.tar")))
    check_shard_numbering(sorted(folder.glob("*.tar"))[:2])  # a run of numbers from any start is complete
    check_shard_numbering([folder / "train.tar", folder / "val.tar"])  # names that are not numbers


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_tiny_model(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_a_suite_rerun_is_refused_and_a_failed_overwrite_leaves_the_previous_run(tmp_path, checkpoint, capsys):
    root = tmp_path / "root"
    build_benchmark_classification(root / "wds_cifar10")
    out = tmp_path / "suite"
    args = ["--model", str(checkpoint), "--suite", "datacomp", "--data-root", str(root), "--no-progress",
            "--out", str(out)]
    assert main([*args, "--tasks", "cifar10"]) == 0
    first = _tree(out)
    assert "suite.json" in first and "cifar10/results.json" in first
    capsys.readouterr()
    assert main([*args, "--tasks", "cifar10"]) == 2  # the previous table is not overwritten without a word
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty" in err and "--overwrite" in err
    # a second task whose data lost its middle shard: the suite fails midway, after cifar10 was written again
    build_benchmark_classification(root / "wds_mnist", n_shards=3, nshards_file=False)
    (root / "wds_mnist" / "test" / "1.tar").unlink()
    assert main([*args, "--tasks", "cifar10,mnist", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1.tar" in err and "missing" in err
    assert _tree(out) == first  # the previous run, whole; nothing of the failed one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root", "suite"]
    (root / "wds_mnist" / "test" / "nshards.txt").write_text("2\n")  # say it has shards 0 and 1
    (root / "wds_mnist" / "test" / "2.tar").rename(root / "wds_mnist" / "test" / "1.tar")
    assert main([*args, "--tasks", "mnist", "--overwrite"]) == 0
    summary = json.loads((out / "suite.json").read_text())
    assert [t["key"] for t in summary["tasks"]] == ["mnist"]
    assert not (out / "cifar10").exists()  # no leftover of the replaced run


def test_every_task_refuses_a_non_empty_out(tmp_path, checkpoint, capsys):
    data = build_benchmark_classification(tmp_path / "wds_cifar10")
    out = tmp_path / "zs"
    out.mkdir()
    (out / "results.json").write_text('{"previous": true}')
    args = ["--model", str(checkpoint), "--task", "zeroshot", "--data", str(data), "--no-progress", "--out", str(out)]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text()) == {"previous": True}
    assert main([*args, "--overwrite"]) == 0
    assert "previous" not in json.loads((out / "results.json").read_text())
