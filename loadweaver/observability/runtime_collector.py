"""Gauges read from the live data plane at scrape time: backends, upstream pools, listeners.

Reading the current snapshot when Prometheus asks costs the hot path nothing, and a backend that
was removed simply stops being reported instead of leaving a stale series behind.
"""

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from loadweaver.balancing.base import Backend
from loadweaver.control.snapshot import SnapshotHolder

Family = GaugeMetricFamily | CounterMetricFamily


class ListenerStats:
    """Client connections of one listener, bumped by the connection itself."""

    __slots__ = ("active", "total")

    def __init__(self) -> None:
        self.active = 0
        self.total = 0


class RuntimeCollector(Collector):
    def __init__(
        self,
        holder: SnapshotHolder,
        listeners: Mapping[str, ListenerStats],
        clock: Callable[[], float],
    ) -> None:
        self._holder = holder
        self._listeners = listeners
        self._clock = clock

    def collect(self) -> Iterator[Family]:
        yield from self._backends()
        yield from self._connections()

    def _backends(self) -> Iterator[GaugeMetricFamily]:
        labels = ["pool", "backend"]
        up = GaugeMetricFamily(
            "loadweaver_backend_up",
            "1 while a backend passes its health checks and is not ejected, else 0.",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "loadweaver_backend_in_flight", "Requests a backend is serving now.", labels=labels
        )
        weight = GaugeMetricFamily(
            "loadweaver_backend_weight",
            "The weight a backend gets new requests by: its configured weight while slow start "
            "ramps it up, 0 while it drains or is in maintenance.",
            labels=labels,
        )
        pooled = GaugeMetricFamily(
            "loadweaver_pool_connections",
            "Upstream connections per backend, by state: idle (kept alive) or active (lent out "
            "or opening).",
            labels=[*labels, "state"],
        )
        now = self._clock()
        for backend in self._current_backends():
            names = [backend.pool_name, backend.name]
            up.add_metric(names, 1 if backend.load.routable else 0)
            in_flight.add_metric(names, backend.load.in_flight)
            weight.add_metric(names, effective_weight(backend, now))
            connections = backend.connections
            idle = connections.idle_count
            pooled.add_metric([*names, "idle"], idle)
            pooled.add_metric([*names, "active"], max(0, connections.open_connections - idle))
        yield from (up, in_flight, weight, pooled)

    def _current_backends(self) -> Iterator[Backend]:
        for pool in self._holder.current.pools.values():
            yield from pool.backends

    def _connections(self) -> Iterator[Family]:
        active = GaugeMetricFamily(
            "loadweaver_connections_active", "Open client connections.", labels=["listener"]
        )
        total = CounterMetricFamily(
            "loadweaver_connections",
            "Client connections accepted since the node started.",
            labels=["listener"],
        )
        for name, stats in sorted(self._listeners.items()):
            active.add_metric([name], stats.active)
            total.add_metric([name], stats.total)
        yield from (active, total)
        yield GaugeMetricFamily(
            "loadweaver_client_connections",
            "Open client connections, all listeners together.",
            value=sum(stats.active for stats in self._listeners.values()),
        )


def effective_weight(backend: Backend, now: float) -> float:
    """What the balancer weighs the backend by for new requests."""
    if backend.state != "active":
        return 0.0
    return backend.effective_weight(now)
