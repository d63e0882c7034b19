"""Backends for strategy unit tests: real Backend objects with their own load counters."""

import asyncio
from collections.abc import Collection, Sequence

from loadweaver.balancing.base import Backend, BackendLoad, BackendState, PickContext, Strategy
from loadweaver.config.addresses import parse_upstream_url
from loadweaver.pool.pool import PoolSettings, UpstreamPool


class FakeClock:
    """A clock a test moves by hand: `clock.now += 5`."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_backend(
    index: int,
    weight: int = 1,
    *,
    backup: bool = False,
    max_connections: int = 0,
    slow_start: float = 0.0,
    state: BackendState = "active",
    joined_at: float = 0.0,
    pool: str = "app",
) -> Backend:
    address = parse_upstream_url(f"http://127.0.0.1:{10000 + index}")
    loop = asyncio.new_event_loop()  # an UpstreamPool needs a loop; these tests never connect
    connections = UpstreamPool(address, PoolSettings(), loop)
    loop.close()
    return Backend(
        name=f"b{index}",
        pool_name=pool,
        address=address,
        weight=weight,
        connections=connections,
        load=BackendLoad(joined_at),
        backup=backup,
        max_connections=max_connections,
        slow_start=slow_start,
        state=state,
    )


def make_backends(*weights: int) -> list[Backend]:
    return [make_backend(index, weight) for index, weight in enumerate(weights)]


def names(backends: Sequence[Backend]) -> list[str]:
    return [backend.name for backend in backends]


def picks(
    strategy: Strategy,
    count: int,
    avoid: Collection[Backend] = (),
    ctx: PickContext | None = None,
) -> list[Backend]:
    """`count` picks for one client; each must find a backend."""
    ctx = ctx if ctx is not None else PickContext("192.0.2.10")
    chosen = []
    for _ in range(count):
        backend = strategy.pick(ctx, avoid)
        assert isinstance(backend, Backend), backend
        chosen.append(backend)
    return chosen
