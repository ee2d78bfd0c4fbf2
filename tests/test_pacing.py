"""The KMS write pacer: never more than the rate in any one second, and no slower."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from orgkeypolicy.concurrency import Pacer

ARRIVALS = st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 2.5, 10.0, 15.0]),
    arrivals=ARRIVALS,
    regions=st.integers(min_value=1, max_value=2),
)
def test_no_second_holds_more_than_the_rate(
    rate: float, arrivals: list[float], regions: int
) -> None:
    pacer = Pacer(rate)
    capacity = math.ceil(rate)
    slots: dict[str, list[float]] = {}
    for index, now in enumerate(sorted(arrivals)):
        region = f"region-{index % regions}"
        slot = pacer.reserve(region, now)
        assert slot >= now
        slots.setdefault(region, []).append(slot)
    for times in slots.values():
        assert times == sorted(times)
        for first, moment in enumerate(times):
            within = [t for t in times[first:] if t - moment < 1.0 - 1e-9]
            assert len(within) <= capacity
        # No slower than needed: a window's worth of calls goes out per window.
        window = capacity / rate
        assert times[-1] - times[0] <= (len(times) - 1) // capacity * window + max(arrivals)


def test_a_seconds_worth_goes_out_at_once_and_the_rest_a_second_later() -> None:
    pacer = Pacer(10.0)
    slots = [pacer.reserve("us-east-1", 100.0) for _ in range(25)]
    assert slots[:10] == [100.0] * 10
    assert slots[10:20] == [101.0] * 10
    assert slots[20:] == [102.0] * 5
    # Another region has its own quota.
    assert pacer.reserve("eu-west-1", 100.0) == 100.0
