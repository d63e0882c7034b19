"""Timeouts on both sides of the proxy: upstream connect/response/total, client header and idle."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import StartProxied, StartProxy
from tests.support.backend import ReceivedRequest, response
from tests.support.client import RawClient, RawResponse, get
from tests.support.ports import closed_port
from tests.support.upstream import blackhole_port, local_reply_count, metric


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


async def timed_response(client: RawClient, request: bytes) -> tuple[RawResponse, float]:
    """Sends `request` and reads the answer (3 s at most); also the seconds that took."""
    started = time.monotonic()
    await client.send(request)
    result = await client.read_response(timeout=3.0)
    return result, time.monotonic() - started


async def timed_until_closed(
    client: RawClient, timeout: float, sent: bytes = b""
) -> tuple[bytes, float]:
    """Sends `sent` (if any), then reads until the server closes; also the seconds that took."""
    started = time.monotonic()
    if sent:
        await client.send(sent)
    received = await read_until_closed(client, timeout)
    return received, time.monotonic() - started


# ---- upstream: connect ----


async def test_connect_timeout_gives_504(proxy_factory: StartProxy) -> None:
    with blackhole_port() as port:
        proxy = await proxy_factory(
            [f"http://127.0.0.1:{port}"], pool={"timeouts": {"connect": "300ms"}}
        )
        client = await proxy.connect()
        result, elapsed = await timed_response(client, get("/connect"))
        await client.close()
    assert result.status == 504
    assert result.body.strip()
    assert 0.25 <= elapsed < 1.0, elapsed
    assert metric(proxy.node, "loadweaver_timeouts_total", {"kind": "connect"}) == 1
    assert metric(proxy.node, "loadweaver_upstream_errors_total", {"kind": "connect"}) == 1
    assert local_reply_count(proxy.node, 504, "upstream_connect_timeout") == 1


async def test_connection_refused_gives_502_at_once(proxy_factory: StartProxy) -> None:
    proxy = await proxy_factory([f"http://127.0.0.1:{closed_port()}"])
    client = await proxy.connect()
    result, elapsed = await timed_response(client, get("/refused"))
    await client.close()
    assert result.status == 502
    assert b"could not be reached" in result.body
    assert (result.header("Content-Type") or "").startswith("text/plain")
    assert elapsed < 1.0, elapsed
    assert metric(proxy.node, "loadweaver_upstream_errors_total", {"kind": "connect"}) == 1


async def test_no_backends_gives_503(proxy_factory: StartProxy) -> None:
    proxy = await proxy_factory([])
    client = await proxy.connect()
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
    proxied_factory: StartProxied, release: asyncio.Event
) -> None:
    async def stalls(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        if request.target == "/slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 2.0)
        writer.write(response(200, b"answer " + request.target.encode()))
        return True

    proxied = await proxied_factory(stalls, pool={"timeouts": {"response": "300ms"}})
    client = await proxied.connect()
    result, elapsed = await timed_response(client, get("/slow"))
    assert result.status == 504
    assert result.body.strip()
    assert 0.25 <= elapsed < 1.0, elapsed
    assert metric(proxied.node, "loadweaver_timeouts_total", {"kind": "response"}) == 1
    assert local_reply_count(proxied.node, 504, "upstream_response_timeout") == 1
    await client.close()
    # The timed-out upstream connection was given up, not kept for a later request.
    client = await proxied.connect()
    await client.send(get("/fast"))
    later = await client.read_response(timeout=3.0)
    await client.close()
    assert later.status == 200
    assert later.body == b"answer /fast"
    requests = proxied.backend.requests
    assert [(r.target, r.connection_id) for r in requests] == [("/slow", 1), ("/fast", 2)]


async def test_total_timeout_cuts_a_trickling_response(
    proxied_factory: StartProxied, release: asyncio.Event
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

    proxied = await proxied_factory(trickles, pool={"timeouts": {"total": "500ms"}})
    client = await proxied.connect()
    received, elapsed = await timed_until_closed(client, 2.5, get("/trickle"))
    await client.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) < 30, "the whole body arrived despite the total timeout"
    assert elapsed < 1.5, elapsed
    assert metric(proxied.node, "loadweaver_timeouts_total", {"kind": "total"}) == 1


async def test_total_timeout_before_headers_gives_504(
    proxied_factory: StartProxied, release: asyncio.Event
) -> None:
    async def stalls(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 2.0)
        writer.write(response(200, b"too late"))
        return True

    proxied = await proxied_factory(stalls, pool={"timeouts": {"total": "500ms"}})
    client = await proxied.connect()
    result, elapsed = await timed_response(client, get("/stall"))
    await client.close()
    assert result.status == 504
    assert 0.45 <= elapsed < 1.2, elapsed
    assert metric(proxied.node, "loadweaver_timeouts_total", {"kind": "total"}) == 1
    assert local_reply_count(proxied.node, 504, "request_timeout") == 1


# ---- client side: request headers ----

HEADER_TIMEOUT = {"timeouts": {"request_header": "300ms"}}
IDLE_TIMEOUT = {"timeouts": {"idle": "300ms"}}


async def test_incomplete_request_head_gets_408_and_close(proxied_factory: StartProxied) -> None:
    proxied = await proxied_factory(listener=HEADER_TIMEOUT)
    client = await proxied.connect()
    received, elapsed = await timed_until_closed(client, 2.0, b"GET / HTTP/1.1\r\nHost: x\r\n")
    await client.close()
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b"Connection: close" in received
    assert 0.25 <= elapsed < 1.0, elapsed
    assert proxied.backend.requests == []
    assert metric(proxied.node, "loadweaver_timeouts_total", {"kind": "request_header"}) == 1


async def test_slowloris_dripping_header_lines_still_times_out(
    proxied_factory: StartProxied,
) -> None:
    proxied = await proxied_factory(listener=HEADER_TIMEOUT)
    client = await proxied.connect()
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
    assert proxied.backend.requests == []


async def test_silent_connection_is_closed_without_408(proxy_factory: StartProxy) -> None:
    proxy = await proxy_factory([], listener=HEADER_TIMEOUT)
    client = await proxy.connect()
    received, elapsed = await timed_until_closed(client, 2.0)
    await client.close()
    assert received == b""
    assert 0.25 <= elapsed < 1.0, elapsed


async def test_incomplete_second_request_on_keep_alive_gets_408(
    proxied_factory: StartProxied,
) -> None:
    proxied = await proxied_factory(listener=HEADER_TIMEOUT)
    client = await proxied.connect()
    await client.send(get("/first"))
    assert (await client.read_response()).status == 200
    received, elapsed = await timed_until_closed(
        client, 2.0, b"GET /second HTTP/1.1\r\nHost: x\r\n"
    )
    await client.close()
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert elapsed < 1.0, elapsed
    assert [request.target for request in proxied.backend.requests] == ["/first"]


# ---- client side: idle keep-alive ----


async def test_idle_client_connection_is_closed(proxied_factory: StartProxied) -> None:
    proxied = await proxied_factory(listener=IDLE_TIMEOUT)
    client = await proxied.connect()
    await client.send(get("/once"))
    assert (await client.read_response()).status == 200
    received, elapsed = await timed_until_closed(client, 2.0)
    await client.close()
    assert received == b""  # an idle close is silent
    assert 0.25 <= elapsed < 1.0, elapsed
    assert metric(proxied.node, "loadweaver_timeouts_total", {"kind": "idle"}) == 1


async def test_busy_client_connection_outlives_the_idle_timeout(
    proxied_factory: StartProxied,
) -> None:
    proxied = await proxied_factory(listener=IDLE_TIMEOUT)
    client = await proxied.connect()
    started = time.monotonic()
    for index in range(8):
        await client.send(get(f"/busy{index}"))
        assert (await client.read_response()).status == 200
        await asyncio.sleep(0.1)
    assert time.monotonic() - started > 0.6
    await client.send(get("/last"))
    assert (await client.read_response()).status == 200
    assert len(proxied.backend.requests) == 9
    assert await client.is_closed(timeout=1.5), "idle connection never closed afterwards"
    await client.close()
