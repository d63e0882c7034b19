"""The pieces behind API changes, without a node: every ClusterStore against one conformance
suite, the state file of the memory store, how file config and API overrides compose, the admin
token rules, secret redaction, and the latency percentiles of the per-backend stats.

The conformance suite runs each test on MemoryStore without a state dir, MemoryStore with one and
RedisStore on a real redis-server. Timings use TTLs of a few tenths of a second; every check that
something is *still* there leaves a margin of seconds, and every check that something is *gone*
waits well past its TTL, so a loaded machine makes the suite slower, not flaky.
"""

import asyncio
import errno
import itertools
import os
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from loadweaver.admin.auth import AdminTokenError, check_exposure, resolve_token, token_matches
from loadweaver.cluster.connection import Timeouts
from loadweaver.cluster.memory import STATE_FILE_NAME, MemoryStore
from loadweaver.cluster.redis_store import RedisStore
from loadweaver.cluster.state import Override, StoredConfig, fingerprint
from loadweaver.cluster.store import (
    ClusterStore,
    FencedOutError,
    Lease,
    StoreError,
    VersionConflictError,
)
from loadweaver.config.models import AdminConfig, StickyConfig
from loadweaver.control.overrides import compose, record_changes
from loadweaver.control.redaction import REDACTED, RedactionError, redact_config, restore_secrets
from loadweaver.observability.backend_stats import LATENCY_BOUNDS, BackendStats, percentile
from tests.support.redis_server import RedisServer

# ---- every ClusterStore: one conformance suite ----

# Generous for a loopback server, so a loaded CI machine does not turn slowness into failures.
REDIS_TIMEOUTS = Timeouts(command=0.5, connect=0.5)
FEED_TIMEOUT = 2.0  # how long a change may take to arrive on a feed
LONG_TTL = 10.0  # outlives any test: what must still be there is there by a wide margin


@dataclass(frozen=True)
class Storage:
    """A store of one kind over fresh storage, and ways to reach that storage again."""

    name: str
    store: ClusterStore
    reopen: Callable[[], ClusterStore]  # a new store over the same storage
    persistent: bool  # a reopened store sees what this one saved
    announcer: ClusterStore  # whose saves reach `store.changes()`


STORE_KINDS = ["memory", "memory-with-state-dir", "redis"]


@pytest.fixture(params=STORE_KINDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    opened: list[ClusterStore] = []

    def track(store: ClusterStore) -> ClusterStore:
        opened.append(store)
        return store

    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("fresh_redis")
        cluster = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.nodeid)  # one cluster per test
        client = redis.asyncio.Redis.from_url(server.url)
        store = track(RedisStore(server.url, cluster, REDIS_TIMEOUTS))
        yield Storage(
            name=request.param,
            store=store,
            reopen=lambda: track(RedisStore(server.url, cluster, REDIS_TIMEOUTS)),
            persistent=True,
            announcer=track(RedisStore(server.url, cluster, REDIS_TIMEOUTS)),
        )
        await client.aclose()
    else:
        directory = tmp_path / "state" if request.param == "memory-with-state-dir" else None
        store = track(MemoryStore(directory))
        yield Storage(
            name=request.param,
            store=store,
            reopen=lambda: track(MemoryStore(directory)),
            persistent=directory is not None,
            announcer=store,  # one process: its own saves are the only ones it announces
        )
    for opened_store in opened:
        await opened_store.close()


async def close_feed(feed: AsyncIterator[int]) -> None:
    if isinstance(feed, AsyncGenerator):
        await feed.aclose()


async def sleep_past(start: float, seconds: float) -> None:
    """Sleeps until `seconds` have passed since `start` (a time.monotonic reading)."""
    await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))


async def eventually_async(
    condition: Callable[[], Awaitable[bool]], timeout: float = 3.0, message: str = ""
) -> None:
    """`eventually` for a condition that must ask the store: polls every 20 ms."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(message or "condition not reached in time")
        await asyncio.sleep(0.02)


def stored_record() -> StoredConfig:
    """A record with every kind of part: a changed pool, a deleted one, the routes, the rate
    limits and the leader's file layer. Its version is whatever; `save` sets the real one."""
    base = {
        "pools": {"app": {"backends": [{"name": "b0", "url": "http://10.0.0.1:80"}]}},
        "routes": [{"name": "all", "pool": "app"}],
        "rate_limits": {"per_ip": {"rate": 10.0, "burst": 20}},
    }
    return StoredConfig(
        version=7,
        pools={
            "app": Override({"backends": [{"name": "b1", "url": "http://10.0.0.1:80"}]}, "f1"),
            "gone": Override(None, fingerprint({"algorithm": "random"})),
        },
        routes=Override([{"name": "all", "pool": "app"}], fingerprint(None)),
        rate_limits=Override(
            {"per_route": {"key": "route", "rate": 2.5, "period": 60.0, "burst": 5}},
            fingerprint(base["rate_limits"]),
        ),
        base=base,
    )


def smaller_record() -> StoredConfig:
    return StoredConfig(pools={"other": Override({"algorithm": "p2c"}, "f2")})


def at_version(state: StoredConfig, version: int) -> StoredConfig:
    return replace(state, version=version)


def test_each_store_says_what_it_is(storage: Storage) -> None:
    assert storage.store.kind in ("memory", "redis")
    assert storage.store.description.startswith(storage.store.kind)


# -- the config record --


async def test_a_store_with_nothing_saved_loads_an_empty_record(storage: Storage) -> None:
    record = await storage.store.load()
    assert record == StoredConfig()
    assert (record.version, dict(record.pools), record.routes, record.rate_limits) == (
        0,
        {},
        None,
        None,
    )
    assert record.base is None


async def test_a_saved_record_loads_back_unchanged_at_the_next_version(storage: Storage) -> None:
    assert await storage.store.save(stored_record(), 0) == 1
    assert await storage.store.load() == at_version(stored_record(), 1)
    reopened = await storage.reopen().load()
    assert reopened == (at_version(stored_record(), 1) if storage.persistent else StoredConfig())


