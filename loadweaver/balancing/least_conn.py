"""Least connections: the backend with the fewest in-flight requests per unit of weight.

Ties go round robin, to the backend picked least recently. A heap keyed by (in_flight / weight,
last pick) makes a pick O(log n). An entry's score may lag behind its backend's live count, but
only upwards: an acquire (and anything else that raises a count) pushes nothing, and the pick
re-scores the top entry before trusting it. Since no live entry scores above its backend, a top
entry whose score is still right is the least loaded. A release lowers the count, so it pushes a
fresh entry and bumps the backend's version; older entries are then stale, and a pick drops them
as they surface (lazy invalidation). The heap is rebuilt when stale entries pile up.

A count that drops without a release reaching this strategy (a request started under the previous
snapshot's strategy, which gets its release) leaves the backend scored too high until its entry
surfaces: it gets fewer requests than its share for a while, never more.
"""

import heapq
import time
from collections.abc import Callable, Collection, Sequence

from loadweaver.balancing.base import (
    NO_BACKENDS,
    NONE_AVAILABLE,
    Backend,
    BackendLoad,
    NoBackend,
    PickContext,
)

# The heap is rebuilt from the live entries once it holds this many entries per backend.
COMPACT_FACTOR = 4

# (in_flight / weight, last picked, index, version); live only while version is the backend's.
Entry = tuple[float, int, int, int]


class LeastConn:
    """Fewest in-flight requests per weight, ties round robin; see the module docstring."""

    load_aware = True

    def __init__(
        self, backends: Sequence[Backend], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._configured = 0
        self._backends: list[Backend] = []  # the scheduled ones: active, with a weight
        self._weights: list[float] = []  # effective weights: slow start ramps them
        self._last_picked: list[int] = []  # the pick count when each was last picked; 0: never
        self._versions: list[int] = []
        # By BackendLoad, which outlives snapshots: a request acquired on an older snapshot's
        # Backend object still finds its backend here.
        self._index: dict[BackendLoad, int] = {}
        self._picks = 0
        self._heap: list[Entry] = []
        self.on_hosts_changed(backends)

    def pick(self, ctx: PickContext, avoid: Collection[Backend] = ()) -> Backend | NoBackend:
        heap = self._heap
        skipped: list[Entry] = []
        while heap:
            score, _, index, version = heap[0]
            if version != self._versions[index]:
                heapq.heappop(heap)
                continue
            backend = self._backends[index]
            if backend.load.in_flight / self._weights[index] != score:
                heapq.heapreplace(heap, self._entry(index))  # its count rose since: re-score
                continue
            if backend.available and backend not in avoid:
                self._picks += 1
                self._last_picked[index] = self._picks
                heapq.heapreplace(heap, self._entry(index))
                for entry in skipped:
                    heapq.heappush(heap, entry)
                return backend
            skipped.append(heapq.heappop(heap))
        heap.extend(skipped)  # popped in order from an empty heap: still a valid heap
        return NONE_AVAILABLE if self._configured else NO_BACKENDS

    def on_hosts_changed(self, backends: Sequence[Backend]) -> None:
        """Takes the new set; backends that stay keep their place in the tie-break order."""
        last_picked = {b.load: self._last_picked[i] for i, b in enumerate(self._backends)}
        now = self._clock()
        scheduled = [b for b in backends if b.state == "active" and b.weight > 0]
        self._configured = len(backends)
        self._backends = scheduled
        self._weights = [b.effective_weight(now) for b in scheduled]
        self._last_picked = [last_picked.get(b.load, 0) for b in scheduled]
        self._versions = [0] * len(scheduled)
        self._index = {b.load: index for index, b in enumerate(scheduled)}
        self._rebuild()

    def on_acquire(self, backend: Backend) -> None:
        pass  # a count going up is caught when the backend's entry surfaces

    def on_release(self, backend: Backend) -> None:
        index = self._index.get(backend.load)
        if index is None:
            return  # no longer in this strategy's set
        heap = self._heap
        heapq.heappush(heap, self._entry(index))
        if len(heap) > COMPACT_FACTOR * len(self._backends):
            self._rebuild()

    def _entry(self, index: int) -> Entry:
        """A fresh entry for the backend, making its older ones stale."""
        self._versions[index] += 1
        score = self._backends[index].load.in_flight / self._weights[index]
        return (score, self._last_picked[index], index, self._versions[index])

    def _rebuild(self) -> None:
        self._heap = [self._entry(index) for index in range(len(self._backends))]
        heapq.heapify(self._heap)
