"""Worker threads of the service, by kind of work, so that cheap work never waits behind expensive work.

* ``model``: encoding and searching with the cheap methods (``limits.model_workers`` at once);
* ``decode``: decoding uploads and thumbnails (``limits.decode_workers`` at once);
* ``large``: decoding uploads over ``limits.large_pixels`` (one at a time, lower CPU priority);
* ``slow``: searches with expensive methods (``limits.slow_workers`` at once, lower CPU priority).

The first two share anyio's worker threads, bounded by a capacity limiter each; the last two have
threads of their own whose scheduling priority is lowered (Linux ``nice`` per thread), so on a
busy machine the CPU goes to cheap queries first.
"""
from __future__ import annotations

import asyncio
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, TypeVar

import anyio
import anyio.to_thread

from .limits import ServeLimits

T = TypeVar("T")
Run = Callable[..., Awaitable[Any]]
#: how much lower the expensive lanes' threads are scheduled (nice value; 10 gives them ~1/10 of a normal thread's
#: share of a contended core)
LOW_PRIORITY = 10


def lower_thread_priority(nice: int = LOW_PRIORITY) -> bool:
    """Lower the calling thread's CPU priority (Linux: nice applies per thread); ``False`` where not possible."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        return True
    except (AttributeError, OSError):
        return False


class WorkerLanes:
    def __init__(self, limits: ServeLimits) -> None:
        self.sizes = {"model": limits.model_workers, "decode": limits.decode_workers, "large": 1,
                      "slow": limits.slow_workers}
        self._limiters: dict[str, anyio.CapacityLimiter] = {}
        self._executors: dict[str, ThreadPoolExecutor] = {}

    def runner(self, kind: str) -> Run:
        """``await run(fn, *args)`` runs ``fn(*args)`` in a worker thread of lane ``kind``."""
        size = self.sizes[kind]
        if kind in ("large", "slow"):
            async def run_low(fn: Callable[..., T], *args: Any) -> T:
                if kind not in self._executors:
                    self._executors[kind] = ThreadPoolExecutor(size, thread_name_prefix=f"cirlab-{kind}",
                                                               initializer=lower_thread_priority)
                return await asyncio.get_running_loop().run_in_executor(self._executors[kind],
                                                                        functools.partial(fn, *args))
            return run_low

        async def run(fn: Callable[..., T], *args: Any) -> T:
            if kind not in self._limiters:  # made inside the event loop
                self._limiters[kind] = anyio.CapacityLimiter(size)
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiters[kind])
        return run

    def close(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()