async def test_a_later_save_replaces_the_whole_record(storage: Storage) -> None:
    version = await storage.store.save(stored_record(), 0)
    await storage.store.save(smaller_record(), version)
    assert await storage.store.load() == at_version(smaller_record(), 2)
    if storage.persistent:
        assert await storage.reopen().load() == at_version(smaller_record(), 2)


async def test_each_save_returns_the_version_one_above_the_one_it_expected(
    storage: Storage,
) -> None:
    versions = [0]
    for _ in range(3):
        versions.append(await storage.store.save(stored_record(), versions[-1]))
    assert versions == [0, 1, 2, 3]
    assert (await storage.store.load()).version == 3, "the version in the saved state is ignored"


@pytest.mark.parametrize("expected", [0, 1, 3, 99], ids=["stale", "older", "ahead", "far-ahead"])
async def test_a_save_expecting_another_version_is_a_conflict_naming_the_current_one(
    storage: Storage, expected: int
) -> None:
    await storage.store.save(stored_record(), 0)
    await storage.store.save(stored_record(), 1)
    with pytest.raises(VersionConflictError) as caught:
        await storage.store.save(smaller_record(), expected)
    assert (caught.value.expected, caught.value.found) == (expected, 2)
    assert str(caught.value) == f"the cluster config is at version 2, not {expected}"
    assert await storage.store.load() == at_version(stored_record(), 2), "nothing was written"


async def test_of_two_writers_that_read_the_same_version_only_the_first_succeeds(
    storage: Storage,
) -> None:
    other = storage.reopen() if storage.persistent else storage.store
    assert (await storage.store.load()).version == (await other.load()).version == 0
    assert await storage.store.save(stored_record(), 0) == 1
    with pytest.raises(VersionConflictError) as caught:
        await other.save(smaller_record(), 0)
    assert caught.value.found == 1
    assert await storage.store.load() == at_version(stored_record(), 1)


# -- fencing: leader-only writes --


async def test_the_lease_holder_saves_with_its_lease_as_the_fence(storage: Storage) -> None:
    lease = await storage.store.acquire_lease("n1", LONG_TTL)
    assert lease is not None
    assert await storage.store.save(stored_record(), 0, fence=lease) == 1
    assert await storage.store.save(smaller_record(), 1, fence=lease) == 2
    assert await storage.store.load() == at_version(smaller_record(), 2)


async def test_a_released_lease_no_longer_fences_a_save(storage: Storage) -> None:
    lease = await storage.store.acquire_lease("n1", LONG_TTL)
    assert lease is not None
    await storage.store.save(stored_record(), 0, fence=lease)
    await storage.store.release_lease(lease)
    with pytest.raises(FencedOutError):
        await storage.store.save(smaller_record(), 1, fence=lease)
    assert await storage.store.load() == at_version(stored_record(), 1), "nothing was written"


@pytest.mark.parametrize("holder", [None, "n1"], ids=["nobody-leads", "another-leads"])
async def test_a_lease_that_was_never_granted_is_fenced_out(
    storage: Storage, holder: str | None
) -> None:
    if holder is not None:
        assert await storage.store.acquire_lease(holder, LONG_TTL) is not None
    with pytest.raises(FencedOutError):
        await storage.store.save(stored_record(), 0, fence=Lease("ghost", 999))
    assert await storage.store.load() == StoredConfig()


async def test_a_lease_of_an_earlier_term_is_fenced_out_even_for_the_same_node(
    storage: Storage,
) -> None:
    first = await storage.store.acquire_lease("n1", LONG_TTL)
    assert first is not None
    await storage.store.release_lease(first)
    second = await storage.store.acquire_lease("n1", LONG_TTL)
    assert second is not None
    with pytest.raises(FencedOutError):
        await storage.store.save(stored_record(), 0, fence=first)
    assert await storage.store.save(stored_record(), 0, fence=second) == 1


async def test_saves_without_a_fence_ignore_the_lease(storage: Storage) -> None:
    assert await storage.store.acquire_lease("n1", LONG_TTL) is not None
    assert await storage.store.save(stored_record(), 0) == 1


# -- the change feed --


async def test_changes_starts_with_the_current_version_once_subscribed(storage: Storage) -> None:
    await storage.store.save(stored_record(), 0)
    feed = storage.store.changes()
    try:
        # Read after subscribing: a write made before cannot fall between the read and the feed.
        assert await asyncio.wait_for(anext(feed), FEED_TIMEOUT) == 1
    finally:
        await close_feed(feed)


async def test_changes_yields_each_version_another_writer_saves(storage: Storage) -> None:
    feed = storage.store.changes()
    try:
        assert await asyncio.wait_for(anext(feed), FEED_TIMEOUT) == 0  # subscribed now
        version = await storage.announcer.save(stored_record(), 0)
        assert await asyncio.wait_for(anext(feed), FEED_TIMEOUT) == version == 1
        version = await storage.announcer.save(smaller_record(), version)
        assert await asyncio.wait_for(anext(feed), FEED_TIMEOUT) == version == 2
    finally:
        await close_feed(feed)


async def test_a_conflicting_save_announces_nothing(storage: Storage) -> None:
    feed = storage.store.changes()
    try:
        assert await asyncio.wait_for(anext(feed), FEED_TIMEOUT) == 0  # subscribed now
        await storage.announcer.save(stored_record(), 0)
        assert await asyncio.wait_for(anext(feed), FEED_TIMEOUT) == 1
        with pytest.raises(VersionConflictError):
            await storage.announcer.save(stored_record(), 0)
        await storage.announcer.save(stored_record(), 1)
        assert await asyncio.wait_for(anext(feed), FEED_TIMEOUT) == 2, "no version in between"
    finally:
        await close_feed(feed)


# -- membership --


def by_id(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda record: str(record["id"]))


def member(node_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "admin": f"127.0.0.1:{9000 + len(node_id)}", "version": 3, **extra}


