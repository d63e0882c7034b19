"""A token bucket: pure, synchronous, refilled continuously from an injectable clock.

Capacity follows Traefik: the bucket holds `burst` tokens (at least one) and refills at
`rate / period` tokens per second, so after a quiet spell a client may send `burst` requests at
once, then one every `period / rate` seconds.
"""

import time
from collections.abc import Callable


class TokenBucket:
    __slots__ = ("_at", "_clock", "_tokens", "capacity", "rate")

    def __init__(
        self,
        rate_per_second: float,
        capacity: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError(f"a token bucket needs a positive rate, not {rate_per_second}")
        self.rate = rate_per_second
        self.capacity = max(1.0, float(capacity))
        self._clock = clock
        self._tokens = self.capacity  # a new bucket is full: a new client may burst
        self._at = clock()

    def _refill(self) -> float:
        now = self._clock()
        # max(): a clock that steps back (a test clock, a bad source) must not drain the bucket.
        elapsed = max(0.0, now - self._at)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._at = now
        return self._tokens

    def take(self) -> bool:
        """Spends one token if there is one."""
        if self._refill() < 1.0:
            return False
        self._tokens -= 1.0
        return True

    @property
    def tokens(self) -> float:
        return self._refill()

    @property
    def is_full(self) -> bool:
        return self._refill() >= self.capacity

    def seconds_until_token(self) -> float:
        """0 when a token is there now."""
        return max(0.0, 1.0 - self._refill()) / self.rate

    def seconds_until_full(self) -> float:
        return (self.capacity - self._refill()) / self.rate
