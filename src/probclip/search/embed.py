"""The embedding job: encode a collection's images and texts into shards of means, log-variances and metadata.

``embed_collection`` is what ``probclip embed`` and ``torchrun -m probclip.embed`` run. Work is cut into shards
of ``shard_rows`` rows per modality; shard ``s`` belongs to rank ``s % world_size``, so the output does not depend
on the number of processes. A shard is written to temporary files, renamed into place, and only then marked done
(``.progress/<modality>_<s>.json``): a run killed at any moment and started again with the same command redoes
only the unfinished shards, and its output equals an uninterrupted run's. Rank 0 then merges the per-shard
records into ``manifest.json`` (row offsets, counts, skipped inputs). The job (data, options, the model's and the
inputs' fingerprints) is recorded first: a run or resume whose job differs from the one in the folder is refused
unless ``overwrite`` (:mod:`probclip.search.job`), so a finished collection never changes in silence.

Unreadable images are skipped, counted and named (``manifest.json: modalities.image.skipped``); their batch
slot is filled with zeros so that every batch has the same composition in every run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.listings import ImageItem
from ..errors import InputError, UsageError
from ..image_decoding import ImageLoadError
from ..limits import LimitExceededError
from ..process_group import barrier, init_distributed
from ..tokenizers import get_tokenizer
from ..transforms import image_transform
from .collection_head import carry_head, model_head_file
from .input_digest import fingerprint, input_digests
from .inputs import CollectionInputs, image_source, list_inputs
from .job import finished_job, prepare_output, unfinished_job
from .manifest import JobRecord
from .model_id import model_record
from .model_loading import load_model
from .writer import (
    PROGRESS_DIR,
    merge_manifest,
    shard_done,
    shard_ranges,
    write_shard,
)

__all__ = ["DEFAULT_SHARD_ROWS", "default_num_workers", "embed_collection", "load_model"]

DEFAULT_SHARD_ROWS = 50_000
DTYPES = ("float16", "float32")
MODALITY_CHOICES = ("both", "image", "text")


def default_num_workers() -> int:
    """DataLoader workers by default: one fewer than the CPU cores, at most 8 (0 on a single core)."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class _ImageRows(torch.utils.data.Dataset):
    """Item i -> (preprocessed image ``[3, S, S]`` or zeros, error message or "")."""

    def __init__(self, items: list[ImageItem], preprocess, image_size: int):
        self.items, self.preprocess, self.size = items, preprocess, image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        try:  # the one decoder (probclip.image_decoding): EXIF orientation, alpha over white, size limits
            return self.preprocess(item.open()), ""
        except (ImageLoadError, LimitExceededError, OSError) as err:
            message = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            return torch.zeros(3, self.size, self.size), message


def check_finite_weights(model: nn.Module) -> None:
    """Raise ``InputError`` naming the first parameter of ``model`` that holds NaN or infinity: such weights give
    non-finite embeddings, which must never reach a collection."""
    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter).all()):
            bad = int((~torch.isfinite(parameter)).sum())
            raise InputError(f"the model's parameter {name!r} holds {bad} NaN or infinite value(s) of "
                             f"{parameter.numel()}; a model with non-finite weights gives meaningless embeddings, "
                             "so nothing was embedded")


def _check_finite(emb, names: list[str], modality: str) -> None:
    """Raise ``InputError`` when a batch's embeddings hold NaN or infinity, naming the first input."""
    finite = torch.isfinite(emb.mean).all(-1) & torch.isfinite(emb.logvar).all(-1)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        raise InputError(f"the model gave a non-finite {modality} embedding for {int((~finite).sum())} of "
                         f"{finite.numel()} inputs of a batch (first: {names[first]!r}); nothing non-finite is "
                         "stored, so the embedding stopped")


def _item_fields(item: ImageItem) -> tuple[int, int]:
    return (-1, -1) if item.offset is None else (int(item.offset), int(item.size))


@torch.inference_mode()
def _embed_images(model, inputs: CollectionInputs, out: Path, shards: list[int], ranges, batch_size: int,
                  num_workers: int, dtype: str, bar) -> None:
    vision = model.config.vision
    dataset = _ImageRows(inputs.images, image_transform(vision), int(vision.image_size))
    batches = [list(range(b, min(b + batch_size, ranges[s][1]))) for s in shards
               for b in range(ranges[s][0], ranges[s][1], batch_size)]
    if not batches:
        return
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                         persistent_workers=False)
    device = next(model.parameters()).device
    pending = {s: ([], [], []) for s in shards}  # means, logvars, errors
    owner = {b: s for s in shards for b in range(*ranges[s])}
    for batch_indices, (pixels, errors) in zip(batches, loader, strict=False):
        emb = model.encode_image(pixels.to(device))
        _check_finite(emb, [image_source(inputs.images[i]) for i in batch_indices], "image")
        s = owner[batch_indices[0]]
        means, logvars, errs = pending[s]
        means.append(emb.mean.float().cpu().numpy())
        logvars.append(emb.logvar.float().cpu().numpy())
        errs.extend(errors)
        bar.update(len(batch_indices))
        start, stop = ranges[s]
        if len(errs) == stop - start:
            items = inputs.images[start:stop]
            fields = [_item_fields(i) for i in items]
            ok = np.array([not e for e in errs])
            write_shard(out, "image", s, start, np.concatenate(means), np.concatenate(logvars), ok,
                         [image_source(i) for i in items], inputs.image_captions[start:stop],
                         [f[0] for f in fields], [f[1] for f in fields], errs, dtype)
            del pending[s]


