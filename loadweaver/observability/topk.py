"""Heavy hitters (top clients, paths, user agents, statuses) in bounded memory.

Misra-Gries in its mergeable form (Agarwal et al. 2012): when more than `capacity` keys are held,
the (capacity+1)-th largest count is subtracted from every counter and those left at or below
zero are dropped. `error`, the sum of those subtractions, bounds every undercount
(`true - error <= estimate <= true`), and as each takes at least capacity+1 times itself out of
the counters, `error <= total / (capacity + 1)`. Counts come in per-second batches (Counters of
what the hot path appended), so a fold is O(capacity + distinct keys) and one partial selection.
"""

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeGuard


class HeavyHitters:
    """A Misra-Gries summary of at most `capacity` keys."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.total = 0  # exact count of everything added
        self.error = 0  # bound on any estimate's undercount
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def add_counts(self, counts: Mapping[str, int]) -> None:
        """Adds a batch of exact counts; counts of zero or less are ignored."""
        held = self._counts
        added = 0
        for key, count in counts.items():
            if count > 0:
                held[key] = held.get(key, 0) + count
                added += count
        self.total += added
        self._prune()

    @classmethod
    def merged(cls, parts: Iterable["HeavyHitters"], capacity: int) -> "HeavyHitters":
        """One summary of several, pruned once: merging them one by one would prune after
        each, costing a selection per part. The bound holds the same way: the errors add up,
        and one prune subtracts at most what several would."""
        merged = cls(capacity)
        held = merged._counts
        for part in parts:
            for key, count in part._counts.items():
                held[key] = held.get(key, 0) + count
            merged.total += part.total
            merged.error += part.error
        merged._prune()
        return merged

    def estimate(self, key: str) -> int:
        return self._counts.get(key, 0)

    def top(self, k: int) -> list[tuple[str, int]]:
        """The `k` largest counts, ties broken by key ascending."""
        return heapq.nsmallest(k, self._counts.items(), key=_rank)

    def to_record(self, k: int) -> dict[str, Any]:
        """The total, error and `k` largest counts, as plain JSON/msgpack-able values."""
        k = max(k, 0)
        ranked = heapq.nsmallest(k + 1, self._counts.items(), key=_rank)
        kept, dropped = ranked[:k], ranked[k:]
        # A key left out reads 0 but may truly be its estimate plus `error`; adding the largest
        # left-out estimate covers them all (max(error, smallest kept) would not: with error 10 a
        # key estimated at 5 may be 15). The reader cannot tell keys were left out, so the writer
        # folds them in, keeping the record a valid summary with error <= total / (k + 1).
        error = self.error + (dropped[0][1] if dropped else 0)
        return {"total": self.total, "error": error, "top": [[key, n] for key, n in kept]}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], capacity: int) -> "HeavyHitters":
        """A summary from `to_record`'s output, which comes from other nodes: ValueError if it is
        malformed. A record with more than `capacity` keys is pruned like any other summary."""
        if not isinstance(record, Mapping):
            raise ValueError("a heavy-hitters record must be a mapping")
        summary = cls(capacity)
        summary.total = _count_field(record, "total")
        summary.error = _count_field(record, "error")
        summary._counts = _parse_top(record.get("top"))
        if sum(summary._counts.values()) > summary.total:
            raise ValueError("the record's counts add up to more than its total")
        summary._prune()
        return summary

    def _prune(self) -> None:
        if len(self._counts) <= self.capacity:
            return
        threshold = heapq.nlargest(self.capacity + 1, self._counts.values())[-1]
        self.error += threshold
        self._counts = {key: n - threshold for key, n in self._counts.items() if n > threshold}


def _rank(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count_field(record: Mapping[str, Any], name: str) -> int:
    value = record.get(name)
    if not _is_count(value):
        raise ValueError(f"the record's {name} must be a non-negative integer")
    return value


def _parse_top(entries: object) -> dict[str, int]:
    if not isinstance(entries, list | tuple):
        raise ValueError("the record's top must be a list of [key, count] pairs")
    counts: dict[str, int] = {}
    for entry in entries:
        if not isinstance(entry, Sequence) or isinstance(entry, str) or len(entry) != 2:
            raise ValueError("each entry of the record's top must be a [key, count] pair")
        key, count = entry
        if not isinstance(key, str) or key in counts:
            raise ValueError("the record's top keys must be distinct strings")
        if not _is_count(count) or count == 0:
            raise ValueError("the record's top counts must be positive integers")
        counts[key] = count
    return counts


class SlidingTopK:
    """Heavy hitters over the last `window` seconds, as `slots` sub-windows that age out whole.

    Slot n spans [n, n + 1) slot lengths after the first clock reading and is live while its
    start is later than now - window: the current slot and the `slots - 1` before it, each its
    own summary, so at most `slots * capacity` keys. The clock must not go back (time.monotonic).
    """

    def __init__(
        self, window: float, slots: int, capacity: int, clock: Callable[[], float]
    ) -> None:
        if window <= 0 or slots < 1 or capacity < 1:
            raise ValueError("window must be positive, and slots and capacity at least 1")
        self.window = window
        self.slots = slots
        self.capacity = capacity
        self.clock = clock
        self._slot_length = window / slots
        self._origin = clock()
        self._live: dict[int, HeavyHitters] = {}  # by slot number

    def add_counts(self, counts: Mapping[str, int]) -> None:
        """Adds a batch of exact counts to the current slot."""
        number = self._slot_number(self.clock())
        slot = self._live.get(number)
        if slot is None:
            self._expire(number)
            slot = self._live[number] = HeavyHitters(self.capacity)
        slot.add_counts(counts)

    def summary(self) -> HeavyHitters:
        """A new summary merging the live slots."""
        self._expire(self._slot_number(self.clock()))
        return HeavyHitters.merged(self._live.values(), self.capacity)

    def covered_seconds(self) -> float:
        """The time the live slots span: up to `window`, less until a window has passed."""
        now = self.clock()
        oldest_start = (self._slot_number(now) - self.slots + 1) * self._slot_length
        return now - self._origin - max(oldest_start, 0.0)

    def _slot_number(self, now: float) -> int:
        return int((now - self._origin) // self._slot_length)

    def _expire(self, current: int) -> None:
        # Only slots that were written are held, so after an idle spell this visits at most
        # `slots` of them however many slot lengths went by.
        oldest_live = current - self.slots + 1
        for number in [n for n in self._live if n < oldest_live]:
            del self._live[number]
