"""Bounded thread pools for I/O-bound fan-out (Organizations listings, one key per thread), and
the pacing of calls under a per-second quota."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

Carrier = Callable[[], Callable[[], AbstractContextManager[object]]]
"""Called in the thread that fans work out; returns what each worker thread enters around
its share of the work. Tracing keeps its current segment per thread: the shell installs a
carrier that hands the caller's segment to the workers (see :func:`carry_context`)."""

_carrier: Carrier | None = None


def carry_context(carrier: Carrier | None) -> None:
    """Install (or, with ``None``, remove) the context carried into worker threads.

    The core knows no tracer: ``handler/app.py`` installs one for X-Ray, so that the AWS calls
    made in worker threads are recorded under the invocation instead of being lost.
    """
    global _carrier  # noqa: PLW0603 - one process-wide hook, set once by the shell
    _carrier = carrier


def fan_out(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``fn`` over ``items`` on a bounded pool, results in order; the first error is raised."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    enter = _carrier() if _carrier else nullcontext

    def carried(item: T) -> R:
        with enter():
            return fn(item)

    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(carried, items))


def settle(fn: Callable[[T], object], items: Sequence[T], workers: int) -> list[Exception | None]:
    """Run ``fn`` over every item even when some fail; the error of each, or ``None``."""

    def settled(item: T) -> Exception | None:
        try:
            fn(item)
        except Exception as error:
            return error
        return None

    return fan_out(settled, items, workers)


class Pacer:
    """At most ``rate`` calls in any one second per region (``rate`` rounded up when it is not
    a whole number, and kept on average).

    AWS counts request quotas per second (KMS PutKeyPolicy, CloudTrail LookupEvents), so a
    burst after a pause (a deploy's few writes go out at once) must not come on top of a
    second's worth of paced calls: a call
    goes out once the call ``capacity`` calls before it is a whole window old, ``capacity``
    calls fitting a window of ``capacity / rate`` seconds.
    """

    def __init__(self, rate: float) -> None:
        self._capacity = max(1, math.ceil(rate))
        self._window = self._capacity / rate
        self._lock = threading.Lock()
        self._slots: dict[str, deque[float]] = {}

    def reserve(self, region: str, now: float) -> float:
        """The moment (``now`` or later) at which the next call in ``region`` may go out."""
        with self._lock:
            slots = self._slots.setdefault(region, deque(maxlen=self._capacity))
            # Never before the previous call: threads read the clock before taking turns.
            slot = max(now, slots[-1]) if slots else now
            if len(slots) == self._capacity:
                slot = max(slot, slots[0] + self._window)
            slots.append(slot)
        return slot

    def wait(self, region: str) -> None:
        now = time.monotonic()
        delay = self.reserve(region, now) - now
        if delay > 0:
            time.sleep(delay)