@torch.inference_mode()
def _embed_texts(model, inputs: CollectionInputs, out: Path, shards: list[int], ranges, batch_size: int,
                 dtype: str, bar) -> None:
    tokenizer = get_tokenizer(model)
    device = next(model.parameters()).device
    for s in shards:
        start, stop = ranges[s]
        texts = inputs.texts[start:stop]
        means, logvars = [], []
        for b in range(0, len(texts), batch_size):
            emb = model.encode_text(tokenizer([t.text for t in texts[b:b + batch_size]]).to(device))
            _check_finite(emb, [t.text[:80] for t in texts[b:b + batch_size]], "text")
            means.append(emb.mean.float().cpu().numpy())
            logvars.append(emb.logvar.float().cpu().numpy())
            bar.update(len(texts[b:b + batch_size]))
        n = len(texts)
        write_shard(out, "text", s, start, np.concatenate(means), np.concatenate(logvars), np.ones(n, bool),
                     [t.source for t in texts], [t.text for t in texts], [-1] * n, [-1] * n, [""] * n, dtype)


def embed_collection(model: nn.Module | str, data: str | Path, out_dir: str | Path, *, modality: str = "both",
                     batch_size: int = 64, num_workers: int | None = None, shard_rows: int = DEFAULT_SHARD_ROWS,
                     dtype: str = "float16", progress: bool = True, image_root: str | Path | None = None,
                     split: str | None = None, model_source: str | None = None, overwrite: bool = False) -> Path:
    """Embed the images and/or texts of ``data`` into the collection folder ``out_dir``; returns ``out_dir``.

    Args:
        model: a loaded probclip model, or a checkpoint folder / ``hf-hub:`` id to load.
        data: an image folder, a .csv/.tsv, a Karpathy .json, webdataset shards or a .txt of captions.
        modality: ``both``, ``image`` or ``text``.
        shard_rows: rows per shard file (per modality).
        dtype: storage dtype of means and log-variances, ``float16`` or ``float32`` (``u`` is always float32).
        model_source: where to reload ``model`` from (recorded in the manifest; set from ``model`` when a path).
            When it is a folder holding a hierarchy head (``hierarchy_head.safetensors``), the collection carries a
            copy of it (:mod:`probclip.search.collection_head`), which ranks its more general / more specific
            searches.
        overwrite: replace a collection made by a different job (other data, model or options) instead of refusing
            to (see :mod:`probclip.search.job`).
    Under ``torchrun`` each rank embeds the shards ``s % world_size == rank``; rank 0 writes the manifest.
    """
    if modality not in MODALITY_CHOICES:
        raise UsageError(f"modality must be one of {list(MODALITY_CHOICES)}; got {modality!r}")
    if dtype not in DTYPES:
        raise UsageError(f"dtype must be one of {list(DTYPES)}; got {dtype!r}")
    for name, value in (("batch_size", batch_size), ("shard_rows", shard_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive integer; got {value!r}")
    num_workers = default_num_workers() if num_workers is None else num_workers
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise UsageError(f"num_workers must be an integer >= 0; got {num_workers!r}")
    if isinstance(model, (str, Path)):
        model, model_source = load_model(str(model))
    model.eval()
    check_finite_weights(model)
    dist = init_distributed("cpu" if not torch.cuda.is_available() else "auto")
    if dist.device.type == "cuda":
        model = model.to(dist.device)
    out = Path(out_dir)
    inputs = list_inputs(data, image_root=image_root, split=split)
    wanted = ("image", "text") if modality == "both" else (modality,)
    counts = {m: len(inputs.images if m == "image" else inputs.texts) for m in wanted}
    if modality != "both" and counts[modality] == 0:
        raise InputError(f"--data {str(data)!r} holds no {modality}; use --modality "
                         f"{'text' if modality == 'image' else 'image'} or other data")
    counts = {m: n for m, n in counts.items() if n}
    record = model_record(model, model_source)
    head_file = model_head_file(model_source, record["embed_dim"])  # a bad head stops the run before any work
    digests = input_digests(inputs, tuple(counts))
    job = JobRecord(data=str(Path(data).resolve()), modality=modality, shard_rows=shard_rows, dtype=dtype,
                    model_fingerprint=record["fingerprint"], split=split,
                    image_root=None if image_root is None else str(Path(image_root).resolve()), counts=counts,
                    inputs_fingerprint=fingerprint(digests))
    if not overwrite and finished_job(out) == job:
        if dist.is_main:
            carry_head(out, head_file)  # the model folder's head may have been fitted (or changed) since
        return out  # finished already (indexes built on it are kept)
    if dist.is_main:
        prepare_output(out, job, digests, inputs, overwrite)
    barrier()
    if not dist.is_main and unfinished_job(out) != job:
        raise UsageError(f"--out {str(out)!r}: rank 0 recorded another job in {out / PROGRESS_DIR / 'job.json'}")
    ranges = {m: shard_ranges(n, shard_rows) for m, n in counts.items()}
    mine = {m: [s for s in range(len(r)) if s % dist.world_size == dist.rank and not shard_done(out, m, s)]
            for m, r in ranges.items()}
    total = sum(ranges[m][s][1] - ranges[m][s][0] for m in mine for s in mine[m])
    with tqdm(total=total, desc="embedding", unit="row", disable=not (progress and dist.is_main)) as bar:
        if "image" in mine:
            _embed_images(model, inputs, out, mine["image"], ranges["image"], batch_size, num_workers, dtype, bar)
        if "text" in mine:
            _embed_texts(model, inputs, out, mine["text"], ranges["text"], batch_size, dtype, bar)
    barrier()
    if dist.is_main:
        merge_manifest(out, job, record, counts, shard_rows)
        carry_head(out, head_file)
    barrier()
    return out
