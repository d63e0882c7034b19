"""Requests the proxy must refuse itself: smuggling-prone framing, malformed heads, size limits,
garbage, CONNECT, no route and no backend.

Every rejection is checked the same way: the status, a short local body, the connection closed
when it must be, the backend never received the request, and the local-reply counter went up.
"""

import asyncio
import random
from collections.abc import Collection
from typing import Any

import pytest

from tests.conftest import StartProxied, StartProxy
from tests.support.client import RawClient, RawResponse, get
from tests.support.framing import local_replies, tls_client_hello
from tests.support.nodes import Proxied

SHORT_BODY = 200


async def assert_rejected(
    client: RawClient,
    proxied: Proxied,
    statuses: Collection[int],
    *,
    closes: bool = True,
    reason: str | None = None,
) -> RawResponse:
    """The local reply arrived; the backend saw nothing; the counter moved."""
    reply = await client.read_response(timeout=3)
    assert reply.status in statuses, f"got {reply.status} {reply.body!r}"
    assert 0 < len(reply.body) < SHORT_BODY
    assert (reply.header("Content-Type") or "").startswith("text/plain")
    if closes:
        assert (reply.header("Connection") or "").lower() == "close"
        assert await client.is_closed(), "the connection must be closed after the rejection"
    assert proxied.backend.requests == [], "the backend received a rejected request"
    counted = local_replies(proxied.node.metrics.registry, reply.status)
    assert sum(counted.values()) == 1, f"local replies counted: {counted}"
    if reason is not None:
        assert counted.get(reason) == 1, f"local replies counted: {counted}"
    return reply


async def assert_request_rejected(
    proxied_factory: StartProxied,
    wire: bytes,
    statuses: Collection[int],
    *,
    reason: str | None = None,
    **sections: Any,
) -> None:
    """Sends `wire` to a node (configured with `sections`) in front of an echo backend, on a
    new connection, and checks it is rejected as `assert_rejected` describes."""
    proxied = await proxied_factory(**sections)
    client = await proxied.connect()
    await client.send(wire)
    await assert_rejected(client, proxied, statuses, reason=reason)


def post(headers: str, body: bytes = b"") -> bytes:
    return b"POST /submit HTTP/1.1\r\nHost: example.test\r\n%s\r\n%s" % (headers.encode(), body)


# ---- framing that enables request smuggling ----

