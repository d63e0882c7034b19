"""What only RedisStore has, against real redis-server processes: its key layout, its msgpack
records, its Lua scripts, its use of the Redis clock, how it fails when Redis dies or hangs, and
how `cluster.redis_url` becomes a client. The behaviour it shares with MemoryStore is checked by
the conformance suite in test_config_store.py."""

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
import redis.asyncio
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool

from loadweaver.cluster.codec import SCHEMA_VERSION
from loadweaver.cluster.connection import (
    PASSWORD_VARIABLE,
    RedisUrlError,
    Timeouts,
    connect,
)
from loadweaver.cluster.keys import KeySchema
from loadweaver.cluster.redis_store import RedisStore
from loadweaver.cluster.state import Override, StoredConfig
from loadweaver.cluster.store import StoreError
from loadweaver.config.addresses import without_password

# The fixtures register under their own names; the aliases keep ruff from reading the test
# arguments as redefinitions of the imports.
from tests.support.redis_server import RedisServer, StartRedis
from tests.support.redis_server import redis_factory as redis_factory_fixture  # noqa: F401

TIMEOUTS = Timeouts(command=0.5, connect=0.5)
FAST = Timeouts(command=0.05, connect=0.05)  # outage tests: a dead store must cost little
LONG_TTL = 10.0
IDLE = 60.0
CLUSTER = "blue"
KEYS = KeySchema(CLUSTER)


class Availability:
    """Records what a store reports through `on_availability`."""

    def __init__(self) -> None:
        self.reports: list[bool] = []

    def __call__(self, up: bool) -> None:
        self.reports.append(up)


OpenStore = Callable[..., RedisStore]


@pytest.fixture
async def open_store() -> AsyncIterator[OpenStore]:
    """Opens RedisStores (`url`, then RedisStore's own options); all close when the test ends."""
    opened: list[RedisStore] = []

    def open_one(
        url: str,
        cluster: str = CLUSTER,
        timeouts: Timeouts = TIMEOUTS,
        on_availability: Callable[[bool], None] = lambda _: None,
    ) -> RedisStore:
        store = RedisStore(url, cluster, timeouts, on_availability)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture
