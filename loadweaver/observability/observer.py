"""Takes a node's Observation from its live parts: the request tally, counters and snapshot."""

from collections.abc import Callable, Iterable, Mapping

from prometheus_client.metrics import MetricWrapperBase

from loadweaver.control.snapshot import SnapshotHolder
from loadweaver.observability.metrics import Metrics
from loadweaver.observability.observation import Observation, PoolNumbers
from loadweaver.observability.runtime_collector import ListenerStats


class NodeObserver:
    def __init__(
        self,
        metrics: Metrics,
        holder: SnapshotHolder,
        listeners: Mapping[str, ListenerStats],
        store_up: Callable[[], bool],
        clock: Callable[[], float],
    ) -> None:
        self._metrics = metrics
        self._holder = holder
        self._listeners = listeners
        self._store_up = store_up
        self._clock = clock

    def observe(self) -> Observation:
        metrics = self._metrics
        snapshot = self._holder.current
        return Observation(
            time=self._clock(),
            bounds=metrics.tally.bounds,
            pools=self._pools(),
            rate_limited=int(_total(metrics.rate_limited)),
            reload_failures=int(_total(metrics.config_reload_failures)),
            connections=sum(stats.active for stats in self._listeners.values()),
            backends_down=tuple(
                (name, backend.name)
                for name, pool in snapshot.pools.items()
                for backend in pool.backends
                if not backend.load.routable
            ),
            panic_pools=tuple(
                labels["pool"] for labels, value in _samples(metrics.pool_panic) if value >= 1
            ),
            store_up=self._store_up(),
        )

    def _pools(self) -> dict[str, PoolNumbers]:
        tally = self._metrics.tally
        tally.fold()
        pools: dict[str, PoolNumbers] = {}
        for (_, _, pool, _), row in tally.rows.items():
            numbers = PoolNumbers(tuple(row.counts), tuple(row.buckets))
            pools[pool] = pools[pool].plus(numbers) if pool in pools else numbers
        for labels, value in _samples(self._metrics.upstream_errors):
            name = labels["pool"]
            errors = PoolNumbers(upstream_errors=int(value))
            pools[name] = pools[name].plus(errors) if name in pools else errors
        return pools


def _samples(metric: MetricWrapperBase) -> Iterable[tuple[dict[str, str], float]]:
    for family in metric.collect():
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                yield sample.labels, sample.value


def _total(metric: MetricWrapperBase) -> float:
    return sum(value for _, value in _samples(metric))