FRAMING_CASES: dict[str, tuple[bytes, set[int]]] = {
    "length-and-chunked": (
        post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        {400},
    ),
    "chunked-and-length": (
        post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
        {400},
    ),
    "duplicate-length": (post("Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), {400}),
    "conflicting-length": (post("Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), {400}),
    "length-list": (post("Content-Length: 5, 5\r\n", b"hello"), {400}),
    "te-gzip": (post("Transfer-Encoding: gzip\r\n", b"hello"), {400, 501}),
    "te-chunked-gzip": (post("Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), {400, 501}),
    "te-gzip-chunked": (post("Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), {400, 501}),
    "te-unknown": (post("Transfer-Encoding: frobnicate\r\n", b"hello"), {400, 501}),
    "te-twice": (
        post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        {400, 501},
    ),
    "bad-chunk-size": (post("Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"), {400}),
    "negative-length": (post("Content-Length: -1\r\n", b"hello"), {400}),
    "non-numeric-length": (post("Content-Length: abc\r\n", b"hello"), {400}),
    "trailing-junk-length": (post("Content-Length: 5x\r\n", b"hello"), {400}),
}


@pytest.mark.parametrize("case", list(FRAMING_CASES), ids=list(FRAMING_CASES))
async def test_ambiguous_framing_is_rejected(proxied_factory: StartProxied, case: str) -> None:
    wire, statuses = FRAMING_CASES[case]
    await assert_request_rejected(proxied_factory, wire, statuses)


# ---- malformed heads ----

HEAD_CASES: dict[str, tuple[bytes, str | None]] = {
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: example.test\r\nX-Folded: one\r\n  two\r\n\r\n", None),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost : example.test\r\n\r\n", None),
    "bare-lf": (b"GET / HTTP/1.1\nHost: example.test\n\n", None),
    "bare-lf-in-headers": (b"GET / HTTP/1.1\r\nHost: example.test\nX-A: 1\r\n\r\n", None),
    "nul-in-value": (b"GET / HTTP/1.1\r\nHost: example.test\r\nX-A: a\x00b\r\n\r\n", None),
    # The proxy's own checks, with their own metric reasons:
    "missing-host": (b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", "missing_host"),
    "two-hosts": (
        b"GET / HTTP/1.1\r\nHost: example.test\r\nHost: other.test\r\n\r\n",
        "multiple_hosts",
    ),
    "two-equal-hosts": (
        b"GET / HTTP/1.1\r\nHost: example.test\r\nHost: example.test\r\n\r\n",
        "multiple_hosts",
    ),
}


@pytest.mark.parametrize("case", list(HEAD_CASES), ids=list(HEAD_CASES))
async def test_malformed_head_is_rejected(proxied_factory: StartProxied, case: str) -> None:
    wire, reason = HEAD_CASES[case]
    await assert_request_rejected(proxied_factory, wire, {400}, reason=reason)


# ---- size limits ----


async def test_header_block_over_limit_is_431(proxied_factory: StartProxied) -> None:
    filler = "".join(f"X-Fill-{index}: {'v' * 500}\r\n" for index in range(16))  # ~8 KiB
    await assert_request_rejected(
        proxied_factory,
        get("/", extra=filler),
        {431},
        reason="headers_too_large",
        limits={"max_header_bytes": "4KiB"},
    )


async def test_header_block_under_limit_passes(proxied_factory: StartProxied) -> None:
    proxied = await proxied_factory(limits={"max_header_bytes": "4KiB"})
    client = await proxied.connect()
    filler = "".join(f"X-Fill-{index}: {'v' * 500}\r\n" for index in range(4))  # ~2 KiB
    await client.send(get("/", extra=filler))
    assert (await client.read_response()).status == 200
    assert len(proxied.backend.requests) == 1
    await client.close()


async def test_too_many_headers_is_431(proxied_factory: StartProxied) -> None:
    many = "".join(f"X-H{index}: {index}\r\n" for index in range(20))
    await assert_request_rejected(
        proxied_factory,
        get("/", extra=many),
        {431},
        reason="headers_too_large",
        limits={"max_headers": 10},
    )


async def test_huge_header_in_many_writes_is_431_early(proxied_factory: StartProxied) -> None:
    """One header value that never ends: the proxy must answer long before it is all sent."""
    proxied = await proxied_factory(limits={"max_header_bytes": "4KiB"})
    client = await proxied.connect()
    piece = b"a" * 1024
    ceiling = 1024  # 1 MiB at most
    sent = 0
    answered = asyncio.ensure_future(client.reader.readuntil(b"\r\n\r\n"))
    await client.send(b"GET / HTTP/1.1\r\nHost: example.test\r\nX-Huge: ")
    try:
        for _ in range(ceiling):
            if answered.done():
                break
            await client.send(piece)
            sent += 1
            await asyncio.sleep(0.001)
    except ConnectionError:
        pass  # the proxy closed while we were still sending
    await asyncio.wait([answered], timeout=3)
    assert answered.done(), "no answer to a never-ending header"
    head = answered.result()
    assert head.split(b" ", 2)[1] == b"431"
    assert sent < 128, f"the proxy read {sent} KiB of one header before answering"
    assert proxied.backend.requests == []
    assert sum(local_replies(proxied.node.metrics.registry, 431).values()) == 1


async def test_url_over_limit_is_414(proxied_factory: StartProxied) -> None:
    await assert_request_rejected(
        proxied_factory,
        get("/" + "u" * 2048),
        {414},
        reason="url_too_long",
        limits={"max_url_bytes": "1KiB"},
    )


async def test_body_over_limit_with_content_length_is_413(proxied_factory: StartProxied) -> None:
    await assert_request_rejected(
        proxied_factory,
        post("Content-Length: 5000\r\n", b"b" * 5000),
        {413},
        reason="body_too_large",
        limits={"max_request_body_bytes": 1000},
    )


async def test_body_at_limit_passes(proxied_factory: StartProxied) -> None:
    proxied = await proxied_factory(limits={"max_request_body_bytes": 1000})
    client = await proxied.connect()
    await client.send(post("Content-Length: 1000\r\n", b"b" * 1000))
    assert (await client.read_response()).status == 200
    assert len(proxied.backend.requests[0].body) == 1000
    await client.close()


async def test_chunked_body_over_limit_is_413(proxied_factory: StartProxied) -> None:
    chunks = b"".join(b"1f4\r\n" + b"c" * 500 + b"\r\n" for _ in range(10)) + b"0\r\n\r\n"
    await assert_request_rejected(
        proxied_factory,
        post("Transfer-Encoding: chunked\r\n", chunks),
        {413},
        reason="body_too_large",
        limits={"max_request_body_bytes": 1000},
    )


# ---- not HTTP at all ----

GARBAGE_CASES: dict[str, bytes] = {
    "random-bytes": random.Random(20240611).randbytes(600) + b"\r\n\r\n",
    "text": b"HELLO THERE, IS THIS A WEB SERVER?\r\n\r\n",
    "tls-client-hello": tls_client_hello(),
}


@pytest.mark.parametrize("case", list(GARBAGE_CASES), ids=list(GARBAGE_CASES))
async def test_garbage_is_400_and_closed(proxied_factory: StartProxied, case: str) -> None:
    await assert_request_rejected(proxied_factory, GARBAGE_CASES[case], {400})


async def test_connect_method_is_405(proxied_factory: StartProxied) -> None:
    await assert_request_rejected(
        proxied_factory,
        b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
        {405},
        reason="connect_not_allowed",
    )


# ---- ordering with pipelining ----


async def test_valid_request_before_malformed_one_is_answered_first(
    proxied: Proxied,
) -> None:
    client = await proxied.connect()
    await client.send(get("/valid") + b"GET /bad HTTP/1.1\r\nHost : example.test\r\n\r\n")
    first = await client.read_response()
    assert first.status == 200
    assert first.body.startswith(b"GET /valid ")
    second = await client.read_response()
    assert second.status == 400
    assert 0 < len(second.body) < SHORT_BODY
    assert (second.header("Connection") or "").lower() == "close"
    assert await client.is_closed()
    assert [request.target for request in proxied.backend.requests] == ["/valid"]
    assert sum(local_replies(proxied.node.metrics.registry, 400).values()) == 1


# ---- no route, no backend ----

ONLY_HOST_A = [{"name": "a", "match": {"host": "a.test"}, "pool": "app"}]


async def test_no_route_is_404_and_connection_stays_usable(proxied_factory: StartProxied) -> None:
    proxied = await proxied_factory(routes=ONLY_HOST_A)
    client = await proxied.connect()
    await client.send(get("/x", host="b.test"))
    await assert_rejected(client, proxied, {404}, closes=False, reason="no_route")
    await client.send(get("/y", host="a.test"))
    reply = await client.read_response()
    assert reply.status == 200
    assert [request.target for request in proxied.backend.requests] == ["/y"]
    await client.close()


async def test_no_route_with_body_is_404(proxied_factory: StartProxied) -> None:
    proxied = await proxied_factory(routes=ONLY_HOST_A)
    client = await proxied.connect()
    await client.send(
        b"POST /x HTTP/1.1\r\nHost: b.test\r\nContent-Length: 5\r\n\r\nhello"
        + get("/y", host="a.test")
    )
    reply = await client.read_response()
    assert reply.status == 404
    # The body was read (or the connection closed): the next request must not be parsed from it.
    if (reply.header("Connection") or "").lower() != "close":
        follow = await client.read_response()
        assert follow.status == 200
        assert [request.target for request in proxied.backend.requests] == ["/y"]
    else:
        assert await client.is_closed()
        assert proxied.backend.requests == []
    assert sum(local_replies(proxied.node.metrics.registry, 404).values()) == 1


async def test_pool_without_backends_is_503(proxy_factory: StartProxy) -> None:
    proxy = await proxy_factory([])
    client = await proxy.connect()
    for _ in range(2):  # the connection stays usable
        await client.send(get("/"))
        reply = await client.read_response()
        assert reply.status == 503
        assert b"no backends configured" in reply.body.lower()
        assert len(reply.body) < SHORT_BODY
    assert local_replies(proxy.node.metrics.registry, 503) == {"no_backend": 2}
    await client.close()