async def test_members_lists_the_records_of_nodes_that_sent_a_heartbeat(storage: Storage) -> None:
    assert await storage.store.members() == []
    n2 = member("n2", pools=["app", "other"], load={"app": 0.5})
    await storage.store.heartbeat("n1", member("n1"), LONG_TTL)
    await storage.store.heartbeat("n2", n2, LONG_TTL)
    assert by_id(await storage.store.members()) == [member("n1"), n2]


async def test_a_new_heartbeat_replaces_the_node_record(storage: Storage) -> None:
    await storage.store.heartbeat("n1", member("n1"), LONG_TTL)
    await storage.store.heartbeat("n1", member("n1", version=4), LONG_TTL)
    assert await storage.store.members() == [member("n1", version=4)]


async def test_a_member_disappears_once_its_heartbeat_ttl_passes(storage: Storage) -> None:
    await storage.store.heartbeat("n1", member("n1"), 0.2)
    await storage.store.heartbeat("n2", member("n2"), LONG_TTL)
    assert len(await storage.store.members()) == 2
    listed: list[dict[str, Any]] = []

    async def only_n2_listed() -> bool:
        listed[:] = await storage.store.members()
        return listed == [member("n2")]

    await eventually_async(only_n2_listed, message=f"n1 still listed: {listed}")


async def test_a_heartbeat_extends_the_ttl(storage: Storage) -> None:
    started = time.monotonic()
    await storage.store.heartbeat("n1", member("n1"), 0.2)
    await storage.store.heartbeat("n1", member("n1"), LONG_TTL)
    await sleep_past(started, 0.3)
    assert await storage.store.members() == [member("n1")]


async def test_leave_removes_a_member_at_once(storage: Storage) -> None:
    await storage.store.heartbeat("n1", member("n1"), LONG_TTL)
    await storage.store.heartbeat("n2", member("n2"), LONG_TTL)
    await storage.store.leave("n1")
    assert await storage.store.members() == [member("n2")]
    await storage.store.leave("never-joined")  # nothing to remove is not an error
    assert await storage.store.members() == [member("n2")]


# -- the leader lease --


async def test_a_free_lease_is_granted_and_reported_as_current(storage: Storage) -> None:
    assert await storage.store.current_lease() is None
    lease = await storage.store.acquire_lease("n1", LONG_TTL)
    assert lease is not None
    assert lease.node_id == "n1"
    assert lease.token > 0
    assert await storage.store.current_lease() == lease


@pytest.mark.parametrize("contender", ["n2", "n1"], ids=["another-node", "the-holder-again"])
async def test_a_held_lease_is_not_granted_again(storage: Storage, contender: str) -> None:
    lease = await storage.store.acquire_lease("n1", LONG_TTL)
    assert await storage.store.acquire_lease(contender, LONG_TTL) is None
    assert await storage.store.current_lease() == lease


async def test_each_term_has_a_higher_fencing_token(storage: Storage) -> None:
    tokens = []
    for node_id in ["n1", "n2", "n1"]:
        lease = await storage.store.acquire_lease(node_id, LONG_TTL)
        assert lease is not None
        tokens.append(lease.token)
        await storage.store.release_lease(lease)
    assert tokens == sorted(set(tokens)), f"tokens must strictly increase: {tokens}"


async def test_release_frees_the_lease_at_once(storage: Storage) -> None:
    lease = await storage.store.acquire_lease("n1", LONG_TTL)
    assert lease is not None
    await storage.store.release_lease(lease)
    assert await storage.store.current_lease() is None
    successor = await storage.store.acquire_lease("n2", LONG_TTL)
    assert successor is not None
    assert successor.token > lease.token


async def test_releasing_a_stale_lease_leaves_the_current_holder_alone(storage: Storage) -> None:
    stale = await storage.store.acquire_lease("n1", LONG_TTL)
    assert stale is not None
    await storage.store.release_lease(stale)
    current = await storage.store.acquire_lease("n2", LONG_TTL)
    await storage.store.release_lease(stale)
    await storage.store.release_lease(Lease("ghost", 999))
    assert await storage.store.current_lease() == current


async def test_renewing_keeps_the_lease_past_its_first_ttl(storage: Storage) -> None:
    started = time.monotonic()
    lease = await storage.store.acquire_lease("n1", 0.2)
    assert lease is not None
    assert await storage.store.renew_lease(lease, LONG_TTL) is True
    await sleep_past(started, 0.3)
    assert await storage.store.current_lease() == lease
    assert await storage.store.acquire_lease("n2", LONG_TTL) is None


async def test_a_stale_lease_cannot_be_renewed(storage: Storage) -> None:
    stale = await storage.store.acquire_lease("n1", LONG_TTL)
    assert stale is not None
    await storage.store.release_lease(stale)
    assert await storage.store.renew_lease(stale, LONG_TTL) is False, "after release"
    current = await storage.store.acquire_lease("n2", LONG_TTL)
    assert await storage.store.renew_lease(stale, LONG_TTL) is False, "with another holder"
    assert await storage.store.renew_lease(Lease("ghost", 999), LONG_TTL) is False, "never held"
    assert await storage.store.current_lease() == current


async def test_a_lease_expires_after_its_ttl_and_then_fences_nothing(storage: Storage) -> None:
    lease = await storage.store.acquire_lease("n1", 0.2)
    assert lease is not None

    async def lease_gone() -> bool:
        return await storage.store.current_lease() is None

    await eventually_async(lease_gone, message="the lease outlived its ttl")
    assert await storage.store.renew_lease(lease, LONG_TTL) is False, "no renewing back to life"
    with pytest.raises(FencedOutError):
        await storage.store.save(stored_record(), 0, fence=lease)
    successor = await storage.store.acquire_lease("n2", LONG_TTL)
    assert successor is not None
    assert successor.token > lease.token


# -- sticky sessions --


