"""HTTP/1.1 message framing through a running node: keep-alive, pipelining, bodies both ways,
response framings, 100-continue, hop-by-hop headers and forwarding headers.

Backends are real loopback servers and clients are raw sockets, so every byte is visible.
"""

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import StartProxied, StartProxy
from tests.support.backend import ReceivedRequest, fixed_reply, response
from tests.support.client import RawClient, RawResponse, get
from tests.support.framing import (
    PIECE,
    RawServer,
    RssSampler,
    StreamHandler,
    hash_chunked,
    hash_exactly,
    read_head,
    value_of,
    values_of,
)
from tests.support.nodes import Proxied, Proxy

LARGE_PIECES = 50  # 50 MiB transfers
RSS_LIMIT = 40 * 1024 * 1024


@pytest.fixture(scope="module")
def piece() -> bytes:
    """One random MiB, repeated to make large bodies without holding them."""
    return os.urandom(PIECE)


def large_digest(piece: bytes, count: int = LARGE_PIECES) -> str:
    digest = hashlib.sha256()
    for _ in range(count):
        digest.update(piece)
    return digest.hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def echo_summary(method: str, target: str, body: bytes) -> bytes:
    return f"{method} {target} len={len(body)} sha256={sha(body)}".encode()


async def assert_echoed(client: RawClient, wire: bytes, target: str) -> RawResponse:
    """Sends `wire`, a GET of `target`; the answer is the echo backend's 200 for it."""
    await client.send(wire)
    reply = await client.read_response()
    assert reply.status == 200
    assert reply.body == echo_summary("GET", target, b"")
    return reply


StartRawProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def raw_proxy_factory(proxy_factory: StartProxy) -> AsyncIterator[StartRawProxy]:
    """A node in front of a `RawServer` running the given stream handler."""
    started: list[RawServer] = []

    async def start(handler: StreamHandler, **sections: Any) -> Proxy:
        server = await RawServer(handler).start()
        started.append(server)
        return await proxy_factory([server.url], **sections)

    yield start
    for server in started:
        await server.stop()


# ---- keep-alive and pipelining ----


async def test_keep_alive_requests_reuse_one_upstream_connection(
    proxied: Proxied,
) -> None:
    client = await proxied.connect()
    for index in range(4):
        await assert_echoed(client, get(f"/keep/{index}"), f"/keep/{index}")
    assert [request.target for request in proxied.backend.requests] == [
        f"/keep/{i}" for i in range(4)
    ]
    assert {request.connection_id for request in proxied.backend.requests} == {1}
    assert proxied.backend.connections == 1
    await client.close()


