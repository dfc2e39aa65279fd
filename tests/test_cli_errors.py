"""One-line errors: every bad input across the command line ends with exactly one line on stderr that names the bad
value, exit status 2 (usage, configuration) or 1 (data, runtime), and no traceback.

The table is meant to grow: a new subcommand adds its rows (argv with ``{tmp}`` standing for a fresh folder, an
optional set-up that writes the bad input there, the expected status and a text the message must contain).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import probclip
from probclip.cli import INTERNAL_ERROR, SUBCOMMANDS, main

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--run.progress", "none", "--run.tensorboard", "false", "--run.steps", "1",
         "--run.output_dir", "{tmp}/run", "--model.name", "ProLIP-Tiny-Word"]
#: A CUDA device this machine does not have (none on a CPU machine; index 64 on a GPU machine).
NO_SUCH_CUDA = "cuda:64"


# ----------------------------------------------------------------------------------------- set-ups of bad inputs
def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def _png(path: Path, size=(8, 8)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path


def _tiny_model_dir(path: Path) -> Path:
    probclip.create_model("ProLIP-Tiny").save_pretrained(path)
    return path


def setup_yaml_syntax(tmp: Path) -> None:
    _write(tmp / "bad.yaml", "run:\n  steps: [1, 2\n")


def setup_yaml_latin1(tmp: Path) -> None:
    _write(tmp / "bad.yaml", "run:\n  output_dir: caf\xe9\n".encode("latin-1"))


def setup_yaml_list(tmp: Path) -> None:
    _write(tmp / "bad.yaml", "- run\n- data\n")


def setup_csv_missing_column(tmp: Path) -> None:
    _png(tmp / "0.png")
    _write(tmp / "pairs.csv", "image,text\n0.png,a red square\n")


def setup_csv_latin1(tmp: Path) -> None:
    _png(tmp / "0.png")
    _write(tmp / "pairs.csv", "filepath,caption\n0.png,a caf\xe9 sign\n".encode("latin-1"))


def setup_csv_unterminated_quote(tmp: Path) -> None:
    _png(tmp / "0.png")
    _write(tmp / "pairs.csv", 'filepath,caption\n0.png,"a red square\n0.png,a blue one\n')


def setup_csv_extra_cells(tmp: Path) -> None:
    _png(tmp / "0.png")
    _write(tmp / "pairs.csv", "filepath,caption\n0.png,a red, square\n")


def setup_existing_run(tmp: Path) -> None:
    (tmp / "run" / "checkpoints" / "step_00000002").mkdir(parents=True)
    _write(tmp / "run" / "train_config.yaml", "run: {}\n")


def setup_locked_run(tmp: Path) -> None:
    import socket

    (tmp / "run").mkdir()
    _write(tmp / "run" / "run.lock", json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "token": "x",
                                                 "started": "earlier"}))


def setup_output_is_file(tmp: Path) -> None:
    _write(tmp / "run", "not a folder")


def _checkpoint(tmp: Path, state: dict | bytes, batch_size: int = 8) -> Path:
    ckpt = tmp / "run" / "checkpoints" / "step_00000002"
    _tiny_model_dir(ckpt)
    if isinstance(state, bytes):
        _write(ckpt / "training_state.pt", state)
    else:
        torch.save(state, ckpt / "training_state.pt")
    _write(ckpt / "train_config.yaml", f"model: {{name: ProLIP-Tiny-Word}}\ndata: {{batch_size: {batch_size}}}\n")
    return ckpt


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def setup_crafted_state(tmp: Path) -> None:
    import pickle

    _checkpoint(tmp, pickle.dumps({"step": 2, "payload": _RunsCode()}))


def setup_changed_batch_size(tmp: Path) -> None:
    _checkpoint(tmp, {"step": 2, "samples": 32, "world_size": 1}, batch_size=16)


def setup_model_dir(tmp: Path) -> None:
    _tiny_model_dir(tmp / "model")


def setup_truncated_safetensors(tmp: Path) -> None:
    model = _tiny_model_dir(tmp / "model")
    weights = (model / "model.safetensors").read_bytes()
    _write(model / "model.safetensors", weights[: len(weights) // 2])


def setup_garbage_safetensors(tmp: Path) -> None:
    _write(_tiny_model_dir(tmp / "model") / "model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")


def setup_malformed_config_json(tmp: Path) -> None:
    config = _tiny_model_dir(tmp / "model") / "config.json"
    _write(config, config.read_text()[:-20])


def setup_latin1_config_json(tmp: Path) -> None:
    _write(_tiny_model_dir(tmp / "model") / "config.json", '{"name": "caf\xe9"}'.encode("latin-1"))


def setup_integer_weights(tmp: Path) -> None:
    from safetensors.torch import load_file

    model = _tiny_model_dir(tmp / "model")
    state = load_file(str(model / "model.safetensors"))
    save_file({k: v.to(torch.int32) if k == "logit_scale" else v for k, v in state.items()},
              str(model / "model.safetensors"))


def setup_retrieval_missing_column(tmp: Path) -> None:
    setup_model_dir(tmp)
    _png(tmp / "data" / "0.png")
    _write(tmp / "data" / "pairs.csv", "picture,words\n0.png,a red square\n")


def setup_retrieval_latin1(tmp: Path) -> None:
    setup_model_dir(tmp)
    _png(tmp / "data" / "0.png")
    _write(tmp / "data" / "pairs.csv", "image,caption\n0.png,caf\xe9\n".encode("latin-1"))


def setup_karpathy_malformed(tmp: Path) -> None:
    setup_model_dir(tmp)
    _write(tmp / "data" / "k.json", '{"images": [\n  {"filename": "0.png",\n')


def setup_karpathy_missing_field(tmp: Path) -> None:
    setup_model_dir(tmp)
    _png(tmp / "data" / "0.png")
    _write(tmp / "data" / "k.json", json.dumps({"images": [{"filename": "0.png", "split": "test"}]}))


def setup_empty_image_folder(tmp: Path) -> None:
    setup_model_dir(tmp)
    (tmp / "data").mkdir()


def setup_all_images_corrupt(tmp: Path) -> None:
    setup_model_dir(tmp)
    _write(tmp / "data" / "cat" / "0.png", b"not a png")


def setup_convert_dest_taken(tmp: Path) -> None:
    setup_model_dir(tmp)
    _write(tmp / "taken" / "notes.txt", "keep me")


def setup_older_shards(tmp: Path) -> None:
    _write(tmp / "shards" / "00007.tar", b"")


def setup_out_is_file(tmp: Path) -> None:
    _write(tmp / "shards", "a file")


def setup_missing_shard(tmp: Path) -> None:
    (tmp / "shards").mkdir()


def setup_bad_member(tmp: Path) -> None:
    shard = tmp / "shards" / "00000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for name, payload in (("a.txt", b"caption"),):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            import io

            tar.addfile(info, io.BytesIO(payload))


def setup_captions(tmp: Path) -> None:
    setup_model_dir(tmp)
    _write(tmp / "captions.txt", "a red square\na blue circle\n")
    (tmp / "empty").mkdir()


def setup_collection(tmp: Path) -> None:
    """A text collection embedded with the tiny model (no index yet)."""
    from probclip.search import embed_collection

    setup_captions(tmp)
    embed_collection(str(tmp / "model"), tmp / "captions.txt", tmp / "c", num_workers=0, progress=False)


def setup_indexed_collection(tmp: Path) -> None:
    from probclip.search import build_index

    setup_collection(tmp)
    build_index(tmp / "c", kind="flat", progress=False)


def setup_embed_karpathy_no_filename(tmp: Path) -> None:
    setup_model_dir(tmp)
    _png(tmp / "data" / "0.png")
    _write(tmp / "data" / "k.json", json.dumps({"images": [{"split": "test", "sentences": [{"raw": "a square"}]}]}))


def setup_embed_csv_latin1(tmp: Path) -> None:
    setup_model_dir(tmp)
    _png(tmp / "data" / "0.png")
    _write(tmp / "data" / "pairs.csv", "image,caption\n0.png,a caf\xe9 sign\n".encode("latin-1"))


def setup_nan_weights(tmp: Path) -> None:
    model = probclip.create_model("ProLIP-Tiny")
    with torch.no_grad():
        model.logit_scale.fill_(float("nan"))
    model.save_pretrained(tmp / "model")
    _write(tmp / "captions.txt", "a red square\n")


def setup_giant_config(tmp: Path) -> None:
    setup_captions(tmp)
    config = json.loads((tmp / "model" / "config.json").read_text())
    config["text"]["width"] = config["text"]["heads"] * 1_000_000
    _write(tmp / "model" / "config.json", json.dumps(config))


def setup_nested_config(tmp: Path) -> None:
    setup_captions(tmp)
    _write(tmp / "model" / "config.json", "[" * 100_000 + "]" * 100_000)


def setup_nshards_huge(tmp: Path) -> None:
    setup_model_dir(tmp)
    _write(tmp / "data" / "dataset_type.txt", "retrieval\n")
    _write(tmp / "data" / "test" / "nshards.txt", "10000000000\n")


def setup_long_image(tmp: Path) -> None:
    import struct
    import zlib

    setup_indexed_collection(tmp)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 1, 8, 0, 0, 0, 0)
    _write(tmp / "long.png", b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
           + chunk(b"IDAT", zlib.compress(b"\x00" * 100_001, 9)) + chunk(b"IEND", b""))


# set-ups of a finished or unfinished collection met again, tampered, or written by another job
def _edit_manifest(path: Path, edit) -> None:
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def setup_collection_without_progress_and_other_model(tmp: Path) -> None:
    setup_collection(tmp)
    import shutil

    shutil.rmtree(tmp / "c" / ".progress")  # copied without its progress folder
    _tiny_model_dir(tmp / "model2")  # other random weights


def setup_collection_then_new_captions(tmp: Path) -> None:
    setup_collection(tmp)
    _write(tmp / "captions.txt", "a green triangle\na blue circle\n")


def setup_killed_run_then_new_captions(tmp: Path) -> None:
    setup_collection_then_new_captions(tmp)
    (tmp / "c" / "manifest.json").unlink()  # what a run killed before its end leaves


def setup_corrupt_manifest(tmp: Path) -> None:
    setup_collection(tmp)
    _write(tmp / "c" / "manifest.json", '{"format": "probclip-collection", ')


def setup_corrupt_job(tmp: Path) -> None:
    setup_collection(tmp)
    (tmp / "c" / "manifest.json").unlink()
    _write(tmp / "c" / ".progress" / "job.json", "{")


def setup_corrupt_shard_record(tmp: Path) -> None:
    setup_collection(tmp)
    (tmp / "c" / "manifest.json").unlink()
    _write(tmp / "c" / ".progress" / "text_0.json", "{")


def setup_out_holds_other_files(tmp: Path) -> None:
    setup_captions(tmp)
    _write(tmp / "notes" / "todo.txt", "keep me")


def setup_non_utf8_file_name(tmp: Path) -> None:
    setup_model_dir(tmp)
    _png(tmp / "data" / "0.png")
    os.rename(tmp / "data" / "0.png", os.fsencode(tmp / "data") + b"/caf\xe9.png")


def setup_tampered_rows(tmp: Path) -> None:
    setup_collection(tmp)
    _edit_manifest(tmp / "c" / "manifest.json", lambda m: m["modalities"]["text"].update(rows="many"))


def setup_index_folder_is_a_file(tmp: Path) -> None:
    setup_collection(tmp)
    _write(tmp / "c" / "index", "not a folder")


def setup_tampered_dtype(tmp: Path) -> None:
    setup_indexed_collection(tmp)
    _edit_manifest(tmp / "c" / "manifest.json", lambda m: m.update(dtype="int8"))


def setup_index_file_outside(tmp: Path) -> None:
    setup_indexed_collection(tmp)
    _edit_manifest(tmp / "c" / "manifest.json", lambda m: m["indexes"]["text"].update(file="../elsewhere.faiss"))


def setup_foreign_index(tmp: Path) -> None:
    """The index file of another collection of the same row count, put in place of the collection's own."""
    from probclip.search import build_index, embed_collection

    setup_indexed_collection(tmp)
    _write(tmp / "other.txt", "a yellow star\na grey moon\n")
    embed_collection(str(tmp / "model"), tmp / "other.txt", tmp / "c2", num_workers=0, progress=False)
    build_index(tmp / "c2", kind="flat", progress=False)
    _write(tmp / "c" / "index" / "text.flat.npy", (tmp / "c2" / "index" / "text.flat.npy").read_bytes())