def server(redis_factory: StartRedis) -> RedisServer:
    """A private server: its keyspace holds only what the test wrote, and it may be broken."""
    return redis_factory()


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain redis-py client on the test's server, to look behind the store's back."""
    plain = redis.asyncio.Redis.from_url(server.url)
    yield plain
    await plain.aclose()


def record() -> StoredConfig:
    return StoredConfig(
        pools={"app": Override({"backends": [{"name": "b1", "url": "http://10.0.0.1"}]}, "f1")},
        routes=Override([{"name": "all", "pool": "app"}], "f2"),
        rate_limits=Override({"per_ip": {"rate": 3.0}}, "f3"),
        base={"pools": {}, "routes": [], "rate_limits": {}},
    )


async def close_feed(feed: AsyncIterator[int]) -> None:
    if isinstance(feed, AsyncGenerator):
        await feed.aclose()


# ---- keys ----


async def exercise_every_method(store: RedisStore, plain: redis.asyncio.Redis) -> None:
    """Calls each method of the store once at least, leaving something behind where it can."""
    feed = store.changes()
    assert await asyncio.wait_for(anext(feed), 2.0) == 0  # the version once subscribed
    lease = await store.acquire_lease("n1", LONG_TTL)
    assert lease is not None
    assert await store.renew_lease(lease, LONG_TTL)
    assert await store.current_lease() == lease
    assert await store.save(record(), 0, fence=lease) == 1
    assert await asyncio.wait_for(anext(feed), 2.0) == 1
    await close_feed(feed)
    assert (await store.load()).version == 1
    await store.release_lease(lease)
    assert await store.acquire_lease("n2", LONG_TTL) is not None
    await store.heartbeat("n1", {"id": "n1"}, LONG_TTL)
    await store.heartbeat("n2", {"id": "n2"}, LONG_TTL)
    await store.leave("n1")
    assert await store.members() == [{"id": "n2"}]
    await store.session_set("app", "client-1", "b1", LONG_TTL)
    assert await store.session_get("app", "client-1", LONG_TTL) == "b1"
    assert (await store.take_tokens("per_ip:10.0.0.1", 1.0, 5, 1, IDLE)).granted == 1
    await store.ping()


async def test_every_key_the_store_writes_lives_under_its_cluster_prefix(
    server: RedisServer, client: redis.asyncio.Redis, open_store: OpenStore
) -> None:
    await exercise_every_method(open_store(server.url), client)
    keys = sorted([key async for key in client.scan_iter(count=1000)])
    assert len(keys) >= 6, f"the exercise should leave keys of every kind: {keys}"
    outside = [key for key in keys if not key.startswith(b"lw:{blue}:")]
    assert outside == [], f"keys outside lw:{{blue}}: {outside}"


async def test_clusters_on_one_server_see_nothing_of_each_other(
    server: RedisServer, client: redis.asyncio.Redis, open_store: OpenStore
) -> None:
    await exercise_every_method(open_store(server.url), client)
    green = open_store(server.url, cluster="green")
    assert await green.load() == StoredConfig()
    assert await green.members() == []
    assert await green.current_lease() is None
    assert await green.session_get("app", "client-1", LONG_TTL) is None
    assert (await green.take_tokens("per_ip:10.0.0.1", 1.0, 5, 5, IDLE)).granted == 5
    assert await green.acquire_lease("n1", LONG_TTL) is not None


async def test_an_idle_bucket_key_carries_the_idle_ttl(
    server: RedisServer, client: redis.asyncio.Redis, open_store: OpenStore
) -> None:
    store = open_store(server.url)
    await store.take_tokens("b", rate=1.0, capacity=5, want=1, idle_ttl=2.0)
    assert 1500 < await client.pttl(KEYS.bucket("b")) <= 2000
    await store.take_tokens("b", rate=1.0, capacity=5, want=1, idle_ttl=0.2)
    assert 0 < await client.pttl(KEYS.bucket("b")) <= 200, "each take sets the expiry anew"


# ---- records ----


async def test_the_config_record_is_msgpack_tagged_with_its_schema_version(
    server: RedisServer, client: redis.asyncio.Redis, open_store: OpenStore
) -> None:
    await open_store(server.url).save(record(), 0)
    version, raw = await client.hmget(KEYS.config, ["version", "record"])
    assert version == b"1"
    envelope = msgpack.unpackb(raw, raw=False)
    assert envelope["schema"] == SCHEMA_VERSION
    expected = {key: value for key, value in record().to_json().items() if key != "version"}
    assert envelope["data"] == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (msgpack.packb({"schema": SCHEMA_VERSION + 1, "data": {}}), "another loadweaver release"),
        (msgpack.packb({"data": {}}), "no schema version"),
        (b"\xc1 not msgpack", "not a loadweaver record"),
        (msgpack.packb({"schema": SCHEMA_VERSION, "data": {"format": 1}}), "unreadable"),
    ],
    ids=["newer-schema", "no-schema", "not-msgpack", "missing-fields"],
)
async def test_an_unreadable_record_fails_to_load_with_a_sentence(
    server: RedisServer,
    client: redis.asyncio.Redis,
    open_store: OpenStore,
    raw: bytes,
    reason: str,
) -> None:
    await client.hset(KEYS.config, mapping={"version": 4, "record": raw})
    store = open_store(server.url)
    with pytest.raises(StoreError) as caught:
        await store.load()
    message = str(caught.value)
    assert message.startswith(f"the cluster config in {store.description} is unreadable: ")
    assert reason in message
    assert "\n" not in message
    assert "Traceback" not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__, "raised `from None`: the sentence is the story"
    assert store.up, "a bad record is not an outage"


async def test_a_member_record_from_another_release_is_left_out(
    server: RedisServer, client: redis.asyncio.Redis, open_store: OpenStore
) -> None:
    store = open_store(server.url)
    await store.heartbeat("n1", {"id": "n1"}, LONG_TTL)
    await store.heartbeat("n2", {"id": "n2"}, LONG_TTL)
    newer = msgpack.packb({"schema": SCHEMA_VERSION + 1, "data": {"id": "n2"}})
    await client.hset(KEYS.members, "n2", newer)
    assert await store.members() == [{"id": "n1"}]


# ---- scripts and clocks ----


async def test_the_lua_scripts_survive_a_script_flush(
    server: RedisServer, client: redis.asyncio.Redis, open_store: OpenStore
) -> None:
    store = open_store(server.url)

    async def every_script(term: int) -> None:
        lease = await store.acquire_lease(f"n{term}", LONG_TTL)
        assert lease is not None
        assert await store.renew_lease(lease, LONG_TTL)
        assert await store.save(record(), term - 1, fence=lease) == term
        await store.heartbeat("n1", {"id": "n1", "term": term}, LONG_TTL)
        assert await store.members() == [{"id": "n1", "term": term}]
        assert (await store.take_tokens("b", 0.01, 5, 2, IDLE)).granted == 2
        await store.release_lease(lease)
        assert await store.current_lease() is None

    await every_script(1)
    await client.script_flush()
    await every_script(2)
    assert store.up


async def test_the_token_bucket_keeps_time_by_the_redis_clock_not_the_callers(
    server: RedisServer, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(server.url)
    await store.ping()  # connected before the clocks go wrong
    # Each reading of the caller's clocks is hours away from the last, forward or back: a store
    # using them would refill the bucket on every call (or never).
    readings = itertools.cycle([1e9, 5e3, 4e9, 0.0])
    grants = []
    with monkeypatch.context() as skewed:
        skewed.setattr(time, "time", lambda: next(readings))
        skewed.setattr(time, "monotonic", lambda: next(readings))
        for _ in range(4):
            grant = await store.take_tokens("b", rate=1.0, capacity=5, want=2, idle_ttl=IDLE)
            grants.append(grant.granted)
    assert grants == [2, 2, 1, 0]
    assert grant.available == pytest.approx(0.0, abs=0.1)


# ---- outages ----


async def fail_until_open(store: RedisStore, calls: int = 3) -> list[float]:
    """Makes `calls` failing calls; returns how long each took to fail."""
    durations = []
    for _ in range(calls):
        started = time.monotonic()
        with pytest.raises(StoreError, match="the cluster store is unreachable"):
            await store.load()
        durations.append(time.monotonic() - started)
    return durations


async def until_reachable(store: RedisStore, timeout: float = 3.0) -> float:
    """Pings until one succeeds (bounded); returns when that was (time.monotonic)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await store.ping()
        except StoreError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)
        else:
            return time.monotonic()


