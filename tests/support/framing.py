"""Helpers for HTTP framing and request-validation tests.

A bare asyncio server whose handler gets the raw reader and writer (for streaming bodies and
100-continue), the message-head and chunked-body parsing every test server and client shares,
streaming readers that hash a body without keeping it, an RSS sampler for the in-process node,
and a reader for the node's local-reply counters.
"""

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from tests.support.loopback import LoopbackServer

Headers = list[tuple[str, str]]
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

PIECE = 1 << 20  # 1 MiB


@dataclass
class RawServer(LoopbackServer):
    """A loopback server that hands each connection to `handler` as raw streams."""

    handler: StreamHandler

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.handler(reader, writer)


def parse_head(head: bytes) -> tuple[str, Headers]:
    """The start line and the header fields of a message head, CRLF-separated."""
    lines = head.decode("latin-1").split("\r\n")
    headers: Headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    return lines[0], headers


async def read_head(reader: asyncio.StreamReader) -> tuple[str, Headers]:
    """The start line and the header fields of the next message head on `reader`."""
    return parse_head(await reader.readuntil(b"\r\n\r\n"))


def values_of(headers: Headers, name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


def value_of(headers: Headers, name: str) -> str | None:
    values = values_of(headers, name)
    return values[0] if values else None


class HeaderLookup:
    """`header` and `headers_named` for a message whose `headers` are a list of fields."""

    headers: Headers

    def header(self, name: str) -> str | None:
        return value_of(self.headers, name)

    def headers_named(self, name: str) -> list[str]:
        return values_of(self.headers, name)


async def hash_exactly(reader: asyncio.StreamReader, length: int) -> tuple[str, int]:
    """Reads `length` bytes in bounded pieces; returns their sha256 and the count read."""
    digest = hashlib.sha256()
    remaining = length
    while remaining:
        data = await reader.read(min(remaining, 256 * 1024))
        if not data:
            break
        digest.update(data)
        remaining -= len(data)
    return digest.hexdigest(), length - remaining


async def read_chunked(reader: asyncio.StreamReader, on_data: Callable[[bytes], object]) -> Headers:
    """Reads a chunked body, handing its data to `on_data` in bounded pieces; returns trailers."""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            trailers: Headers = []
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.decode("latin-1").strip().partition(":")
                trailers.append((name, value.strip()))
            return trailers
        remaining = size
        while remaining:
            data = await reader.readexactly(min(remaining, 256 * 1024))
            on_data(data)
            remaining -= len(data)
        await reader.readexactly(2)


async def read_chunked_body(reader: asyncio.StreamReader) -> tuple[bytes, Headers]:
    """A whole chunked body, and its trailer fields."""
    body = bytearray()
    trailers = await read_chunked(reader, body.extend)
    return bytes(body), trailers


async def hash_chunked(reader: asyncio.StreamReader) -> tuple[str, int, Headers]:
    """Reads a chunked body in bounded pieces; returns sha256, size and the trailer fields."""
    digest = hashlib.sha256()
    total = 0

    def take(data: bytes) -> None:
        nonlocal total
        digest.update(data)
        total += len(data)

    trailers = await read_chunked(reader, take)
    return digest.hexdigest(), total, trailers


def rss_bytes() -> int:
    """This process's resident set size (the node runs in-process)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class RssSampler:
    """Samples RSS every few milliseconds on the running loop; `growth` is peak minus start."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.baseline = rss_bytes()
        self.peak = self.baseline
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "RssSampler":
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes())
            await asyncio.sleep(self.interval)


def local_replies(registry: CollectorRegistry, status: int | None = None) -> dict[str, float]:
    """`loadweaver_local_replies_total` by reason, for one status (or all, keyed status:reason)."""
    counts: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name != "loadweaver_local_replies":
            continue
        for sample in metric.samples:
            if sample.name != "loadweaver_local_replies_total":
                continue
            labels: dict[str, Any] = sample.labels
            if status is None:
                counts[f"{labels['status']}:{labels['reason']}"] = sample.value
            elif labels["status"] == str(status):
                counts[labels["reason"]] = sample.value
    return counts


def tls_client_hello(server_name: str = "example.test") -> bytes:
    """The first flight of a real TLS handshake, as a browser would send to an https port."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()
