"""Weighted random choice, and the power of two choices on in-flight requests.

A draw bisects the cumulative weights: O(log n). A drawn backend that cannot take the request
(unavailable, or to be avoided) is redrawn a few times; only when those all miss does the draw
fall back to scanning for the available backends, so a pool where most backends are down still
gets an answer.

PowerOfTwo draws two candidates that way and takes the one with fewer in-flight requests per unit
of weight (Mitzenmacher's "power of two choices", the least-request balancer of Envoy).
"""

import math
import random
import time
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence

from loadweaver.balancing.base import (
    NO_BACKENDS,
    NONE_AVAILABLE,
    Backend,
    NoBackend,
    PickContext,
)

DRAW_ATTEMPTS = 4  # redraws before scanning for the available backends


class RandomChoice:
    """Each pick draws a backend with probability proportional to its (effective) weight."""

    load_aware = False

    def __init__(
        self,
        backends: Sequence[Backend],
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._random = self._rng.random
        self._configured = 0
        self._backends: list[Backend] = []  # the drawable ones: active, with a weight
        self._weights: list[float] = []  # effective weights: slow start ramps them
        self._cumulative: list[float] = []
        self._total = 0.0
        self.on_hosts_changed(backends)

    def pick(self, ctx: PickContext, avoid: Collection[Backend] = ()) -> Backend | NoBackend:
        backends = self._backends
        if backends:  # the common case first, inline: one draw that can take the request
            backend = backends[bisect_right(self._cumulative, self._random() * self._total)]
            if backend.available and backend not in avoid:
                return backend
        index = self._draw(avoid)
        if index < 0:
            return NONE_AVAILABLE if self._configured else NO_BACKENDS
        return backends[index]

    def on_hosts_changed(self, backends: Sequence[Backend]) -> None:
        now = self._clock()
        drawable = [b for b in backends if b.state == "active" and b.weight > 0]
        self._configured = len(backends)
        self._backends = drawable
        self._weights = [b.effective_weight(now) for b in drawable]
        running = 0.0
        self._cumulative = []
        for weight in self._weights:
            running += weight
            self._cumulative.append(running)
        self._total = running
        if self._cumulative:
            # random() * total can round up to total itself; bisecting must still land inside.
            self._cumulative[-1] = math.inf

    def on_acquire(self, backend: Backend) -> None:
        pass

    def on_release(self, backend: Backend) -> None:
        pass

    def _draw(self, avoid: Collection[Backend]) -> int:
        """The index of a weighted-random backend that can take the request; -1 if none can."""
        backends = self._backends
        if not backends:
            return -1
        cumulative, total, draw = self._cumulative, self._total, self._random
        for _ in range(DRAW_ATTEMPTS):
            index = bisect_right(cumulative, draw() * total)
            backend = backends[index]
            if backend.available and backend not in avoid:
                return index
        return self._draw_among_available(avoid)

    def _draw_among_available(self, avoid: Collection[Backend]) -> int:
        """The slow path, O(n): a weighted draw among the backends that can take the request."""
        candidates = [
            index
            for index, backend in enumerate(self._backends)
            if backend.available and backend not in avoid
        ]
        if not candidates:
            return -1
        weights = [self._weights[index] for index in candidates]
        return self._rng.choices(candidates, weights)[0]


class PowerOfTwo(RandomChoice):
    """Two weighted-random candidates; the one with fewer in-flight requests per weight wins."""

    load_aware = False  # it reads load.in_flight, which the data plane keeps anyway

    def pick(self, ctx: PickContext, avoid: Collection[Backend] = ()) -> Backend | NoBackend:
        backends = self._backends
        if backends:  # the common case first, inline: two draws that can both take it
            cumulative, total, draw = self._cumulative, self._total, self._random
            first = bisect_right(cumulative, draw() * total)
            second = bisect_right(cumulative, draw() * total)
            one, other = backends[first], backends[second]
            if one.available and other.available and one not in avoid and other not in avoid:
                return self._less_loaded(first, second)
        return self._pick_redrawing(avoid)

    def _pick_redrawing(self, avoid: Collection[Backend]) -> Backend | NoBackend:
        first = self._draw(avoid)
        if first < 0:
            return NONE_AVAILABLE if self._configured else NO_BACKENDS
        return self._less_loaded(first, self._draw(avoid))  # `first` is there to be drawn again

    def _less_loaded(self, first: int, second: int) -> Backend:
        """The candidate with fewer in-flight requests per weight; the first one on a tie."""
        backends, weights = self._backends, self._weights
        first_load = backends[first].load.in_flight / weights[first]
        if backends[second].load.in_flight / weights[second] < first_load:
            return backends[second]
        return backends[first]