async def test_a_pinned_session_reads_back_per_pool_and_key(storage: Storage) -> None:
    assert await storage.store.session_get("app", "client-1", LONG_TTL) is None
    await storage.store.session_set("app", "client-1", "b1", LONG_TTL)
    await storage.store.session_set("app", "client-2", "b2", LONG_TTL)
    await storage.store.session_set("other", "client-1", "b3", LONG_TTL)
    assert await storage.store.session_get("app", "client-1", LONG_TTL) == "b1"
    assert await storage.store.session_get("app", "client-2", LONG_TTL) == "b2"
    assert await storage.store.session_get("other", "client-1", LONG_TTL) == "b3"
    await storage.store.session_set("app", "client-1", "b9", LONG_TTL)
    assert await storage.store.session_get("app", "client-1", LONG_TTL) == "b9"


async def test_reading_a_session_slides_its_expiry(storage: Storage) -> None:
    started = time.monotonic()
    await storage.store.session_set("app", "client-1", "b1", 0.2)
    assert await storage.store.session_get("app", "client-1", LONG_TTL) == "b1"
    await sleep_past(started, 0.3)
    assert await storage.store.session_get("app", "client-1", LONG_TTL) == "b1"


async def test_a_session_nobody_reads_expires_after_its_ttl(storage: Storage) -> None:
    await storage.store.session_set("app", "client-1", "b1", 0.2)
    await storage.store.session_set("app", "client-2", "b2", LONG_TTL)
    # A fixed sleep, not polling: each read would slide the expiry it is waiting for.
    await asyncio.sleep(0.3)
    assert await storage.store.session_get("app", "client-1", LONG_TTL) is None
    assert await storage.store.session_get("app", "client-2", LONG_TTL) == "b2"


# -- rate-limit buckets --

IDLE = 60.0  # idle expiry that never comes into play


async def test_a_new_bucket_starts_full(storage: Storage) -> None:
    grant = await storage.store.take_tokens("b", rate=1.0, capacity=5, want=5, idle_ttl=IDLE)
    assert grant.granted == 5
    assert grant.available == pytest.approx(0.0, abs=0.1)


async def test_a_take_grants_at_most_what_the_bucket_holds(storage: Storage) -> None:
    first = await storage.store.take_tokens("b", rate=1.0, capacity=5, want=3, idle_ttl=IDLE)
    assert (first.granted, first.wait) == (3, 0.0)
    assert first.available == pytest.approx(2.0, abs=0.1)
    second = await storage.store.take_tokens("b", rate=1.0, capacity=5, want=3, idle_ttl=IDLE)
    assert second.granted == 2
    third = await storage.store.take_tokens("b", rate=1.0, capacity=5, want=3, idle_ttl=IDLE)
    assert third.granted == 0


async def test_an_empty_bucket_says_how_long_until_the_next_token(storage: Storage) -> None:
    await storage.store.take_tokens("b", rate=4.0, capacity=2, want=2, idle_ttl=IDLE)
    grant = await storage.store.take_tokens("b", rate=4.0, capacity=2, want=1, idle_ttl=IDLE)
    assert grant.granted == 0
    assert 0 < grant.wait <= 0.25 + 0.001, "one token takes 1/rate seconds at most"


async def test_a_bucket_refills_at_its_rate(storage: Storage) -> None:
    rate, capacity = 20.0, 10
    started = time.monotonic()
    drained = await storage.store.take_tokens("b", rate, capacity, want=capacity, idle_ttl=IDLE)
    drained_at = time.monotonic()
    assert drained.granted == capacity
    await asyncio.sleep(0.2)
    asked_at = time.monotonic()
    grant = await storage.store.take_tokens("b", rate, capacity, want=capacity, idle_ttl=IDLE)
    answered_at = time.monotonic()
    # The store's clock moved by at least the gap between the calls and at most their span.
    fewest = int((asked_at - drained_at) * rate) - 1
    most = min(capacity, int((answered_at - started) * rate) + 2)
    assert fewest <= grant.granted <= most, f"{grant.granted} not in [{fewest}, {most}]"
    assert grant.granted < capacity or answered_at - started >= capacity / rate


async def test_returned_tokens_go_back_into_the_bucket_up_to_its_capacity(
    storage: Storage,
) -> None:
    take = storage.store.take_tokens
    await take("b", rate=0.01, capacity=5, want=5, idle_ttl=IDLE)
    returned = await take("b", rate=0.01, capacity=5, want=-3, idle_ttl=IDLE)
    assert returned.granted == 0
    assert returned.available == pytest.approx(3.0, abs=0.01)
    overfilled = await take("b", rate=0.01, capacity=5, want=-10, idle_ttl=IDLE)
    assert overfilled.available == pytest.approx(5.0, abs=0.01), "capped at the capacity"
    assert (await take("b", rate=0.01, capacity=5, want=10, idle_ttl=IDLE)).granted == 5


async def test_buckets_are_independent(storage: Storage) -> None:
    await storage.store.take_tokens("one", rate=0.01, capacity=3, want=3, idle_ttl=IDLE)
    other = await storage.store.take_tokens("two", rate=0.01, capacity=3, want=3, idle_ttl=IDLE)
    assert other.granted == 3
    again = await storage.store.take_tokens("one", rate=0.01, capacity=3, want=1, idle_ttl=IDLE)
    assert again.granted == 0


async def test_an_idle_bucket_expires_and_starts_full_again(storage: Storage) -> None:
    # The rate is so low that refilling cannot explain a full bucket: only the expiry can.
    take = storage.store.take_tokens
    assert (await take("b", rate=0.01, capacity=5, want=5, idle_ttl=0.2)).granted == 5
    assert (await take("b", rate=0.01, capacity=5, want=1, idle_ttl=0.2)).granted == 0
    await asyncio.sleep(0.3)
    assert (await take("b", rate=0.01, capacity=5, want=5, idle_ttl=0.2)).granted == 5


# ---- the state file of the memory store ----