async def test_a_dead_server_fails_calls_quickly_then_the_breaker_answers_at_once(
    server: RedisServer, open_store: OpenStore
) -> None:
    availability = Availability()
    store = open_store(server.url, timeouts=FAST, on_availability=availability)
    await store.save(record(), 0)
    server.kill()
    durations = await fail_until_open(store)
    assert max(durations) < 0.5, durations
    assert availability.reports == [False]
    assert not store.up
    for call in (store.load, store.members, store.current_lease, store.ping):
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            await call()
        assert time.monotonic() - started < 0.005
        assert str(caught.value).startswith(f"the cluster store is down ({store.description})")
    assert availability.reports == [False], "reported once, not per failed call"


async def test_after_a_restart_a_call_past_the_cool_down_succeeds(
    server: RedisServer, open_store: OpenStore
) -> None:
    availability = Availability()
    store = open_store(server.url, timeouts=FAST, on_availability=availability)
    await store.ping()
    server.kill()
    await fail_until_open(store)
    opened_at = time.monotonic()
    server.restart()
    reachable_at = await until_reachable(store)
    cool_down = store.breaker._cool_down
    assert reachable_at - opened_at >= cool_down * 0.9, "the breaker held calls back meanwhile"
    assert availability.reports == [False, True]
    assert store.up
    assert await store.save(record(), 0) == 1, "the restarted server is empty: version 0"
    assert (await store.load()).version == 1


async def test_a_hung_server_times_calls_out_and_its_late_replies_are_not_misread(
    server: RedisServer, open_store: OpenStore
) -> None:
    availability = Availability()
    store = open_store(server.url, timeouts=FAST, on_availability=availability)
    await store.session_set("app", "client-1", "b1", LONG_TTL)
    server.pause(seconds=5.0)  # resumed below; the timer only guards against a stuck test
    try:
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreError, match="TimeoutError"):
                await store.session_get("app", "client-1", LONG_TTL)
            assert time.monotonic() - started < 0.3
        assert availability.reports == [False]
    finally:
        server.resume()
    await until_reachable(store)
    # A reply that arrived after its call gave up must not answer a later call.
    assert await store.session_get("app", "client-2", LONG_TTL) is None
    assert await store.session_get("app", "client-1", LONG_TTL) == "b1"
    assert availability.reports == [False, True]


async def test_the_change_feed_raises_store_error_when_the_server_dies(
    server: RedisServer, client: redis.asyncio.Redis, open_store: OpenStore
) -> None:
    feed = open_store(server.url).changes()
    assert await asyncio.wait_for(anext(feed), 2.0) == 0  # subscribed
    next_change = asyncio.ensure_future(anext(feed))
    await asyncio.sleep(0.05)  # the feed is waiting on the subscription now
    server.kill()
    try:
        with pytest.raises(StoreError, match="lost the change feed"):
            await asyncio.wait_for(next_change, 2.0)
    finally:
        await close_feed(feed)


# ---- cluster.redis_url ----


@pytest.fixture
def no_password_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)


def connection_kwargs(client: redis.asyncio.Redis) -> dict[str, Any]:
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    return kwargs


