"""Rate limits on routes through a real node: 429 with the RateLimit fields, per key, refilling."""

import asyncio
from typing import Any

from tests.conftest import StartBackend, StartNode
from tests.support.client import RawClient, get
from tests.support.framing import HeaderLookup
from tests.support.nodes import listener_port, node_config
from tests.support.upstream import metric


def limited_config(backend_url: str, **policy: Any) -> dict[str, Any]:
    config = node_config([backend_url])
    config["rate_limits"] = {"tight": {"rate": 2, "period": "1s", "burst": 3, **policy}}
    config["routes"][0]["rate_limit"] = "tight"
    return config


async def statuses(port: int, count: int, extra: str = "") -> list[int]:
    client = await RawClient.connect(port)
    seen = []
    for _ in range(count):
        await client.send(get("/limited", extra=extra))
        seen.append((await client.read_response()).status)
    await client.close()
    return seen


async def test_a_burst_passes_then_429_carries_retry_after_and_ratelimit_fields(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    backend = await backend_factory()
    config = limited_config(backend.url)
    node = await node_factory(config)
    port = listener_port(config)
    assert await statuses(port, 3) == [200, 200, 200]
    client = await RawClient.connect(port)
    await client.send(get("/limited"))
    refused = await client.read_response()
    assert refused.status == 429
    assert_rate_limit_fields(refused)
    await client.send(get("/limited"))  # the connection stays usable after a 429
    assert (await client.read_response()).status == 429
    await client.close()
    assert len(backend.requests) == 3
    assert metric(node, "loadweaver_rate_limited_total", {"policy": "tight"}) == 2


def assert_rate_limit_fields(response: HeaderLookup) -> None:
    assert response.header("retry-after") == "1"
    assert response.header("ratelimit-limit") == "2"
    assert response.header("ratelimit-remaining") == "0"
    assert int(response.header("ratelimit-reset") or "-1") >= 1


async def test_tokens_refill_at_the_configured_rate(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    backend = await backend_factory()
    config = limited_config(backend.url, rate=10, burst=1)
    await node_factory(config)
    port = listener_port(config)
    assert await statuses(port, 2) == [200, 429]
    await asyncio.sleep(0.15)  # 10/s: one token per 100 ms
    assert await statuses(port, 2) == [200, 429]


async def test_a_header_key_gives_each_client_its_own_bucket(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    backend = await backend_factory()
    config = limited_config(backend.url, key="header:X-Api-Key", burst=1)
    await node_factory(config)
    port = listener_port(config)
    assert await statuses(port, 2, "X-Api-Key: alice\r\n") == [200, 429]
    assert await statuses(port, 2, "X-Api-Key: bob\r\n") == [200, 429]
    assert await statuses(port, 2) == [200, 429]  # no key: one shared bucket


async def test_routes_without_a_limit_are_not_limited(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    backend = await backend_factory()
    config = limited_config(backend.url, burst=1)
    config["routes"].append(
        {"name": "open", "match": {"path_prefix": "/open"}, "pool": "app", "priority": 1}
    )
    await node_factory(config)
    port = listener_port(config)
    client = await RawClient.connect(port)
    for _ in range(5):
        await client.send(get("/open/x"))
        assert (await client.read_response()).status == 200
    await client.close()


async def test_headers_the_proxy_rewrites_can_key_a_limit_too(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    """Host, X-Forwarded-For and the request id are parsed apart from the other headers."""
    backend = await backend_factory()
    for header, values in (
        ("Host", ("a.test", "b.test")),
        ("X-Forwarded-For", ("198.51.100.1", "198.51.100.2")),
        ("X-Request-ID", ("trace-a", "trace-b")),
    ):
        config = limited_config(backend.url, key=f"header:{header}", burst=1)
        await node_factory(config)
        port = listener_port(config)
        client = await RawClient.connect(port)
        seen = []
        for value in (values[0], values[0], values[1]):
            request = (
                get("/limited", host=value)
                if header == "Host"
                else get("/limited", extra=f"{header}: {value}\r\n")
            )
            await client.send(request)
            seen.append((await client.read_response()).status)
        await client.close()
        assert seen == [200, 429, 200], header
