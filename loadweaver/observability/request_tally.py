"""Requests by listener, route, pool, backend and status class, and their durations.

The hot path finds its row with one dict lookup, bumps a plain integer and appends the duration
to a list. Prometheus' labelled counters and histograms take a lock and a bisect on every
observation; here the durations are sorted and bucketed in one pass when they are folded (once a
second, and before every scrape), which costs the request nothing.
"""

from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

RowKey = tuple[str, str, str, str]  # listener, route, pool, backend ("" where there is none)
STATUS_CLASSES = 10  # llhttp accepts any three-digit status, 100 to 999
MAX_ROWS = 20_000  # label sets kept; beyond it new backends are counted as OVERFLOW
OVERFLOW = "other"


class TallyRow:
    __slots__ = ("buckets", "counts", "duration_sum", "durations")

    def __init__(self, bucket_count: int) -> None:
        self.counts = [0] * STATUS_CLASSES  # by status // 100
        self.durations: list[float] = []  # seconds, not yet folded into the buckets
        self.buckets = [0] * (bucket_count + 1)  # not cumulative; the last one is +Inf
        self.duration_sum = 0.0


class RequestTally:
    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.rows: dict[RowKey, TallyRow] = {}
        self._keeps: Callable[[RowKey], bool] = lambda _: True

    def row(self, key: RowKey) -> TallyRow:
        """The row for `key`, made on first use (the hot path tries `rows.get` first)."""
        found = self.rows.get(key)
        if found is not None:
            return found
        if len(self.rows) >= MAX_ROWS:
            key = (key[0], key[1], key[2], OVERFLOW)
            found = self.rows.get(key)
            if found is not None:
                return found
        row = self.rows[key] = TallyRow(len(self.bounds))
        return row

    def fold(self) -> None:
        """Moves pending durations into the buckets, and drops rows the config no longer names
        (a request still in flight on a removed backend makes its row again when it ends)."""
        stale = []
        for key, row in self.rows.items():
            if not self._keeps(key):
                stale.append(key)
            elif row.durations:
                self._fold_row(row)
        for key in stale:
            del self.rows[key]  # in place: the recorder holds this dict

    def retain_only(self, keeps: Callable[[RowKey], bool]) -> None:
        """From now on, keeps only the rows `keeps` accepts."""
        self._keeps = keeps
        self.fold()

    def _fold_row(self, row: TallyRow) -> None:
        pending, row.durations = row.durations, []
        pending.sort()
        start = 0
        for index, bound in enumerate(self.bounds):
            end = bisect_right(pending, bound, start)
            row.buckets[index] += end - start
            start = end
        row.buckets[-1] += len(pending) - start
        row.duration_sum += sum(pending)

    def rebucket(self, bounds: Sequence[float]) -> None:
        """New bucket bounds: the old buckets cannot be split, so durations start over (a
        counter reset, which Prometheus' rate() handles)."""
        if tuple(bounds) == self.bounds:
            return
        self.bounds = tuple(bounds)
        for row in self.rows.values():
            row.buckets = [0] * (len(self.bounds) + 1)
            row.duration_sum = 0.0
            row.durations = []


class RequestTallyCollector(Collector):
    """`loadweaver_requests_total` and `loadweaver_request_duration_seconds` at scrape time."""

    def __init__(self, tally: RequestTally, enabled: list[bool]) -> None:
        self._tally = tally
        self._enabled = enabled  # a one-item list the node flips on reload

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        if not self._enabled[0]:
            return
        tally = self._tally
        tally.fold()
        yield _requests(tally)
        yield _durations(tally)


def _requests(tally: RequestTally) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "loadweaver_requests",
        "Responses sent to clients, by listener, route, pool, backend and status class.",
        labels=["listener", "route", "pool", "backend", "code"],
    )
    for key, row in tally.rows.items():
        for status_class, count in enumerate(row.counts):
            if count:
                family.add_metric([*key, f"{status_class}xx"], count)
    return family


def _durations(tally: RequestTally) -> HistogramMetricFamily:
    """Per route and pool: rows of every listener and backend summed."""
    merged: dict[tuple[str, str], tuple[list[int], float]] = {}
    for (_, route, pool, _), row in tally.rows.items():
        if not route or not any(row.buckets):
            continue
        buckets, total = merged.get((route, pool), ([0] * len(row.buckets), 0.0))
        summed = [mine + theirs for mine, theirs in zip(buckets, row.buckets, strict=True)]
        merged[(route, pool)] = (summed, total + row.duration_sum)
    family = HistogramMetricFamily(
        "loadweaver_request_duration_seconds",
        "From the request's turn to its last response byte, by route and pool.",
        labels=["route", "pool"],
    )
    bounds = [*(f"{bound:g}" for bound in tally.bounds), "+Inf"]
    for (route, pool), (buckets, total) in merged.items():
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(bounds, buckets, strict=True):
            running += count
            cumulative.append((bound, running))
        family.add_metric([route, pool], cumulative, total)
    return family
