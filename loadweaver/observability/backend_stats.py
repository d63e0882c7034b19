"""Per-backend request, error and latency tallies, cheap enough for the hot path.

Latency goes into fixed log-spaced buckets (20% apart, 0.1 ms to about 1 min), so recording is one
bisect and percentiles over any window are a difference of two bucket arrays.
"""

from bisect import bisect_right
from collections.abc import Sequence

LATENCY_BOUNDS: tuple[float, ...] = tuple(0.0001 * 1.2**index for index in range(74))


class BackendStats:
    __slots__ = ("errors", "latency", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)  # the last bucket: beyond the bounds

    def record(self, seconds: float, failed: bool) -> None:
        self.requests += 1
        if failed:
            self.errors += 1
        self.latency[bisect_right(LATENCY_BOUNDS, seconds)] += 1


def percentile(buckets: Sequence[int], fraction: float) -> float | None:
    """The upper bound, in seconds, of the bucket holding the `fraction` quantile; None if empty."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(buckets):
        seen += count
        if seen >= rank and count:
            return LATENCY_BOUNDS[min(index, len(LATENCY_BOUNDS) - 1)]
    return LATENCY_BOUNDS[-1]
