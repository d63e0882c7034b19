"""Smooth weighted round robin: earliest deadline first over a heap, O(log n) per pick.

A cycle gives every backend exactly `weight` turns, spread evenly: the k-th turn of a backend of
weight w is due at (2k - 1) / (2w) of the cycle, the middle of the k-th of w equal slices. That is
the spread HAProxy's lb_fwrr and nginx's smooth weighted round robin aim for, without nginx's O(n)
scan: a heap holds each backend's next turn, and a pick takes the earliest. Equal due times go to
the lower index, so weights 5:3:1 give the cycle A B A A B C A B A, and 900 picks are exactly
500/300/100. A backend's next turn is pushed when it takes one, so cycles need no global restart.

A backend skipped because the pick must avoid it (a retry) keeps its turn and gets the next pick.
A backend skipped because it cannot take requests (unhealthy, at its connection cap) rejoins at
its own next turn after the pick, so it loses the turns it missed instead of catching up in a
burst when it comes back.
"""

import heapq
import time
from collections.abc import Callable, Collection, Sequence

from loadweaver.balancing.base import (
    NO_BACKENDS,
    NONE_AVAILABLE,
    Backend,
    NoBackend,
    PickContext,
)

# While a backend ramps up in slow start, effective weights are fractional; the schedule needs
# integers, so every weight is scaled by this much for the time being.
RAMP_SCALE = 100

# (cycle, due, index, k): the k-th turn of backend `index` in `cycle`, due at `due` of the cycle.
# `due` is the float of a fraction of small integers: equal fractions give equal floats, and
# unequal ones (denominators up to 2 * 256 * RAMP_SCALE) differ by far more than a float's
# rounding error, so comparing the floats orders turns exactly.
Turn = tuple[int, float, int, int]

# (cycle, numerator, denominator, index): a point in the schedule, the due time of a turn of the
# backend `index` as an exact fraction. A turn at the same due time comes after it when its
# backend's index is higher.
Point = tuple[int, int, int, int]

START: Point = (0, 0, 1, -1)


def schedule_weights(backends: Sequence[Backend], now: float) -> list[int]:
    """Integer weights for the schedule; a ramping backend gets its slow-start share."""
    if not any(backend.ramping(now) for backend in backends):
        return [backend.weight for backend in backends]
    return [max(1, round(backend.effective_weight(now) * RAMP_SCALE)) for backend in backends]


def next_turn(turn: Turn, weight: int) -> Turn:
    cycle, _, index, k = turn
    if k < weight:
        return (cycle, (2 * k + 1) / (2 * weight), index, k + 1)
    return (cycle + 1, 1 / (2 * weight), index, 1)


def first_turn_after(weight: int, index: int, point: Point) -> Turn:
    """The backend's earliest turn that comes after `point` in the schedule."""
    cycle, numerator, denominator, point_index = point
    # The smallest k with (2k - 1) / (2 * weight) >= numerator / denominator, in integers.
    k = -(-(2 * weight * numerator + denominator) // (2 * denominator))
    if (2 * k - 1) * denominator == 2 * weight * numerator and index <= point_index:
        k += 1  # due at the point itself, but ordered before it
    if k > weight:
        return (cycle + 1, 1 / (2 * weight), index, 1)
    return (cycle, (2 * k - 1) / (2 * weight), index, k)


class RoundRobin:
    """Smooth weighted round robin; see the module docstring."""

    load_aware = False

    def __init__(
        self, backends: Sequence[Backend], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._configured = 0
        self._backends: list[Backend] = []  # the scheduled ones: active, with a weight
        self._weights: list[int] = []
        self._turns: list[Turn] = []  # a heap: each scheduled backend's next turn
        self.on_hosts_changed(backends)

    def pick(self, ctx: PickContext, avoid: Collection[Backend] = ()) -> Backend | NoBackend:
        turns = self._turns
        if not turns:
            return NONE_AVAILABLE if self._configured else NO_BACKENDS
        turn = turns[0]
        index = turn[2]
        backend = self._backends[index]
        if backend.available and backend not in avoid:
            heapq.heapreplace(turns, next_turn(turn, self._weights[index]))
            return backend
        return self._pick_skipping(avoid)

    def on_hosts_changed(self, backends: Sequence[Backend]) -> None:
        """Reschedules from where the old schedule stands, so a change does not restart the cycle.

        With unchanged weights every backend keeps its next turn; changed ones take their first
        turn under the new weights from there on.
        """
        scheduled = [b for b in backends if b.state == "active" and b.weight > 0]
        point = self._current_point(scheduled)
        self._configured = len(backends)
        self._backends = scheduled
        self._weights = schedule_weights(scheduled, self._clock())
        self._turns = [
            first_turn_after(weight, index, point) for index, weight in enumerate(self._weights)
        ]
        heapq.heapify(self._turns)

    def on_acquire(self, backend: Backend) -> None:
        pass

    def on_release(self, backend: Backend) -> None:
        pass

    def _pick_skipping(self, avoid: Collection[Backend]) -> Backend | NoBackend:
        """Pops turns until one's backend can take the request, then puts the others back."""
        turns = self._turns
        skipped: list[Turn] = []
        while turns:
            turn = heapq.heappop(turns)
            index = turn[2]
            backend = self._backends[index]
            if backend.available and backend not in avoid:
                heapq.heappush(turns, next_turn(turn, self._weights[index]))
                self._put_back(skipped, taken=turn)
                return backend
            skipped.append(turn)
        self._turns = skipped  # popped in order, so already a valid heap
        return NONE_AVAILABLE

    def _put_back(self, skipped: list[Turn], taken: Turn) -> None:
        """Avoided backends keep their turn; unavailable ones move past the turn just taken."""
        cycle, _, taken_index, k = taken
        point = (cycle, 2 * k - 1, 2 * self._weights[taken_index], taken_index)
        for turn in skipped:
            index = turn[2]
            if self._backends[index].available:
                heapq.heappush(self._turns, turn)
            else:
                heapq.heappush(self._turns, first_turn_after(self._weights[index], index, point))

    def _current_point(self, scheduled: Sequence[Backend]) -> Point:
        """Just before the next turn due, with that backend's index in `scheduled`."""
        if not self._turns:
            return START
        cycle, _, index, k = self._turns[0]
        load = self._backends[index].load
        new_index = next((i for i, b in enumerate(scheduled) if b.load is load), 0)
        return (cycle, 2 * k - 1, 2 * self._weights[index], new_index - 1)
