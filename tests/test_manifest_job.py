"""The embedding job in a collection's manifest is typed (``JobRecord``) and read in ``search/manifest.py`` only:
tolerantly (its ``job`` field alone), so that a run meeting a damaged manifest still names the job or suggests
``--overwrite``; no module of search or serve reads manifest keys from a dict."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import probclip
from probclip.cli import main
from probclip.errors import InputError, UsageError
from probclip.search.job import finished_job, prepare_output, unfinished_job
from probclip.search.manifest import JobRecord, SkippedInput, read_manifest, read_manifest_job
from search_helpers import make_collection

PACKAGE_DIR = Path(probclip.__file__).resolve().parent


def _edit(root: Path, edit) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_job_record_round_trips_and_names_its_differences():
    written = {"data": "/d", "modality": "both", "shard_rows": 8, "dtype": "float16", "model_fingerprint": "ab",
               "split": None, "image_root": None, "counts": {"image": 3}, "inputs_fingerprint": "cd",
               "added_later": 1}
    job = JobRecord.from_dict(written)
    assert job.to_dict() == written and job.other == {"added_later": 1} and job.counts == {"image": 3}
    assert JobRecord.from_dict(job.to_dict()) == job
    other = JobRecord.from_dict({**written, "dtype": "float32", "added_later": 2})
    assert job.differences(other) == ["added_later", "dtype"] and job.value("added_later") == 1
    older = JobRecord.from_dict({k: v for k, v in written.items() if k != "inputs_fingerprint"})
    assert older.inputs_fingerprint is None and job.differences(older) == ["inputs_fingerprint"]


def test_the_job_is_read_from_a_manifest_damaged_elsewhere(tmp_path):
    root, _, _ = make_collection(tmp_path / "c", n=20)
    job = read_manifest(root).job
    assert isinstance(job, JobRecord) and job.modality == "image" and job.counts == {"image": 20}
    _edit(root, lambda m: m.update(model="gone"))
    with pytest.raises(InputError, match="model is 'str'"):
        read_manifest(root)
    assert read_manifest_job(root) == (job, None)
    assert finished_job(root) == job
    assert read_manifest_job(tmp_path / "absent") == (None, None) and finished_job(tmp_path / "absent") is None
    assert unfinished_job(root) is None


@pytest.mark.parametrize(("job", "found"), [(None, "missing"), ([1, 2], "a list, not an object")])
def test_a_manifest_without_a_job_is_a_one_line_error_suggesting_overwrite(tmp_path, job, found):
    root, _, _ = make_collection(tmp_path / "c", n=20)
    _edit(root, lambda m: m.update(job=job) if job is not None else m.pop("job"))
    recorded, reason = read_manifest_job(root)
    assert recorded is None and reason.endswith(f'records no embedding job (its "job" is {found})')
    new_job = JobRecord(data="/d", modality="image", shard_rows=8, dtype="float16", model_fingerprint="ab")
    with pytest.raises(UsageError, match=r"records no embedding job .*; give --overwrite") as refused:
        prepare_output(root, new_job, {}, None, overwrite=False)
    assert "\n" not in str(refused.value)
    (root / "manifest.json").write_text("{cut")
    with pytest.raises(InputError, match=r"manifest.json \(the collection's manifest\) is not valid JSON .* "
                                         "give --overwrite"):
        finished_job(root)


def test_embed_into_a_collection_whose_manifest_lost_its_job_exits_2(tmp_path, capsys):
    root, _, _ = make_collection(tmp_path / "c", n=20)
    _edit(root, lambda m: m.pop("job"))
    torch.manual_seed(0)
    probclip.create_model("ProLIP-Tiny").save_pretrained(tmp_path / "model")
    (tmp_path / "captions.txt").write_text("a red square\n")
    code = main(["embed", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "captions.txt"),
                 "--out", str(root), "--num-workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "records no embedding job" in err and "give --overwrite" in err


def test_skipped_inputs_are_typed(tmp_path):
    root, _, _ = make_collection(tmp_path / "c", n=20)
    _edit(root, lambda m: m["modalities"]["image"].update(
        skipped=1, skipped_inputs=[{"source": "a.png", "error": "not an image"}]))
    assert read_manifest(root).modalities["image"].skipped_inputs == (SkippedInput("a.png", "not an image"),)
    _edit(root, lambda m: m["modalities"]["image"].update(skipped_inputs=[{"source": "a.png"}]))
    with pytest.raises(InputError, match=r"skipped_inputs\[0\]\.error is None; expected a string"):
        read_manifest(root)


def _raw_manifest_reads(source: str, where: str) -> list[str]:
    """``x[...]`` and ``x.get(...)`` where ``x`` is named like a manifest or its job (``manifest``, ``job``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript):
            target = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            target = node.func.value
        else:
            continue
        name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
        if "manifest" in name.lower() or name in ("job", "before", "recorded"):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_of_search_or_serve_reads_the_manifest_as_a_dict():
    files = [p for package in ("search", "serve") for p in sorted((PACKAGE_DIR / package).rglob("*.py"))
             if p.name != "manifest.py" or p.parent.name != "search"]
    assert len(files) > 30
    hits = [hit for p in files for hit in _raw_manifest_reads(p.read_text(encoding="utf-8"), p.name)]
    assert hits == []
    raw = 'job = json.loads(text).get("job")\nroots = [job.get("data"), self.manifest["model"], manifest.job["x"]]\n'
    assert len(_raw_manifest_reads(raw, "example.py")) == 3  # what the check finds
