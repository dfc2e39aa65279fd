"""The embedding job of a collection folder: what it is made from, and whether a run may write into it.

A job record names the data, the options that change the stored rows, the model's fingerprint and the inputs'
fingerprint (:mod:`probclip.search.input_digest`). A finished collection keeps it in ``manifest.json`` (``job``), an
unfinished one in ``.progress/job.json``. A run whose job differs from the one recorded is refused with one line
naming the difference, unless ``overwrite``: then the collection's files are removed first and the run starts over
(files of the folder that are not the collection's are left alone). A folder that holds other files and no
collection is never written into.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import UsageError
from ..hierarchy_head import HEAD_FILE
from ..terminal import printable
from .input_digest import INPUTS_DIR, describe_change, write_digests
from .layout import MANIFEST_NAME, PREFIXES, write_json_atomic
from .manifest import JobRecord, read_job_file, read_manifest_job
from .writer import PROGRESS_DIR

__all__ = ["COLLECTION_ENTRIES", "finished_job", "prepare_output", "unfinished_job"]

#: The entries of a collection folder that ``overwrite`` removes.
COLLECTION_ENTRIES = (MANIFEST_NAME, PROGRESS_DIR, INPUTS_DIR, HEAD_FILE, "index", "metadata",
                      *(f"{p}_{kind}" for p in PREFIXES.values() for kind in ("emb", "logvar")))


def finished_job(out: Path) -> JobRecord | None:
    """The job of the finished collection at ``out`` (``manifest.json``'s ``job``), or None when unfinished.

    Only the manifest's ``job`` is read (:func:`~probclip.search.manifest.read_manifest_job`): a manifest damaged
    elsewhere still names its job. One that records none is a ``UsageError``, and one that is not JSON an
    ``InputError``, both suggesting ``--overwrite``.
    """
    job, problem = read_manifest_job(out)
    if problem is not None:
        raise UsageError(f"--out {str(out)!r} holds a finished collection, but {problem}; give --overwrite to embed "
                         "it again from the start")
    return job


def unfinished_job(out: Path) -> JobRecord | None:
    """The job recorded in ``out/.progress/job.json`` when a run started there, else None."""
    path = Path(out) / PROGRESS_DIR / "job.json"
    return read_job_file(path, "the unfinished run's job") if path.is_file() else None


def _difference(out: Path, before: JobRecord, job: JobRecord, digests: dict, inputs) -> str:
    """One phrase per differing field of the job: the model, the data, the inputs, an option."""
    phrases = []
    for key in before.differences(job):
        old, new = before.value(key), job.value(key)
        if key == "inputs_fingerprint":
            if before.data == job.data and old is not None:
                phrases.append(describe_change(out, digests, inputs))
            elif old is None:
                phrases.append("its inputs have no fingerprint (embedded by an older probclip)")
        elif key == "model_fingerprint":
            phrases.append(f"embedded with another model (fingerprint {old}; --model gives {new})")
        elif key == "counts" and before.inputs_fingerprint not in (None, job.inputs_fingerprint):
            continue  # said by the inputs' phrase
        else:
            phrases.append(f"{key} was {old!r}, now {new!r}")
    return "; ".join(phrases)


def prepare_output(out: Path, job: JobRecord, digests: dict, inputs, overwrite: bool) -> None:
    """Rank 0, before embedding: refuse a run into ``out`` that differs from the job recorded there (or into a
    folder holding other files), or clear the collection when ``overwrite``; then record ``job`` and the inputs'
    digests. Raises ``UsageError`` naming the difference."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {printable(str(out))!r} is a file; give a folder for the collection")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    ours = [name for name in entries if name in COLLECTION_ENTRIES]
    if entries and not ours:
        raise UsageError(f"--out {str(out)!r} holds files that are not a probclip collection (e.g. {entries[0]!r}); "
                         "give an empty or new folder")
    if overwrite:
        for name in ours:
            path = out / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    else:
        before = finished_job(out)
        where = "a finished collection"
        if before is None and (out / PROGRESS_DIR / "job.json").is_file():
            before, where = unfinished_job(out), "an unfinished embedding run"
        if before is None and [name for name in ours if name != PROGRESS_DIR]:
            raise UsageError(f"--out {str(out)!r} holds collection files but neither {MANIFEST_NAME} nor "
                             f"{PROGRESS_DIR}/job.json; give --overwrite to embed it again from the start")
        if before is not None and before != job:
            diff = before.differences(job)
            raise UsageError(f"--out {str(out)!r} holds a different embedding job (differs in {diff}): {where}, "
                             f"{_difference(out, before, job, digests, inputs)}; give --overwrite to replace it, or "
                             "another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / PROGRESS_DIR / "job.json", job.to_dict())  # first: a run killed between the two resumes
    write_digests(out, digests)
