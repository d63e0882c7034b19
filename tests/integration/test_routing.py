"""Routing through a running node: several pools, each with one backend that names itself."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import StartBackend, StartProxy
from tests.support.backend import Backend, Handler, ReceivedRequest, response
from tests.support.client import RawResponse, get
from tests.support.nodes import Proxy


class Routed:
    """A node whose pools each lead to a backend answering `<pool> <target>`."""

    def __init__(self, proxy: Proxy, backends: dict[str, Backend]) -> None:
        self.proxy = proxy
        self.backends = backends

    async def send(self, data: bytes) -> RawResponse:
        client = await self.proxy.connect()
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


def named_handler(name: str) -> Handler:
    async def handler(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(response(200, f"{name} {request.target}".encode()))
        return True

    return handler


StartRouted = Callable[[list[dict[str, Any]]], Awaitable[Routed]]


@pytest.fixture
def routed_factory(backend_factory: StartBackend, proxy_factory: StartProxy) -> StartRouted:
    """A node with the given routes (numbered r0, r1, ...) and a named backend for each pool."""

    async def start(routes: list[dict[str, Any]]) -> Routed:
        names = sorted({route["pool"] for route in routes})
        backends = {name: await backend_factory(named_handler(name), name=name) for name in names}
        pools = {name: {"backends": [{"name": "b", "url": backends[name].url}]} for name in names}
        numbered = [{"name": f"r{index}", **route} for index, route in enumerate(routes)]
        return Routed(await proxy_factory(pools=pools, routes=numbered), backends)

    return start


def route(pool: str, priority: int | None = None, **match: Any) -> dict[str, Any]:
    """A route to `pool` for requests matching `match` (host, path_prefix, methods, headers)."""
    spec: dict[str, Any] = {"match": match, "pool": pool}
    if priority is not None:
        spec["priority"] = priority
    return spec


# ---- hosts ----


async def test_exact_host_beats_wildcard_beats_catch_all(routed_factory: StartRouted) -> None:
    routed = await routed_factory(
        [
            route("anyhost", host="*"),
            route("wild", host="*.example.com"),
            route("exact", host="a.example.com"),
        ]
    )
    assert await routed.pool_for(host="a.example.com") == "exact"
    assert await routed.pool_for(host="b.example.com") == "wild"
    assert await routed.pool_for(host="other.test") == "anyhost"
    assert routed.received() == {"anyhost": 1, "exact": 1, "wild": 1}


async def test_host_match_ignores_port_and_case(routed_factory: StartRouted) -> None:
    routed = await routed_factory(
        [route("exact", host="A.Example.COM"), route("wild", host="*.Wild.Test")]
    )
    assert await routed.pool_for(host="a.example.com") == "exact"
    assert await routed.pool_for(host="A.EXAMPLE.com") == "exact"
    assert await routed.pool_for(host="a.example.com:8080") == "exact"
    assert await routed.pool_for(host="A.Example.Com:1") == "exact"
    assert await routed.pool_for(host="X.WILD.test:8443") == "wild"
    assert await routed.pool_for(host="b.example.com") is None


async def test_host_is_forwarded_as_the_client_sent_it(routed_factory: StartRouted) -> None:
    routed = await routed_factory([route("exact", host="a.example.com")])
    assert await routed.pool_for(host="A.Example.com:8080") == "exact"
    assert routed.backends["exact"].requests[0].header("Host") == "A.Example.com:8080"


async def test_ipv6_literal_host_with_port_matches_its_route(routed_factory: StartRouted) -> None:
    routed = await routed_factory([route("v6", host="[::1]"), route("anyhost", host="*")])
    assert await routed.pool_for(host="[::1]") == "v6"
    assert await routed.pool_for(host="[::1]:8080") == "v6"


async def test_wildcard_matches_subdomains_at_any_depth_but_not_the_apex(
    routed_factory: StartRouted,
) -> None:
    routed = await routed_factory([route("wild", host="*.example.com")])
    assert await routed.pool_for(host="a.example.com") == "wild"
    assert await routed.pool_for(host="a.b.example.com") == "wild"
    assert await routed.pool_for(host="example.com") is None
    assert await routed.pool_for(host="notexample.com") is None
    assert routed.received() == {"wild": 2}


async def test_longer_wildcard_wins(routed_factory: StartRouted) -> None:
    routed = await routed_factory(
        [route("short", host="*.example.com"), route("long", host="*.b.example.com")]
    )
    assert await routed.pool_for(host="a.b.example.com") == "long"
    assert await routed.pool_for(host="b.example.com") == "short"


# ---- paths and priority ----


async def test_longest_path_prefix_wins(routed_factory: StartRouted) -> None:
    routed = await routed_factory(
        [
            route("root", path_prefix="/"),
            route("v1", path_prefix="/api/v1/"),
            route("api", path_prefix="/api/"),
        ]
    )
    assert await routed.pool_for("/api/v1/users") == "v1"
    assert await routed.pool_for("/api/v2/users") == "api"
    assert await routed.pool_for("/api") == "root"
    assert await routed.pool_for("/static/app.js") == "root"
    assert await routed.pool_for("/api/v1/users?x=1") == "v1"


async def test_path_prefix_is_matched_against_the_path_not_the_query(
    routed_factory: StartRouted,
) -> None:
    routed = await routed_factory(
        [route("root", path_prefix="/"), route("admin", path_prefix="/admin")]
    )
    assert await routed.pool_for("/search?next=/admin") == "root"
    assert await routed.pool_for("/admin?x=1") == "admin"


async def test_priority_overrides_prefix_length(routed_factory: StartRouted) -> None:
    routed = await routed_factory(
        [
            route("v1", path_prefix="/api/v1/"),
            route("api", priority=10, path_prefix="/api/"),
            route("root", path_prefix="/"),
        ]
    )
    assert await routed.pool_for("/api/v1/users") == "api"
    assert await routed.pool_for("/other") == "root"


# ---- methods and headers ----


async def test_methods_matcher(routed_factory: StartRouted) -> None:
    routed = await routed_factory(
        [
            route("writes", path_prefix="/items", methods=["POST", "PUT"]),
            route("reads", path_prefix="/"),
        ]
    )
    assert await routed.pool_for("/items", method="POST") == "writes"
    assert await routed.pool_for("/items", method="PUT") == "writes"
    assert await routed.pool_for("/items", method="GET") == "reads"
    assert await routed.pool_for("/items", method="DELETE") == "reads"
    assert routed.received() == {"reads": 2, "writes": 2}


async def test_headers_matcher(routed_factory: StartRouted) -> None:
    routed = await routed_factory(
        [route("canary", headers={"X-Canary": "yes"}), route("stable", path_prefix="/")]
    )
    assert await routed.pool_for(extra="X-Canary: yes\r\n") == "canary"
    assert await routed.pool_for(extra="x-canary: yes\r\n") == "canary"
    assert await routed.pool_for(extra="X-Canary: no\r\n") == "stable"
    assert await routed.pool_for() == "stable"
    # The matched header is still forwarded: routing does not consume it.
    assert routed.backends["canary"].requests[0].header("X-Canary") == "yes"


async def test_headers_matcher_sees_hop_by_hop_headers_such_as_upgrade(
    routed_factory: StartRouted,
) -> None:
    routed = await routed_factory(
        [route("sockets", headers={"Upgrade": "websocket"}), route("web", path_prefix="/")]
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
    routed_factory: StartRouted,
) -> None:
    routed = await routed_factory([route("atest", host="a.test"), route("anyhost", host="*")])
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
    routed_factory: StartRouted,
) -> None:
    routed = await routed_factory([route("atest", host="a.test")])
    result = await routed.send(b"GET http://a.test HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert result.status == 200
    assert result.body == b"atest /"


# ---- no match ----


async def test_no_matching_route_gives_404_and_keeps_the_connection(
    routed_factory: StartRouted,
) -> None:
    routed = await routed_factory([route("app", host="a.test", path_prefix="/app/")])
    client = await routed.proxy.connect()
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
