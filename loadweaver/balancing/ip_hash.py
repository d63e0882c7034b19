"""Consistent hashing on the client address: a hash ring with virtual nodes, looked up by bisect.

Every backend owns `VNODES_PER_WEIGHT * weight` points on a 64-bit ring; a client goes to the
owner of the first point at or after its hash. The points come from blake2b of the backend's
pool and name only, so every node and every restart builds the same ring, whatever the order of
the backends in the config. Because a backend's points never depend on the other backends:

- adding a backend moves only the keys the new backend takes over (its share of the ring);
- removing one moves only its own keys, each to the next point clockwise;
- a backend that is unavailable or in `avoid` is skipped the same way, so its clients come
  back to it as soon as it recovers.

Unavailable backends (draining, maintenance, unhealthy, at their connection cap) stay on the
ring; skipping them at pick time gives exactly the placement their removal would give, without
a rebuild on every health flap. Only weight 0 takes a backend off the ring.

Slow start is deliberately ignored: the ring uses configured weights. Ramping the vnode count
every second would move clients on and off the new backend while it warms up, and consistent
placement is what this algorithm promises.

Ring size: pools whose points would exceed MAX_RING_POINTS get fewer points per weight unit
(halved until they fit). Crossing that threshold re-places many clients once; it only happens
for very large pools (total weight above MAX_RING_POINTS / VNODES_PER_WEIGHT).
"""

import struct
import time
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterator, Sequence
from hashlib import blake2b

from loadweaver.balancing.base import (
    NO_BACKENDS,
    NONE_AVAILABLE,
    Backend,
    NoBackend,
    PickContext,
)

# A new backend's share of the ring varies by about 1/sqrt(points). With 1024 points per weight
# unit, adding a 4th backend moves 25% +- 0.8% of clients, so the promised "1/(N+1) + 2%" holds
# beyond three standard deviations; larger pools have more slack. The total is capped so that a
# 1000-backend pool (then 512 points each) still builds in about half a second.
VNODES_PER_WEIGHT = 1024
MAX_RING_POINTS = 1 << 19
# One 64-byte blake2b digest yields eight 64-bit points: a sixth of the cost of one per point.
_POINTS_PER_DIGEST = 8
_DIGEST = struct.Struct(">8Q")
# A walk that has met this many distinct refusals checks whether anything can take the request.
_REFUSALS_BEFORE_SCAN = 16