def setup_foreign_shard(tmp: Path) -> None:
    """The means shard of another collection of the same shape, put in place of the collection's own."""
    from probclip.search import embed_collection

    setup_indexed_collection(tmp)
    _write(tmp / "other.txt", "a yellow star\na grey moon\n")
    embed_collection(str(tmp / "model"), tmp / "other.txt", tmp / "c2", num_workers=0, progress=False)
    _write(tmp / "c" / "text_emb" / "text_emb_0.npy", (tmp / "c2" / "text_emb" / "text_emb_0.npy").read_bytes())


def _write_head(path: Path, dim: int, seed: int = 0) -> None:
    import numpy as np

    from probclip.hierarchy_head import TERMS, HierarchyHead, PairWeights

    rng = np.random.default_rng(seed)
    HierarchyHead({"text_in_text": PairWeights(rng.normal(size=(len(TERMS), dim)), 0.0)}).to_file(path)


def setup_damaged_head_in_model(tmp: Path) -> None:
    from probclip.hierarchy_head import HEAD_FILE

    setup_captions(tmp)
    _write(tmp / "model" / HEAD_FILE, b"not a head")


def setup_replaced_collection_head(tmp: Path) -> None:
    """A collection that carries its model's head, whose copy was then replaced by another head."""
    from probclip.hierarchy_head import HEAD_FILE
    from probclip.search import build_index, embed_collection

    setup_captions(tmp)
    dim = probclip.create_model("ProLIP-Tiny").embed_dim
    _write_head(tmp / "model" / HEAD_FILE, dim)
    embed_collection(str(tmp / "model"), tmp / "captions.txt", tmp / "c", num_workers=0, progress=False)
    build_index(tmp / "c", kind="flat", progress=False)
    _write_head(tmp / "c" / HEAD_FILE, dim, seed=1)


