"""The measurement: how close three nodes sharing a cluster rate limit through one real Redis
come to the configured rate, and how many Redis calls that takes.

Three ClusterLimiters play three nodes: each has its own RedisStore client to the same
redis-server and the same policy name, so they lease from the same shared bucket. One event loop
drives them with skewed traffic (70% / 20% / 10% of requests) at three times the limit, for a
few seconds, and counts what was admitted. A third run offers 80% of the limit, where nothing
should be refused.

The figures, printed (run with -s) and asserted loosely so a busy 2-core machine does not fail
the test:
  accuracy   admitted / (capacity + rate x seconds): the shared bucket starts full, so the
             first instant may admit `capacity` on top of the rate. Also shown for the steady
             part alone (after the first second), which the initial capacity does not touch.
             Target 100% +-5%; asserted +-10%.
  calls      Redis calls per admitted request. Target <= 1/20 at high rates; asserted <= 1/10.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from loadweaver.cluster.connection import Timeouts
from loadweaver.cluster.redis_store import RedisStore
from loadweaver.config.models import RateLimitPolicy
from loadweaver.traffic.limiter import ClusterLimiter
from tests.support.redis_server import RedisServer

# The fixtures register under their own names; the aliases keep ruff from reading the test
# arguments as redefinitions of the imports.
from tests.support.redis_server import fresh_redis as fresh_redis_fixture  # noqa: F401
from tests.support.redis_server import redis_server as redis_server_fixture  # noqa: F401

NODES = 3
SHARES = (7, 2, 1)  # of every 10 requests: the skew between the three nodes
OVERLOAD = 3.0  # offered load, in multiples of the limit
UNDER_LIMIT = 0.8
SECONDS = 4.0
WARM_UP = 1.0  # the steady figure starts after this, once the initial capacity is spent
TICK = 0.002  # seconds between the driver's rounds of requests
KEY = "client-1"

# Which node each of ten consecutive requests goes to: 7 to node 0, 2 to node 1, 1 to node 2.
ROUTE = tuple(node for node, share in enumerate(SHARES) for _ in range(share))

MakeNodes = Callable[[RateLimitPolicy], list[ClusterLimiter]]


@dataclass(frozen=True)
class Measurement:
    policy: RateLimitPolicy
    load: float  # offered, in multiples of the limit
    capacity: int
    seconds: float
    offered: int
    admitted_per_node: tuple[int, ...]
    admitted_steady: int  # after WARM_UP
    store_calls: int

    @property
    def admitted(self) -> int:
        return sum(self.admitted_per_node)

    @property
    def accuracy(self) -> float:
        expected = self.capacity + self.policy.per_second * self.seconds
        return self.admitted / expected

    @property
    def steady_accuracy(self) -> float:
        return self.admitted_steady / (self.policy.per_second * (self.seconds - WARM_UP))

    @property
    def calls_per_admitted(self) -> float:
        return self.store_calls / self.admitted

    def report(self) -> str:
        rate = self.policy.per_second
        lines = [
            f"\ncluster limit {rate:g}/s (capacity {self.capacity}), {NODES} nodes "
            f"{'/'.join(str(10 * share) for share in SHARES)}%, offered {self.offered} "
            f"({self.load:g} x the limit) in {self.seconds:.2f}s:",
            f"  admitted {self.admitted} (per node {list(self.admitted_per_node)}), "
            f"refused {self.offered - self.admitted}",
        ]
        if self.load > 1:
            lines += [
                f"  expected {self.capacity + rate * self.seconds:.0f}: accuracy "
                f"{self.accuracy:.2%}",
                f"  steady (after {WARM_UP:g}s): "
                f"{self.admitted_steady / (self.seconds - WARM_UP):.1f}/s, accuracy "
                f"{self.steady_accuracy:.2%}",
            ]
        calls = (
            f"  redis calls {self.store_calls}: 1 per {1 / self.calls_per_admitted:.1f} admitted"
        )
        return "\n".join([*lines, calls])


@pytest.fixture
async def make_nodes(fresh_redis: RedisServer) -> AsyncIterator[MakeNodes]:
    """Three limiters, one per simulated node, each with its own Redis client."""
    stores: list[RedisStore] = []
    limiters: list[ClusterLimiter] = []

    def make(policy: RateLimitPolicy) -> list[ClusterLimiter]:
        loop = asyncio.get_running_loop()
        for _ in range(NODES):
            store = RedisStore(fresh_redis.url, "perf", Timeouts(command=0.5, connect=0.5))
            stores.append(store)
            limiters.append(ClusterLimiter(policy, "api", store, lambda: NODES, loop))
        return limiters[-NODES:]

    yield make
    for limiter in limiters:
        await limiter.close()
    for store in stores:
        await store.close()


async def drive(
    nodes: list[ClusterLimiter], policy: RateLimitPolicy, load: float = OVERLOAD
) -> Measurement:
    """Offers `load` x the limit for SECONDS, spread over the nodes by ROUTE."""
    offered_per_second = load * policy.per_second
    budget = int(offered_per_second * SECONDS)  # a bound on the count as well as on time
    admitted = [0] * NODES
    admitted_steady = issued = 0
    start = time.monotonic()
    while issued < budget and (elapsed := time.monotonic() - start) < SECONDS:
        due = min(budget, int(elapsed * offered_per_second))
        for _ in range(issued, due):
            node = ROUTE[issued % len(ROUTE)]
            issued += 1
            if nodes[node].admit(KEY).allowed:
                admitted[node] += 1
                admitted_steady += elapsed >= WARM_UP
        await asyncio.sleep(TICK)
    return Measurement(
        policy=policy,
        load=load,
        capacity=nodes[0].plan.capacity,
        seconds=time.monotonic() - start,
        offered=issued,
        admitted_per_node=tuple(admitted),
        admitted_steady=admitted_steady,
        store_calls=sum(node.store_calls for node in nodes),  # before close() gives back
    )


async def test_three_nodes_hold_a_high_cluster_rate_within_bounds_with_few_redis_calls(
    make_nodes: MakeNodes,
) -> None:
    policy = RateLimitPolicy(rate=1000, burst=100)
    measured = await drive(make_nodes(policy), policy)
    print(measured.report())
    assert measured.accuracy == pytest.approx(1.0, abs=0.10)
    assert measured.steady_accuracy == pytest.approx(1.0, abs=0.10)
    assert measured.calls_per_admitted <= 1 / 10


async def test_three_nodes_hold_a_low_cluster_rate_within_bounds(make_nodes: MakeNodes) -> None:
    policy = RateLimitPolicy(rate=20, burst=5)
    measured = await drive(make_nodes(policy), policy)
    print(measured.report())
    assert measured.accuracy == pytest.approx(1.0, abs=0.10)
    assert measured.steady_accuracy == pytest.approx(1.0, abs=0.10)


async def test_below_the_limit_three_nodes_refuse_nothing(make_nodes: MakeNodes) -> None:
    policy = RateLimitPolicy(rate=1000, burst=100)
    measured = await drive(make_nodes(policy), policy, load=UNDER_LIMIT)
    print(measured.report())
    assert measured.admitted >= 0.99 * measured.offered
