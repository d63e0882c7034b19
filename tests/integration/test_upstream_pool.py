"""The upstream side through a running node: keep-alive reuse, balancing, pool limits, stale
keep-alive connections, broken backends and removing a backend by reloading the config."""

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.conftest import StartBackend, StartProxied, StartProxy
from tests.support.backend import Handler, ReceivedRequest, fixed_reply, response
from tests.support.client import RawClient, RawResponse, get
from tests.support.nodes import Proxied, Proxy, node_config
from tests.support.polling import eventually
from tests.support.upstream import metric


async def fetch(proxy: Proxy, path: str = "/", extra: str = "") -> RawResponse:
    """One request on its own client connection."""
    client = await proxy.connect()
    try:
        await client.send(get(path, extra=extra))
        return await client.read_response()
    finally:
        await client.close()


def connection_of(result: RawResponse) -> str | None:
    return result.header("X-Backend-Connection")


async def upstream_connections(client: RawClient, paths: list[str]) -> list[str | None]:
    """GETs each path in turn on `client`; each must be a 200. The upstream connection of each."""
    connections = []
    for path in paths:
        await client.send(get(path))
        result = await client.read_response()
        assert result.status == 200
        connections.append(connection_of(result))
    return connections


def one_answer_per_connection(answer: Callable[[ReceivedRequest], bytes]) -> Handler:
    """Answers the first request on each connection with `answer(request)`; a later request on
    the same connection is read, then the connection closes without a response byte."""
    served: Counter[int] = Counter()

    async def handler(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        served[request.connection_id] += 1
        if served[request.connection_id] > 1:
            return False
        writer.write(response(200, answer(request)))
        return True

    return handler


# ---- keep-alive reuse and balancing ----


async def test_upstream_connections_are_reused_across_client_connections(
    proxied: Proxied,
) -> None:
    for index in range(20):
        result = await fetch(proxied, f"/r{index}")
        assert result.status == 200
    backend = proxied.backend
    assert len(backend.requests) == 20
    assert backend.connections <= 2, f"{backend.connections} upstream connections for 20 requests"


async def test_keep_alive_on_one_client_connection_reuses_one_upstream_connection(
    proxied: Proxied,
) -> None:
    client = await proxied.connect()
    ids = await upstream_connections(client, [f"/k{index}" for index in range(10)])
    await client.close()
    assert set(ids) == {"1"}
    assert proxied.backend.connections == 1


async def test_round_robin_between_two_backends(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    first = await backend_factory(name="first")
    second = await backend_factory(name="second")
    proxy = await proxy_factory([first.url, second.url])
    for index in range(10):
        assert (await fetch(proxy, f"/rr{index}")).status == 200
    assert len(first.requests) == 5
    assert len(second.requests) == 5
    # Strict alternation: consecutive requests never land on the same backend.
    order = sorted(
        [(int(r.target[3:]), "first") for r in first.requests]
        + [(int(r.target[3:]), "second") for r in second.requests]
    )
    names = [name for _, name in order]
    assert all(a != b for a, b in itertools.pairwise(names)), names


# ---- connection_pool limits ----


async def test_max_connections_limits_concurrent_upstream_connections(
    proxied_factory: StartProxied,
) -> None:
    peak = 0

    async def slow(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        nonlocal peak
        peak = max(peak, proxied.backend.open_connections)
        await asyncio.sleep(0.2)
        peak = max(peak, proxied.backend.open_connections)
        writer.write(response(200, b"slow " + request.target.encode()))
        return True

    proxied = await proxied_factory(slow, pool={"connection_pool": {"max_connections": 2}})
    results = await asyncio.wait_for(
        asyncio.gather(*(fetch(proxied, f"/c{index}") for index in range(6))), 5.0
    )
    assert [result.status for result in results] == [200] * 6
    assert sorted(result.body for result in results) == sorted(
        b"slow /c%d" % index for index in range(6)
    )
    assert peak <= 2, f"backend saw {peak} concurrent connections"
    assert proxied.backend.connections <= 2
    assert len(proxied.backend.requests) == 6


async def test_max_requests_rotates_the_upstream_connection(proxied_factory: StartProxied) -> None:
    proxied = await proxied_factory(pool={"connection_pool": {"max_requests": 3}})
    client = await proxied.connect()
    ids = await upstream_connections(client, [f"/m{index}" for index in range(7)])
    await client.close()
    assert ids == ["1", "1", "1", "2", "2", "2", "3"]
    # The retired connections were closed, not left open beside the new one.
    await eventually(
        lambda: proxied.backend.open_connections == 1, message="old connections left open"
    )


async def test_idle_timeout_closes_idle_upstream_connections(proxied_factory: StartProxied) -> None:
    proxied = await proxied_factory(pool={"connection_pool": {"idle_timeout": "300ms"}})
    backend = proxied.backend
    first = await fetch(proxied, "/before")
    assert connection_of(first) == "1"
    assert backend.open_connections == 1
    await asyncio.sleep(0.1)
    assert backend.open_connections == 1, "closed well before the idle timeout"
    await eventually(
        lambda: backend.open_connections == 0,
        timeout=1.5,
        message="idle upstream connection outlived idle_timeout",
    )
    second = await fetch(proxied, "/after")
    assert second.status == 200
    assert connection_of(second) == "2"


async def test_backend_response_with_connection_close_is_not_reused(
    proxied_factory: StartProxied,
) -> None:
    # The socket stays open: only the header says it must not be reused.
    says_close = fixed_reply(response(200, b"ok", {"Connection": "close"}))
    proxied = await proxied_factory(says_close)
    for _ in range(3):
        result = await fetch(proxied)
        assert result.status == 200
        assert result.header("Connection") != "close"  # hop-by-hop: not the client's business
    assert proxied.backend.connections == 3
    assert {request.connection_id for request in proxied.backend.requests} == {1, 2, 3}


# ---- backends that close keep-alive connections ----


async def test_backend_closing_idle_keep_alive_connections_is_invisible_to_clients(
    proxied_factory: StartProxied,
) -> None:
    closers: set[asyncio.Task[None]] = set()

    async def close_soon(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.02)
        writer.close()

    async def closes_when_idle(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(response(200, b"ok", {"Connection": "keep-alive", "Keep-Alive": "timeout=1"}))
        task = asyncio.create_task(close_soon(writer))
        closers.add(task)
        task.add_done_callback(closers.discard)
        return True

    proxied = await proxied_factory(closes_when_idle)
    client = await proxied.connect()
    statuses = []
    for index in range(12):
        await client.send(get(f"/i{index}"))
        statuses.append((await client.read_response()).status)
        await asyncio.sleep(0.08)
    await client.close()
    assert statuses == [200] * 12
    errors = metric(proxied.node, "loadweaver_upstream_errors_total", {"kind": "reset"})
    assert errors == 0
    # Each request was sent once: the closed idle connection was noticed, not written to.
    assert len(proxied.backend.requests) == 12


async def test_stale_keep_alive_race_is_retried_on_a_fresh_connection(
    proxied_factory: StartProxied,
) -> None:
    async def closes_after_response(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(response(200, b"once " + request.target.encode()))
        return False  # close right after, without saying Connection: close

    proxied = await proxied_factory(closes_after_response)
    client = await proxied.connect()
    for index in range(20):
        await client.send(get(f"/s{index}"))
        result = await client.read_response()
        assert result.status == 200, (index, result.body)
        assert result.body == b"once /s%d" % index
    await client.close()
    for index in range(5):
        assert (await fetch(proxied, f"/n{index}")).status == 200
    retries = metric(proxied.node, "loadweaver_upstream_retries_total")
    targets = [request.target for request in proxied.backend.requests]
    # Each request reached the backend once, or twice when it was retried after the race.
    assert len(targets) == 25 + retries
    assert all(targets.count(f"/s{index}") in (1, 2) for index in range(20))


async def test_request_failing_on_a_reused_connection_is_retried_once(
    proxied_factory: StartProxied,
) -> None:
    proxied = await proxied_factory(
        one_answer_per_connection(lambda request: b"fresh " + request.target.encode())
    )
    client = await proxied.connect()
    for index in range(5):
        await client.send(get(f"/t{index}"))
        result = await client.read_response()
        assert result.status == 200
        assert result.body == b"fresh /t%d" % index
    await client.close()
    assert metric(proxied.node, "loadweaver_upstream_retries_total") == 4
    targets = [request.target for request in proxied.backend.requests]
    assert targets == ["/t0", "/t1", "/t1", "/t2", "/t2", "/t3", "/t3", "/t4", "/t4"]


async def test_post_body_is_replayed_on_retry(proxied_factory: StartProxied) -> None:
    proxied = await proxied_factory(
        one_answer_per_connection(lambda request: b"got " + request.body)
    )
    client = await proxied.connect()
    await client.send(get("/warm"))
    assert (await client.read_response()).status == 200
    body = b"payload-123"
    await client.send(
        b"POST /p HTTP/1.1\r\nHost: example.test\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    result = await client.read_response()
    await client.close()
    assert result.status == 200
    assert result.body == b"got " + body
    posts = [request for request in proxied.backend.requests if request.target == "/p"]
    assert [request.body for request in posts] == [body, body]


# ---- broken backends ----


async def test_invalid_response_gives_502(proxied_factory: StartProxied) -> None:
    proxied = await proxied_factory(fixed_reply(b"this is not HTTP at all\r\n\r\n"))
    started = time.monotonic()
    result = await fetch(proxied, "/garbage")
    assert result.status == 502
    assert result.body.strip()
    assert time.monotonic() - started < 1.0
    assert len(proxied.backend.requests) == 1
    kind = {"kind": "protocol"}
    assert metric(proxied.node, "loadweaver_upstream_errors_total", kind) == 1


async def test_backend_closing_a_fresh_connection_without_answer_gives_502_once(
    proxied_factory: StartProxied,
) -> None:
    async def hang_up(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        return False

    proxied = await proxied_factory(hang_up)
    result = await fetch(proxied, "/hangup")
    assert result.status == 502
    assert result.body.strip()
    await asyncio.sleep(0.1)
    assert [request.target for request in proxied.backend.requests] == ["/hangup"]
    assert metric(proxied.node, "loadweaver_upstream_retries_total") == 0


async def test_failure_on_reused_and_then_fresh_connection_gives_502_after_one_retry(
    proxied_factory: StartProxied,
) -> None:
    async def answers_first_only(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        if len(proxied.backend.requests) > 1:
            return False
        writer.write(response(200, b"first"))
        return True

    proxied = await proxied_factory(answers_first_only)
    client = await proxied.connect()
    await client.send(get("/first"))
    assert (await client.read_response()).status == 200
    await client.send(get("/second"))
    result = await client.read_response()
    await client.close()
    assert result.status == 502
    await asyncio.sleep(0.1)
    targets = [request.target for request in proxied.backend.requests]
    assert targets == ["/first", "/second", "/second"]
    assert metric(proxied.node, "loadweaver_upstream_retries_total") == 1


# ---- removing a backend by reloading the config ----


async def test_reload_removes_a_backend_gracefully(
    backend_factory: StartBackend, proxy_factory: StartProxy, tmp_path: Path
) -> None:
    async def slow_on_demand(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        if request.target.startswith("/slow"):
            await asyncio.sleep(0.4)
        writer.write(response(200, request.target.encode()))
        return True

    removed = await backend_factory(slow_on_demand, name="removed")
    kept = await backend_factory(slow_on_demand, name="kept")
    path = tmp_path / "loadweaver.yaml"
    proxy = await proxy_factory([removed.url, kept.url], config_file=path)
    in_flight = asyncio.create_task(fetch(proxy, "/slow"))  # round robin starts at `removed`
    await eventually(lambda: len(removed.requests) == 1)

    smaller = node_config([kept.url])
    smaller["listeners"] = proxy.config["listeners"]
    smaller["admin"] = proxy.config["admin"]
    smaller["pools"]["app"]["backends"] = [{"name": "b1", "url": kept.url}]
    proxy.rewrite_config(smaller)
    assert await proxy.node.reload() is True

    result = await asyncio.wait_for(in_flight, 3.0)
    assert result.status == 200
    assert result.body == b"/slow"

    for index in range(4):
        assert (await fetch(proxy, f"/after{index}")).status == 200
    assert [request.target for request in removed.requests] == ["/slow"]
    assert [request.target for request in kept.requests] == [f"/after{index}" for index in range(4)]
    # The removed backend's pooled connection is closed once its request finished.
    await eventually(lambda: removed.open_connections == 0, message="removed pool kept open")

    path.write_text("pools: [this is: not valid\n")
    assert await proxy.node.reload() is False
    routes_to_nowhere = dict(smaller, routes=[{"name": "r", "pool": "missing"}])
    proxy.rewrite_config(routes_to_nowhere)
    assert await proxy.node.reload() is False
    for index in range(3):
        result = await fetch(proxy, f"/still{index}")
        assert result.status == 200
        assert result.body == f"/still{index}".encode()
    assert len(removed.requests) == 1