def setup_truncated_index(tmp: Path) -> None:
    setup_indexed_collection(tmp)
    path = tmp / "c" / "index" / "text.flat.npy"
    path.write_bytes(path.read_bytes()[:100])


def setup_truncated_metadata(tmp: Path) -> None:
    setup_indexed_collection(tmp)
    path = tmp / "c" / "metadata" / "text_metadata_0.parquet"
    path.write_bytes(path.read_bytes()[:100])


def setup_eval_out_not_empty(tmp: Path) -> None:
    setup_model_dir(tmp)
    (tmp / "data").mkdir()
    _write(tmp / "out" / "results.json", "{}")


def setup_suite_missing_middle_shard(tmp: Path) -> None:
    from suite_fixtures import build_benchmark_classification

    setup_model_dir(tmp)
    build_benchmark_classification(tmp / "root" / "wds_cifar10", n_shards=3, nshards_file=False)
    (tmp / "root" / "wds_cifar10" / "test" / "1.tar").unlink()


def setup_pool(tmp: Path) -> None:
    """The tiny model and a pool of 3 samples without uids ({tmp}/pool/00000000.tar)."""
    from curate_helpers import write_datacomp_pool

    setup_captions(tmp)
    write_datacomp_pool(tmp / "pool", shards=1, per_shard=3, uid_in_json=False, with_parquet=False, special=False)


def setup_scored_pool(tmp: Path) -> None:
    """The pool scored into {tmp}/scores, and another model in {tmp}/other."""
    from probclip.curate import score_pool

    setup_pool(tmp)
    score_pool(str(tmp / "model"), tmp / "pool", tmp / "scores", num_workers=0, progress=False)
    torch.manual_seed(1)
    _tiny_model_dir(tmp / "other")


def setup_scored_pool_damaged_job(tmp: Path) -> None:
    """A scored pool whose scoring job record was cut short."""
    setup_scored_pool(tmp)
    _write(tmp / "scores" / "job.json", '{"model_fingerprint": ')


# ------------------------------------------------------------------------------------------------------ the table
EMBED = ["embed", "--model", "{tmp}/model", "--out", "{tmp}/c"]
SEARCH = ["search", "{tmp}/c", "--modality", "text"]
SCORE = ["curate", "score", "--out", "{tmp}/scores"]
FILTER = ["curate", "filter", "{tmp}/scores", "--out", "{tmp}/subset"]

