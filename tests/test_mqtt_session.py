"""The reconnect policy: exponential growth, bounded, and jittered so a fleet does not stampede."""

from __future__ import annotations

import random

from sync.mqtt import backoff_delay


def test_backoff_grows_exponentially_within_bounds() -> None:
    rng = random.Random(3)
    for attempt in range(12):
        window = min(60.0, 0.5 * 2**attempt)
        for _ in range(50):
            d = backoff_delay(attempt, 0.5, 60.0, rng)
            assert window / 2 <= d <= window


def test_backoff_is_jittered_so_a_fleet_spreads_out() -> None:
    delays = [backoff_delay(6, 0.5, 60.0, random.Random(seed)) for seed in range(200)]
    assert len({round(d, 3) for d in delays}) > 150
    assert max(delays) - min(delays) > 10  # spread over the upper half of a 32 s window
