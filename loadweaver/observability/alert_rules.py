"""What an alert rule's metric reads, over one node's or every node's observations.

Counters are taken as increases over the rule's window, summed over nodes, the way Prometheus'
increase() reads them: a value that drops means the node restarted, and counts from zero again.
States (backend down, panic, store down) are read from the evaluating node's latest view.
"""

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from loadweaver.config.observability import LATENCY_METRICS, AlertRule
from loadweaver.observability.observation import Observation, PoolNumbers

History = Sequence[Observation]  # one node's observations, oldest first
QUANTILES = {"latency_p50": 0.5, "latency_p95": 0.95, "latency_p99": 0.99}


@dataclass(frozen=True)
class Reading:
    """One alert instance's value: `labels` tell instances of one rule apart (pool, backend)."""

    labels: tuple[tuple[str, str], ...]
    value: float


def holds(rule: AlertRule, value: float) -> bool:
    if rule.above is not None:
        return value > rule.above
    if rule.below is not None:
        return value < rule.below
    return value >= 1  # a state


def read(rule: AlertRule, histories: Mapping[str, History], own: Observation) -> list[Reading]:
    """The rule's readings now; none when there is nothing to read (no traffic, no samples)."""
    metric = rule.metric
    if metric == "backend_down":
        return [
            Reading((("pool", pool), ("backend", backend)), 1.0)
            for pool, backend in own.backends_down
            if rule.pool in (None, pool)
        ]
    if metric == "pool_panic":
        return [
            Reading((("pool", pool),), 1.0) for pool in own.panic_pools if rule.pool in (None, pool)
        ]
    if metric == "store_down":
        return [Reading((), 0.0 if own.store_up else 1.0)]
    value = _numeric(rule, histories, own)
    if value is None:
        return []
    return [Reading((("pool", rule.pool),) if rule.pool else (), value)]


def _numeric(rule: AlertRule, histories: Mapping[str, History], own: Observation) -> float | None:
    windows = [_window(history, own.time, rule.window) for history in histories.values()]
    windows = [window for window in windows if len(window) >= 2]
    pools = _pool_filter(rule.pool)
    metric = rule.metric
    if metric == "connections_active":
        return float(sum(history[-1].connections for history in histories.values() if history))
    if not windows:
        return None
    if metric == "error_ratio":
        errors = _summed(windows, lambda o: _responses(o, pools, 5))
        total = _summed(windows, lambda o: _responses(o, pools, None))
        return errors / total if total else None
    if metric == "request_rate":
        return _rate(windows, lambda o: _responses(o, pools, None))
    if metric == "rate_limited_rate":
        return _rate(windows, lambda o: o.rate_limited)
    if metric == "upstream_error_rate":
        return _rate(windows, lambda o: sum(p.upstream_errors for p in _pools(o, pools)))
    if metric == "config_reload_failures":
        return float(_summed(windows, lambda o: o.reload_failures))
    if metric in LATENCY_METRICS:
        return _latency(windows, own.bounds, pools, QUANTILES[metric])
    raise ValueError(f"unknown alert metric {metric!r}")


def _window(history: History, now: float, seconds: float) -> list[Observation]:
    """The samples covering the last `seconds`: those inside it and the one just before."""
    start = now - seconds
    window: list[Observation] = []
    for observation in history:
        if observation.time <= start:
            window.clear()
        window.append(observation)
    return window


def _increase(window: History, value: Callable[[Observation], int]) -> int:
    total = 0
    for before, after in itertools.pairwise(window):
        earlier, later = value(before), value(after)
        total += later - earlier if later >= earlier else later  # a drop: the node restarted
    return total


def _summed(windows: Sequence[History], value: Callable[[Observation], int]) -> int:
    return sum(_increase(window, value) for window in windows)


def _rate(windows: Sequence[History], value: Callable[[Observation], int]) -> float:
    rate = 0.0
    for window in windows:
        elapsed = window[-1].time - window[0].time
        if elapsed > 0:
            rate += _increase(window, value) / elapsed
    return rate


PoolFilter = Callable[[str], bool]


def _pool_filter(pool: str | None) -> PoolFilter:
    if pool is None:
        return lambda _: True
    return lambda name: name == pool


def _pools(observation: Observation, wanted: PoolFilter) -> list[PoolNumbers]:
    return [numbers for name, numbers in observation.pools.items() if wanted(name)]


def _responses(observation: Observation, wanted: PoolFilter, status_class: int | None) -> int:
    pools = _pools(observation, wanted)
    if status_class is None:
        return sum(sum(pool.responses) for pool in pools)
    return sum(pool.responses[status_class] for pool in pools)


def _latency(
    windows: Sequence[History], bounds: Sequence[float], wanted: PoolFilter, quantile: float
) -> float | None:
    counts = [0] * (len(bounds) + 1)
    for window in windows:
        matching = [observation for observation in window if observation.bounds == tuple(bounds)]
        for index in range(len(counts)):
            counts[index] += _increase(matching, _bucket(wanted, index))
    return histogram_quantile(quantile, bounds, counts)


def _bucket(wanted: PoolFilter, index: int) -> Callable[[Observation], int]:
    def count(observation: Observation) -> int:
        pools = _pools(observation, wanted)
        return sum(pool.buckets[index] for pool in pools if index < len(pool.buckets))

    return count


def histogram_quantile(
    quantile: float, bounds: Sequence[float], counts: Sequence[int]
) -> float | None:
    """As Prometheus' histogram_quantile: linear within the bucket the rank falls in; the
    highest finite bound when it falls past every bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = quantile * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(bounds):
                return bounds[-1]
            lower = bounds[index - 1] if index > 0 else 0.0
            return lower + (bounds[index] - lower) * (rank - seen) / count
        seen += count
    return bounds[-1]