@pytest.mark.usefixtures("no_password_variable")
async def test_a_redis_url_gives_a_client_with_the_store_timeouts() -> None:
    client = connect("redis://10.0.0.5:6390/2", Timeouts(command=0.2, connect=0.7))
    kwargs = connection_kwargs(client)
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("10.0.0.5", 6390, 2)
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.2, 0.7)
    assert kwargs["password"] is None
    await client.aclose()


async def test_a_zero_command_timeout_means_none_for_the_change_feed() -> None:
    client = connect("redis://10.0.0.5:6390/0", Timeouts(command=0, connect=0.7))
    assert connection_kwargs(client)["socket_timeout"] is None
    await client.aclose()


async def test_a_rediss_url_gives_a_tls_client() -> None:
    client = connect("rediss://redis.internal:6380/0", TIMEOUTS)
    assert client.connection_pool.connection_class is SSLConnection
    assert connection_kwargs(client)["host"] == "redis.internal"
    await client.aclose()


@pytest.mark.usefixtures("no_password_variable")
async def test_a_sentinel_url_gives_a_client_for_the_named_master() -> None:
    client = connect("redis+sentinel://127.0.0.1:26390,[::1]:26391/mymaster/3", TIMEOUTS)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert connection_kwargs(client)["db"] == 3
    sentinels = [
        (kwargs["host"], kwargs["port"])
        for kwargs in map(connection_kwargs, pool.sentinel_manager.sentinels)
    ]
    assert sentinels == [("127.0.0.1", 26390), ("::1", 26391)]
    await client.aclose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://127.0.0.1:26390", "needs the master name"),
        ("redis+sentinel://127.0.0.1:26390/", "needs the master name"),
        ("redis+sentinel://127.0.0.1/mymaster", "sentinel address '127.0.0.1' must be host:port"),
        ("redis+sentinel://a:1,b:x/mymaster", "sentinel address 'b:x' must be host:port"),
    ],
    ids=["no-master", "empty-master", "no-port", "bad-port"],
)
def test_a_bad_sentinel_url_is_refused_with_a_sentence(url: str, message: str) -> None:
    with pytest.raises(RedisUrlError, match=message):
        connect(url, TIMEOUTS)


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.5:6379", "unix:///run/redis.sock", "10.0.0.5:6379", "", "sentinel://a:1/m"],
)
def test_other_schemes_are_refused_with_a_sentence(url: str) -> None:
    with pytest.raises(RedisUrlError) as caught:
        connect(url, TIMEOUTS)
    assert str(caught.value) == (
        f"cluster.redis_url {url!r}: use redis://, rediss:// or "
        "redis+sentinel://host:port,host:port/mastername"
    )


@pytest.mark.parametrize(
    ("url", "variable", "password"),
    [
        ("redis://:from-url@h:6390/0", None, "from-url"),
        ("redis://user:p%40ss%3Aword@h:6390/0", None, "p@ss:word"),
        ("redis://h:6390/0", "from-env", "from-env"),
        ("redis://:from-url@h:6390/0", "from-env", "from-url"),
        ("redis://h:6390/0", None, None),
        ("redis+sentinel://:from-url@h:26390/mymaster", "from-env", "from-url"),
        ("redis+sentinel://h:26390/mymaster", "from-env", "from-env"),
    ],
    ids=[
        "url",
        "url-percent-encoded",
        "variable",
        "url-wins",
        "none",
        "sentinel-url",
        "sentinel-variable",
    ],
)
async def test_the_password_comes_from_the_url_else_the_environment(
    monkeypatch: pytest.MonkeyPatch, url: str, variable: str | None, password: str | None
) -> None:
    if variable is None:
        monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(PASSWORD_VARIABLE, variable)
    client = connect(url, TIMEOUTS)
    assert connection_kwargs(client)["password"] == password
    await client.aclose()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@h:6390/0", "redis://:***@h:6390/0"),
        ("redis://user:s3cret@h:6390/0", "redis://user:***@h:6390/0"),
        ("rediss://user:s3%40cret@h:6390/0", "rediss://user:***@h:6390/0"),
        ("redis+sentinel://:s3cret@a:1,b:2/m", "redis+sentinel://:***@a:1,b:2/m"),
        ("redis://h:6390/0", "redis://h:6390/0"),
        ("redis://user@h:6390/0", "redis://user@h:6390/0"),
    ],
)
def test_without_password_hides_the_password_and_nothing_else(url: str, shown: str) -> None:
    assert without_password(url) == shown


async def test_the_store_description_hides_the_password() -> None:
    store = RedisStore("redis://user:s3cret@10.0.0.5:6390/0", "blue", TIMEOUTS)
    assert store.description == "redis redis://user:***@10.0.0.5:6390/0 (cluster 'blue')"
    await store.close()
