"""Deterministic training datasets over image-text sources, for ``torch.utils.data.DataLoader``.

Two shapes of source exist:

- indexed (``len(source)`` and ``source.load(index) -> (image, captions, name)``): CSV/TSV tables, in-memory
  lists. Every step's global batch is a fixed slice of a seeded per-epoch permutation, and rank r takes its
  share of it, so the data seen does not depend on the number of workers, and a 1-process run sees the same
  global batches as a W-process run. The data position is simply the step.
- streaming (an iterator factory per reader slot): webdataset shards, generated streams. Each (rank, worker)
  slot reads its own seeded stream; the data position is, per worker, how many records it has consumed, and a
  resumed run skips exactly those records (without decoding them).

Unreadable samples are skipped and counted (``PairBatch.skipped``/``errors``); they never stop the run.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..errors import UsageError
from .samples import (
    READ_ERRORS,
    DatasetError,
    PairBatch,
    PairCollator,
    SampleError,
    derive_seed,
)
from .webdataset import iter_shard_records, shard_stream, shuffled

__all__ = ["IndexedPairDataset", "StepBatchSampler", "StreamingPairDataset", "MAX_ERRORS_PER_BATCH"]

#: Error messages kept per batch for the log (the count is always exact).
MAX_ERRORS_PER_BATCH = 4
#: How many following positions are tried in place of an unreadable indexed sample.
_MAX_SUBSTITUTES = 64


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps ``start_step, start_step + 1, ...`` (forever), this rank's list of ``(step, position)``.

    Global batch ``s`` holds the positions ``s * global_batch ... (s + 1) * global_batch - 1``; rank r takes the
    ``local_batch`` positions starting at ``r * local_batch``.
    """

    def __init__(self, global_batch: int, rank: int, world_size: int, start_step: int = 0):
        if global_batch % world_size:
            raise UsageError(f"global batch {global_batch} is not divisible by the world size {world_size}")
        self.global_batch, self.rank, self.start_step = global_batch, rank, start_step
        self.local_batch = global_batch // world_size

    def __iter__(self):
        for step in itertools.count(self.start_step):
            first = step * self.global_batch + self.rank * self.local_batch
            yield [(step, position) for position in range(first, first + self.local_batch)]

    def __len__(self) -> int:  # the stream is endless; DataLoader only needs a number
        return 2**62


class IndexedPairDataset(Dataset):
    """Map-style dataset: ``dataset[(step, position)]`` -> one sample of the global stream.

    Position p reads item ``perm_e[p mod N]`` where ``e = p // N`` and ``perm_e`` is a permutation seeded with
    ``(seed, e)``. An unreadable item is replaced by the next positions' items (up to 64 tries), each counted.
    """

    def __init__(self, source, seed: int, shuffle: bool = True):
        if len(source) == 0:
            raise DatasetError(f"the dataset {type(source).__name__} is empty")
        self.source, self.seed, self.shuffle = source, int(seed), shuffle
        self._epoch = -1
        self._perm: list[int] | None = None

    def __len__(self) -> int:
        return len(self.source)

    def _item_index(self, position: int) -> int:
        size = len(self.source)
        epoch, offset = divmod(position, size)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            self._perm = torch.randperm(size, generator=generator).tolist()
            self._epoch = epoch
        return self._perm[offset]

    def __getitem__(self, key: tuple[int, int]):
        step, position = key
        errors: list[str] = []
        for attempt in range(_MAX_SUBSTITUTES):
            index = self._item_index(position + attempt)
            try:
                image, captions, _name = self.source.load(index)
                return image, captions, derive_seed(self.seed, position, attempt), step, errors
            except (SampleError, *READ_ERRORS) as err:
                errors.append(str(err))
        raise SampleError(
            f"{_MAX_SUBSTITUTES} consecutive samples from position {position} are unreadable; first: {errors[0]}"
        )


def collate_indexed(collator: PairCollator) -> Callable:
    """The ``collate_fn`` for ``IndexedPairDataset`` batches; the batch position is ``{"step": step + 1}``."""

    def collate(items: Sequence) -> PairBatch:
        errors = [e for item in items for e in item[4]]
        step = items[0][3]
        samples = [(image, captions, seed) for image, captions, seed, _, _ in items]
        return collator(samples, skipped=len(errors), errors=errors[:MAX_ERRORS_PER_BATCH],
                        position={"step": step + 1})

    return collate