def files_under(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


def _fail_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up while the new record is written: fsync reports ENOSPC."""

    def fsync(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)


async def test_the_state_file_holds_the_record_and_its_version(tmp_path: Path) -> None:
    await MemoryStore(tmp_path).save(stored_record(), 0)
    reopened = MemoryStore(tmp_path)
    assert await reopened.load() == at_version(stored_record(), 1)
    assert await reopened.save(smaller_record(), 1) == 2, "the version survives a restart"


async def test_a_save_leaves_no_temporary_file_behind(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "state")
    for version in range(3):
        await store.save(stored_record(), version)
    assert files_under(tmp_path) == [
        "state",
        f"state/.{STATE_FILE_NAME}.lock",
        f"state/{STATE_FILE_NAME}",
    ]


async def test_a_failed_save_raises_store_error_and_keeps_the_old_record_and_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryStore(tmp_path / "state")
    await store.save(stored_record(), 0)
    with monkeypatch.context() as broken:
        _fail_fsync(broken)
        with pytest.raises(StoreError) as caught:
            await store.save(smaller_record(), 1)
    message = str(caught.value)
    assert "cannot write" in message
    assert "No space left on device" in message
    assert await store.load() == at_version(stored_record(), 1)
    assert await MemoryStore(tmp_path / "state").load() == at_version(stored_record(), 1)
    assert files_under(tmp_path) == [
        "state",
        f"state/.{STATE_FILE_NAME}.lock",
        f"state/{STATE_FILE_NAME}",
    ]
    assert await store.save(smaller_record(), 1) == 2, "once the disk has room, the retry works"


async def test_a_state_dir_under_a_plain_file_fails_with_a_sentence_naming_the_path(
    tmp_path: Path,
) -> None:
    (tmp_path / "plain").write_text("not a directory")
    store = MemoryStore(tmp_path / "plain" / "state")
    with pytest.raises(StoreError) as caught:
        await store.save(stored_record(), 0)
    assert str(caught.value) == (
        f"cannot write the state file {tmp_path}/plain/state/{STATE_FILE_NAME}: Not a directory"
    )
    with pytest.raises(StoreError, match=r"cannot read the state file .*: Not a directory"):
        await store.load()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
async def test_a_read_only_state_dir_fails_and_keeps_the_old_record(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    await store.save(stored_record(), 0)
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="Permission denied"):
            await store.save(smaller_record(), 1)
    finally:
        tmp_path.chmod(0o700)
    assert await MemoryStore(tmp_path).load() == at_version(stored_record(), 1)
    assert files_under(tmp_path) == [STATE_FILE_NAME]


@pytest.mark.parametrize(
    "text",
    ["{torn", "[]", '{"format": 2, "version": 1, "pools": {}}', '{"format": 1, "pools": {}}'],
    ids=["torn", "not-an-object", "newer-format", "no-version"],
)
async def test_a_damaged_state_file_fails_to_load_with_advice(tmp_path: Path, text: str) -> None:
    (tmp_path / STATE_FILE_NAME).write_text(text)
    with pytest.raises(StoreError) as caught:
        await MemoryStore(tmp_path).load()
    message = str(caught.value)
    assert f"the state file {tmp_path / STATE_FILE_NAME} is damaged" in message
    assert "move it away" in message


def test_the_description_names_the_state_file_or_says_nothing_persists(tmp_path: Path) -> None:
    assert str(tmp_path / STATE_FILE_NAME) in MemoryStore(tmp_path).description
    assert "not persisted" in MemoryStore().description
    assert MemoryStore(tmp_path).watch_path == tmp_path / STATE_FILE_NAME
    assert MemoryStore().watch_path is None


# ---- composing the file with API overrides ----

B0 = {"name": "b0", "url": "http://127.0.0.1:8001"}
B1 = {"name": "b1", "url": "http://127.0.0.1:8002"}
FILE: dict[str, Any] = {
    "listeners": [{"name": "web", "bind": "127.0.0.1:8000"}],
    "pools": {"app": {"backends": [B0]}, "other": {"algorithm": "random"}},
    "routes": [{"name": "default", "pool": "app"}],
}
API_APP = {"backends": [B0, B1]}


def edited(**pools: Any) -> dict[str, Any]:
    """FILE with some pools replaced (None: removed from the file)."""
    merged = {**FILE["pools"], **pools}
    return {**FILE, "pools": {name: pool for name, pool in merged.items() if pool is not None}}


def taken_over(name: str, definition: Any, file_data: dict[str, Any] = FILE) -> StoredConfig:
    """A record in which the API took pool `name` over from `file_data`."""
    file_pool = file_data["pools"].get(name)
    return StoredConfig(version=3, pools={name: Override(definition, fingerprint(file_pool))})


def test_with_no_overrides_the_file_is_the_config() -> None:
    composition = compose(FILE, StoredConfig())
    assert composition.data == FILE
    assert (composition.api_pools, composition.api_parts) == (frozenset(), frozenset())
    assert (composition.api_routes, composition.has_overrides) == (False, False)
    assert composition.reclaimed == ()


def test_an_api_pool_replaces_the_file_pool_while_the_file_stays_the_same() -> None:
    composition = compose(FILE, taken_over("app", API_APP))
    assert composition.data["pools"] == {"app": API_APP, "other": FILE["pools"]["other"]}
    assert composition.data["listeners"] == FILE["listeners"]
    assert composition.api_pools == {"app"}
    assert composition.stored == taken_over("app", API_APP)
    assert FILE["pools"]["app"] == {"backends": [B0]}, "compose must not change its input"


def test_editing_the_pool_in_the_file_gives_it_back_to_the_file() -> None:
    changed = edited(app={"algorithm": "least_conn", "backends": [B0]})
    composition = compose(changed, taken_over("app", API_APP))
    assert composition.data["pools"]["app"] == changed["pools"]["app"]
    assert composition.api_pools == frozenset()
    assert composition.reclaimed == ("pools.app",)
    assert dict(composition.stored.pools) == {}
    assert composition.stored.version == 3


def test_editing_another_pool_in_the_file_keeps_the_api_pool() -> None:
    changed = edited(other={"algorithm": "p2c"})
    composition = compose(changed, taken_over("app", API_APP))
    assert composition.data["pools"] == {"app": API_APP, "other": {"algorithm": "p2c"}}
    assert composition.reclaimed == ()


def test_a_pool_deleted_through_the_api_stays_away_until_the_file_changes_it() -> None:
    deleted = taken_over("other", None)
    composition = compose(FILE, deleted)
    assert list(composition.data["pools"]) == ["app"]
    assert composition.api_pools == {"other"}

    composition = compose(edited(other={"algorithm": "p2c"}), deleted)
    assert composition.data["pools"]["other"] == {"algorithm": "p2c"}
    assert composition.reclaimed == ("pools.other",)


def test_a_pool_the_api_created_yields_once_the_file_defines_one_of_that_name() -> None:
    created = taken_over("blue", {"backends": [B1]})
    assert compose(FILE, created).data["pools"]["blue"] == {"backends": [B1]}
    composition = compose(edited(blue={"backends": [B0]}), created)
    assert composition.data["pools"]["blue"] == {"backends": [B0]}
    assert composition.reclaimed == ("pools.blue",)


def test_api_routes_replace_the_file_routes_until_the_file_changes_them() -> None:
    routes = [{"name": "other", "pool": "other"}]
    stored = StoredConfig(routes=Override(routes, fingerprint(FILE["routes"])))
    composition = compose(FILE, stored)
    assert (composition.data["routes"], composition.api_routes) == (routes, True)

    changed = {**FILE, "routes": [{"name": "renamed", "pool": "app"}]}
    composition = compose(changed, stored)
    assert composition.data["routes"] == changed["routes"]
    assert (composition.api_routes, composition.reclaimed) == (False, ("routes",))
    assert composition.stored.routes is None


def test_sources_name_the_api_for_every_part_it_owns() -> None:
    file_sources = {
        "listeners": "f.yaml",
        "pools.app.backends": "f.yaml",
        "pools.app.algorithm": "environment",
        "pools.other.algorithm": "f.yaml",
        "routes": "f.yaml",
    }
    stored = StoredConfig(
        pools=taken_over("app", API_APP).pools,
        routes=Override([], fingerprint(FILE["routes"])),
    )
    assert compose(FILE, stored).sources(file_sources) == {
        "listeners": "f.yaml",
        "pools.app": "api",
        "pools.other.algorithm": "f.yaml",
        "routes": "api",
    }


def test_a_changed_pool_is_recorded_with_the_file_fingerprint() -> None:
    after = edited(app=API_APP)
    stored = record_changes(FILE, StoredConfig(version=5), FILE, after)
    assert stored == StoredConfig(
        version=5, pools={"app": Override(API_APP, fingerprint(FILE["pools"]["app"]))}
    )
    assert compose(FILE, stored).data == after


def test_a_pool_changed_back_to_the_file_definition_drops_its_override() -> None:
    stored = taken_over("app", API_APP)
    after = record_changes(FILE, stored, edited(app=API_APP), FILE)
    assert dict(after.pools) == {}
    assert compose(FILE, after).data == FILE


def test_deleting_and_creating_pools_are_recorded() -> None:
    after = edited(other=None, blue={"backends": [B1]})
    stored = record_changes(FILE, StoredConfig(), FILE, after)
    assert dict(stored.pools) == {
        "other": Override(None, fingerprint(FILE["pools"]["other"])),
        "blue": Override({"backends": [B1]}, fingerprint(None)),
    }
    assert compose(FILE, stored).data == after


def test_unchanged_parts_keep_their_earlier_overrides() -> None:
    stored = taken_over("app", API_APP)
    before = edited(app=API_APP)
    after = edited(app=API_APP, other={"algorithm": "p2c"})
    recorded = record_changes(FILE, stored, before, after)
    assert set(recorded.pools) == {"app", "other"}
    assert recorded.pools["app"] == stored.pools["app"]
    assert recorded.routes is None


def test_route_changes_are_recorded_and_undone_like_pools() -> None:
    routes = [{"name": "other", "pool": "other"}]
    after = {**FILE, "routes": routes}
    stored = record_changes(FILE, StoredConfig(), FILE, after)
    assert stored.routes == Override(routes, fingerprint(FILE["routes"]))
    assert dict(stored.pools) == {}
    assert record_changes(FILE, stored, after, FILE).routes is None


def test_emptying_the_routes_when_the_file_has_none_needs_no_override() -> None:
    no_routes = {key: value for key, value in FILE.items() if key != "routes"}
    before = {**no_routes, "routes": [{"name": "r", "pool": "app"}]}
    stored = StoredConfig(routes=Override(before["routes"], fingerprint(None)))
    assert record_changes(no_routes, stored, before, {**no_routes, "routes": []}).routes is None


LIMITS = {"per_ip": {"rate": 10.0, "burst": 20}}


def test_api_rate_limits_replace_the_file_ones_until_the_file_changes_them() -> None:
    limits = {"per_route": {"key": "route", "rate": 5.0}}
    stored = StoredConfig(rate_limits=Override(limits, fingerprint(None)))
    composition = compose(FILE, stored)
    assert composition.data["rate_limits"] == limits
    assert composition.api_parts == {"rate_limits"}
    assert (composition.api_routes, composition.has_overrides) == (False, True)

    changed = {**FILE, "rate_limits": LIMITS}
    composition = compose(changed, stored)
    assert composition.data["rate_limits"] == LIMITS
    assert (composition.api_parts, composition.reclaimed) == (frozenset(), ("rate_limits",))
    assert composition.stored.rate_limits is None
    assert composition.has_overrides is False


def test_the_api_may_own_routes_and_rate_limits_at_once() -> None:
    routes = [{"name": "other", "pool": "other"}]
    stored = StoredConfig(
        routes=Override(routes, fingerprint(FILE["routes"])),
        rate_limits=Override(LIMITS, fingerprint(None)),
    )
    composition = compose(FILE, stored)
    assert composition.api_parts == {"routes", "rate_limits"}
    assert composition.api_routes is True
    sources = composition.sources({"routes": "f.yaml", "listeners": "f.yaml"})
    assert sources == {"listeners": "f.yaml", "rate_limits": "api", "routes": "api"}


def test_rate_limit_changes_are_recorded_and_undone_like_routes() -> None:
    file_data = {**FILE, "rate_limits": LIMITS}
    after = {**file_data, "rate_limits": {"per_ip": {"rate": 1.0}}}
    stored = record_changes(file_data, StoredConfig(), file_data, after)
    assert stored.rate_limits == Override(after["rate_limits"], fingerprint(LIMITS))
    assert (dict(stored.pools), stored.routes) == ({}, None)
    assert compose(file_data, stored).data == after
    assert record_changes(file_data, stored, after, file_data).rate_limits is None


def test_rate_limits_spelled_out_with_their_defaults_are_no_change() -> None:
    file_data = {**FILE, "rate_limits": LIMITS}
    spelled_out = {"per_ip": {**LIMITS["per_ip"], "key": "client_ip", "period": 1.0}}
    after = {**file_data, "rate_limits": spelled_out}
    assert record_changes(file_data, StoredConfig(), file_data, after) == StoredConfig()


def test_emptying_the_rate_limits_when_the_file_has_none_needs_no_override() -> None:
    stored = StoredConfig(rate_limits=Override(LIMITS, fingerprint(None)))
    before = {**FILE, "rate_limits": LIMITS}
    after = {**FILE, "rate_limits": {}}
    assert record_changes(FILE, stored, before, after).rate_limits is None


# ---- the admin token ----


def test_the_token_comes_from_the_environment_variable_trimmed() -> None:
    assert resolve_token(AdminConfig(), {"LOADWEAVER_ADMIN_TOKEN": "  s3cret \n"}) == "s3cret"
    custom = AdminConfig(token_env="MY_TOKEN")
    assert resolve_token(custom, {"MY_TOKEN": "mine", "LOADWEAVER_ADMIN_TOKEN": "x"}) == "mine"


@pytest.mark.parametrize("value", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_no_token_when_the_variable_is_unset_or_blank(value: str | None, tmp_path: Path) -> None:
    environ = {} if value is None else {"LOADWEAVER_ADMIN_TOKEN": value}
    assert resolve_token(AdminConfig(), environ, dotenv=tmp_path / ".env") is None


def test_the_dotenv_file_gives_the_token_when_the_environment_does_not(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("OTHER=1\nLOADWEAVER_ADMIN_TOKEN=from-dotenv\n")
    assert resolve_token(AdminConfig(), {}, dotenv=dotenv) == "from-dotenv"
    environ = {"LOADWEAVER_ADMIN_TOKEN": "from-env"}
    assert resolve_token(AdminConfig(), environ, dotenv=dotenv) == "from-env"


def test_the_token_file_wins_and_its_first_line_is_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  file-token  \nsecond line\n")
    admin = AdminConfig(token_file=str(token_file))
    assert resolve_token(admin, {"LOADWEAVER_ADMIN_TOKEN": "from-env"}) == "file-token"


@pytest.mark.parametrize("content", ["", "\n", "   \nthe token on line two\n"])
def test_an_empty_token_file_is_an_error(tmp_path: Path, content: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content)
    with pytest.raises(AdminTokenError) as caught:
        resolve_token(AdminConfig(token_file=str(token_file)), {})
    assert str(caught.value) == (
        f"admin.token_file: {token_file} is empty; put the token on its first line"
    )


@pytest.mark.parametrize("name", ["missing", "a-directory"])
def test_an_unreadable_token_file_is_an_error_naming_it(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name == "a-directory":
        path.mkdir()
    with pytest.raises(AdminTokenError) as caught:
        resolve_token(AdminConfig(token_file=str(path)), {"LOADWEAVER_ADMIN_TOKEN": "ignored"})
    assert str(caught.value).startswith(f"admin.token_file: cannot read {path}: ")


def test_a_token_file_that_is_not_utf8_is_an_error_naming_it(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(b"\xff\xfe-binary\n")
    with pytest.raises(AdminTokenError, match=r"admin\.token_file"):
        resolve_token(AdminConfig(token_file=str(token_file)), {})


@pytest.mark.parametrize("bind", ["0.0.0.0:9090", "[::]:9090", "10.1.2.3:9090", "[2001:db8::1]:1"])
def test_an_open_api_may_not_be_offered_beyond_loopback(bind: str) -> None:
    admin = AdminConfig(bind=bind)
    with pytest.raises(AdminTokenError) as caught:
        check_exposure(admin, None)
    message = str(caught.value)
    assert bind in message
    assert "LOADWEAVER_ADMIN_TOKEN" in message
    assert "127.0.0.1" in message
    check_exposure(admin, "a-token")  # with a token, any address is fine


@pytest.mark.parametrize(
    "bind", ["127.0.0.1:9090", "127.0.0.2:9090", "[::1]:9090", "localhost:9090"]
)
def test_an_open_api_may_listen_on_loopback(bind: str) -> None:
    check_exposure(AdminConfig(bind=bind), None)


@pytest.mark.parametrize(
    ("authorization", "matches"),
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),
        ("Bearer  s3cret ", True),
        ("Bearer s3cre", False),
        ("Bearer s3cret2", False),
        ("Bearer S3CRET", False),
        ("Bearer", False),
        ("Bearer ", False),
        ("s3cret", False),
        ("Basic s3cret", False),
        ("Token s3cret", False),
        ("Bearers3cret", False),
        (None, False),
    ],
)
def test_only_the_exact_bearer_token_matches(authorization: str | None, matches: bool) -> None:
    assert token_matches("s3cret", authorization) is matches


@pytest.mark.parametrize("authorization", [None, "", "Basic x", "Bearer anything"])
def test_without_a_configured_token_everything_matches(authorization: str | None) -> None:
    assert token_matches(None, authorization) is True


# ---- secret redaction ----

SECRET = "the-sticky-secret-0123"


def sticky_pools(secret: str | None = SECRET) -> dict[str, Any]:
    sticky: dict[str, Any] = {"cookie": "lw", "secret": secret}
    return {"app": {"sticky": sticky, "backends": [B0]}, "plain": {"backends": [B1]}}


def test_redaction_replaces_every_sticky_secret_and_nothing_else() -> None:
    data = {"node": {"id": "n1"}, "pools": sticky_pools()}
    redacted = redact_config(data)
    assert redacted["pools"]["app"]["sticky"] == {"cookie": "lw", "secret": REDACTED}
    assert redacted["pools"]["plain"] == data["pools"]["plain"]
    assert redacted["node"] == {"id": "n1"}
    assert SECRET not in repr(redacted)
    assert data["pools"]["app"]["sticky"]["secret"] == SECRET, "the input must not change"


def test_redaction_hides_webhook_headers_and_url_passwords() -> None:
    hook = {"name": "ops", "url": "https://bot:hunter2@alerts.test/hook", "headers": {"X-Key": "k"}}
    data = {"alerts": {"webhooks": [hook, {"name": "plain", "url": "http://a.test/"}]}}
    hooks = redact_config(data)["alerts"]["webhooks"]
    assert hooks[0]["headers"] == {"X-Key": REDACTED}
    assert hooks[0]["url"] == f"https://bot:{REDACTED}@alerts.test/hook"
    assert hooks[1]["url"] == "http://a.test/"
    assert "hunter2" not in repr(hooks)


@pytest.mark.parametrize(
    "data",
    [{}, {"pools": None}, {"pools": {}}, {"pools": sticky_pools(secret=None)}],
    ids=["no-pools-key", "null-pools", "no-pools", "no-secret"],
)
def test_redaction_leaves_configs_without_secrets_alone(data: dict[str, Any]) -> None:
    assert redact_config(data) == data


def test_the_marker_is_a_valid_secret_so_a_redacted_config_validates() -> None:
    assert StickyConfig(cookie="lw", secret=REDACTED).secret == REDACTED


def test_the_marker_sent_back_keeps_the_current_secret() -> None:
    sent = redact_config({"pools": sticky_pools()})["pools"]
    restored = restore_secrets(sent, sticky_pools())
    assert restored == sticky_pools()
    assert sent["app"]["sticky"]["secret"] == REDACTED, "the input must not change"


def test_a_new_secret_sent_replaces_the_current_one() -> None:
    sent = sticky_pools(secret="a-brand-new-secret-456")
    assert restore_secrets(sent, sticky_pools()) == sent


@pytest.mark.parametrize(
    "current",
    [sticky_pools(secret=None), {"plain": {}}],
    ids=["pool-without-secret", "pool-not-there"],
)
def test_the_marker_for_a_pool_without_a_secret_is_refused(current: dict[str, Any]) -> None:
    sent = {"app": {"sticky": {"cookie": "lw", "secret": REDACTED}}}
    with pytest.raises(RedactionError) as caught:
        restore_secrets(sent, current)
    assert str(caught.value).startswith("pools.app.sticky.secret: ")
    assert "send the secret itself" in str(caught.value)


# ---- per-backend latency percentiles ----


def test_latency_buckets_run_from_a_tenth_of_a_millisecond_to_a_minute_20_percent_apart() -> None:
    assert LATENCY_BOUNDS[0] == pytest.approx(0.0001)
    assert 60 <= LATENCY_BOUNDS[-1] < 72
    ratios = {round(high / low, 9) for low, high in itertools.pairwise(LATENCY_BOUNDS)}
    assert ratios == {1.2}


def buckets(**counts: int) -> list[int]:
    """Bucket counts: `at10=5` puts 5 requests in bucket 10; the last bucket is the overflow."""
    contents = [0] * (len(LATENCY_BOUNDS) + 1)
    for name, count in counts.items():
        contents[int(name.removeprefix("at"))] = count
    return contents


def test_percentiles_name_the_upper_bound_of_the_bucket_holding_the_rank() -> None:
    known = buckets(at10=50, at20=45, at30=5)
    assert percentile(known, 0.0) == LATENCY_BOUNDS[10]
    assert percentile(known, 0.5) == LATENCY_BOUNDS[10]
    assert percentile(known, 0.51) == LATENCY_BOUNDS[20]
    assert percentile(known, 0.95) == LATENCY_BOUNDS[20]
    assert percentile(known, 0.96) == LATENCY_BOUNDS[30]
    assert percentile(known, 0.99) == LATENCY_BOUNDS[30]
    assert percentile(known, 1.0) == LATENCY_BOUNDS[30]


def test_percentiles_of_nothing_are_none_and_overflow_reads_as_the_last_bound() -> None:
    assert percentile(buckets(), 0.5) is None
    assert percentile(buckets(at74=3), 0.99) == LATENCY_BOUNDS[-1]


def test_recorded_requests_land_in_buckets_that_bound_them() -> None:
    stats = BackendStats()
    for _ in range(90):
        stats.record(0.001, failed=False)
    for _ in range(10):
        stats.record(0.250, failed=True)
    stats.record(3600.0, failed=True)
    assert (stats.requests, stats.errors) == (101, 11)
    assert sum(stats.latency) == 0, "recording only queues: the sampler folds"
    stats.fold()
    assert (stats.requests, stats.errors, sum(stats.latency)) == (101, 11, 101)
    assert stats.latency[-1] == 1
    p50, p95 = percentile(stats.latency, 0.5), percentile(stats.latency, 0.95)
    assert p50 is not None
    assert 0.001 < p50 <= 0.001 * 1.2
    assert p95 is not None
    assert 0.250 < p95 <= 0.250 * 1.2
