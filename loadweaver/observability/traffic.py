"""Traffic patterns: the top clients, paths, user agents and status codes over a sliding window.

Each dimension is a bounded heavy-hitter summary per time slot (topk.py). Finished requests
arrive in batches from the reader; under load only every k-th request is queued for them and
counted k times, so the work per second stays bounded while the shares stay right.
"""

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from loadweaver.config.observability import TrafficPatternsConfig
from loadweaver.observability.recorder import Finished
from loadweaver.observability.request_fields import (
    client_address,
    clip,
    path_and_query,
)
from loadweaver.observability.topk import HeavyHitters, SlidingTopK
from loadweaver.proxy.headers import header_value

DIMENSIONS = ("clients", "paths", "user_agents", "status_codes")
PUBLISHED_TOP = 20  # entries per dimension a node shares with the cluster


class TrafficPatterns:
    def __init__(self, settings: TrafficPatternsConfig, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.settings = settings
        self._windows = {
            dimension: SlidingTopK(settings.window, settings.slots, settings.capacity, clock)
            for dimension in DIMENSIONS
        }
        self._step = 1  # the latest batch's sampling step
        self._cached: tuple[int, dict[str, HeavyHitters]] | None = None

    def add(self, batch: Sequence[Finished], weight: int = 1) -> None:
        """Requests sampled every `weight`-th: each counts `weight` times."""
        self._step = weight
        keys: dict[str, Counter[str]] = {dimension: Counter() for dimension in DIMENSIONS}
        for client, exchange, status, *_ in batch:
            keys["clients"][clip(client_address(client, exchange))] += weight
            keys["status_codes"][str(status)] += weight
            if exchange is None:
                keys["paths"]["-"] += weight
                keys["user_agents"]["-"] += weight
                continue
            keys["paths"][clip(path_and_query(exchange)[0].decode("latin-1"))] += weight
            agent = header_value(exchange.headers, (), b"user-agent")
            keys["user_agents"][clip(agent.decode("latin-1")) if agent else "-"] += weight
        for dimension, counts in keys.items():
            if counts:
                self._windows[dimension].add_counts(counts)
        self._cached = None

    @property
    def step(self) -> int:
        """Every how many requests one is looked at, lately (1: all of them)."""
        return self._step

    def summaries(self) -> dict[str, HeavyHitters]:
        """Merged over the window; kept for the rest of the second unless requests arrive, as
        heartbeats and viewers would otherwise merge the same slots again and again."""
        second = int(self._clock())
        if self._cached is None or self._cached[0] != second:
            merged = {dimension: window.summary() for dimension, window in self._windows.items()}
            self._cached = (second, merged)
        return self._cached[1]

    def covered_seconds(self) -> float:
        return self._windows["clients"].covered_seconds()

    def to_record(self) -> dict[str, Any]:
        """What a node shares with the cluster: its window's top entries per dimension."""
        record: dict[str, Any] = {"window": self.covered_seconds(), "step": self.step}
        for dimension, summary in self.summaries().items():
            record[dimension] = summary.to_record(PUBLISHED_TOP)
        return record


def view(
    summaries: Mapping[str, HeavyHitters], window: float, top: int, sample_step: int = 1
) -> dict[str, Any]:
    """The traffic document: per dimension the `top` keys with count, share and error bound."""
    document: dict[str, Any] = {
        "window_seconds": round(window, 3),
        "requests": summaries["status_codes"].total if "status_codes" in summaries else 0,
        "sample_step": sample_step,
    }
    for dimension in DIMENSIONS:
        summary = summaries.get(dimension)
        if summary is None:
            summary = HeavyHitters(1)
        total = summary.total or 1
        document[dimension] = {
            "error_bound": summary.error,
            "top": [
                {"key": key, "count": count, "share": round(count / total, 4)}
                for key, count in summary.top(top)
            ],
        }
    return document


def merge_records(
    records: Iterable[Mapping[str, Any]], capacity: int
) -> tuple[dict[str, HeavyHitters], float, int]:
    """Several nodes' shared records as one set of summaries, the longest window and the
    largest sample step among them; a malformed record is skipped."""
    parts: dict[str, list[HeavyHitters]] = {dimension: [] for dimension in DIMENSIONS}
    window, step = 0.0, 1
    for record in records:
        try:
            summaries = {
                dimension: HeavyHitters.from_record(record[dimension], capacity)
                for dimension in DIMENSIONS
            }
            record_window, record_step = float(record["window"]), int(record["step"])
        except (KeyError, TypeError, ValueError):
            continue
        for dimension, summary in summaries.items():
            parts[dimension].append(summary)
        window, step = max(window, record_window), max(step, record_step)
    merged = {
        dimension: HeavyHitters.merged(summaries, capacity)
        for dimension, summaries in parts.items()
    }
    return merged, window, step
