"""GET /api/v1/traffic: the top clients, paths, user agents and status codes of real traffic from
several loopback addresses, on one node and merged over a cluster's nodes."""

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartBackend, StartProxy
from tests.support.admin import AdminClient
from tests.support.client import RawClient, get
from tests.support.cluster import MakeCluster, wait_until
from tests.support.cluster import cluster_factory as cluster_factory_fixture  # noqa: F401
from tests.support.nodes import admin_port
from tests.support.redis_server import RedisServer

SETTLE = 5.0
# (source address, path, user agent, requests): a skewed mix
MIX = [
    ("127.0.0.2", "/hot", "bot/2", 30),
    ("127.0.0.3", "/warm", "browser/1", 10),
    ("127.0.0.4", "/cold", "browser/1", 5),
]

pytestmark = pytest.mark.usefixtures("quiet_node_logs")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def send_mix(port: int, scale: int = 1) -> int:
    sent = 0
    for source, path, agent, count in MIX:
        client = await RawClient.connect(port, local_addr=(source, 0))
        try:
            for _ in range(count * scale):
                await client.send(get(path, extra=f"User-Agent: {agent}\r\n"))
                assert (await client.read_response()).status == 200
                sent += 1
        finally:
            await client.close()
    return sent


def keys(document: dict[str, Any], dimension: str) -> list[tuple[str, int]]:
    return [(entry["key"], entry["count"]) for entry in document[dimension]["top"]]


async def traffic_of(admin: AdminClient, query: str, requests: int) -> dict[str, Any]:
    """The traffic document once it counts `requests` (finished requests are read in batches)."""

    async def counted() -> dict[str, Any] | None:
        document: dict[str, Any] = await admin.ok("GET", f"/traffic?{query}")
        return document if document["requests"] >= requests else None

    found: dict[str, Any] = await wait_until(counted, SETTLE, "the requests were not counted")
    return found


async def test_the_top_keys_of_a_skewed_mix(
    backend_factory: StartBackend, proxy_factory: StartProxy, session: aiohttp.ClientSession
) -> None:
    backend = await backend_factory()
    proxy = await proxy_factory([backend.url])
    sent = await send_mix(proxy.port)
    admin = AdminClient(session, admin_port(proxy.config))
    document = await traffic_of(admin, "top=2&scope=node", sent)

    assert document["requests"] == sent == 45
    assert document["scope"] == "node"
    assert document["nodes"] == [proxy.node.config.node.id]
    assert document["sample_step"] == 1
    assert 0 < document["window_seconds"] <= 60
    assert keys(document, "clients") == [("127.0.0.2", 30), ("127.0.0.3", 10)]
    assert keys(document, "paths") == [("/hot", 30), ("/warm", 10)]
    assert keys(document, "user_agents") == [("bot/2", 30), ("browser/1", 15)]
    assert keys(document, "status_codes") == [("200", 45)]
    assert document["clients"]["top"][0]["share"] == pytest.approx(30 / 45, abs=1e-4)
    assert document["clients"]["error_bound"] == 0


async def test_the_real_client_behind_a_trusted_proxy_is_counted(
    backend_factory: StartBackend, proxy_factory: StartProxy, session: aiohttp.ClientSession
) -> None:
    backend = await backend_factory()
    proxy = await proxy_factory([backend.url], security={"trusted_proxies": ["127.0.0.0/8"]})
    client = await RawClient.connect(proxy.port)
    for _ in range(3):
        await client.send(get("/", extra="X-Forwarded-For: 203.0.113.9\r\n"))
        await client.read_response()
    await client.close()
    admin = AdminClient(session, admin_port(proxy.config))
    document = await traffic_of(admin, "scope=node", 3)
    assert keys(document, "clients") == [("203.0.113.9", 3)]


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("top=0", 400, "top must be a whole number from 1 to 100"),
        ("top=ten", 400, "top must be a whole number"),
        ("scope=world", 400, "scope must be node or cluster"),
    ],
)
async def test_bad_queries_are_refused(
    proxy_factory: StartProxy,
    session: aiohttp.ClientSession,
    query: str,
    status: int,
    words: str,
) -> None:
    proxy = await proxy_factory([])
    answer = await AdminClient(session, admin_port(proxy.config)).get(f"/traffic?{query}")
    assert answer.status == status
    assert words in answer.error["message"]


async def test_turned_off_it_says_how_to_turn_it_on(
    proxy_factory: StartProxy, session: aiohttp.ClientSession
) -> None:
    proxy = await proxy_factory([], traffic_patterns={"enabled": False})
    answer = await AdminClient(session, admin_port(proxy.config)).get("/traffic")
    assert answer.status == 409
    assert "traffic_patterns.enabled" in answer.error["message"]


async def test_a_cluster_view_merges_every_nodes_traffic(
    cluster_factory: MakeCluster, fresh_redis: RedisServer, backend_factory: StartBackend
) -> None:
    backend = await backend_factory()
    cluster = cluster_factory(fresh_redis.url, "traffic", {"b0": backend.url})
    first, second = await cluster.start_in_process(2)
    sent = await send_mix(first.port) + await send_mix(second.port, scale=2)

    # Each node shares its window in its heartbeat; the merged view waits for both.
    merged = await traffic_of(first.admin, "top=3", sent)
    assert merged["scope"] == "cluster"
    assert merged["nodes"] == ["n1", "n2"]
    assert keys(merged, "clients") == [("127.0.0.2", 90), ("127.0.0.3", 30), ("127.0.0.4", 15)]
    own = await first.admin.ok("GET", "/traffic?scope=node")
    assert own["requests"] == 45
