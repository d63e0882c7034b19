"""Microbenchmark of Strategy.pick with 3, 100 and 1,000 backends: microseconds per pick.

    python -m tests.performance.pick_bench [picks per run]

Each request is handled the way the data plane does it: pick, count it in flight, and for
load-aware strategies call on_acquire; the oldest request finishes (on_release) once CONCURRENCY
are in flight. So a figure covers the pick plus that bookkeeping plus the loop itself, which the
"(loop only)" row measures alone. Weights cycle through 1..5; clients rotate through CLIENTS
addresses. The best of RUNS runs is printed: the one least disturbed by other work on the machine.
"""

import asyncio
import importlib
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence

from loadweaver.balancing.base import Backend, BackendLoad, NoBackend, PickContext, Strategy
from loadweaver.config.addresses import parse_upstream_url
from loadweaver.pool.pool import PoolSettings, UpstreamPool

SIZES = (3, 100, 1000)
DEFAULT_PICKS = 20_000
RUNS = 5
CONCURRENCY = 32
CLIENTS = 256  # a power of two: the loop picks clients by bit mask

StrategyFactory = Callable[[Sequence[Backend]], Strategy]

# (module, class): the strategies to time, those that cannot be imported are left out.
CANDIDATES = (
    ("loadweaver.balancing.round_robin", "RoundRobin"),
    ("loadweaver.balancing.least_conn", "LeastConn"),
    ("loadweaver.balancing.random_choice", "RandomChoice"),
    ("loadweaver.balancing.random_choice", "PowerOfTwo"),
    ("loadweaver.balancing.ip_hash", "IpHash"),
)


class LoopOnly:
    """Always the first backend: its row is the cost of the loop, to subtract from the others."""

    load_aware = False

    def __init__(self, backends: Sequence[Backend]) -> None:
        self._first = backends[0]

    def pick(self, ctx: PickContext, avoid: Collection[Backend] = ()) -> Backend | NoBackend:
        return self._first

    def on_hosts_changed(self, backends: Sequence[Backend]) -> None:
        self._first = backends[0]

    def on_acquire(self, backend: Backend) -> None:
        pass

    def on_release(self, backend: Backend) -> None:
        pass


def available_strategies() -> dict[str, StrategyFactory]:
    found: dict[str, StrategyFactory] = {"(loop only)": LoopOnly}
    for module_name, class_name in CANDIDATES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        factory = getattr(module, class_name, None)
        if factory is not None:
            found[class_name] = factory
    return found


def make_backends(count: int) -> list[Backend]:
    """Backends sharing one connection pool: picking never touches it."""
    loop = asyncio.new_event_loop()
    address = parse_upstream_url("http://127.0.0.1:9000")
    connections = UpstreamPool(address, PoolSettings(), loop)
    loop.close()
    return [
        Backend(f"b{index}", "bench", address, 1 + index % 5, connections, BackendLoad(0.0))
        for index in range(count)
    ]


def make_clients() -> list[PickContext]:
    clients = [PickContext(f"10.{index // 250}.{index % 250}.7") for index in range(CLIENTS)]
    for client in clients:
        _ = client.client_hash  # computed once per connection in the proxy, not per pick
    return clients


def time_picks(strategy: Strategy, clients: Sequence[PickContext], picks: int) -> float:
    """Seconds for `picks` requests, each picked, counted and (oldest first) finished."""
    hooks = strategy.load_aware
    in_flight: deque[Backend] = deque()
    mask = len(clients) - 1
    started = time.perf_counter()
    for number in range(picks):
        backend = strategy.pick(clients[number & mask])
        if isinstance(backend, NoBackend):
            raise RuntimeError(f"{type(strategy).__name__}: {backend.reason}")
        backend.load.in_flight += 1
        if hooks:
            strategy.on_acquire(backend)
        in_flight.append(backend)
        if len(in_flight) > CONCURRENCY:
            done = in_flight.popleft()
            done.load.in_flight -= 1
            if hooks:
                strategy.on_release(done)
    return time.perf_counter() - started


def microseconds_per_pick(factory: StrategyFactory, size: int, picks: int) -> float:
    strategy = factory(make_backends(size))
    clients = make_clients()
    time_picks(strategy, clients, max(1, picks // 10))  # warm up
    best = min(time_picks(strategy, clients, picks) for _ in range(RUNS))
    return best / picks * 1e6


def measure(
    picks: int = DEFAULT_PICKS, sizes: Sequence[int] = SIZES
) -> dict[str, dict[int, float]]:
    """Strategy name -> backend count -> microseconds per pick."""
    return {
        name: {size: microseconds_per_pick(factory, size, picks) for size in sizes}
        for name, factory in available_strategies().items()
    }


def format_table(results: dict[str, dict[int, float]], sizes: Sequence[int] = SIZES) -> str:
    header = f"{'strategy':<14}" + "".join(f"{f'{size} backends':>15}" for size in sizes)
    lines = [header, "-" * len(header)]
    for name, by_size in results.items():
        lines.append(f"{name:<14}" + "".join(f"{by_size[size]:>12.3f} us" for size in sizes))
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    picks = int(argv[0]) if argv else DEFAULT_PICKS
    print(f"us per pick (with in-flight bookkeeping; best of {RUNS} x {picks} picks)")
    print(format_table(measure(picks)))


if __name__ == "__main__":
    main(sys.argv[1:])