async def test_pipelined_gets_are_answered_in_order(proxied_factory: StartProxied) -> None:
    async def slow_first(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        if request.target == "/first":
            await asyncio.sleep(0.05)  # a slow first answer must still come first
        writer.write(response(200, f"answer for {request.target}".encode()))
        return True

    proxied = await proxied_factory(slow_first)
    client = await proxied.connect()
    paths = ["/first", "/second", "/third", "/fourth"]
    await client.send(b"".join(get(path) for path in paths))
    bodies = [(await client.read_response()).body for _ in paths]
    assert bodies == [f"answer for {path}".encode() for path in paths]
    assert [request.target for request in proxied.backend.requests] == paths
    assert not await client.is_closed(timeout=0.1)
    await client.close()


async def test_pipelined_posts_with_bodies_are_answered_in_order(
    proxied: Proxied,
) -> None:
    client = await proxied.connect()
    bodies = [b"alpha", os.urandom(20_000), b"", b"omega" * 100]
    wire = b"".join(
        b"POST /post/%d HTTP/1.1\r\nHost: example.test\r\nContent-Length: %d\r\n\r\n%s"
        % (index, len(body), body)
        for index, body in enumerate(bodies)
    )
    await client.send(wire)
    for index, body in enumerate(bodies):
        reply = await client.read_response()
        assert reply.status == 200
        assert reply.body == echo_summary("POST", f"/post/{index}", body)
    assert [request.body for request in proxied.backend.requests] == bodies
    await client.close()


# ---- HTTP/1.0 and Connection: close ----


async def test_http10_request_is_answered_and_closed(proxied: Proxied) -> None:
    client = await proxied.connect()
    reply = await assert_echoed(client, b"GET /old HTTP/1.0\r\nHost: example.test\r\n\r\n", "/old")
    assert (reply.header("Connection") or "").lower() == "close"
    assert await client.is_closed()
    assert proxied.backend.requests[0].header("Host") == "example.test"


async def test_http10_request_without_host_is_answered(proxied: Proxied) -> None:
    client = await proxied.connect()
    await assert_echoed(client, b"GET /no-host HTTP/1.0\r\n\r\n", "/no-host")
    assert await client.is_closed()
    # The backend still gets a Host.
    assert len(proxied.backend.requests[0].headers_named("Host")) == 1


async def test_http10_keep_alive_is_honoured(proxied: Proxied) -> None:
    client = await proxied.connect()
    request = b"GET /ka HTTP/1.0\r\nHost: example.test\r\nConnection: keep-alive\r\n\r\n"
    for _ in range(2):
        await client.send(request)
        reply = await client.read_response()
        assert reply.status == 200
        assert (reply.header("Connection") or "").lower() == "keep-alive"
    await client.close()


async def test_http10_client_gets_chunked_response_close_delimited(
    proxied_factory: StartProxied,
) -> None:
    chunked = fixed_reply(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    )
    proxied = await proxied_factory(chunked)
    client = await proxied.connect()
    await client.send(b"GET / HTTP/1.0\r\nHost: example.test\r\n\r\n")
    reply = await client.read_response()
    assert reply.status == 200
    assert reply.header("Transfer-Encoding") is None  # HTTP/1.0 has no chunked coding
    assert reply.body == b"hello world"  # read to EOF: the close delimits it


async def test_connection_close_on_http11_is_honoured(proxied: Proxied) -> None:
    client = await proxied.connect()
    reply = await assert_echoed(client, get("/bye", extra="Connection: close\r\n"), "/bye")
    assert (reply.header("Connection") or "").lower() == "close"
    assert await client.is_closed()
    assert [request.target for request in proxied.backend.requests] == ["/bye"]


# ---- request bodies ----


async def test_content_length_body_arrives_intact(proxied: Proxied) -> None:
    client = await proxied.connect()
    body = os.urandom(300_000)
    await client.send(
        b"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    for start in range(0, len(body), 70_000):  # in several writes
        await client.send(body[start : start + 70_000])
    reply = await client.read_response()
    assert reply.body == echo_summary("POST", "/upload", body)
    seen = proxied.backend.requests[0]
    assert seen.headers_named("Content-Length") == [str(len(body))]
    assert seen.headers_named("Transfer-Encoding") == []
    await client.close()


async def test_chunked_body_arrives_intact_and_stays_chunked(proxied: Proxied) -> None:
    client = await proxied.connect()
    parts = [b"first part ", os.urandom(40_000), b"", b"x" * 4096]
    wire = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(part), part) for part in parts if part)
    await client.send(
        b"POST /chunks HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    await client.send(wire)
    await client.send(b"0\r\n\r\n")
    reply = await client.read_response()
    body = b"".join(parts)
    assert reply.body == echo_summary("POST", "/chunks", body)
    seen = proxied.backend.requests[0]
    assert [value.lower() for value in seen.headers_named("Transfer-Encoding")] == ["chunked"]
    assert seen.headers_named("Content-Length") == []
    await client.close()


async def test_large_upload_is_streamed(raw_proxy_factory: StartRawProxy, piece: bytes) -> None:
    seen: list[tuple[str | None, str | None, str, int]] = []

    async def hashing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_head(reader)
        length = int(value_of(headers, "Content-Length") or "0")
        digest, size = await hash_exactly(reader, length)
        seen.append(
            (
                value_of(headers, "Content-Length"),
                value_of(headers, "Transfer-Encoding"),
                digest,
                size,
            )
        )
        writer.write(response(200, digest.encode()))
        await writer.drain()

    proxy = await raw_proxy_factory(hashing, limits={"max_request_body_bytes": "200MiB"})
    client = await proxy.connect()
    total = PIECE * LARGE_PIECES
    expected = large_digest(piece)
    async with RssSampler() as rss:
        await client.send(
            b"PUT /big HTTP/1.1\r\nHost: example.test\r\nContent-Length: %d\r\n\r\n" % total
        )
        for _ in range(LARGE_PIECES):
            await client.send(piece)
        reply = await client.read_response(timeout=30)
    assert reply.status == 200
    assert seen == [(str(total), None, expected, total)]
    assert reply.body == expected.encode()
    assert rss.growth < RSS_LIMIT, f"RSS grew by {rss.growth / 2**20:.1f} MiB during the upload"
    await client.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_large_download_is_streamed(
    raw_proxy_factory: StartRawProxy, piece: bytes, framing: str
) -> None:
    total = PIECE * LARGE_PIECES

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        if framing == "chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(LARGE_PIECES):
                writer.write(b"%x\r\n" % len(piece))
                writer.write(piece)
                writer.write(b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
            for _ in range(LARGE_PIECES):
                writer.write(piece)
                await writer.drain()
        await writer.drain()
        await reader.read()  # keep the connection until the proxy closes it

    proxy = await raw_proxy_factory(big)
    client = await proxy.connect()
    async with RssSampler() as rss:
        await client.send(get("/big"))
        status_line, headers = await asyncio.wait_for(read_head(client.reader), 5)
        assert status_line.split(" ")[1] == "200"
        if framing == "chunked":
            assert (value_of(headers, "Transfer-Encoding") or "").lower() == "chunked"
            digest, size, _ = await asyncio.wait_for(hash_chunked(client.reader), 30)
        else:
            assert value_of(headers, "Content-Length") == str(total)
            digest, size = await asyncio.wait_for(hash_exactly(client.reader, total), 30)
    assert size == total
    assert digest == large_digest(piece)
    assert rss.growth < RSS_LIMIT, f"RSS grew by {rss.growth / 2**20:.1f} MiB during the download"
    await client.close()


# ---- response framings ----


async def test_chunked_response_is_rechunked_with_trailers(proxied_factory: StartProxied) -> None:
    with_trailers = fixed_reply(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum, X-Count\r\n"
        b"\r\n5\r\nhello\r\n6;ext=y\r\n world\r\n0\r\nX-Checksum: abc123\r\nX-Count: 2\r\n\r\n"
    )
    proxied = await proxied_factory(with_trailers)
    client = await proxied.connect()
    for _ in range(2):  # the connection stays usable after a chunked response
        await client.send(get("/trailers", extra="TE: trailers\r\n"))
        reply = await client.read_response()
        assert reply.status == 200
        assert (reply.header("Transfer-Encoding") or "").lower() == "chunked"
        assert reply.header("Content-Length") is None
        assert reply.body == b"hello world"
        assert reply.trailers == [("X-Checksum", "abc123"), ("X-Count", "2")]
        assert reply.header("Trailer") == "X-Checksum, X-Count"
    await client.close()


async def test_close_delimited_response_is_chunked_to_http11_client(
    proxied_factory: StartProxied,
) -> None:
    async def close_delimited(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        writer.write(f"body of {request.target} ".encode() * 1000)
        return False  # the close ends the body

    proxied = await proxied_factory(close_delimited)
    client = await proxied.connect()
    for path in ["/one", "/two"]:  # the client connection stays usable
        await client.send(get(path))
        reply = await client.read_response()
        assert reply.status == 200
        assert (reply.header("Transfer-Encoding") or "").lower() == "chunked"
        assert reply.body == f"body of {path} ".encode() * 1000
        assert (reply.header("Connection") or "").lower() != "close"
    assert proxied.backend.connections == 2
    await client.close()


async def test_head_response_has_no_body_and_connection_stays_usable(
    proxied_factory: StartProxied,
) -> None:
    async def head_aware(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        if request.method == "HEAD":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n"
            )
        else:
            writer.write(response(200, f"got {request.method} {request.target}".encode()))
        return True

    proxied = await proxied_factory(head_aware)
    client = await proxied.connect()
    await client.send(b"HEAD /h HTTP/1.1\r\nHost: example.test\r\n\r\n")
    reply = await client.read_response(head_request=True)
    assert reply.status == 200
    assert reply.header("Content-Length") == "1234"
    assert reply.header("Transfer-Encoding") is None
    await client.send(get("/after"))
    reply = await client.read_response()
    assert reply.body == b"got GET /after"  # no stray body bytes came before it
    assert [request.target for request in proxied.backend.requests] == ["/h", "/after"]
    assert proxied.backend.connections == 1  # and the upstream connection was reused
    await client.close()


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 204 No Content\r\nX-Empty: yes\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nX-Empty: yes\r\n\r\n',
        b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 100\r\nX-Empty: yes\r\n\r\n',
    ],
    ids=["204", "304", "304-with-length"],
)
async def test_bodyless_status_keeps_connection_usable(
    proxied_factory: StartProxied, head: bytes
) -> None:
    async def bodyless(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        if request.target == "/empty":
            writer.write(head)
        else:
            writer.write(response(200, b"after"))
        return True

    proxied = await proxied_factory(bodyless)
    client = await proxied.connect()
    await client.send(get("/empty"))
    reply = await client.read_response()
    assert reply.status == int(head.split(b" ")[1])
    assert reply.header("X-Empty") == "yes"
    assert reply.header("Transfer-Encoding") is None
    await client.send(get("/after"))
    reply = await client.read_response()
    assert reply.status == 200
    assert reply.body == b"after"
    assert proxied.backend.connections == 1
    await client.close()


# ---- Expect: 100-continue ----


async def test_expect_100_continue_is_relayed(raw_proxy_factory: StartRawProxy) -> None:
    seen: list[list[tuple[str, str]]] = []

    async def continuing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_head(reader)
        seen.append(headers)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        body = await reader.readexactly(int(value_of(headers, "Content-Length") or "0"))
        writer.write(response(200, echo_summary("POST", "/expect", body)))
        await writer.drain()
        await reader.read()

    proxy = await raw_proxy_factory(continuing)
    client = await proxy.connect()
    body = os.urandom(10_000)
    await client.send(
        b"POST /expect HTTP/1.1\r\nHost: example.test\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    assert await client.read_informational(timeout=3) == 100
    await client.send(body)
    reply = await client.read_response()
    assert reply.status == 200
    assert reply.body == echo_summary("POST", "/expect", body)
    assert [value.lower() for value in values_of(seen[0], "Expect")] == ["100-continue"]
    await client.close()


# ---- hop-by-hop headers ----


async def test_hop_by_hop_request_headers_are_removed(proxied: Proxied) -> None:
    client = await proxied.connect()
    await client.send(
        get(
            "/hop",
            extra="Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
            "TE: trailers\r\nProxy-Connection: x\r\nX-Kept: yes\r\n",
        )
    )
    reply = await client.read_response()
    assert reply.status == 200
    names = {name.lower() for name, _ in proxied.backend.requests[0].headers}
    for hop in ["connection", "x-secret", "keep-alive", "te", "proxy-connection"]:
        assert hop not in names, f"{hop} reached the backend"
    assert proxied.backend.requests[0].header("X-Kept") == "yes"
    await client.send(get("/again"))  # keep-alive still honoured
    assert (await client.read_response()).status == 200
    await client.close()


async def test_hop_by_hop_response_headers_are_removed(proxied_factory: StartProxied) -> None:
    leaky = fixed_reply(
        response(
            200,
            b"ok",
            {
                "Connection": "X-Internal",
                "X-Internal": "1",
                "Keep-Alive": "timeout=5",
                "Proxy-Connection": "keep-alive",
                "X-Public": "yes",
            },
        )
    )
    proxied = await proxied_factory(leaky)
    client = await proxied.connect()
    await client.send(get("/hop"))
    reply = await client.read_response()
    assert reply.status == 200
    assert reply.body == b"ok"
    names = {name.lower() for name, _ in reply.headers}
    for hop in ["x-internal", "keep-alive", "proxy-connection"]:
        assert hop not in names, f"{hop} reached the client"
    assert all("x-internal" not in value.lower() for value in reply.headers_named("Connection"))
    assert reply.header("X-Public") == "yes"
    await client.close()


# ---- forwarding headers ----

CLIENT_HOST = "App.Example.test:8080"
FAKE_FORWARDING = (
    "X-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\n"
    "X-Forwarded-Proto: https\r\nX-Forwarded-Host: origin.example\r\n"
)


async def forwarded(
    proxied_factory: StartProxied, extra: str = "", **sections: Any
) -> ReceivedRequest:
    """What the echo backend received for `GET /fwd` with Host `CLIENT_HOST` and `extra`."""
    proxied = await proxied_factory(**sections)
    client = await proxied.connect()
    await client.send(get("/fwd", host=CLIENT_HOST, extra=extra))
    assert (await client.read_response()).status == 200
    await client.close()
    return proxied.backend.requests[0]


TRUSTING_LOOPBACK = {"trusted_proxies": ["127.0.0.0/8"]}


async def test_forwarding_headers_from_untrusted_client_are_replaced(
    proxied_factory: StartProxied,
) -> None:
    seen = await forwarded(proxied_factory, FAKE_FORWARDING)
    assert seen.headers_named("Host") == [CLIENT_HOST]
    assert seen.headers_named("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.headers_named("X-Forwarded-Proto") == ["http"]
    assert seen.headers_named("X-Forwarded-Host") == [CLIENT_HOST]
    assert seen.headers_named("Forwarded") == [f'for=127.0.0.1;proto=http;host="{CLIENT_HOST}"']


async def test_forwarding_headers_from_trusted_proxy_are_extended(
    proxied_factory: StartProxied,
) -> None:
    seen = await forwarded(proxied_factory, FAKE_FORWARDING, security=TRUSTING_LOOPBACK)
    assert seen.headers_named("Host") == [CLIENT_HOST]
    assert ", ".join(seen.headers_named("X-Forwarded-For")) == "1.2.3.4, 127.0.0.1"
    assert ", ".join(seen.headers_named("Forwarded")) == (
        f'for=1.2.3.4, for=127.0.0.1;proto=http;host="{CLIENT_HOST}"'
    )
    assert seen.headers_named("X-Forwarded-Proto") == ["https"]
    assert seen.headers_named("X-Forwarded-Host") == ["origin.example"]


async def test_forwarding_headers_without_incoming_ones_from_trusted_proxy(
    proxied_factory: StartProxied,
) -> None:
    seen = await forwarded(proxied_factory, security=TRUSTING_LOOPBACK)
    assert seen.headers_named("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.headers_named("X-Forwarded-Proto") == ["http"]
    assert seen.headers_named("X-Forwarded-Host") == [CLIENT_HOST]