#: (id, argv, set-up or None, exit status, text the one line must contain)
CASES = [
    # the dispatcher
    ("unknown-command", ["trian"], None, 2, "'trian'"),
    ("debug-unknown-command", ["--debug", "trian"], None, 2, "'trian'"),
    # train: options and configuration (exit 2)
    ("train-stray-argument", ["train", "stray"], None, 2, "'stray'"),
    ("train-unknown-option", ["train", "--nope"], None, 2, "'--nope'"),
    ("train-missing-config", ["train", "--config", "{tmp}/absent.yaml"], None, 2, "absent.yaml"),
    ("train-yaml-syntax", ["train", "--config", "{tmp}/bad.yaml"], setup_yaml_syntax, 2, "bad.yaml"),
    ("train-yaml-not-utf8", ["train", "--config", "{tmp}/bad.yaml"], setup_yaml_latin1, 2, "UTF-8"),
    ("train-yaml-not-mapping", ["train", "--config", "{tmp}/bad.yaml"], setup_yaml_list, 2, "mapping"),
    ("train-unknown-section", [*TRAIN, "--optimiser.lr", "1"], None, 2, "optimiser"),
    ("train-unknown-key", [*TRAIN, "--optim.lrr", "1"], None, 2, "lrr"),
    ("train-lr-nan", [*TRAIN, "--optim.lr", "nan"], None, 2, "optim.lr"),
    ("train-lr-inf", [*TRAIN, "--optim.lr", "inf"], None, 2, "optim.lr"),
    ("train-lr-text", [*TRAIN, "--optim.lr", "fast"], None, 2, "'fast'"),
    ("train-not-boolean", [*TRAIN, "--run.overwrite", "maybe"], None, 2, "run.overwrite"),
    ("train-steps-float", [*TRAIN, "--run.steps", "2.5"], None, 2, "run.steps"),
    ("train-batch-zero", [*TRAIN, "--data.batch_size", "0"], None, 2, "data.batch_size"),
    ("train-betas-text", [*TRAIN, "--optim.betas", "[a, b]"], None, 2, "optim.betas"),
    ("train-unknown-model", [*TRAIN, "--model.name", "ProLIP-Huge"], None, 2, "ProLIP-Huge"),
    ("train-unknown-loss", [*TRAIN, "--loss.name", "infonce"], None, 2, "infonce"),
    ("train-unknown-loss-kwarg", [*TRAIN, "--loss.kwargs", "{vib_betta: 0}"], None, 2, "vib_betta"),
    ("train-bad-yaml-override", [*TRAIN, "--data.paths", "[s/{0..1}.tar]"], None, 2, "--data.paths"),
    ("train-no-such-cuda", [*TRAIN, "--run.device", "cuda"], None, 2, "cuda"),
    ("train-existing-run", TRAIN, setup_existing_run, 2, "--resume latest"),
    ("train-locked-run", TRAIN, setup_locked_run, 2, "in use by process"),
    ("train-config-change", [*TRAIN, "--resume", "latest", "--data.batch_size", "8"], setup_changed_batch_size, 2,
     "data.batch_size: 16 -> 8"),
    # train: data and files (exit 1)
    ("train-output-is-file", TRAIN, setup_output_is_file, 1, "run"),
    ("train-output-under-file", [*TRAIN[:-4], "--run.output_dir", "/dev/null/run", *TRAIN[-2:]], None, 1,
     "/dev/null/run"),
    ("train-missing-table", [*TRAIN, "--data.source", "csv", "--data.paths", "{tmp}/absent.csv"], None, 1,
     "absent.csv"),
    ("train-csv-missing-column", [*TRAIN, "--data.source", "csv", "--data.paths", "{tmp}/pairs.csv"],
     setup_csv_missing_column, 1, "'filepath'"),
    ("train-csv-not-utf8", [*TRAIN, "--data.source", "csv", "--data.paths", "{tmp}/pairs.csv"], setup_csv_latin1, 1,
     "pairs.csv line 2"),
    ("train-csv-unterminated-quote", [*TRAIN, "--data.source", "csv", "--data.paths", "{tmp}/pairs.csv"],
     setup_csv_unterminated_quote, 1, "unterminated quote"),
    ("train-csv-extra-cells", [*TRAIN, "--data.source", "csv", "--data.paths", "{tmp}/pairs.csv"],
     setup_csv_extra_cells, 1, "pairs.csv line 2"),
    ("train-missing-shard", [*TRAIN, "--data.source", "webdataset", "--data.paths", "{tmp}/shards/00000.tar"],
     setup_missing_shard, 1, "00000.tar"),
    ("train-shard-without-images", [*TRAIN, "--data.source", "webdataset", "--data.paths", "{tmp}/shards/00000.tar"],
     setup_bad_member, 1, "00000.tar"),
    ("train-resume-not-checkpoint", [*TRAIN, "--resume", "{tmp}"], None, 1, "not a checkpoint directory"),
    ("train-crafted-state", [*TRAIN, "--resume", "latest"], setup_crafted_state, 1, "training_state.pt"),
    # eval (exit 2 for options, 1 for models and data)
    ("eval-missing-model", ["eval", "--task", "zeroshot", "--data", "{tmp}"], None, 2, "--model"),
    ("eval-unknown-task", ["eval", "--model", "m", "--task", "bogus", "--data", "{tmp}"], None, 2, "'bogus'"),
    ("eval-missing-data", ["eval", "--model", "m", "--task", "zeroshot", "--data", "{tmp}/absent"], None, 2,
     "absent"),
    ("eval-batch-zero", ["eval", "--model", "m", "--task", "zeroshot", "--data", "{tmp}", "--batch-size", "0"],
     None, 2, "--batch-size"),
    ("eval-batch-text", ["eval", "--model", "m", "--task", "zeroshot", "--data", "{tmp}", "--batch-size", "x"],
     None, 2, "'x'"),
    ("eval-no-such-cuda", ["eval", "--model", "m", "--task", "zeroshot", "--data", "{tmp}", "--device",
                           NO_SUCH_CUDA], None, 2, NO_SUCH_CUDA),
    ("eval-pixel-limit-zero", ["eval", "--model", "m", "--task", "zeroshot", "--data", "{tmp}", "--max-image-pixels",
                               "0"], None, 2, "--max-image-pixels"),
    ("eval-missing-model-dir", ["eval", "--model", "{tmp}/nomodel", "--task", "zeroshot", "--data", "{tmp}"], None,
     1, "nomodel"),
    ("eval-truncated-safetensors", ["eval", "--model", "{tmp}/model", "--task", "zeroshot", "--data", "{tmp}"],
     setup_truncated_safetensors, 1, "model.safetensors"),
    ("eval-garbage-safetensors", ["eval", "--model", "{tmp}/model", "--task", "zeroshot", "--data", "{tmp}"],
     setup_garbage_safetensors, 1, "model.safetensors"),
    ("eval-malformed-config", ["eval", "--model", "{tmp}/model", "--task", "zeroshot", "--data", "{tmp}"],
     setup_malformed_config_json, 1, "config.json line"),
    ("eval-config-not-utf8", ["eval", "--model", "{tmp}/model", "--task", "zeroshot", "--data", "{tmp}"],
     setup_latin1_config_json, 1, "config.json"),
    ("eval-integer-weights", ["eval", "--model", "{tmp}/model", "--task", "zeroshot", "--data", "{tmp}"],
     setup_integer_weights, 1, "logit_scale"),
    ("eval-csv-missing-column", ["eval", "--model", "{tmp}/model", "--task", "retrieval", "--data",
                                 "{tmp}/data/pairs.csv"], setup_retrieval_missing_column, 1, "pairs.csv"),
    ("eval-csv-not-utf8", ["eval", "--model", "{tmp}/model", "--task", "retrieval", "--data",
                           "{tmp}/data/pairs.csv"], setup_retrieval_latin1, 1, "pairs.csv line 2"),
    ("eval-json-malformed", ["eval", "--model", "{tmp}/model", "--task", "retrieval", "--data", "{tmp}/data/k.json"],
     setup_karpathy_malformed, 1, "k.json line"),
    ("eval-json-missing-field", ["eval", "--model", "{tmp}/model", "--task", "retrieval", "--data",
                                 "{tmp}/data/k.json"], setup_karpathy_missing_field, 1, "sentences"),
    ("eval-no-class-folders", ["eval", "--model", "{tmp}/model", "--task", "zeroshot", "--data", "{tmp}/data"],
     setup_empty_image_folder, 1, "no class sub-folders"),
    ("eval-every-image-corrupt", ["eval", "--model", "{tmp}/model", "--task", "zeroshot", "--data", "{tmp}/data"],
     setup_all_images_corrupt, 1, "0.png"),
    # models
    ("models-unknown-action", ["models", "shwo"], None, 2, "'shwo'"),
    ("models-unknown-source", ["models", "show", "ProLIP-Huge"], None, 1, "ProLIP-Huge"),
    ("models-convert-bad-layout", ["models", "convert", "a", "b", "--to", "onnx"], None, 2, "'onnx'"),
    ("models-convert-missing-source", ["models", "convert", "{tmp}/absent", "{tmp}/out", "--to", "probclip"], None,
     1, "absent"),
    ("models-convert-dest-taken", ["models", "convert", "{tmp}/model", "{tmp}/taken", "--to", "probclip"],
     setup_convert_dest_taken, 2, "taken"),
    ("models-convert-truncated", ["models", "convert", "{tmp}/model", "{tmp}/out", "--to", "probclip"],
     setup_truncated_safetensors, 1, "model.safetensors"),
    # synth
    ("synth-count-zero", ["synth", "--out", "{tmp}/shards", "--count", "0"], None, 2, "--count"),
    ("synth-count-text", ["synth", "--out", "{tmp}/shards", "--count", "many"], None, 2, "'many'"),
    ("synth-levels-text", ["synth", "--out", "{tmp}/shards", "--count", "2", "--levels", "a,b"], None, 2,
     "--levels"),
    ("synth-older-shards", ["synth", "--out", "{tmp}/shards", "--count", "2"], setup_older_shards, 2, "00007.tar"),
    ("synth-out-is-file", ["synth", "--out", "{tmp}/shards", "--count", "2"], setup_out_is_file, 2, "shards"),
    # embed, index, search, serve
    ("embed-unknown-option", ["embed", "--bogus-flag"], None, 2, "probclip embed --help"),
    ("embed-missing-data", [*EMBED, "--data", "{tmp}/absent"], setup_captions, 1, "absent"),
    ("embed-nothing-to-embed", [*EMBED, "--data", "{tmp}/empty"], setup_captions, 1, "holds no image and no caption"),
    ("embed-unknown-model", ["embed", "--model", "ProLIP-Huge", "--data", "{tmp}/captions.txt", "--out", "{tmp}/c"],
     setup_captions, 2, "ProLIP-Huge"),
    ("embed-batch-zero", [*EMBED, "--data", "{tmp}/captions.txt", "--batch-size", "0"], setup_captions, 2,
     "batch_size"),
    ("embed-bad-dtype", [*EMBED, "--data", "{tmp}/captions.txt", "--dtype", "float8"], setup_captions, 2,
     "'float8'"),
    ("index-unknown-option", ["index", "--bogus-flag"], None, 2, "probclip index --help"),
    ("index-missing-collection", ["index", "{tmp}/absent"], None, 1, "absent"),
    ("index-not-a-collection", ["index", "{tmp}/empty"], setup_captions, 1, "manifest.json"),
    ("index-bad-kind", ["index", "{tmp}/c", "--kind", "lsh"], setup_collection, 2, "'lsh'"),
    ("index-bad-memory-budget", ["index", "{tmp}/c", "--memory-budget", "lots"], setup_collection, 2, "'lots'"),
    ("search-unknown-option", ["search", "--bogus-flag"], None, 2, "probclip search --help"),
    ("search-missing-collection", ["search", "{tmp}/absent", "--text", "a"], None, 1, "absent"),
    ("search-not-indexed", [*SEARCH, "--text", "a"], setup_collection, 1, "probclip index"),
    ("search-k-zero", [*SEARCH, "--text", "a", "--k", "0"], setup_indexed_collection, 2, "k must be"),
    ("search-empty-text", [*SEARCH, "--text", " "], setup_indexed_collection, 2, "--text"),
    ("search-image-not-an-image", [*SEARCH, "--image", "{tmp}/captions.txt"], setup_indexed_collection, 1,
     "captions.txt"),
    ("search-no-such-modality", ["search", "{tmp}/c", "--text", "a", "--modality", "image"], setup_indexed_collection,
     1, "image"),
    ("search-bad-quantile", [*SEARCH, "--text", "a", "--uncertainty-quantile", "2"], setup_indexed_collection, 2,
     "uncertainty_quantile"),
    # checked numbers, bounded inputs, shared listing readers
    ("embed-karpathy-no-filename", [*EMBED, "--data", "{tmp}/data/k.json"], setup_embed_karpathy_no_filename, 1,
     "images[0] has no 'filename'"),
    ("embed-csv-not-utf8", [*EMBED, "--data", "{tmp}/data/pairs.csv"], setup_embed_csv_latin1, 1,
     "pairs.csv line 2"),
    ("embed-nan-weights", [*EMBED, "--data", "{tmp}/captions.txt"], setup_nan_weights, 1, "'logit_scale'"),
    ("embed-giant-config", [*EMBED, "--data", "{tmp}/captions.txt"], setup_giant_config, 2, "max_model_parameters"),
    ("embed-nested-config", [*EMBED, "--data", "{tmp}/captions.txt"], setup_nested_config, 2,
     "config.json: JSON nested too deeply"),
    ("eval-nested-config", ["eval", "--model", "{tmp}/model", "--task", "zeroshot", "--data", "{tmp}"],
     setup_nested_config, 1, "config.json: JSON nested too deeply"),
    ("eval-giant-config", ["eval", "--model", "{tmp}/model", "--task", "zeroshot", "--data", "{tmp}"],
     setup_giant_config, 1, "max_model_parameters"),
    ("eval-nshards-huge", ["eval", "--model", "{tmp}/model", "--task", "retrieval", "--data", "{tmp}/data"],
     setup_nshards_huge, 1, "10000000000 shards exceeds the limit"),
    ("train-shard-pattern-huge", [*TRAIN, "--data.source", "webdataset", "--data.paths",
                                  "{tmp}/s/{0000000000..9999999999}.tar"], None, 1, "max_shards"),
    ("train-aspect-ratio-zero", [*TRAIN, "--data.max_image_aspect_ratio", "0"], None, 2,
     "data.max_image_aspect_ratio"),
    ("search-max-uncertainty-nan", [*SEARCH, "--text", "a", "--max-uncertainty", "nan"], setup_indexed_collection, 2,
     "max_uncertainty must be a finite number > 0"),
    ("search-max-uncertainty-negative", [*SEARCH, "--text", "a", "--max-uncertainty", "-1"],
     setup_indexed_collection, 2, "got -1.0"),
    ("search-filter-keeps-nothing", [*SEARCH, "--text", "a", "--max-uncertainty", "1e-30"],
     setup_indexed_collection, 2, "max_uncertainty = 1e-30 keeps no item"),
    ("search-quantile-nan", [*SEARCH, "--text", "a", "--uncertainty-quantile", "nan"], setup_indexed_collection, 2,
     "uncertainty_quantile"),
    ("search-eps-inf", [*SEARCH, "--text", "a", "--score", "includes", "--eps", "inf"], setup_indexed_collection, 2,
     "eps must be a finite number"),
    ("search-text-too-long", [*SEARCH, "--text", "w" * 20_001], setup_indexed_collection, 2,
     "a text query of 20001 characters exceeds the limit of 20000"),
    ("search-image-too-long", [*SEARCH, "--image", "{tmp}/long.png"], setup_long_image, 1,
     "aspect ratio of 1e+05:1"),
    ("search-image-endless", [*SEARCH, "--image", "/dev/zero"], setup_indexed_collection, 1,
     "/dev/zero: more than 33554432 bytes"),
    ("serve-unknown-option", ["serve", "--bogus-flag"], None, 2, "probclip serve --help"),
    ("serve-missing-collection", ["serve", "{tmp}/absent"], None, 1, "absent"),
    ("serve-not-a-collection", ["serve", "{tmp}/empty"], setup_captions, 1, "manifest.json"),
    ("serve-port-out-of-range", ["serve", "{tmp}/c", "--port", "70000"], setup_indexed_collection, 2, "70000"),
    ("serve-api-key-empty", ["serve", "{tmp}/c", "--api-key", ""], None, 2, "--api-key"),
    ("serve-api-key-white-space", ["serve", "{tmp}/c", "--api-key", "  "], None, 2, "white space"),
    ("serve-api-key-non-ascii", ["serve", "{tmp}/c", "--api-key", "cl\u00e9"], None, 2, "'\u00e9'"),
    ("serve-max-request-mb-tiny", ["serve", "{tmp}/c", "--max-request-mb", "1e-9"], None, 2, "1e-09"),
    ("serve-max-request-mb-inf", ["serve", "{tmp}/c", "--max-request-mb", "inf"], None, 2, "inf"),
    ("serve-max-request-mb-nan", ["serve", "{tmp}/c", "--max-request-mb", "nan"], None, 2, "nan"),
    ("serve-max-image-megapixels-inf", ["serve", "{tmp}/c", "--max-image-megapixels", "inf"], None, 2, "inf"),
    ("serve-allowed-host-url", ["serve", "{tmp}/c", "--allowed-host", "http://x.org/"], None, 2, "'http://x.org/'"),
    ("serve-cors-origin-no-scheme", ["serve", "{tmp}/c", "--cors-origin", "localhost:1235"], None, 2,
     "'localhost:1235'"),
    ("serve-metadata-fields-empty", ["serve", "{tmp}/c", "--metadata-fields", ","], None, 2, "--metadata-fields"),
    ("serve-metadata-fields-unknown", ["serve", "{tmp}/c", "--port", "0", "--metadata-fields", "caption,colour"],
     setup_indexed_collection, 2, "'colour'"),
    # curate
    ("curate-unknown-option", ["curate", "score", "--bogus-flag"], None, 2, "probclip curate score --help"),
    ("curate-unknown-action", ["curate", "sort"], None, 2, "'sort'"),
    ("curate-missing-model", [*SCORE, "--model", "{tmp}/nomodel", "--data", "{tmp}/pool"], setup_pool, 2, "nomodel"),
    ("curate-missing-shards", [*SCORE, "--model", "{tmp}/model", "--data", "{tmp}/absent"], setup_pool, 1, "absent"),
    ("curate-no-shards", [*SCORE, "--model", "{tmp}/model", "--data", "{tmp}/empty"], setup_pool, 1, "no .tar shard"),
    ("curate-damaged-job-record", [*SCORE, "--model", "{tmp}/model", "--data", "{tmp}/pool"],
     setup_scored_pool_damaged_job, 1, "job.json"),
    ("curate-scores-of-another-model", [*SCORE, "--model", "{tmp}/other", "--data", "{tmp}/pool"], setup_scored_pool,
     2, "holds the scores of another model"),
    ("curate-filter-other-model", [*FILTER, "--rule", "top 50% cosine", "--model", "{tmp}/other"], setup_scored_pool,
     2, "made by another model"),
    ("curate-not-scores", ["curate", "filter", "{tmp}/empty", "--out", "{tmp}/subset", "--rule", "top 50% cosine"],
     setup_pool, 1, "scores.json"),
    ("curate-unknown-column", [*FILTER, "--rule", "top 30% cosin"], setup_scored_pool, 2, "'cosin'"),
    ("curate-bad-fraction", [*FILTER, "--rule", "top 0% cosine"], setup_scored_pool, 2, "(0, 1]"),
    ("curate-keeps-nothing", [*FILTER, "--rule", "cosine > 5"], setup_scored_pool, 1, "keep nothing"),
    ("curate-no-uids", [*FILTER, "--rule", "top 50% cosine", "--format", "datacomp"], setup_scored_pool, 1,
     "no uid for"),
    ("curate-out-exists", ["curate", "filter", "{tmp}/scores", "--out", "{tmp}/pool", "--rule", "top 50% cosine"],
     setup_scored_pool, 2, "--overwrite"),
    ("curate-reshard-into-sources", [*FILTER, "--rule", "top 50% cosine", "--reshard", "{tmp}/pool"],
     setup_scored_pool, 2, "source shards"),
    # quickstart
    ("quickstart-steps-zero", ["quickstart", "--out", "{tmp}/q", "--steps", "0"], None, 2, "--steps"),
    ("quickstart-minutes-inf", ["quickstart", "--out", "{tmp}/q", "--minutes", "inf"], None, 2, "--minutes"),
    ("quickstart-minutes-text", ["quickstart", "--out", "{tmp}/q", "--minutes", "soon"], None, 2, "'soon'"),
]

