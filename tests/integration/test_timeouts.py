"""Timeouts on both sides of the proxy: upstream connect/response/total, client header and idle."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import StartBackend, StartNode
from tests.support.backend import ReceivedRequest, response
from tests.support.client import RawClient, get
from tests.support.nodes import listener_port, node_config
from tests.support.ports import closed_port
from tests.support.upstream import blackhole_port, metric


@pytest.fixture
async def release() -> AsyncIterator[asyncio.Event]:
    """Set at teardown so stalled backend handlers finish instead of being destroyed."""
    event = asyncio.Event()
    yield event
    event.set()
    await asyncio.sleep(0)


async def read_until_closed(client: RawClient, timeout: float) -> bytes:
    """Everything the server sends until it closes (EOF or reset); fails on `timeout`."""
    received = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"connection still open after {timeout}s: {bytes(received)!r}")
        try:
            data = await asyncio.wait_for(client.reader.read(65536), remaining)
        except ConnectionError:
            return bytes(received)
        except TimeoutError:
            continue
        if not data:
            return bytes(received)
        received += data


# ---- upstream: connect ----


async def test_connect_timeout_gives_504(node_factory: StartNode) -> None:
    with blackhole_port() as port:
        config = node_config([f"http://127.0.0.1:{port}"], pool={"timeouts": {"connect": "300ms"}})
        node = await node_factory(config)
        client = await RawClient.connect(listener_port(config))
        started = time.monotonic()
        await client.send(get("/connect"))
        result = await client.read_response(timeout=3.0)
        elapsed = time.monotonic() - started
        await client.close()
    assert result.status == 504
    assert result.body.strip()
    assert 0.25 <= elapsed < 1.0, elapsed
    assert metric(node, "loadweaver_timeouts_total", {"kind": "connect"}) == 1
    assert metric(node, "loadweaver_upstream_errors_total", {"kind": "connect_timeout"}) == 1
    assert (
        metric(
            node,
            "loadweaver_local_replies_total",
            {"status": "504", "reason": "upstream_connect_timeout"},
        )
        == 1
    )


async def test_connection_refused_gives_502_at_once(node_factory: StartNode) -> None:
    config = node_config([f"http://127.0.0.1:{closed_port()}"])
    node = await node_factory(config)
    client = await RawClient.connect(listener_port(config))
    started = time.monotonic()
    await client.send(get("/refused"))
    result = await client.read_response(timeout=3.0)
    elapsed = time.monotonic() - started
    await client.close()
    assert result.status == 502
    assert b"could not be reached" in result.body
    assert (result.header("Content-Type") or "").startswith("text/plain")
    assert elapsed < 1.0, elapsed
    assert metric(node, "loadweaver_upstream_errors_total", {"kind": "connect_refused"}) == 1


async def test_no_backends_gives_503(node_factory: StartNode) -> None:
    config = node_config([])
    await node_factory(config)
    client = await RawClient.connect(listener_port(config))
    await client.send(get("/none"))
    result = await client.read_response(timeout=3.0)
    assert result.status == 503
    assert result.body.strip()
    # A 503 for a missing backend leaves the client connection usable.
    await client.send(get("/none-again"))
    assert (await client.read_response(timeout=3.0)).status == 503
    await client.close()


# ---- upstream: response and total ----


async def test_response_timeout_gives_504(
    backend_factory: StartBackend, node_factory: StartNode, release: asyncio.Event
) -> None:
    async def stalls(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        if request.target == "/slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 2.0)
        writer.write(response(200, b"answer " + request.target.encode()))
        return True

    backend = await backend_factory(stalls)
    config = node_config([backend.url], pool={"timeouts": {"response": "300ms"}})
    node = await node_factory(config)
    client = await RawClient.connect(listener_port(config))
    started = time.monotonic()
    await client.send(get("/slow"))
    result = await client.read_response(timeout=3.0)
    elapsed = time.monotonic() - started
    assert result.status == 504
    assert result.body.strip()
    assert 0.25 <= elapsed < 1.0, elapsed
    assert metric(node, "loadweaver_timeouts_total", {"kind": "response"}) == 1
    assert (
        metric(
            node,
            "loadweaver_local_replies_total",
            {"status": "504", "reason": "upstream_response_timeout"},
        )
        == 1
    )
    await client.close()
    # The timed-out upstream connection was given up, not kept for a later request.
    client = await RawClient.connect(listener_port(config))
    await client.send(get("/fast"))
    later = await client.read_response(timeout=3.0)
    await client.close()
    assert later.status == 200
    assert later.body == b"answer /fast"
    assert [(r.target, r.connection_id) for r in backend.requests] == [("/slow", 1), ("/fast", 2)]


async def test_total_timeout_cuts_a_trickling_response(
    backend_factory: StartBackend, node_factory: StartNode, release: asyncio.Event
) -> None:
    async def trickles(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n")
        for _ in range(30):
            writer.write(b"x")
            await writer.drain()
            try:
                await asyncio.wait_for(release.wait(), 0.1)
            except TimeoutError:
                continue
            return False
        return True

    backend = await backend_factory(trickles)
    config = node_config([backend.url], pool={"timeouts": {"total": "500ms"}})
    node = await node_factory(config)
    client = await RawClient.connect(listener_port(config))
    started = time.monotonic()
    await client.send(get("/trickle"))
    received = await read_until_closed(client, timeout=2.5)
    elapsed = time.monotonic() - started
    await client.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) < 30, "the whole body arrived despite the total timeout"
    assert elapsed < 1.5, elapsed
    assert metric(node, "loadweaver_timeouts_total", {"kind": "total"}) == 1


async def test_total_timeout_before_headers_gives_504(
    backend_factory: StartBackend, node_factory: StartNode, release: asyncio.Event
) -> None:
    async def stalls(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 2.0)
        writer.write(response(200, b"too late"))
        return True

    backend = await backend_factory(stalls)
    config = node_config([backend.url], pool={"timeouts": {"total": "500ms"}})
    node = await node_factory(config)
    client = await RawClient.connect(listener_port(config))
    started = time.monotonic()
    await client.send(get("/stall"))
    result = await client.read_response(timeout=3.0)
    elapsed = time.monotonic() - started
    await client.close()
    assert result.status == 504
    assert 0.45 <= elapsed < 1.2, elapsed
    assert metric(node, "loadweaver_timeouts_total", {"kind": "total"}) == 1
    assert (
        metric(
            node, "loadweaver_local_replies_total", {"status": "504", "reason": "request_timeout"}
        )
        == 1
    )


# ---- client side: request headers ----


async def test_incomplete_request_head_gets_408_and_close(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    backend = await backend_factory()
    config = node_config([backend.url], listener={"timeouts": {"request_header": "300ms"}})
    node = await node_factory(config)
    client = await RawClient.connect(listener_port(config))
    started = time.monotonic()
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
    received = await read_until_closed(client, timeout=2.0)
    elapsed = time.monotonic() - started
    await client.close()
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b"Connection: close" in received
    assert 0.25 <= elapsed < 1.0, elapsed
    assert backend.requests == []
    assert metric(node, "loadweaver_timeouts_total", {"kind": "request_header"}) == 1


async def test_slowloris_dripping_header_lines_still_times_out(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    backend = await backend_factory()
    config = node_config([backend.url], listener={"timeouts": {"request_header": "300ms"}})
    await node_factory(config)
    client = await RawClient.connect(listener_port(config))
    started = time.monotonic()
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")

    async def drip() -> None:
        for index in range(15):
            await asyncio.sleep(0.1)
            await client.send(b"X-Drip-%d: 1\r\n" % index)

    dripping = asyncio.create_task(drip())
    try:
        answered = await read_until_closed(client, timeout=2.0)
    finally:
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
    elapsed = time.monotonic() - started
    await client.close()
    assert answered.startswith(b"HTTP/1.1 408 "), answered
    assert elapsed < 1.2, elapsed
    assert backend.requests == []


async def test_silent_connection_is_closed_without_408(node_factory: StartNode) -> None:
    config = node_config([], listener={"timeouts": {"request_header": "300ms"}})
    await node_factory(config)
    client = await RawClient.connect(listener_port(config))
    started = time.monotonic()
    received = await read_until_closed(client, timeout=2.0)
    elapsed = time.monotonic() - started
    await client.close()
    assert received == b""
    assert 0.25 <= elapsed < 1.0, elapsed


async def test_incomplete_second_request_on_keep_alive_gets_408(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    backend = await backend_factory()
    config = node_config([backend.url], listener={"timeouts": {"request_header": "300ms"}})
    await node_factory(config)
    client = await RawClient.connect(listener_port(config))
    await client.send(get("/first"))
    assert (await client.read_response()).status == 200
    started = time.monotonic()
    await client.send(b"GET /second HTTP/1.1\r\nHost: x\r\n")
    received = await read_until_closed(client, timeout=2.0)
    elapsed = time.monotonic() - started
    await client.close()
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert elapsed < 1.0, elapsed
    assert [request.target for request in backend.requests] == ["/first"]


# ---- client side: idle keep-alive ----


async def test_idle_client_connection_is_closed(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    backend = await backend_factory()
    config = node_config([backend.url], listener={"timeouts": {"idle": "300ms"}})
    node = await node_factory(config)
    client = await RawClient.connect(listener_port(config))
    await client.send(get("/once"))
    assert (await client.read_response()).status == 200
    started = time.monotonic()
    received = await read_until_closed(client, timeout=2.0)
    elapsed = time.monotonic() - started
    await client.close()
    assert received == b""  # an idle close is silent
    assert 0.25 <= elapsed < 1.0, elapsed
    assert metric(node, "loadweaver_timeouts_total", {"kind": "idle"}) == 1


async def test_busy_client_connection_outlives_the_idle_timeout(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    backend = await backend_factory()
    config = node_config([backend.url], listener={"timeouts": {"idle": "300ms"}})
    await node_factory(config)
    client = await RawClient.connect(listener_port(config))
    started = time.monotonic()
    for index in range(8):
        await client.send(get(f"/busy{index}"))
        assert (await client.read_response()).status == 200
        await asyncio.sleep(0.1)
    assert time.monotonic() - started > 0.6
    await client.send(get("/last"))
    assert (await client.read_response()).status == 200
    assert len(backend.requests) == 9
    assert await client.is_closed(timeout=1.5), "idle connection never closed afterwards"
    await client.close()
