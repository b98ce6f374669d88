"""Micro-batching: searches that arrive while the model is busy are answered as one batch.

``workers`` asyncio tasks each take the oldest waiting search plus every other one
queued behind it (up to ``max_batch``), group them by method and run each group
with one ``SearchService.search_many`` call in a worker thread. A lone request is
never delayed: only while another batch is being computed does a worker wait up
to ``wait_ms`` for more searches to join its batch (requests that are already on
their way are still being parsed by the event loop, which shares the CPU with the
model). Under load, batches grow by themselves, so the text encoder and the index
search run once per batch instead of once per request.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .errors import RequestError
from .service import SearchQuery, SearchResult, SearchService

RunInThread = Callable[..., Awaitable[Any]]


@dataclass
class BatchStats:
    queries: int = 0
    batches: int = 0
    largest: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"queries": self.queries, "batches": self.batches, "largest_batch": self.largest}


@dataclass
class _Item:
    query: SearchQuery
    method: str | None
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(self, service: SearchService, run_in_thread: RunInThread, workers: int = 2,
                 max_batch: int = 32, wait_ms: float = 2.0, max_pending: int | None = None,
                 name: str = "searches") -> None:
        self.service = service
        #: searches that may wait for a worker; more are refused with 503 (``None``: no bound)
        self.max_pending = max_pending
        self.name = name
        self.run_in_thread = run_in_thread
        self.workers = workers
        self.max_batch = max_batch
        self.wait_ms = wait_ms
        self._busy = 0
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._tasks: list[asyncio.Task] = []

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not all(t.done() for t in self._tasks)

    @property
    def pending(self) -> int:
        """Searches waiting for a worker."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._work(), name=f"cirlab-batcher-{n}") for n in range(self.workers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while self._queue is not None and not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))

    async def submit(self, query: SearchQuery, method: str | None) -> SearchResult:
        assert self._queue is not None, "MicroBatcher.start() was not called"
        if self.max_pending is not None and self._queue.qsize() >= self.max_pending:
            raise RequestError(503, f"busy: {self._queue.qsize()} {self.name} are already waiting (the limit is "
                                    f"{self.max_pending}); retry later")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(query, method, future))
        return await future

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            await self._batch([await self._queue.get()])

    async def _batch(self, items: list[_Item]) -> None:
        """Answer ``items`` plus what queued behind them; returns holding no reference to any query
        (an uploaded image is freed as soon as its request is done, not when the next batch comes)."""
        self._drain(items)
        if self._busy and len(items) < self.max_batch and self.wait_ms > 0:
            await asyncio.sleep(self.wait_ms / 1000)
            self._drain(items)
        items = [i for i in items if not i.future.done()]  # clients that went away
        groups: dict[str | None, list[_Item]] = defaultdict(list)
        for item in items:
            groups[item.method].append(item)
        self._busy += 1
        try:
            for method, group in groups.items():
                await self._run(method, group)
        finally:
            self._busy -= 1

    def _drain(self, items: list[_Item]) -> None:
        assert self._queue is not None
        while len(items) < self.max_batch and not self._queue.empty():
            items.append(self._queue.get_nowait())

    async def _run(self, method: str | None, group: list[_Item]) -> None:
        self.stats.queries += len(group)
        self.stats.batches += 1
        self.stats.largest = max(self.stats.largest, len(group))
        try:
            results = await self.run_in_thread(self.service.search_many, [i.query for i in group], method)
        except asyncio.CancelledError:
            for item in group:
                if not item.future.done():
                    item.future.cancel()
            raise
        except Exception as e:  # noqa: BLE001 (handed to the request that caused it)
            if len(group) == 1:
                if not group[0].future.done():
                    group[0].future.set_exception(e)
                return
            self.stats.queries -= len(group)  # one bad query must not fail the others: answer them one by one
            for item in group:
                await self._run(method, [item])
            return
        for item, result in zip(group, results):
            if not item.future.done():
                item.future.set_result(result)
