"""Rate limiters: one conformance suite run against every Limiter, then the cluster limiter's own
behaviour (credit, one refill at a time, store outages).

The suite runs each test against LocalLimiter, ClusterLimiter over MemoryStore and ClusterLimiter
over a real redis-server. The first two run on a fake clock (the MemoryStore shares it), so their
timing is exact; the Redis one keeps time by Redis TIME, so it waits for real, briefly.

A cluster bucket holds `max(burst, batch_cap)` tokens (lease.py), so policies that test the
burst use a rate low enough that the burst is the larger.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from loguru import logger

from loadweaver.cluster.connection import Timeouts
from loadweaver.cluster.memory import MemoryStore
from loadweaver.cluster.redis_store import RedisStore
from loadweaver.cluster.store import ClusterStore, Grant, StoreError
from loadweaver.config.models import RateLimitPolicy
from loadweaver.traffic.bucket import TokenBucket
from loadweaver.traffic.lease import LeasePlan
from loadweaver.traffic.limiter import (
    DENY_RETRY_AFTER,
    PROBE_INTERVAL,
    ClusterLimiter,
    Decision,
    LocalLimiter,
    create_limiter,
)
from tests.support.polling import eventually
from tests.support.redis_server import RedisServer, StartRedis

# The fixtures register under their own names; the aliases keep ruff from reading the test
# arguments as redefinitions of the imports.
from tests.support.redis_server import fresh_redis as fresh_redis_fixture  # noqa: F401
from tests.support.redis_server import redis_factory as redis_factory_fixture  # noqa: F401
from tests.support.redis_server import redis_server as redis_server_fixture  # noqa: F401

TestedLimiter = LocalLimiter | ClusterLimiter
POLICY_NAME = "conformance"
REDIS_TIMEOUTS = Timeouts(command=0.3, connect=0.3)
SLOW = {"rate": 6, "period": 60}  # 0.1 token per second: no refill while a test looks


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(**fields: Any) -> RateLimitPolicy:
    return RateLimitPolicy.model_validate(fields)


def admit_all(limiter: TestedLimiter, key: str, count: int) -> list[Decision]:
    """`count` requests arriving at once, in one turn of the event loop."""
    return [limiter.admit(key) for _ in range(count)]


# ---------------------------------------------------------------- the harnesses


class Harness:
    """One Limiter implementation as the conformance suite drives it."""

    clustered = False

    def __init__(self) -> None:
        self.limiters: list[TestedLimiter] = []

    def build(self, policy: RateLimitPolicy, **options: Any) -> TestedLimiter:
        raise NotImplementedError

    def make(self, policy: RateLimitPolicy, **options: Any) -> TestedLimiter:
        limiter = self.build(policy, **options)
        self.limiters.append(limiter)
        return limiter

    def now(self) -> float:
        return time.monotonic()

    async def settle(self) -> None:
        """Lets background store calls land."""
        for limiter in self.limiters:
            if isinstance(limiter, ClusterLimiter):
                await limiter.wait_for_store_calls()

    async def wait(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.settle()

    async def shared_tokens(self, policy: RateLimitPolicy, key: str, take: int = 0) -> float:
        """What the cluster bucket of `key` holds (after taking `take` tokens)."""
        raise NotImplementedError

    async def close(self) -> None:
        for limiter in self.limiters:
            await limiter.close()


class LocalHarness(Harness):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()

    def build(self, policy: RateLimitPolicy, **options: Any) -> TestedLimiter:
        return LocalLimiter(policy, self.clock, **options)

    def now(self) -> float:
        return self.clock.now

    async def wait(self, seconds: float) -> None:
        self.clock.now += seconds
        await self.settle()


class StoreHarness(Harness):
    clustered = True

    def __init__(self, store: ClusterStore, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.store = store
        self.clock = clock

    def build(self, policy: RateLimitPolicy, **options: Any) -> TestedLimiter:
        loop = asyncio.get_running_loop()
        return ClusterLimiter(
            policy, POLICY_NAME, self.store, lambda: 1, loop, clock=self.clock, **options
        )

    async def shared_tokens(self, policy: RateLimitPolicy, key: str, take: int = 0) -> float:
        plan = LeasePlan.for_policy(policy)
        grant = await self.store.take_tokens(
            f"{POLICY_NAME}:{key}", plan.rate, plan.capacity, take, plan.idle_ttl
        )
        return grant.available

    async def close(self) -> None:
        await super().close()
        await self.store.close()


class MemoryHarness(StoreHarness):
    def __init__(self) -> None:
        self.fake_clock = FakeClock()
        super().__init__(MemoryStore(clock=self.fake_clock), self.fake_clock)

    def now(self) -> float:
        return self.fake_clock.now

    async def wait(self, seconds: float) -> None:
        self.fake_clock.now += seconds
        await self.settle()


@pytest.fixture(params=["local", "cluster-memory", "cluster-redis"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    made = await _harness(request)
    yield made
    await made.close()


@pytest.fixture(params=["cluster-memory", "cluster-redis"])
async def cluster_harness(request: pytest.FixtureRequest) -> AsyncIterator[StoreHarness]:
    made = await _harness(request)
    assert isinstance(made, StoreHarness)
    yield made
    await made.close()


async def _harness(request: pytest.FixtureRequest) -> Harness:
    if request.param == "local":
        return LocalHarness()
    if request.param == "cluster-memory":
        return MemoryHarness()
    server: RedisServer = request.getfixturevalue("fresh_redis")  # started only for this one
    return StoreHarness(RedisStore(server.url, "test", REDIS_TIMEOUTS))


# ---------------------------------------------------------------- the conformance suite


async def test_a_burst_of_burst_requests_passes_then_requests_are_refused(
    harness: Harness,
) -> None:
    limiter = harness.make(policy(**SLOW, burst=5))

    burst = admit_all(limiter, "client", 5)
    await harness.settle()
    refused = limiter.admit("client")

    assert [decision.allowed for decision in burst] == [True] * 5
    assert not refused.allowed
    assert (limiter.admitted, limiter.denied) == (5, 1)


async def test_a_burst_spread_over_loop_turns_passes_then_requests_are_refused(
    harness: Harness,
) -> None:
    limiter = harness.make(policy(**SLOW, burst=5))
    allowed = []
    for _ in range(7):
        allowed.append(limiter.admit("client").allowed)
        await harness.settle()
    assert allowed == [True] * 5 + [False] * 2


async def test_decisions_carry_sane_header_numbers(harness: Harness) -> None:
    limiter = harness.make(policy(**SLOW, burst=3))  # 0.1 token per second

    burst = admit_all(limiter, "client", 3)
    await harness.settle()
    refused = limiter.admit("client")

    assert {decision.limit for decision in [*burst, refused]} == {6}
    assert [decision.remaining for decision in burst] == [2, 1, 0]
    assert [decision.retry_after for decision in burst] == [0.0] * 3
    assert burst[0].reset == pytest.approx(10.0, abs=0.5)  # one token short of full
    assert burst[-1].reset == pytest.approx(30.0, abs=0.5)  # empty: 3 tokens at 0.1/s
    assert refused.remaining == 0
    assert 0 < refused.retry_after <= 10.5  # the next token is ten seconds away
    assert 0 < refused.reset <= 30.5


async def test_tokens_come_back_at_the_configured_rate(harness: Harness) -> None:
    rate = 10.0
    limiter = harness.make(policy(rate=rate, burst=2))
    for _ in range(20):  # use up the burst (and, in a cluster, the bucket's capacity)
        if not limiter.admit("client").allowed:
            break
        await harness.settle()

    admitted, start = 0, harness.now()
    for _ in range(100):  # 50 requests a second for two seconds: five times the rate
        await harness.wait(0.02)
        admitted += limiter.admit("client").allowed
    expected = rate * (harness.now() - start)

    # A leasing node gets its tokens a batch at a time (here at most 3): allow one batch.
    assert admitted == pytest.approx(expected, abs=3 if harness.clustered else 1)


async def test_keys_are_limited_independently(harness: Harness) -> None:
    limiter = harness.make(policy(**SLOW, burst=3))

    first = admit_all(limiter, "first", 4)
    await harness.settle()
    second = admit_all(limiter, "second", 4)

    assert [decision.allowed for decision in first] == [True, True, True, False]
    assert [decision.allowed for decision in second] == [True, True, True, False]


async def test_idle_keys_are_forgotten_and_recent_ones_kept(harness: Harness) -> None:
    limiter = harness.make(policy(rate=10, burst=2), idle_after=0.3)  # full again in 0.2 s
    limiter.admit("idle")
    limiter.admit("busy")
    await harness.settle()
    assert len(limiter) == 2

    await harness.wait(0.5)
    limiter.admit("busy")
    limiter.expire_idle()  # the local limiter may already have dropped it while admitting
    await harness.settle()

    assert len(limiter) == 1


async def test_the_least_recently_used_key_goes_when_there_are_too_many(
    harness: Harness,
) -> None:
    limiter = harness.make(policy(**SLOW, burst=2), max_keys=2)
    for key in ("a", "b", "c"):
        limiter.admit(key)
    await harness.settle()
    assert len(limiter) == 2
    assert limiter.admit("b").remaining == 0  # kept: its bucket still knows the earlier request
    assert limiter.admit("a").remaining == 1  # forgotten: a new bucket, assumed full


async def test_closing_gives_unused_leased_tokens_back(cluster_harness: StoreHarness) -> None:
    async def close_limiters() -> None:
        for limiter in cluster_harness.limiters:
            await limiter.close()

    given_back = await _tokens_given_back(cluster_harness, close_limiters)
    assert given_back >= 9  # the lease held 10 (a batch of 10, plus 1 to repay the credit)


async def test_an_idle_key_gives_its_unused_tokens_back(cluster_harness: StoreHarness) -> None:
    async def expire() -> None:
        await cluster_harness.wait(0.15)
        for limiter in cluster_harness.limiters:
            limiter.expire_idle()
        await cluster_harness.settle()

    given_back = await _tokens_given_back(cluster_harness, expire, idle_after=0.1)
    assert given_back >= 9


async def _tokens_given_back(
    harness: StoreHarness, release: Callable[[], Any], **options: Any
) -> float:
    """Tokens that came back to the shared bucket during `release()`, beyond its refill.

    40 tokens a second makes batches of 10. The bucket is drained to 100 first, so what comes
    back is not lost to its capacity."""
    rate, capacity = 40.0, 1000
    limited = policy(rate=rate, burst=capacity)
    await harness.shared_tokens(limited, "client", take=capacity - 100)
    limiter = harness.make(limited, **options)
    limiter.admit("client")
    await harness.settle()

    before = await harness.shared_tokens(limited, "client")
    assert before <= 100 - 10  # the node holds a lease
    released_at = harness.now()
    await release()
    refilled = rate * (harness.now() - released_at)  # at least this much came from the rate
    after = await harness.shared_tokens(limited, "client")
    return after - before - refilled


# ---------------------------------------------------------------- the token bucket


def test_a_token_bucket_starts_full_and_refills_continuously() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_second=4, capacity=2, clock=clock)
    assert [bucket.take(), bucket.take(), bucket.take()] == [True, True, False]
    assert bucket.seconds_until_token() == pytest.approx(0.25)
    assert bucket.seconds_until_full() == pytest.approx(0.5)

    clock.now += 0.125
    assert bucket.tokens == pytest.approx(0.5)
    clock.now += 10
    assert (bucket.tokens, bucket.is_full, bucket.seconds_until_token()) == (2.0, True, 0.0)


def test_a_token_bucket_holds_at_least_one_token() -> None:
    assert TokenBucket(1, capacity=0, clock=FakeClock()).capacity == 1.0


# ---------------------------------------------------------------- the lease plan


@pytest.mark.parametrize(
    ("rate", "burst", "batch_cap", "capacity"),
    [
        (1000, 1, 100, 100),  # high rate: batches of up to 100, the bucket holds one
        (20, 5, 5, 5),  # low rate: a quarter second of tokens, within the burst
        (20, 1, 5, 5),  # a cluster bucket holds a batch even when the burst is smaller
        (1, 50, 1, 50),  # a larger burst wins
        (1e9, 1, 100, 100),  # a huge rate still has batches of 100
    ],
)
def test_the_lease_plan_sizes_batches_and_capacity(
    rate: float, burst: int, batch_cap: int, capacity: int
) -> None:
    plan = LeasePlan.for_policy(policy(rate=rate, burst=burst))
    assert (plan.batch_cap, plan.capacity) == (batch_cap, capacity)
    assert plan.batch(demand=0) == 1
    assert plan.batch(demand=1000) >= min(50, batch_cap)
    assert plan.batch(demand=1e9) == batch_cap
    assert plan.dry_pause * plan.rate <= plan.capacity  # pausing cannot overflow the bucket


# ---------------------------------------------------------------- the cluster limiter


class FlakyStore(MemoryStore):
    """A MemoryStore that looks like Redis, fails on demand and can hold calls."""

    kind = "redis"

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.failure: Exception | None = None
        self.gate: asyncio.Event | None = None  # when set up, calls wait for it
        self.calls = self.in_flight = self.most_in_flight = 0

    async def take_tokens(
        self, bucket: str, rate: float, capacity: float, want: int, idle_ttl: float
    ) -> Grant:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.failure is not None:
                raise self.failure
            return await super().take_tokens(bucket, rate, capacity, want, idle_ttl)
        finally:
            self.in_flight -= 1


class FlakyCluster:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = FlakyStore(self.clock)
        self.limiters: list[ClusterLimiter] = []

    def limiter(self, policy: RateLimitPolicy, live_nodes: int = 1) -> ClusterLimiter:
        loop = asyncio.get_running_loop()
        made = ClusterLimiter(
            policy, POLICY_NAME, self.store, lambda: live_nodes, loop, clock=self.clock
        )
        self.limiters.append(made)
        return made

    async def settle(self) -> None:
        for limiter in self.limiters:
            await limiter.wait_for_store_calls()

    async def shared_tokens(self, policy: RateLimitPolicy, key: str) -> float:
        plan = LeasePlan.for_policy(policy)
        grant = await MemoryStore.take_tokens(
            self.store, f"{POLICY_NAME}:{key}", plan.rate, plan.capacity, 0, plan.idle_ttl
        )
        return grant.available


@pytest.fixture
async def cluster() -> AsyncIterator[FlakyCluster]:
    made = FlakyCluster()
    yield made
    made.store.failure = None
    if made.store.gate is not None:
        made.store.gate.set()
    for limiter in made.limiters:
        await limiter.close()


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(str(message)), level="WARNING")
    yield messages
    logger.remove(sink)


async def test_the_first_requests_pass_on_credit_before_any_lease_arrives(
    cluster: FlakyCluster,
) -> None:
    cluster.store.gate = asyncio.Event()
    limiter = cluster.limiter(policy(**SLOW, burst=20))  # credit: min(burst, 8)

    decisions = admit_all(limiter, "client", 10)
    await asyncio.sleep(0.01)
    assert [decision.allowed for decision in decisions] == [True] * 8 + [False] * 2

    cluster.store.gate.set()
    await cluster.settle()
    assert await cluster.shared_tokens(limiter.policy, "client") <= 20 - 8  # debt repaid


async def test_a_key_never_has_two_refills_in_flight(cluster: FlakyCluster) -> None:
    cluster.store.gate = asyncio.Event()
    limiter = cluster.limiter(policy(rate=1000))
    for _ in range(50):
        limiter.admit("client")
        cluster.clock.now += 0.001
        await asyncio.sleep(0)
    assert (cluster.store.calls, cluster.store.most_in_flight) == (1, 1)
    cluster.store.gate.set()


async def test_a_dry_shared_bucket_paces_the_calls_of_a_saturated_key(
    cluster: FlakyCluster,
) -> None:
    limiter = cluster.limiter(policy(rate=1000, burst=100))
    for _ in range(3000):  # three times the rate for one (fake) second
        limiter.admit("client")
        cluster.clock.now += 1 / 3000
        await asyncio.sleep(0)
    await cluster.settle()

    assert limiter.admitted == pytest.approx(100 + 1000, rel=0.05)
    assert limiter.store_calls <= limiter.admitted / 20


async def test_a_very_high_limit_is_served_in_batches_not_a_call_per_request(
    cluster: FlakyCluster,
) -> None:
    limiter = cluster.limiter(policy(rate=1_000_000))
    for _ in range(5000):  # 10,000 requests a second: far below the limit
        limiter.admit("client")
        cluster.clock.now += 1 / 10_000
        await asyncio.sleep(0)
    assert limiter.admitted == 5000
    assert limiter.store_calls <= limiter.admitted / 20


@pytest.mark.parametrize("mode", ["local", "allow", "deny"])
async def test_without_the_store_decisions_follow_on_store_error(
    cluster: FlakyCluster, mode: str
) -> None:
    cluster.store.failure = StoreError("injected")
    limiter = cluster.limiter(policy(rate=10, burst=4, on_store_error=mode), live_nodes=2)
    limiter.admit("client")  # on credit; its refill finds the store down
    await cluster.settle()
    assert not limiter.leasing

    allowed = [decision.allowed for decision in admit_all(limiter, "client", 5)]

    if mode == "allow":
        assert allowed == [True] * 5
    elif mode == "deny":
        assert allowed == [False] * 5
        assert limiter.admit("client").retry_after == DENY_RETRY_AFTER
    else:  # this node's share: 5 per second, burst 2
        assert allowed == [True, True, False, False, False]
        cluster.clock.now += 0.2
        assert limiter.admit("client").allowed


async def test_without_the_store_a_probe_goes_out_at_most_every_probe_interval(
    cluster: FlakyCluster,
) -> None:
    cluster.store.failure = StoreError("injected")
    limiter = cluster.limiter(policy(rate=10, on_store_error="deny"))
    for _ in range(100):
        limiter.admit("client")
        await cluster.settle()
    assert cluster.store.calls == 1

    cluster.clock.now += PROBE_INTERVAL
    for _ in range(100):
        limiter.admit("client")
        await cluster.settle()
    assert cluster.store.calls == 2


async def test_the_limiter_leases_again_once_the_store_answers(
    cluster: FlakyCluster, warnings_logged: list[str]
) -> None:
    cluster.store.failure = StoreError("injected")
    limiter = cluster.limiter(policy(**SLOW, burst=3, on_store_error="deny"))
    limiter.admit("client")
    await cluster.settle()
    assert not limiter.admit("client").allowed

    cluster.store.failure = None
    cluster.clock.now += PROBE_INTERVAL
    limiter.admit("client")  # decided by the fallback; carries the probe
    await cluster.settle()

    assert limiter.leasing
    assert [decision.allowed for decision in admit_all(limiter, "client", 3)] == [
        True,
        True,
        False,  # the probe repaid the first request's credit: 2 of 3 tokens left
    ]
    assert any("cannot lease tokens" in message for message in warnings_logged)
    assert any("answers again" in message for message in warnings_logged)


async def test_an_unexpected_store_error_is_logged_and_handled_as_an_outage(
    cluster: FlakyCluster, warnings_logged: list[str]
) -> None:
    cluster.store.failure = RuntimeError("a bug in the store")
    limiter = cluster.limiter(policy(rate=10, on_store_error="allow"))
    limiter.admit("client")
    await cluster.settle()

    assert limiter.admit("client").allowed
    assert any("leasing tokens failed" in message for message in warnings_logged)
    assert any("a bug in the store" in message for message in warnings_logged)


async def test_after_close_requests_are_decided_without_the_store(cluster: FlakyCluster) -> None:
    limiter = cluster.limiter(policy(rate=10, burst=4, on_store_error="local"), live_nodes=2)
    limiter.admit("client")
    await cluster.settle()
    await limiter.close()
    calls = cluster.store.calls

    allowed = [decision.allowed for decision in admit_all(limiter, "client", 3)]
    await asyncio.sleep(0.01)

    assert allowed == [True, True, False]  # this node's share: burst 2
    assert cluster.store.calls == calls


async def test_a_limiter_over_real_redis_rides_out_a_redis_crash(
    redis_factory: StartRedis,
) -> None:
    server = redis_factory()
    store = RedisStore(server.url, "test", REDIS_TIMEOUTS)
    loop = asyncio.get_running_loop()
    limiter = ClusterLimiter(policy(rate=100, on_store_error="deny"), "api", store, lambda: 1, loop)
    try:
        assert limiter.admit("client").allowed
        await limiter.wait_for_store_calls()
        server.kill()

        # Requests carry on meanwhile (none raises); once the loss is noticed, `deny` holds.
        await eventually(lambda: not limiter.admit("client").allowed, timeout=5)
        assert not limiter.leasing

        server.restart()
        await eventually(lambda: limiter.admit("client").allowed and limiter.leasing, timeout=5)
    finally:
        await limiter.close()
        await store.close()


# ---------------------------------------------------------------- choosing a limiter


async def test_create_limiter_leases_only_from_a_shared_store_for_cluster_scope() -> None:
    loop = asyncio.get_running_loop()
    clock = FakeClock()
    shared, single = FlakyStore(clock), MemoryStore(clock=clock)
    cluster_policy, node_policy = policy(rate=10), policy(rate=10, scope="node")

    chosen = [
        create_limiter("api", cluster_policy, shared, lambda: 1, loop),
        create_limiter("api", node_policy, shared, lambda: 1, loop),
        create_limiter("api", cluster_policy, single, lambda: 1, loop),
    ]

    assert [type(limiter) for limiter in chosen] == [ClusterLimiter, LocalLimiter, LocalLimiter]
    for limiter in chosen:
        await limiter.close()
