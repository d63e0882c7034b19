"""Per-backend request, error and latency tallies, cheap enough for the hot path.

The hot path only appends each request's latency to `pending` (and bumps `errors`). Once a second
the stats sampler folds the pending latencies into fixed log-spaced buckets (20% apart, 0.1 ms to
about 1 min) with one sort, so percentiles over any window are a difference of two bucket arrays
and bucketing costs the request nothing.
"""

from bisect import bisect_right
from collections.abc import Sequence

LATENCY_BOUNDS: tuple[float, ...] = tuple(0.0001 * 1.2**index for index in range(74))


class BackendStats:
    __slots__ = ("_folded", "errors", "latency", "pending")

    def __init__(self) -> None:
        self.pending: list[float] = []  # latencies (seconds) not yet folded into `latency`
        self.errors = 0
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)  # the last bucket: beyond the bounds
        self._folded = 0

    @property
    def requests(self) -> int:
        return self._folded + len(self.pending)

    def record(self, seconds: float, failed: bool) -> None:
        """What the exchange does inline; kept for callers off the hot path."""
        self.pending.append(seconds)
        if failed:
            self.errors += 1

    def fold(self) -> None:
        """Moves the pending latencies into the buckets."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        pending.sort()
        start = 0
        for index, bound in enumerate(LATENCY_BOUNDS):
            end = bisect_right(pending, bound, start)
            self.latency[index] += end - start
            start = end
        self.latency[-1] += len(pending) - start
        self._folded += len(pending)


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
