"""Per-request CPU cost of the data plane, without sockets.

Drives one ClientConnection and one pooled UpstreamConnection with in-memory transports, so the
figure is the Python work per proxied request alone. Run it under callgrind for an instruction
count that does not depend on machine noise:

    python -m tests.performance.hot_path 20000
    python -m tests.performance.hot_path 20000 '{"metrics": {"enabled": false}}'
    python -m tests.performance.hot_path 20000 \
        '{"logging": {"access_log": {"enabled": true, "path": "/tmp/access.log"}}}'
    valgrind --tool=callgrind python -m tests.performance.hot_path 2000   # and 6000: diff / 4000
"""

import asyncio
import json
import math
import sys
import time
from typing import Any

import uvloop
from loguru import logger

from loadweaver.cluster.memory import MemoryStore
from loadweaver.config.loader import build_config
from loadweaver.config.models import Config
from loadweaver.control.compiler import CompileResources, compile_snapshot
from loadweaver.control.limiters import LimiterRegistry
from loadweaver.control.loads import LoadRegistry
from loadweaver.control.snapshot import SnapshotHolder
from loadweaver.observability.access_log import AccessLog
from loadweaver.observability.finished import SAMPLES_PER_SECOND, FinishedReader
from loadweaver.observability.metrics import Metrics
from loadweaver.observability.runtime_collector import ListenerStats
from loadweaver.observability.traffic import TrafficPatterns
from loadweaver.pool.connection import UpstreamConnection
from loadweaver.pool.manager import PoolManager
from loadweaver.proxy.client import ClientConnection
from loadweaver.proxy.listener import ConnectionRegistry, ProxyContext

SIMULATED_RATE = 30_000  # requests a second, about what one node serves in the benchmark
READ_EVERY = SIMULATED_RATE // 10  # the reader task runs ten times a second
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 18:31:24 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\n"
    b"hello from a\n"
)


class MemoryTransport:
    """Just enough of asyncio.Transport for the hot path."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


async def measure(
    requests: int, sections: dict[str, Any] | None = None
) -> tuple[float, bytes, bytes]:
    """`sections`: more top-level config, such as {"metrics": {"enabled": False}}."""
    loop = asyncio.get_running_loop()
    config = build_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:18080"}],
            "pools": {"app": {"backends": [{"name": "a", "url": "http://127.0.0.1:9001"}]}},
            "routes": [{"name": "default", "pool": "app"}],
            **(sections or {}),
        },
        "hot_path",
    )
    limiters = LimiterRegistry(MemoryStore(), lambda: 1, loop)
    resources = CompileResources(
        PoolManager(loop), LoadRegistry(loop.time), b"hot-path-secret", limiters
    )
    holder = SnapshotHolder(compile_snapshot(config, 1, resources))
    metrics = Metrics()
    metrics.configure(config.metrics)
    context = ProxyContext(loop, holder, metrics, ConnectionRegistry(loop, holder))
    backend = holder.current.pools["app"].backends[0]
    upstream = UpstreamConnection(backend.connections)
    upstream_transport = MemoryTransport()
    upstream.connection_made(upstream_transport)  # type: ignore[arg-type]
    backend.connections.open_connections = 1
    backend.connections.release(upstream, reusable=True)
    client = ClientConnection(context, holder.current.listeners["web"], ListenerStats())
    client_transport = MemoryTransport()
    client.connection_made(client_transport)  # type: ignore[arg-type]
    clock = SimulatedClock()
    reader, access_log = batch_readers(config, metrics, clock)
    started = time.perf_counter()
    for index in range(requests):
        client.data_received(REQUEST)
        upstream.data_received(RESPONSE)
        clock.now += 1 / SIMULATED_RATE
        if index % READ_EVERY == 0:
            await reader.read()  # what the node's reader task does ten times a second
    reader.flush()
    access_log.close()
    elapsed = time.perf_counter() - started
    return elapsed / requests, upstream_transport.written[-1], client_transport.written[-1]


class SimulatedClock:
    """Time as it would pass at SIMULATED_RATE requests a second, so traffic patterns sample
    as they would in production, however slowly the harness runs (under callgrind, say)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def batch_readers(
    config: Config, metrics: Metrics, clock: SimulatedClock
) -> tuple[FinishedReader, AccessLog]:
    """Traffic patterns and the access log as the node wires them, so their cost is counted."""
    reader = FinishedReader(metrics.recorder, lambda _: None, clock)
    # As the reader would have set it after a second at this rate: the steady state.
    metrics.recorder.sample_step = math.ceil(SIMULATED_RATE / SAMPLES_PER_SECOND)
    if config.traffic_patterns.enabled:
        reader.read_sampled(TrafficPatterns(config.traffic_patterns, clock).add)
    access_log = AccessLog(config.logging.access_log, "hot-path", clock)
    if config.logging.access_log.enabled:
        access_log.open()
        reader.read_every(access_log.write)
    return reader, access_log


def main() -> None:
    logger.remove()  # the access log, when on, writes to its own file only
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    sections = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
    per_request, _, _ = uvloop.run(measure(requests, sections))
    print(f"{per_request * 1e6:.2f} µs of Python per proxied request ({requests} requests)")


if __name__ == "__main__":
    main()
