"""Data sources by name (``data.source`` in a training config) and the training batch stream built from them.

Built-in sources: ``webdataset`` (tar shards) and ``csv`` (CSV/TSV tables); the synthetic world registers
``synthetic`` itself (``probclip.synthetic``). Register more with ``register_source(name, builder)`` where
``builder(data_section, seed)`` returns an indexed source (``len`` and ``load(index) -> (PIL image, captions,
name)``) or a ``StreamSource``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch.utils.data import DataLoader

from ..errors import UsageError
from ..limits import set_limits
from .csv import CsvPairs
from .datasets import (
    IndexedPairDataset,
    StepBatchSampler,
    StreamingPairDataset,
    collate_indexed,
    shard_records,
)
from .samples import DatasetError, PairBatch, PairCollator, SampleError, as_pil
from .webdataset import check_local_shards, expand_shard_urls, record_to_sample

__all__ = [
    "StreamSource",
    "DatasetPairs",
    "register_source",
    "build_source",
    "list_sources",
    "TrainBatches",
    "build_train_batches",
]


@dataclass
class StreamSource:
    """A streaming source: ``open_stream(slot, num_slots)`` gives one pass of records for a reader slot (endless or
    not), ``decode(record) -> (PIL image, captions)`` raises ``SampleError`` for an unusable record.
    ``max_slots``: how many reader slots (processes x workers) one pass can feed (None: any number)."""

    open_stream: Callable[[int, int], Iterator]
    decode: Callable[[Any], tuple]
    max_slots: int | None = None


class DatasetPairs:
    """Indexed source over any sequence whose items are ``{"image": PIL.Image, "captions": list[str]}`` (or with a
    single ``"caption"``)."""

    def __init__(self, dataset, name: str = "dataset"):
        self.dataset, self.name = dataset, name

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int):
        item = self.dataset[index]
        image, captions = item_to_pair(item, f"{self.name}[{index}]")
        return image, captions, f"{self.name}[{index}]"


def item_to_pair(item: Any, name: str):
    """A dict item ``{"image", "captions" | "caption"}`` -> ``(RGB PIL image, captions)``; ``SampleError`` if not."""
    if not isinstance(item, dict) or "image" not in item:
        raise SampleError(f"{name}: expected a dict with 'image' and 'captions'; got {type(item).__name__}")
    captions = item.get("captions", item.get("caption"))
    if isinstance(captions, str):
        captions = [captions]
    if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
        raise SampleError(f"{name}: 'captions' must be a non-empty list of non-empty strings; got {captions!r}")
    return as_pil(item["image"], name), list(captions)


def iterable_stream(make_iterable: Callable[[], Any]) -> StreamSource:
    """A ``StreamSource`` over a re-iterable, deterministic iterable of dict items; slot ``s`` of ``n`` reads items
    ``s, s + n, s + 2n, ...``."""

    def open_stream(slot: int, num_slots: int) -> Iterator:
        return itertools.islice(iter(make_iterable()), slot, None, num_slots)

    return StreamSource(open_stream, lambda item: item_to_pair(item, "synthetic item"))


# --------------------------------------------------------------------------------------------- registry
def _csv_source(data, seed: int):
    return CsvPairs(data.paths, data.csv_image_column, data.csv_caption_column, data.csv_separator,
                    data.csv_image_root, data.caption_separator)


def _webdataset_source(data, seed: int):
    urls = expand_shard_urls(data.paths)
    check_local_shards(urls, data.image_keys, data.caption_keys)
    decode = partial(record_to_sample, image_keys=tuple(data.image_keys), caption_keys=tuple(data.caption_keys),
                     caption_separator=data.caption_separator)
    return StreamSource(shard_records(urls, data.resample, data.shuffle_buffer, seed), decode,
                        max_slots=None if data.resample else len(urls))


_SOURCES: dict[str, Callable] = {"csv": _csv_source, "webdataset": _webdataset_source}


def register_source(name: str, builder: Callable) -> None:
    """Make ``data.source: name`` use ``builder(data_section, seed)`` (an indexed source or a ``StreamSource``).

    Registered names are accepted by training configs (``list_sources()``) from then on.
    """
    if not isinstance(name, str) or not name:
        raise UsageError(f"a source name must be a non-empty string; got {name!r}")
    if not callable(builder):
        raise UsageError(f"the builder of data source {name!r} must be callable; got {builder!r}")
    _SOURCES[name] = builder


def list_sources() -> list[str]:
    """Names accepted by ``data.source``."""
    return sorted(_SOURCES)


def build_source(data, seed: int):
    """The source named by ``data.source`` (a ``DataSection``); errors name missing shards/files or emptiness."""
    if data.source not in _SOURCES:
        raise UsageError(f"unknown data source {data.source!r}; registered sources: {list_sources()}")
    source = _SOURCES[data.source](data, seed)
    if not isinstance(source, StreamSource) and len(source) == 0:
        raise DatasetError(f"data source {data.source!r} ({data.paths or data.synthetic}) is empty")
    return source


# --------------------------------------------------------------------------------------------- batch stream
class TrainBatches:
    """Endless iterator of this rank's ``PairBatch`` es, tracking the data position for checkpoints.

    ``state()`` -> ``{"kind": "indexed", "step": s}`` or ``{"kind": "stream", "num_workers": W, "batches": k,
    "consumed": {worker: records}}``; pass it back to ``build_train_batches(resume_state=...)`` to continue where
    it stopped.
    """

    def __init__(self, loader: DataLoader, kind: str, state: dict):
        self.loader, self.kind, self._state = loader, kind, state
        self._iterator = iter(loader)

    def __iter__(self):
        return self

    def __next__(self) -> PairBatch:
        batch = next(self._iterator)
        if self.kind == "indexed":
            self._state["step"] = batch.position["step"]
        else:
            self._state["consumed"][int(batch.position["worker"])] = int(batch.position["consumed"])
            self._state["batches"] = self._state.get("batches", 0) + 1
        return batch

    def state(self) -> dict:
        return {"kind": self.kind, **{k: (dict(v) if isinstance(v, dict) else v) for k, v in self._state.items()}}


def build_train_batches(data, collator: PairCollator, *, seed: int, rank: int = 0, world_size: int = 1,
                        start_step: int = 0, resume_state: dict | None = None, pin_memory: bool = False,
                        source=None) -> TrainBatches:
    """The training batch stream of one rank.

    Args:
        data: the ``DataSection`` (``batch_size`` is global: this rank gets ``batch_size / world_size``).
        collator: builds tensors from samples (transform + tokenizer).
        seed: run seed (data order, caption draws, augmentation).
        start_step: first step (indexed sources resume from it).
        resume_state: ``TrainBatches.state()`` saved in a checkpoint (streaming sources resume from it).
        source: an already built source (default: ``build_source(data, seed)``).
    """
    if data.batch_size % world_size:
        raise UsageError(f"data.batch_size {data.batch_size} must be divisible by the number of processes {world_size}")
    local_batch = data.batch_size // world_size
    set_limits(max_image_pixels=data.max_image_pixels, max_member_bytes=data.max_member_bytes,
               max_caption_chars=data.max_caption_chars,
               max_image_aspect_ratio=data.max_image_aspect_ratio)  # inherited by the forked loader workers
    source = build_source(data, seed) if source is None else source
    workers = data.num_workers
    common = dict(num_workers=workers, pin_memory=pin_memory, persistent_workers=False,
                  prefetch_factor=2 if workers > 0 else None)
    if isinstance(source, StreamSource):
        slots = world_size * max(workers, 1)
        if source.max_slots is not None and slots > source.max_slots:
            raise UsageError(
                f"{source.max_slots} shard(s) cannot feed {world_size} process(es) x {max(workers, 1)} worker(s) "
                "without resampling; set data.resample: true, or use fewer workers or more shards"
            )
        skip: dict = {}
        batches_done = 0
        if resume_state and resume_state.get("kind") == "stream":
            if int(resume_state.get("num_workers", -1)) != max(workers, 1):
                recorded = resume_state.get("num_workers")
                raise UsageError(
                    f"the checkpoint's data position was recorded with {recorded} worker(s) per process; resume "
                    f"with data.num_workers: {recorded if recorded != 1 else 0}"
                )
            skip = {int(k): int(v) for k, v in resume_state.get("consumed", {}).items()}
            batches_done = int(resume_state.get("batches", 0))
        dataset = StreamingPairDataset(source, collator, local_batch, seed, rank,
                                       world_size, skip, worker_offset=batches_done % max(workers, 1))
        loader = DataLoader(dataset, batch_size=None, **common)
        return TrainBatches(loader, "stream",
                            {"num_workers": max(workers, 1), "batches": batches_done, "consumed": dict(skip)})
    dataset = IndexedPairDataset(source, seed)
    sampler = StepBatchSampler(data.batch_size, rank, world_size, start_step)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_indexed(collator), **common)
    return TrainBatches(loader, "indexed", {"step": start_step})