#: Collections made immutable, files the manifest names, eval outputs never mixed, control characters escaped.
CASES += [
    ("embed-other-model-no-progress", ["embed", "--model", "{tmp}/model2", "--data", "{tmp}/captions.txt", "--out",
                                       "{tmp}/c"], setup_collection_without_progress_and_other_model, 2,
     "embedded with another model"),
    ("embed-data-changed", [*EMBED, "--data", "{tmp}/captions.txt"], setup_collection_then_new_captions, 2,
     "text row 0 ('a green triangle') changed since the collection was embedded"),
    ("embed-resume-data-changed", [*EMBED, "--data", "{tmp}/captions.txt"], setup_killed_run_then_new_captions, 2,
     "an unfinished embedding run, text row 0"),
    ("embed-corrupt-manifest", [*EMBED, "--data", "{tmp}/captions.txt"], setup_corrupt_manifest, 1,
     "{tmp}/c/manifest.json (the collection's manifest) is not valid JSON"),
    ("embed-corrupt-job", [*EMBED, "--data", "{tmp}/captions.txt"], setup_corrupt_job, 1, "{tmp}/c/.progress/job.json"),
    ("embed-corrupt-shard-record", [*EMBED, "--data", "{tmp}/captions.txt", "--no-progress"],
     setup_corrupt_shard_record, 1,
     "text_0.json is not a valid shard record"),
    ("embed-out-holds-other-files", ["embed", "--model", "{tmp}/model", "--data", "{tmp}/captions.txt", "--out",
                                     "{tmp}/notes"], setup_out_holds_other_files, 2, "'todo.txt'"),
    ("embed-non-utf8-file-name", [*EMBED, "--data", "{tmp}/data"], setup_non_utf8_file_name, 1,
     "caf\\udce9.png' is not valid UTF-8"),
    ("index-tampered-rows", ["index", "{tmp}/c"], setup_tampered_rows, 1, "modalities.text.rows is 'many'"),
    ("index-cannot-write", ["index", "{tmp}/c"], setup_index_folder_is_a_file, 1,
     "cannot write in the collection folder '{tmp}/c/index'"),
    ("search-tampered-dtype", [*SEARCH, "--text", "a"], setup_tampered_dtype, 1, "dtype is 'int8'"),
    ("search-index-file-outside", [*SEARCH, "--text", "a"], setup_index_file_outside, 1,
     "'../elsewhere.faiss' lies outside the collection"),
    ("search-foreign-index", [*SEARCH, "--text", "a"], setup_foreign_index, 1,
     "text.flat.npy is not the file `probclip index` wrote for this collection"),
    ("search-foreign-shard", [*SEARCH, "--text", "a"], setup_foreign_shard, 1,
     "text_emb_0.npy is not the file `probclip embed` wrote for this collection"),
    ("search-truncated-index", [*SEARCH, "--text", "a"], setup_truncated_index, 1, "text.flat.npy"),
    ("embed-damaged-head", [*EMBED, "--data", "{tmp}/captions.txt"], setup_damaged_head_in_model, 1,
     "{tmp}/model/hierarchy_head.safetensors is not a readable hierarchy head"),
    ("search-replaced-head", [*SEARCH, "--text", "a", "--score", "included"], setup_replaced_collection_head, 1,
     "hierarchy_head.safetensors is not the file `probclip embed` copied into this collection"),
    ("search-truncated-metadata", [*SEARCH, "--text", "a"], setup_truncated_metadata, 1,
     "text_metadata_0.parquet is truncated or corrupt"),
    ("search-control-characters", ["search", "{tmp}/absent\x1b]0;title\x07", "--text", "a"], None, 1,
     "absent\\x1b]0;title\\x07"),
    ("eval-out-not-empty", ["eval", "--model", "{tmp}/model", "--task", "zeroshot", "--data", "{tmp}/data", "--out",
                            "{tmp}/out"], setup_eval_out_not_empty, 2, "give --overwrite"),
    ("eval-suite-out-not-empty", ["eval", "--model", "m", "--suite", "datacomp", "--data-root", "{tmp}", "--out",
                                  "{tmp}/out"], setup_eval_out_not_empty, 2, "['results.json']"),
    ("eval-missing-middle-shard", ["eval", "--model", "{tmp}/model", "--suite", "datacomp", "--data-root",
                                   "{tmp}/root", "--tasks", "cifar10", "--out", "{tmp}/out", "--no-progress"],
     setup_suite_missing_middle_shard, 1, "['1.tar']"),
]


