"""Groups search queries that arrive together and runs them, off the event loop, in one worker thread.

A request hands its query to :meth:`SearchBatcher.search` and awaits a future. The worker thread takes every
query waiting in the queue (optionally after a grace period, ``max_wait_s``, that lets simultaneous requests
meet), groups the ones that can share one call (same index, same kind and modality of query, same ``SearchOptions``),
encodes
and searches each group with one ``index.search`` call, and hands each request its own result. While the worker
runs the model or the index, the event loop keeps answering other requests.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..embedding import ProbEmbedding
from ..search import SearchIndex, SearchOptions, SearchResults

__all__ = ["SearchBatcher", "BatchAnswer", "QUERY_KINDS"]

#: The kinds of query the batcher groups: texts are encoded together, images together, embeddings stacked.
QUERY_KINDS = ("text", "image", "embedding")


@dataclass(frozen=True)
class BatchAnswer:
    """What a request gets back: its ``SearchResults``, its query's uncertainty ``u`` (sum of variances) and its
    encoded query (a ``ProbEmbedding [1, D]``, to search again without encoding again)."""

    results: SearchResults
    query_uncertainty: float
    query: ProbEmbedding | None = None


@dataclass
class _Pending:
    index: SearchIndex
    kind: str
    query: Any  # str, PIL image, or a one-row ProbEmbedding [1, D]
    modality: str | None  # what the query was encoded from (text, image; None: an embedding of unknown origin)
    params: SearchOptions
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


def _resolve(future: asyncio.Future, value: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the request went away (client disconnected, cancelled)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _deliver(item: _Pending, value: Any, error: BaseException | None) -> None:
    """Hand a result or an error to the request's event loop (thread-safe); a closed loop has no one waiting."""
    try:
        item.loop.call_soon_threadsafe(_resolve, item.future, value, error)
    except RuntimeError:  # the event loop was closed: the server is shutting down and nobody awaits this
        pass


def _stack(kind: str, queries: list) -> Any:
    """The batched query of one group: list[str], list[Image] or a ProbEmbedding [Q, D]."""
    if kind == "embedding":
        return ProbEmbedding(torch.cat([q.mean for q in queries]), torch.cat([q.logvar for q in queries]))
    return list(queries)


class SearchBatcher:
    """A queue of search queries served by one worker thread that groups the ones waiting together.

    Args:
        max_batch: the most queries taken from the queue for one round (all groups together).
        max_wait_s: seconds the worker waits after the first query of a round for others to arrive. The default,
            0, adds no latency: under load, queries that arrive while the worker is busy wait in the queue and
            are grouped in its next round anyway.
        on_batch: optional callback ``(index_name, batch_size, seconds)`` after each grouped call (metrics).

    The index must offer ``encode(query) -> ProbEmbedding [Q, D]`` and ``search(embedding, options=SearchOptions,
    query_modality=...)`` (``probclip.search.SearchIndex``).
    """

    def __init__(self, max_batch: int = 64, max_wait_s: float = 0.0,
                 on_batch: Callable[[str, int, float], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1; got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0 seconds; got {max_wait_s}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="probclip-search-worker", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker after the queries already queued; waits up to ``timeout`` seconds."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ requests
    async def search(self, index: SearchIndex, kind: str, query: Any, params: SearchOptions,
                     modality: str | None = None) -> BatchAnswer:
        """Queue one query and wait for its :class:`BatchAnswer` (the worker does the work, never the event loop).

        ``kind`` is ``"text"`` (a str), ``"image"`` (a PIL image) or ``"embedding"`` (a ``ProbEmbedding`` of
        shape ``[D]`` or ``[1, D]``); ``modality``: what an embedding was encoded from (``text`` / ``image``, e.g. a
        stored item's; None: unknown), which lets the collection's hierarchy head rank it. Errors raised by the
        search are raised here.
        """
        if kind not in QUERY_KINDS:
            raise ValueError(f"unknown query kind {kind!r}; expected one of {QUERY_KINDS}")
        if not self.running:
            raise RuntimeError("the search worker is not running; call SearchBatcher.start() first")
        if kind == "embedding" and query.mean.dim() == 1:
            query = query[None]
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        modality = kind if kind in ("text", "image") else modality
        self._queue.put(_Pending(index, kind, query, modality, params, loop, future))
        return await future

    # ------------------------------------------------------------------ worker
    def _take_round(self, first: _Pending) -> list[_Pending]:
        round_items = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(round_items) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # stop request: finish this round first
                self._queue.put(None)
                break
            round_items.append(item)
        return round_items

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            groups: dict[tuple, list[_Pending]] = defaultdict(list)
            for item in self._take_round(first):
                groups[(id(item.index), item.kind, item.modality, item.params)].append(item)
            for items in groups.values():
                self._run_group(items)

    def _run_group(self, items: list[_Pending]) -> None:
        index, kind, modality, params = items[0].index, items[0].kind, items[0].modality, items[0].params
        start = time.perf_counter()
        try:
            # Encode the group once (one model call), then search with the embeddings: the requests also learn
            # their query's own uncertainty.
            queries = index.encode(_stack(kind, [it.query for it in items]))
            results = index.search(queries, options=params, query_modality=modality)
            if len(results) != len(items):
                raise RuntimeError(f"index.search returned {len(results)} results for {len(items)} queries")
            query_u = queries.uncertainty.reshape(-1).tolist()
        except Exception as err:  # noqa: BLE001 - handed to the waiting requests, never swallowed
            if len(items) > 1:  # find the query at fault: run each one alone so the others still get answers
                for item in items:
                    self._run_group([item])
                return
            _deliver(items[0], None, err)
            return
        if self.on_batch is not None:
            self.on_batch(getattr(index, "name", "?"), len(items), time.perf_counter() - start)
        for i, (item, result, u) in enumerate(zip(items, results, query_u, strict=True)):
            _deliver(item, BatchAnswer(result, float(u), queries[i: i + 1]), None)
