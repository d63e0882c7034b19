"""Sticky sessions through a running node: signed cookies across new connections, cookies that
must not be honoured (tampered, foreign secret, removed or unavailable backend), draining, and
sessions keyed by a request header."""

import asyncio
import re
from typing import Any

import pytest

from loadweaver.balancing.sticky import CookieSigner
from tests.conftest import StartBackend, StartProxy
from tests.support.backend import Backend, Handler, ReceivedRequest, response
from tests.support.client import RawResponse, get
from tests.support.nodes import Proxy

SECRET = "integration-sticky-secret-0123"
OTHER_SECRET = "another-sticky-secret-abcdefgh"
SET_COOKIE = re.compile(r"lw=([^;\s]+); Max-Age=3600; Path=/; HttpOnly; SameSite=Lax")


def sticky_pool(secret: str = SECRET, algorithm: str = "round_robin") -> dict[str, Any]:
    return {"algorithm": algorithm, "sticky": {"cookie": "lw", "ttl": "1h", "secret": secret}}


def answering_as(name: str) -> Handler:
    """Answers every request with its backend's name in `X-Served-By`."""

    async def handler(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(response(200, name.encode(), {"X-Served-By": name}))
        return True

    return handler


async def named_backends(backend_factory: StartBackend, count: int = 3) -> list[Backend]:
    """Backends b0, b1... named as `node_config` names them in the pool."""
    return [await backend_factory(answering_as(f"b{i}"), name=f"b{i}") for i in range(count)]


async def fetch(proxy: Proxy, extra: str = "") -> RawResponse:
    """One request on a new client connection."""
    client = await proxy.connect()
    try:
        await client.send(get("/", extra=extra))
        return await client.read_response()
    finally:
        await client.close()


async def fetch_with_cookie(proxy: Proxy, cookie: str) -> RawResponse:
    return await fetch(proxy, f"Cookie: theme=dark; lw={cookie}; lang=en\r\n")


def served_by(result: RawResponse) -> str:
    assert result.status == 200, (result.status, result.body)
    name = result.header("X-Served-By")
    assert name is not None
    return name


def cookie_of(result: RawResponse) -> str:
    """The sticky cookie value the response set; fails unless exactly one, well-formed."""
    lines = result.headers_named("Set-Cookie")
    assert len(lines) == 1, f"expected one Set-Cookie, got {lines}"
    match = SET_COOKIE.fullmatch(lines[0])
    assert match is not None, lines[0]
    return match.group(1)


def backend_named_by(cookie: str, secret: str = SECRET) -> str:
    verified = CookieSigner(secret.encode(), "app").verify(cookie)
    assert verified is not None, f"{cookie!r} is not a valid cookie for pool app"
    return verified[0]


def tampered(cookie: str) -> str:
    """The cookie with one character of its signature changed."""
    index = len(cookie) - 5
    return cookie[:index] + ("A" if cookie[index] != "A" else "B") + cookie[index + 1 :]


async def sticky_proxy(
    backend_factory: StartBackend, proxy_factory: StartProxy, algorithm: str = "round_robin"
) -> tuple[Proxy, list[Backend]]:
    backends = await named_backends(backend_factory)
    urls = [backend.url for backend in backends]
    proxy = await proxy_factory(urls, pool=sticky_pool(algorithm=algorithm))
    return proxy, backends


async def pinned_session(proxy: Proxy) -> tuple[str, str]:
    """A new session: its cookie and the backend it is pinned to."""
    first = await fetch(proxy)
    backend = served_by(first)
    cookie = cookie_of(first)
    assert backend_named_by(cookie) == backend
    return cookie, backend


# ---- cookies ----


@pytest.mark.parametrize("algorithm", ["round_robin", "least_conn", "random", "p2c"])
async def test_a_cookie_pins_later_requests_on_new_connections(
    backend_factory: StartBackend, proxy_factory: StartProxy, algorithm: str
) -> None:
    proxy, _ = await sticky_proxy(backend_factory, proxy_factory, algorithm)
    cookie, pinned = await pinned_session(proxy)
    for _ in range(20):
        assert served_by(await fetch_with_cookie(proxy, cookie)) == pinned


async def test_requests_without_a_cookie_spread_and_each_gets_its_own_cookie(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    proxy, _ = await sticky_proxy(backend_factory, proxy_factory)
    seen = set()
    for _ in range(9):
        result = await fetch(proxy)
        backend = served_by(result)
        assert backend_named_by(cookie_of(result)) == backend
        seen.add(backend)
    assert seen == {"b0", "b1", "b2"}


async def test_sessions_stay_apart_on_one_keep_alive_connection(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    """The session is per request: two users behind one keep-alive connection keep theirs."""
    proxy, _ = await sticky_proxy(backend_factory, proxy_factory)
    sessions = [await pinned_session(proxy) for _ in range(3)]
    assert len({backend for _, backend in sessions}) == 3
    client = await proxy.connect()
    for _ in range(3):
        for cookie, backend in sessions:
            await client.send(get("/", extra=f"Cookie: lw={cookie}\r\n"))
            assert served_by(await client.read_response()) == backend
    await client.close()


async def test_a_tampered_cookie_counts_as_no_cookie(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    proxy, _ = await sticky_proxy(backend_factory, proxy_factory)
    cookie, _ = await pinned_session(proxy)
    for _ in range(3):
        result = await fetch_with_cookie(proxy, tampered(cookie))
        fresh = cookie_of(result)  # a new session: a new cookie, for the backend that served
        assert fresh != tampered(cookie)
        assert backend_named_by(fresh) == served_by(result)


async def test_a_cookie_for_a_removed_backend_is_repicked_with_a_new_cookie(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    proxy, _ = await sticky_proxy(backend_factory, proxy_factory)
    cookie, pinned = await pinned_session(proxy)
    await proxy.node.editor.remove_backend("app", pinned)
    result = await fetch_with_cookie(proxy, cookie)
    backend = served_by(result)
    assert backend != pinned
    fresh = cookie_of(result)
    assert backend_named_by(fresh) == backend
    for _ in range(5):  # and the new cookie pins the new backend
        assert served_by(await fetch_with_cookie(proxy, fresh)) == backend


async def test_a_cookie_for_a_backend_in_maintenance_is_repicked(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    proxy, _ = await sticky_proxy(backend_factory, proxy_factory)
    cookie, pinned = await pinned_session(proxy)
    await proxy.node.editor.update_backend("app", pinned, state="maintenance")
    for _ in range(3):
        result = await fetch_with_cookie(proxy, cookie)
        backend = served_by(result)
        assert backend != pinned
        assert backend_named_by(cookie_of(result)) == backend


async def test_a_draining_backend_finishes_its_sessions_but_starts_none(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    proxy, _ = await sticky_proxy(backend_factory, proxy_factory)
    cookie, pinned = await pinned_session(proxy)
    await proxy.node.editor.drain("app", pinned)
    for _ in range(10):
        assert served_by(await fetch_with_cookie(proxy, cookie)) == pinned
    for _ in range(12):
        result = await fetch(proxy)
        backend = served_by(result)
        assert backend != pinned
        assert backend_named_by(cookie_of(result)) == backend


async def test_a_cookie_is_honoured_only_by_nodes_holding_its_secret(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    backends = await named_backends(backend_factory)
    urls = [backend.url for backend in backends]
    issuer = await proxy_factory(urls, pool=sticky_pool(SECRET))
    same_secret = await proxy_factory(urls, pool=sticky_pool(SECRET))
    other_secret = await proxy_factory(urls, pool=sticky_pool(OTHER_SECRET))
    cookie, pinned = await pinned_session(issuer)
    for _ in range(6):
        assert served_by(await fetch_with_cookie(same_secret, cookie)) == pinned
    for _ in range(3):
        result = await fetch_with_cookie(other_secret, cookie)
        fresh = cookie_of(result)  # not honoured: treated as a new session
        assert backend_named_by(fresh, OTHER_SECRET) == served_by(result)


# ---- header sessions ----


async def test_a_session_header_pins_its_value_to_one_backend(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    backends = await named_backends(backend_factory)
    proxy = await proxy_factory(
        [backend.url for backend in backends], pool={"sticky": {"header": "X-Session"}}
    )
    first: dict[str, str] = {}
    for index in range(12):
        result = await fetch(proxy, f"X-Session: user-{index}\r\n")
        first[f"user-{index}"] = served_by(result)
        assert result.headers_named("Set-Cookie") == []
    assert set(first.values()) == {"b0", "b1", "b2"}  # different sessions spread
    for _ in range(3):
        for session, backend in first.items():
            header = "x-session" if session.endswith("1") else "X-Session"
            assert served_by(await fetch(proxy, f"{header}: {session}\r\n")) == backend
