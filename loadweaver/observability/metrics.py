"""Prometheus metrics for one node, in a registry the node owns (no global registry).

Per-request numbers are plain integers and lists that collectors read at scrape time (see
request_tally.py and runtime_collector.py), because a labelled prometheus counter takes a lock on
every increment; rare events (errors, timeouts, retries) use ordinary labelled counters.
"""

import platform
from collections.abc import Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from loadweaver import __version__
from loadweaver.config.observability import DEFAULT_DURATION_BUCKETS, MetricsConfig
from loadweaver.observability.live_labels import LiveLabels, label_sets
from loadweaver.observability.recorder import RequestRecorder
from loadweaver.observability.request_tally import (
    STATUS_CLASSES,
    RequestTally,
    RequestTallyCollector,
)

# New upstream connections: from a few hundred microseconds on loopback to a slow TLS handshake.
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _RequestCountsCollector(Collector):
    """Node-wide totals: request heads parsed, and responses by status class."""

    def __init__(self, recorder: RequestRecorder) -> None:
        self._recorder = recorder

    def collect(self) -> Iterator[CounterMetricFamily]:
        recorder = self._recorder
        yield CounterMetricFamily(
            "loadweaver_requests_received",
            "Requests whose headers were parsed.",
            value=recorder.received,
        )
        responses = CounterMetricFamily(
            "loadweaver_responses", "Responses sent to clients, by status class.", labels=["code"]
        )
        for status_class in range(STATUS_CLASSES):  # llhttp takes 000-999: 0xx..9xx may occur
            count = recorder.by_class[status_class]
            if count or 1 <= status_class <= 5:
                responses.add_metric([f"{status_class}xx"], count)
        yield responses


class _NodeInfoCollector(Collector):
    def __init__(self, node: Sequence[str]) -> None:
        self._node = node  # [node id, cluster name, store kind], updated by the node

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "loadweaver_node_info",
            "Always 1: which node this is, in which cluster, on which store.",
            labels=["node", "cluster", "store"],
        )
        family.add_metric(list(self._node), 1)
        yield family


class Metrics:
    def __init__(self, node_id: str = "", cluster: str = "default", store: str = "memory") -> None:
        self.registry = CollectorRegistry()
        self.tally = RequestTally(DEFAULT_DURATION_BUCKETS)
        self.recorder = RequestRecorder(self.tally)
        self._per_request = [True]
        self.node = [node_id, cluster, store]
        self._live: LiveLabels | None = None  # None until the first snapshot: keep everything
        self.registry.register(_RequestCountsCollector(self.recorder))
        self.registry.register(RequestTallyCollector(self.tally, self._per_request))
        self.registry.register(_NodeInfoCollector(self.node))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.build_info = Gauge(
            "loadweaver_build_info",
            "Always 1: the loadweaver and Python versions this node runs.",
            ["version", "python"],
            registry=self.registry,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
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
            "Failures talking to backends, by pool, backend and kind: connect, timeout, reset "
            "or protocol (an invalid response).",
            ["pool", "backend", "kind"],
            registry=self.registry,
        )
        self.upstream_connect = Histogram(
            "loadweaver_upstream_connect_duration_seconds",
            "Time to open a new connection to a backend, TLS handshake included.",
            ["pool", "backend"],
            buckets=CONNECT_BUCKETS,
            registry=self.registry,
        )
        self.health_checks = Counter(
            "loadweaver_health_checks",
            "Active health probes sent by this node, by pool and result: success or failure.",
            ["pool", "result"],
            registry=self.registry,
        )
        self.backend_flaps = Counter(
            "loadweaver_backend_flaps",
            "Times a backend went from up to down or back, for any reason.",
            ["pool", "backend"],
            registry=self.registry,
        )
        self.alert_notifications = Counter(
            "loadweaver_alert_notifications",
            "Alert notifications per webhook, by result: sent, failed (after retries) or "
            "dropped (its queue was full).",
            ["webhook", "result"],
            registry=self.registry,
        )
        self.access_log_dropped = Counter(
            "loadweaver_access_log_dropped",
            "Access log lines not written: the writer fell too far behind, or the sink or the "
            "line's formatting failed.",
            registry=self.registry,
        )
        self.cluster_nodes = Gauge(
            "loadweaver_cluster_nodes",
            "Nodes heartbeating in the cluster, as this node last counted them.",
            registry=self.registry,
        )
        self.cluster_nodes.set(1)
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

    def configure(self, settings: MetricsConfig) -> None:
        """Applies the `metrics` section; called at start and on every reload."""
        self._per_request[0] = settings.enabled
        self.recorder.set_metrics(settings.enabled)
        self.tally.rebucket(settings.duration_buckets)

    def retain_only(self, live: LiveLabels) -> None:
        """Drops the series of backends, pools, routes, listeners and rate limits that the
        config no longer names; called after every snapshot swap."""
        self._live = live
        self.tally.retain_only(live.keeps_row)
        self.sweep()

    def sweep(self) -> None:
        """Drops series that errors or probes on removed backends made after the last swap."""
        live = self._live
        if live is None:
            return
        for metric, names, keeps in (
            (self.upstream_errors, ("pool", "backend", "kind"), live.keeps_backend),
            (self.upstream_connect, ("pool", "backend"), live.keeps_backend),
            (self.backend_flaps, ("pool", "backend"), live.keeps_backend),
            (self.backend_healthy, ("pool", "backend"), live.keeps_backend),
            (self.health_checks, ("pool", "result"), live.keeps_pool),
            (self.pool_panic, ("pool",), live.keeps_pool),
            (self.retries_by_reason, ("pool", "reason"), live.keeps_pool),
            (self.retries_refused, ("pool",), live.keeps_pool),
            (self.ejections, ("pool",), live.keeps_pool),
            (self.health_flaps, ("pool",), live.keeps_pool),
            (self.breaker_rejections, ("pool", "limit"), live.keeps_pool),
            (self.rate_limited, ("policy",), live.keeps_rate_limit),
        ):
            for labels in list(label_sets(metric, names)):
                if not keeps(labels):
                    metric.remove(*labels)

    def upstream_error(self, pool: str, backend: str, kind: str) -> None:
        self.upstream_errors.labels(pool, backend, kind).inc()
