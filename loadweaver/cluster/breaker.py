"""A circuit breaker for the cluster store: after a few failures in a row, calls fail at once
for a cool-down instead of each waiting out a timeout; then one trial call decides.

It also owns the store's up/down state, so each transition is logged once and reported once.
"""

import time
from collections.abc import Callable

from loguru import logger


class CircuitBreaker:
    def __init__(
        self,
        on_change: Callable[[bool], None],
        failures_to_open: int = 3,
        cool_down: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_change = on_change
        self._failures_to_open = failures_to_open
        self._cool_down = cool_down
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self.up = True

    def allows(self) -> bool:
        """False while open; after the cool-down one caller at a time may try."""
        if self._failures < self._failures_to_open:
            return True
        now = self._clock()
        if now < self._open_until:
            return False
        self._open_until = now + self._cool_down  # this caller is the trial
        return True

    def succeeded(self) -> None:
        self._failures = 0
        if not self.up:
            self.up = True
            logger.warning("cluster store is reachable again")
            self._on_change(True)

    def failed(self, reason: str) -> None:
        self._failures += 1
        if self._failures >= self._failures_to_open:
            self._open_until = self._clock() + self._cool_down
            if self.up:
                self.up = False
                logger.error("cluster store is down ({}); serving from the last snapshot", reason)
                self._on_change(False)
