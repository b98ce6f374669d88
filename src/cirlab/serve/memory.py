"""Memory bounds of the service: a byte budget for decoded uploads in flight, and handing freed
memory back to the operating system once a burst of uploads is over."""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections import deque
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable


class ByteBudget:
    """At most ``total`` bytes held at once by the holders of ``hold(n)``; the others wait, first come first
    served. A request for more than ``total`` is counted as ``total`` (it then runs alone). ``on_empty`` is
    called whenever the last holder lets go."""

    def __init__(self, total: int, on_empty: Callable[[], object] | None = None) -> None:
        self.total = total
        self.used = 0
        self.peak = 0
        self.on_empty = on_empty
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        n = max(0, min(n, self.total))
        await self._acquire(n)
        try:
            yield
        finally:
            self._release(n)

    async def _acquire(self, n: int) -> None:
        if not self._waiters and self.used + n <= self.total:
            self._grant(n)
            return
        fut = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release(n)  # granted just as the waiter was cancelled
            else:
                self._waiters.remove(entry)
                self._wake()
            raise

    def _grant(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def _release(self, n: int) -> None:
        self.used -= n
        self._wake()
        if self.used == 0 and self.on_empty is not None:
            self.on_empty()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.total:
            n, fut = self._waiters.popleft()
            if not fut.done():
                self._grant(n)
                fut.set_result(None)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


#: glibc's mallopt parameter number of the mmap threshold
M_MMAP_THRESHOLD = -3


def map_large_blocks(threshold: int = 1 << 20) -> bool:
    """Serve every allocation of ``threshold`` bytes or more with its own mmap, handed back to the OS when it is
    freed (glibc ``mallopt(M_MMAP_THRESHOLD)``); ``False`` where that does not exist.

    By default glibc raises this threshold each time a large block is freed, up to 32 MiB, so decoded
    images (megabytes each) end up in the heap of whichever thread decoded them and stay resident after the
    burst of uploads that needed them (measured in docs/serve.md, "Memory and stalled connections"). It is
    process-wide: ``cirlab serve`` calls it at start-up.
    """
    fn = getattr(_LIBC, "mallopt", None) if _LIBC is not None else None
    return bool(fn is not None and fn(M_MMAP_THRESHOLD, int(threshold)) == 1)


def trim_heap() -> bool:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``); ``False`` where that does not exist.

    glibc keeps large freed blocks (an image decoded in a worker thread lands in that thread's arena)
    for reuse, so without this the resident size stays at the peak of the last burst of uploads.
    """
    fn = getattr(_LIBC, "malloc_trim", None) if _LIBC is not None else None
    if fn is None:
        return False
    fn(0)
    return True
