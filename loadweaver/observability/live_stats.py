"""Live numbers for the stats API and status page: rates and percentiles over a sliding window.

A one-second sampler keeps copies of the counters; a report compares the counters now with the
oldest copy in the window, so any number of readers costs the hot path nothing.
"""

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loadweaver.balancing.base import Backend, BackendLoad
from loadweaver.control.snapshot import SnapshotHolder
from loadweaver.observability.backend_stats import percentile
from loadweaver.observability.metrics import Metrics

WINDOW_SECONDS = 10
SWEEP_EVERY = 60  # samples between sweeps of series left by removed backends


@dataclass(frozen=True)
class _Reading:
    requests: int
    errors: int
    latency: tuple[int, ...]


@dataclass(frozen=True)
class _Sample:
    time: float
    totals: _Reading
    backends: dict[BackendLoad, _Reading]


class LiveStats:
    def __init__(
        self,
        holder: SnapshotHolder,
        metrics: Metrics,
        clock: Callable[[], float],
        open_connections: Callable[[], int],
    ) -> None:
        self._holder = holder
        self._metrics = metrics
        self._clock = clock
        self._open_connections = open_connections
        self._samples: deque[_Sample] = deque(maxlen=WINDOW_SECONDS + 1)

    async def run(self) -> None:
        """Samples once a second until cancelled."""
        samples = 0
        while True:
            self.sample()
            samples += 1
            if samples % SWEEP_EVERY == 0:
                self._metrics.sweep()
            await asyncio.sleep(1.0)

    def sample(self) -> None:
        self._metrics.tally.fold()  # bounds the durations waiting for the next scrape
        backends = {
            backend.load: _read(backend.load)
            for pool in self._holder.current.pools.values()
            for backend in pool.backends
        }
        self._samples.append(_Sample(self._clock(), self._totals(), backends))

    def report(self) -> dict[str, Any]:
        """Totals and per-pool backend numbers: the stats document without its node section."""
        now = self._clock()
        oldest = self._samples[0] if self._samples else None
        totals = self._totals()
        snapshot = self._holder.current
        return {
            "totals": {
                **_rates(totals, oldest.totals if oldest else None, now, oldest),
                "requests": totals.requests,
                "errors": totals.errors,
                "client_connections": self._open_connections(),
            },
            "pools": [
                {
                    "name": name,
                    "algorithm": snapshot.config.pools[name].algorithm,
                    "backends": [self._backend(backend, now, oldest) for backend in pool.backends],
                }
                for name, pool in snapshot.pools.items()
            ],
        }

    def _totals(self) -> _Reading:
        recorder = self._metrics.recorder
        return _Reading(recorder.received, recorder.by_class[5], ())

    def _backend(self, backend: Backend, now: float, oldest: _Sample | None) -> dict[str, Any]:
        load = backend.load
        current = _read(load)
        before = oldest.backends.get(load) if oldest else None
        window = [
            now_count - (before.latency[index] if before else 0)
            for index, now_count in enumerate(current.latency)
        ]
        return {
            "name": backend.name,
            "url": backend.address.url,
            "weight": backend.weight,
            "state": backend.state,
            "backup": backend.backup,
            "healthy": load.healthy,
            "in_flight": load.in_flight,
            "requests": current.requests,
            "errors": current.errors,
            **_rates(current, before, now, oldest),
            "latency_ms": {
                name: _milliseconds(percentile(window, fraction))
                for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
            },
        }


def _read(load: BackendLoad) -> _Reading:
    stats = load.stats
    stats.fold()
    return _Reading(stats.requests, stats.errors, tuple(stats.latency))


def _rates(
    current: _Reading, before: _Reading | None, now: float, oldest: _Sample | None
) -> dict[str, float]:
    elapsed = now - oldest.time if oldest else 0.0
    requests = current.requests - (before.requests if before else 0)
    errors = current.errors - (before.errors if before else 0)
    return {
        "requests_per_second": round(requests / elapsed, 2) if elapsed > 0 else 0.0,
        "error_rate": round(errors / requests, 4) if requests > 0 else 0.0,
    }


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
