"""Routing through a running node: several pools, each with one backend that names itself."""

import asyncio
from typing import Any

from tests.conftest import StartBackend, StartNode
from tests.support.backend import Backend, ReceivedRequest, response
from tests.support.client import RawClient, RawResponse, get
from tests.support.nodes import listener_port, node_config


class Routed:
    """A node whose pools each lead to a backend answering `<pool> <target>`."""

    def __init__(self, port: int, backends: dict[str, Backend]) -> None:
        self.port = port
        self.backends = backends

    async def send(self, data: bytes) -> RawResponse:
        client = await RawClient.connect(self.port)
        try:
            await client.send(data)
            return await client.read_response(timeout=3.0)
        finally:
            await client.close()

    async def pool_for(
        self, path: str = "/", host: str = "example.test", method: str = "GET", extra: str = ""
    ) -> str | None:
        """The pool that served the request, or None for a 404."""
        result = await self.send(
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n{extra}\r\n".encode()
        )
        if result.status == 404:
            return None
        assert result.status == 200, (result.status, result.body)
        return result.body.split(b" ", 1)[0].decode()

    def received(self) -> dict[str, int]:
        return {name: len(backend.requests) for name, backend in self.backends.items()}


def named_handler(name: str) -> Any:
    async def handler(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(response(200, f"{name} {request.target}".encode()))
        return True

    return handler


async def start_routed(
    backend_factory: StartBackend, node_factory: StartNode, routes: list[dict[str, Any]]
) -> Routed:
    names = sorted({route["pool"] for route in routes})
    backends = {name: await backend_factory(named_handler(name), name=name) for name in names}
    pools = {name: {"backends": [{"name": "b", "url": backends[name].url}]} for name in names}
    numbered = [{"name": f"r{index}", **route} for index, route in enumerate(routes)]
    config = node_config(pools=pools, routes=numbered)
    await node_factory(config)
    return Routed(listener_port(config), backends)


def host_route(host: str, pool: str, **extra: Any) -> dict[str, Any]:
    return {"match": {"host": host, **extra.pop("match", {})}, "pool": pool, **extra}


# ---- hosts ----


async def test_exact_host_beats_wildcard_beats_catch_all(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    routed = await start_routed(
        backend_factory,
        node_factory,
        [
            host_route("*", "anyhost"),
            host_route("*.example.com", "wild"),
            host_route("a.example.com", "exact"),
        ],
    )
    assert await routed.pool_for(host="a.example.com") == "exact"
    assert await routed.pool_for(host="b.example.com") == "wild"
    assert await routed.pool_for(host="other.test") == "anyhost"
    assert routed.received() == {"anyhost": 1, "exact": 1, "wild": 1}


async def test_host_match_ignores_port_and_case(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    routed = await start_routed(
        backend_factory,
        node_factory,
        [host_route("A.Example.COM", "exact"), host_route("*.Wild.Test", "wild")],
    )
    assert await routed.pool_for(host="a.example.com") == "exact"
    assert await routed.pool_for(host="A.EXAMPLE.com") == "exact"
    assert await routed.pool_for(host="a.example.com:8080") == "exact"
    assert await routed.pool_for(host="A.Example.Com:1") == "exact"
    assert await routed.pool_for(host="X.WILD.test:8443") == "wild"
    assert await routed.pool_for(host="b.example.com") is None


async def test_host_is_forwarded_as_the_client_sent_it(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    routed = await start_routed(
        backend_factory, node_factory, [host_route("a.example.com", "exact")]
    )
    assert await routed.pool_for(host="A.Example.com:8080") == "exact"
    assert routed.backends["exact"].requests[0].header("Host") == "A.Example.com:8080"


async def test_ipv6_literal_host_with_port_matches_its_route(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    routed = await start_routed(
        backend_factory, node_factory, [host_route("[::1]", "v6"), host_route("*", "anyhost")]
    )
    assert await routed.pool_for(host="[::1]") == "v6"
    assert await routed.pool_for(host="[::1]:8080") == "v6"


async def test_wildcard_matches_subdomains_at_any_depth_but_not_the_apex(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    routed = await start_routed(
        backend_factory, node_factory, [host_route("*.example.com", "wild")]
    )
    assert await routed.pool_for(host="a.example.com") == "wild"
    assert await routed.pool_for(host="a.b.example.com") == "wild"
    assert await routed.pool_for(host="example.com") is None
    assert await routed.pool_for(host="notexample.com") is None
    assert routed.received() == {"wild": 2}


async def test_longer_wildcard_wins(backend_factory: StartBackend, node_factory: StartNode) -> None:
    routed = await start_routed(
        backend_factory,
        node_factory,
        [host_route("*.example.com", "short"), host_route("*.b.example.com", "long")],
    )
    assert await routed.pool_for(host="a.b.example.com") == "long"
    assert await routed.pool_for(host="b.example.com") == "short"


# ---- paths and priority ----


async def test_longest_path_prefix_wins(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    routed = await start_routed(
        backend_factory,
        node_factory,
        [
            {"match": {"path_prefix": "/"}, "pool": "root"},
            {"match": {"path_prefix": "/api/v1/"}, "pool": "v1"},
            {"match": {"path_prefix": "/api/"}, "pool": "api"},
        ],
    )
    assert await routed.pool_for("/api/v1/users") == "v1"
    assert await routed.pool_for("/api/v2/users") == "api"
    assert await routed.pool_for("/api") == "root"
    assert await routed.pool_for("/static/app.js") == "root"
    assert await routed.pool_for("/api/v1/users?x=1") == "v1"


async def test_path_prefix_is_matched_against_the_path_not_the_query(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    routed = await start_routed(
        backend_factory,
        node_factory,
        [
            {"match": {"path_prefix": "/"}, "pool": "root"},
            {"match": {"path_prefix": "/admin"}, "pool": "admin"},
        ],
    )
    assert await routed.pool_for("/search?next=/admin") == "root"
    assert await routed.pool_for("/admin?x=1") == "admin"


async def test_priority_overrides_prefix_length(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    routed = await start_routed(
        backend_factory,
        node_factory,
        [
            {"match": {"path_prefix": "/api/v1/"}, "pool": "v1"},
            {"match": {"path_prefix": "/api/"}, "pool": "api", "priority": 10},
            {"match": {"path_prefix": "/"}, "pool": "root"},
        ],
    )
    assert await routed.pool_for("/api/v1/users") == "api"
    assert await routed.pool_for("/other") == "root"


# ---- methods and headers ----


async def test_methods_matcher(backend_factory: StartBackend, node_factory: StartNode) -> None:
    routed = await start_routed(
        backend_factory,
        node_factory,
        [
            {"match": {"path_prefix": "/items", "methods": ["POST", "PUT"]}, "pool": "writes"},
            {"match": {"path_prefix": "/"}, "pool": "reads"},
        ],
    )
    assert await routed.pool_for("/items", method="POST") == "writes"
    assert await routed.pool_for("/items", method="PUT") == "writes"
    assert await routed.pool_for("/items", method="GET") == "reads"
    assert await routed.pool_for("/items", method="DELETE") == "reads"
    assert routed.received() == {"reads": 2, "writes": 2}


async def test_headers_matcher(backend_factory: StartBackend, node_factory: StartNode) -> None:
    routed = await start_routed(
        backend_factory,
        node_factory,
        [
            {"match": {"headers": {"X-Canary": "yes"}}, "pool": "canary"},
            {"match": {"path_prefix": "/"}, "pool": "stable"},
        ],
    )
    assert await routed.pool_for(extra="X-Canary: yes\r\n") == "canary"
    assert await routed.pool_for(extra="x-canary: yes\r\n") == "canary"
    assert await routed.pool_for(extra="X-Canary: no\r\n") == "stable"
    assert await routed.pool_for() == "stable"
    # The matched header is still forwarded: routing does not consume it.
    assert routed.backends["canary"].requests[0].header("X-Canary") == "yes"


async def test_headers_matcher_sees_hop_by_hop_headers_such_as_upgrade(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    routed = await start_routed(
        backend_factory,
        node_factory,
        [
            {"match": {"headers": {"Upgrade": "websocket"}}, "pool": "sockets"},
            {"match": {"path_prefix": "/"}, "pool": "web"},
        ],
    )
    result = await routed.send(
        b"GET /chat HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    assert result.body.split(b" ", 1)[0] == b"sockets", result.body
    assert routed.received() == {"sockets": 1, "web": 0}


# ---- request target forms ----


async def test_absolute_form_routes_by_its_authority_and_is_forwarded_in_origin_form(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    routed = await start_routed(
        backend_factory,
        node_factory,
        [host_route("a.test", "atest"), host_route("*", "anyhost")],
    )
    result = await routed.send(b"GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert result.status == 200
    assert result.body == b"atest /x"
    # The authority wins over a different Host header (RFC 9112, section 3.2.2).
    result = await routed.send(b"GET http://a.test:8080/y?q=1 HTTP/1.1\r\nHost: b.test\r\n\r\n")
    assert result.status == 200
    assert result.body == b"atest /y?q=1"
    received = routed.backends["atest"].requests
    assert [request.target for request in received] == ["/x", "/y?q=1"]
    assert received[1].header("Host") == "a.test:8080"
    assert routed.backends["anyhost"].requests == []


async def test_absolute_form_without_a_path_is_forwarded_as_slash(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    routed = await start_routed(backend_factory, node_factory, [host_route("a.test", "atest")])
    result = await routed.send(b"GET http://a.test HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert result.status == 200
    assert result.body == b"atest /"


# ---- no match ----


async def test_no_matching_route_gives_404_and_keeps_the_connection(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    routed = await start_routed(
        backend_factory,
        node_factory,
        [
            {"match": {"host": "a.test", "path_prefix": "/app/"}, "pool": "app"},
        ],
    )
    client = await RawClient.connect(routed.port)
    await client.send(get("/app/x", host="other.test"))
    missing = await client.read_response()
    assert missing.status == 404
    assert missing.body.strip()
    assert len(missing.body) < 200
    await client.send(get("/elsewhere", host="a.test"))
    assert (await client.read_response()).status == 404
    await client.send(get("/app/x", host="a.test"))
    found = await client.read_response()
    assert found.status == 200
    assert found.body == b"app /app/x"
    await client.close()
    assert routed.received() == {"app": 1}
