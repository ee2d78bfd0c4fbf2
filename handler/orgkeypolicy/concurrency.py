"""Bounded thread pools for I/O-bound fan-out (Organizations listings, one key per thread)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def fan_out(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``fn`` over ``items`` on a bounded pool, results in order; the first error is raised."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def settle(fn: Callable[[T], object], items: Sequence[T], workers: int) -> list[Exception | None]:
    """Run ``fn`` over every item even when some fail; the error of each, or ``None``."""

    def settled(item: T) -> Exception | None:
        try:
            fn(item)
        except Exception as error:
            return error
        return None

    return fan_out(settled, items, workers)