def test_the_table_covers_every_command_on_this_branch():
    assert len(CASES) >= 40
    covered = {argv[1] if argv[0] == "--debug" else argv[0] for _, argv, *_ in CASES}
    assert set(SUBCOMMANDS) <= covered, set(SUBCOMMANDS) - covered


@pytest.mark.parametrize("case_id, argv, setup, status, named", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_ends_in_one_line(case_id, argv, setup, status, named, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROBCLIP_DEBUG", raising=False)
    if "cuda" in case_id:
        monkeypatch.setenv("LOCAL_RANK", "64")  # this process's CUDA device does not exist, GPU machine or not
    if setup is not None:
        setup(tmp_path)
    capsys.readouterr()
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == status, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("probclip"), lines[0]
    assert named.replace("{tmp}", str(tmp_path)) in lines[0], lines[0]
    assert not (tmp_path / "pwned").exists()  # nothing loaded ran code


def test_an_internal_error_is_reported_as_a_bug_with_its_traceback(capsys, monkeypatch):
    from probclip import cli

    def broken(argv):
        raise ZeroDivisionError("division by zero in a helper")

    assert cli.run_command("train", broken, []) == INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.splitlines()[-1].startswith("probclip train: internal error")


def test_debug_flag_and_environment_show_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PROBCLIP_DEBUG", raising=False)
    argv = ["train", "--config", str(tmp_path / "absent.yaml")]
    assert main(["--debug", *argv]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main([*argv, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("PROBCLIP_DEBUG", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("probclip train:")
    monkeypatch.setenv("PROBCLIP_DEBUG", "0")
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_warnings_print_in_one_line(capsys):
    import warnings

    from probclip.cli import run_command

    def warns(argv):
        warnings.warn("something to know\nacross two lines", RuntimeWarning, stacklevel=1)
        return 0

    assert run_command("models", warns, []) == 0
    assert capsys.readouterr().err == "probclip models: warning: RuntimeWarning: something to know across two lines\n"


@pytest.mark.parametrize("entry", [["-m", "probclip.cli", "train"], ["-m", "probclip.train"]])
def test_console_entry_and_torchrun_entry_behave_alike(entry, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1")
    env.pop("PROBCLIP_DEBUG", None)
    started = time.time()
    done = subprocess.run([sys.executable, *entry, "--optim.lr", "inf", "--run.output_dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "probclip train: optim.lr = inf is not valid; expected a finite number"], done.stderr
    assert time.time() - started < 120


def test_help_brace_example_works_as_printed(tmp_path, capsys):
    from probclip.train.cli import _EPILOG
    from probclip.train.config import load_config, parse_override_args

    example = next(line for line in _EPILOG.splitlines() if "--data.paths" in line and "{00000..00099}" in line)
    import shlex

    config = load_config(None, parse_override_args(shlex.split(example)))
    from probclip.data import expand_shard_urls

    urls = expand_shard_urls(config.data.paths)
    assert len(urls) == 100 and urls[0] == "shards/00000.tar" and urls[-1] == "shards/00099.tar"
    listed = next(line for line in _EPILOG.splitlines() if '"a/{000..009}.tar"' in line)
    config = load_config(None, parse_override_args(shlex.split(listed.split("(")[0].split(":", 1)[1])))
    assert len(expand_shard_urls(config.data.paths)) == 20


def test_a_batch_the_processes_cannot_share_is_a_usage_error():
    from probclip.data.sources import build_train_batches
    from probclip.errors import UsageError
    from probclip.train.config import DataSection

    with pytest.raises(UsageError, match="data.batch_size 8 must be divisible by the number of processes 3"):
        build_train_batches(DataSection(batch_size=8), collator=None, seed=0, rank=0, world_size=3)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"], ["models", "list"]])
def test_help_and_listing_still_exit_0(argv, capsys):
    assert main(argv) == 0
    assert capsys.readouterr().err == ""