def ring_points(label: str, count: int) -> Iterator[int]:
    """The first `count` ring positions of the backend `label` ("pool/name"); a stable prefix."""
    blocks = -(-count // _POINTS_PER_DIGEST)
    for block in range(blocks):
        digest = blake2b(f"{label}#{block}".encode(), digest_size=64).digest()
        yield from _DIGEST.unpack(digest)[: count - block * _POINTS_PER_DIGEST]


def vnode_halvings(total_weight: int) -> int:
    """How many times the points per weight unit are halved to keep the ring under the cap."""
    wanted = VNODES_PER_WEIGHT * total_weight
    return max(0, (-(-wanted // MAX_RING_POINTS) - 1).bit_length())


def ring_label(backend: Backend) -> str:
    return f"{backend.pool_name}/{backend.name}"


class IpHash:
    """Sends each client address to the same backend for as long as that backend is available.

    The ring is a sorted list of keys `position << shift | rank`: the rank (the backend's index
    in `_by_rank`, ordered by label) rides in the low bits so one list serves both the bisect
    and the owner lookup, and equal positions break ties the same way on every node.
    """

    load_aware = False

    def __init__(
        self, backends: Sequence[Backend], clock: Callable[[], float] = time.monotonic
    ) -> None:
        # `clock` is accepted for the common Strategy signature; the ring ignores slow start.
        self._ring: list[int] = []
        self._by_rank: tuple[Backend, ...] = ()
        self._vnodes: dict[str, int] = {}  # label -> points on the ring
        self._shift = 0
        self._mask = 0
        self._configured = False
        self.on_hosts_changed(backends)

    def pick(self, ctx: PickContext, avoid: Collection[Backend] = ()) -> Backend | NoBackend:
        ring = self._ring
        if not ring:
            return NONE_AVAILABLE if self._configured else NO_BACKENDS
        index = bisect_left(ring, ctx.client_hash << self._shift)
        if index == len(ring):
            index = 0
        backend = self._by_rank[ring[index] & self._mask]
        if backend.available and backend not in avoid:
            return backend
        return self._walk_clockwise(index, avoid)

    def _walk_clockwise(self, start: int, avoid: Collection[Backend]) -> Backend | NoBackend:
        """The owner of the next point after `start` that is available and not avoided."""
        ring, by_rank, mask = self._ring, self._by_rank, self._mask
        size = len(ring)
        refused = {ring[start] & mask}
        if len(refused) == len(by_rank):
            return NONE_AVAILABLE  # a single backend, and it cannot take the request
        for step in range(1, size):
            rank = ring[(start + step) % size] & mask
            if rank in refused:
                continue
            backend = by_rank[rank]
            if backend.available and backend not in avoid:
                return backend
            refused.add(rank)
            if len(refused) == len(by_rank):
                break
            if len(refused) == _REFUSALS_BEFORE_SCAN and not self._any_takes(avoid):
                break
        return NONE_AVAILABLE

    def _any_takes(self, avoid: Collection[Backend]) -> bool:
        """Whether any backend could take the request, in one pass over the backends.

        Visiting every backend on the ring takes about n·ln(n) steps (each point's owner is
        random), so when a pool is down altogether a long walk would make each 503 cost
        milliseconds; one linear pass settles that case instead.
        """
        return any(backend.available and backend not in avoid for backend in self._by_rank)

    def on_hosts_changed(self, backends: Sequence[Backend]) -> None:
        self._configured = bool(backends)
        weighted = sorted((b for b in backends if b.weight > 0), key=ring_label)
        halvings = vnode_halvings(sum(b.weight for b in weighted))
        vnodes = {
            ring_label(b): max(1, (VNODES_PER_WEIGHT * b.weight) >> halvings) for b in weighted
        }
        if vnodes != self._vnodes:
            self._rebuild(weighted, vnodes)
        # Same labels in the same order keep their ranks: only the snapshot's objects change.
        self._by_rank = tuple(weighted)

    def _rebuild(self, weighted: list[Backend], vnodes: dict[str, int]) -> None:
        shift = max(1, len(weighted).bit_length())
        new_rank = {label: rank for rank, label in enumerate(vnodes)}  # vnodes is label-sorted
        keys = self._unchanged_keys(vnodes, new_rank, shift)
        for label, count in vnodes.items():
            if self._vnodes.get(label) != count:
                rank = new_rank[label]
                keys.extend(position << shift | rank for position in ring_points(label, count))
        keys.sort()  # the kept keys are already one sorted run: this is nearly a merge
        self._ring, self._vnodes, self._shift, self._mask = keys, vnodes, shift, (1 << shift) - 1

    def _unchanged_keys(
        self, vnodes: dict[str, int], new_rank: dict[str, int], shift: int
    ) -> list[int]:
        """The current ring's keys of backends whose points stay, re-ranked for the new ring.

        Hashing is the expensive part of a build, so adding or removing a backend costs its own
        points plus one pass over the ring. Labels keep their relative order, so the kept keys
        stay sorted.
        """
        old_shift, old_mask = self._shift, self._mask
        translate = [  # old rank -> new rank, or -1 when the backend's points change
            new_rank[label] if vnodes.get(label) == count else -1
            for label, count in self._vnodes.items()
        ]
        return [
            (key >> old_shift) << shift | rank
            for key in self._ring
            if (rank := translate[key & old_mask]) >= 0
        ]

    def on_acquire(self, backend: Backend) -> None:
        pass

    def on_release(self, backend: Backend) -> None:
        pass
