"""Which label values the config still names, so series of removed things can be dropped.

Backends come and go through the API; without pruning, every backend ever seen would keep its
counters and histograms until the node restarts, and a registry that churns backends would
grow its scrape without bound. Prometheus' rate() treats a series that comes back as a reset.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.metrics import MetricWrapperBase

from loadweaver.config.models import Config
from loadweaver.observability.request_tally import OVERFLOW

# Rows the tally makes for requests that never reached a route, pool or backend.
NO_LABEL = ""


@dataclass(frozen=True)
class LiveLabels:
    listeners: frozenset[str]
    routes: frozenset[tuple[str, str]]  # route, the pool it sends to
    pools: frozenset[str]
    backends: frozenset[tuple[str, str]]  # pool, backend
    rate_limits: frozenset[str]

    def keeps_row(self, key: tuple[str, str, str, str]) -> bool:
        """A request tally row: (listener, route, pool, backend)."""
        listener, route, pool, backend = key
        if listener not in self.listeners:
            return False
        if route == NO_LABEL:
            return True
        if (route, pool) not in self.routes:
            return False
        return backend in {NO_LABEL, OVERFLOW} or (pool, backend) in self.backends

    def keeps_pool(self, labels: tuple[str, ...]) -> bool:
        return labels[0] in self.pools

    def keeps_backend(self, labels: tuple[str, ...]) -> bool:
        return (labels[0], labels[1]) in self.backends

    def keeps_rate_limit(self, labels: tuple[str, ...]) -> bool:
        return labels[0] in self.rate_limits


def live_labels(config: Config) -> LiveLabels:
    return LiveLabels(
        listeners=frozenset(listener.name for listener in config.listeners),
        routes=frozenset((route.name, route.pool) for route in config.routes),
        pools=frozenset(config.pools),
        backends=frozenset(
            (pool_name, backend.name)
            for pool_name, pool in config.pools.items()
            for backend in pool.backends
        ),
        rate_limits=frozenset(config.rate_limits),
    )


def label_sets(metric: MetricWrapperBase, names: Iterable[str]) -> Iterator[tuple[str, ...]]:
    """The label values of every series `metric` holds; `names` are all its label names, in
    order (a histogram's `le` is not one of them)."""
    wanted = tuple(names)
    seen: set[tuple[str, ...]] = set()
    for family in metric.collect():
        for sample in family.samples:
            values = tuple(sample.labels[name] for name in wanted)
            if values not in seen:
                seen.add(values)
                yield values
