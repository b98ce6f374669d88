"""How long a training run will take, said before it has taken it.

A trainer makes a ``RunEstimate`` before its loop (which prints the step count and how to shorten the
run) and calls ``step()`` after every step; after the first few steps it prints, once, the time per
step measured on this machine and the expected total::

    train tiny backbone: 1,310 steps (10 epochs x 131); --max-steps N for fewer
    train tiny backbone: 2.2 s/step measured over steps 2-4 on this machine -> ~48 min in all
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class RunEstimate:
    def __init__(self, what: str, total: int, detail: str = "", shorten: str = "", measure: int = 3,
                 enabled: bool = True, stream: TextIO | None = None) -> None:
        """``what`` names the run, ``total`` is its step count, ``detail`` how it is made up and ``shorten``
        the option that makes it shorter; the time per step is measured over ``measure`` steps after the
        first (which pays for warm-up)."""
        self.what, self.total, self.measure = what, total, max(1, measure)
        self.enabled = enabled
        self.stream = stream
        self.done = 0
        self._t1: float | None = None
        self.seconds_per_step: float | None = None
        parts = [f"{total:,} steps" + (f" ({detail})" if detail else "")]
        if shorten:
            parts.append(shorten)
        self._say("; ".join(parts))

    def _say(self, text: str) -> None:
        if self.enabled:
            print(f"{self.what}: {text}", file=self.stream or sys.stderr, flush=True)

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.seconds_per_step is not None:
            return
        if self._t1 is None:
            self._t1 = time.perf_counter()          # after the first step
            self._first = self.done
            return
        measured = self.done - self._first
        if measured >= self.measure or self.done >= self.total:
            self.seconds_per_step = (time.perf_counter() - self._t1) / measured
            left = self.total - self.done
            self._say(f"{self.seconds_per_step:.3g} s/step measured over steps {self._first + 1}-{self.done} on this "
                      f"machine -> ~{format_duration(self.seconds_per_step * self.total)} in all "
                      f"(~{format_duration(self.seconds_per_step * left)} left)")

    def wrap(self, steps: Iterable[T]) -> Iterator[T]:
        """Iterate ``steps`` (e.g. the progress bar), counting each one once its loop body is done."""
        for item in steps:
            yield item
            self.step()
