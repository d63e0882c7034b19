"""Prometheus metrics for one node, in a registry the node owns (no global registry).

Per-request counts are plain integers read at scrape time, because a labelled prometheus counter
takes a lock on every increment; rare events (errors, timeouts) use ordinary labelled counters.
"""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class RequestCounts:
    """Hot-path tallies, bumped with a plain `+= 1`; `by_class[2]` counts 2xx responses."""

    __slots__ = ("by_class", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.by_class = [0] * 6


class _RequestCountsCollector(Collector):
    def __init__(self, counts: RequestCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self._counts
        yield CounterMetricFamily(
            "loadweaver_requests", "Requests whose headers were parsed.", value=counts.requests
        )
        responses = CounterMetricFamily(
            "loadweaver_responses", "Responses sent to clients, by status class.", labels=["code"]
        )
        for status_class in range(1, 6):
            responses.add_metric([f"{status_class}xx"], counts.by_class[status_class])
        yield responses


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.counts = RequestCounts()
        self.registry.register(_RequestCountsCollector(self.counts))
        self.local_replies = Counter(
            "loadweaver_local_replies",
            "Responses the proxy generated itself, by status and reason.",
            ["status", "reason"],
            registry=self.registry,
        )
        self.timeouts = Counter(
            "loadweaver_timeouts",
            "Timeouts, by kind: request_header, idle, connect, response, total, tunnel_idle.",
            ["kind"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "loadweaver_upstream_errors",
            "Failures talking to backends, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.retries = Counter(
            "loadweaver_upstream_retries",
            "Requests replayed on a fresh connection after a reused one failed.",
            registry=self.registry,
        )
        self.retries_by_reason = Counter(
            "loadweaver_retries",
            "Requests sent again to another backend, by pool and reason.",
            ["pool", "reason"],
            registry=self.registry,
        )
        self.retries_refused = Counter(
            "loadweaver_retry_budget_exhausted",
            "Retries not made because the pool's retry budget was spent.",
            ["pool"],
            registry=self.registry,
        )
        self.client_connections = Gauge(
            "loadweaver_client_connections", "Open client connections.", registry=self.registry
        )
        self.config_reloads = Counter(
            "loadweaver_config_reloads",
            "Config reloads by result.",
            ["result"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "loadweaver_rate_limited",
            "Requests refused with 429 by a rate-limit policy.",
            ["policy"],
            registry=self.registry,
        )
        self.pool_panic = Gauge(
            "loadweaver_pool_panic",
            "1 while a pool is in panic mode: too few healthy backends, so all take traffic.",
            ["pool"],
            registry=self.registry,
        )
        self.backend_healthy = Gauge(
            "loadweaver_backend_healthy",
            "1 while a backend passes its checks and is not ejected.",
            ["pool", "backend"],
            registry=self.registry,
        )
        self.ejections = Counter(
            "loadweaver_passive_ejections",
            "Backends ejected by passive detection, by pool.",
            ["pool"],
            registry=self.registry,
        )
        self.health_flaps = Counter(
            "loadweaver_health_flaps",
            "Backends held down because their health kept changing, by pool.",
            ["pool"],
            registry=self.registry,
        )
        self.breaker_rejections = Counter(
            "loadweaver_circuit_breaker_rejections",
            "Requests refused at once because a backend's circuit breaker was full.",
            ["pool", "limit"],
            registry=self.registry,
        )
        self.cluster_store_up = Gauge(
            "loadweaver_cluster_store_up",
            "1 while the cluster store answers, 0 while it is unreachable.",
            registry=self.registry,
        )
        self.cluster_store_up.set(1)
        self.cluster_leader = Gauge(
            "loadweaver_cluster_leader", "1 while this node is the leader.", registry=self.registry
        )
        self.config_version = Gauge(
            "loadweaver_config_version",
            "The cluster config version this node has applied.",
            registry=self.registry,
        )
        self.config_reload_failures = Counter(
            "loadweaver_config_reload_failures",
            "Config reloads refused because the new config was invalid or could not be applied.",
            registry=self.registry,
        )