class StreamingPairDataset(IterableDataset):
    """Iterable dataset yielding whole local batches (``PairBatch``) from per-slot record streams.

    Args:
        source: a ``StreamSource``: ``source.open_stream(slot, num_slots) -> iterator of records`` (a slot is one
            rank x worker pair; the iterator is endless or ends the pass) and ``source.decode(record) -> (PIL image,
            captions)``, raising ``SampleError`` for an unusable record.
        collator: turns samples into a ``PairBatch``.
        local_batch: samples per yielded batch.
        seed, rank, world_size: identify the slot streams.
        skip: ``{worker_id: records}`` already consumed by each worker (resume); skipped without decoding.
        worker_offset: DataLoader worker ``i`` plays the role of worker ``(i + worker_offset) % num_workers``. The
            DataLoader takes batches from its workers in turn starting at worker 0, so a resumed run sets this to
            (batches consumed) mod (workers) and continues the batch sequence exactly.
        max_empty_passes: raise ``SampleError`` when this many consecutive passes over the stream yield no usable
            sample (an empty or entirely unreadable dataset).
    """

    def __init__(self, source, collator: PairCollator, local_batch: int, seed: int, rank: int = 0,
                 world_size: int = 1, skip: dict | None = None, max_empty_passes: int = 3, worker_offset: int = 0):
        self.open_stream, self.decode, self.collator = source.open_stream, source.decode, collator
        self.local_batch, self.seed, self.rank, self.world_size = local_batch, int(seed), rank, world_size
        self.skip = {int(k): int(v) for k, v in (skip or {}).items()}
        self.max_empty_passes = max_empty_passes
        self.worker_offset = int(worker_offset)

    def _records(self, slot: int, num_slots: int) -> Iterator:
        empty_passes = 0
        while True:
            produced = False
            for record in self.open_stream(slot, num_slots):
                produced = True
                yield record
            empty_passes = 0 if produced else empty_passes + 1
            if empty_passes >= self.max_empty_passes:
                raise SampleError(f"reader slot {slot} of {num_slots} found no records: the dataset is empty")

    def __iter__(self) -> Iterator[PairBatch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (worker + self.worker_offset) % num_workers
        slot = self.rank * num_workers + worker
        num_slots = self.world_size * num_workers
        consumed = self.skip.get(worker, 0)
        records = self._records(slot, num_slots)
        for _ in range(consumed):
            next(records)
        samples, errors, skipped, usable_seen = [], [], 0, 0
        for record in records:
            consumed += 1
            try:
                image, captions = self.decode(record)
            except (SampleError, *READ_ERRORS) as err:
                skipped += 1
                if len(errors) < MAX_ERRORS_PER_BATCH:
                    errors.append(str(err))
                if usable_seen == 0 and skipped >= 10_000:
                    raise SampleError(
                        f"the first {skipped} records are all unreadable; first error: {errors[0]}"
                    ) from err
                continue
            usable_seen += 1
            samples.append((image, captions, derive_seed(self.seed, slot, consumed)))
            if len(samples) == self.local_batch:
                yield self.collator(samples, skipped=skipped, errors=errors,
                                    position={"worker": worker, "num_workers": num_workers, "consumed": consumed})
                samples, errors, skipped = [], [], 0


def shard_records(
    urls: Sequence[str], resample: bool, shuffle_buffer: int, seed: int
) -> Callable[[int, int], Iterator]:
    """``open_stream`` for webdataset shards: shards chosen per slot (``shard_stream``), records through a shuffle
    buffer seeded per slot. A shard that cannot be read (or breaks off) becomes one marker record
    ``{BAD_SHARD_KEY: message}``, which the decoder counts as an unreadable sample.

    Without ``resample`` one call yields one pass (an epoch) over the slot's shards; the dataset reopens it.
    """
    passes: dict[int, int] = {}

    def open_stream(slot: int, num_slots: int) -> Iterator:
        epoch = passes.get(slot, 0)
        passes[slot] = epoch + 1
        if resample:
            shard_iter = shard_stream(urls, True, derive_seed(seed, epoch) % 2**31, slot, num_slots)
        else:
            order = list(urls)
            random.Random(derive_seed(seed, epoch)).shuffle(order)
            shard_iter = iter(order[slot::num_slots])

        def records() -> Iterator:
            for url in shard_iter:
                yield from iter_shard_records(url)

        return shuffled(records(), shuffle_buffer, random.Random(derive_seed(seed, slot, epoch, 7)))

    return open_stream
