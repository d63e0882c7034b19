"""A real HTTP/1.1 backend on loopback whose behaviour each test scripts.

It is written on raw asyncio streams, not a framework, so tests control framing byte for byte:
chunked or close-delimited responses, trailers, 100-continue, stalls and abrupt closes.
"""

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.support.framing import HeaderLookup, Headers, parse_head, read_chunked_body
from tests.support.loopback import LoopbackServer


@dataclass
class ReceivedRequest(HeaderLookup):
    method: str
    target: str
    version: str
    headers: Headers
    body: bytes
    connection_id: int


Handler = Callable[["ReceivedRequest", asyncio.StreamWriter], Awaitable[bool]]
"""Writes a response; returns False to close the connection afterwards."""


async def read_request(reader: asyncio.StreamReader, connection_id: int) -> ReceivedRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    start_line, headers = parse_head(head)
    method, target, version = start_line.split(" ", 2)
    request = ReceivedRequest(method, target, version, headers, b"", connection_id)
    if (request.header("Transfer-Encoding") or "").lower() == "chunked":
        request.body, _ = await read_chunked_body(reader)
    elif (length := request.header("Content-Length")) is not None:
        if (request.header("Expect") or "").lower() == "100-continue":
            pass  # the handler decides whether to send 100 Continue before the body is read
        else:
            request.body = await reader.readexactly(int(length))
    return request


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X"]
    fields = {"Content-Length": str(len(body)), **(headers or {})}
    lines += [f"{name}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def fixed_reply(raw: bytes) -> Handler:
    """A handler answering every request with the bytes `raw`, keeping the connection open."""

    async def handler(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        return True

    return handler


async def echo_handler(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
    """Answers with a summary of what arrived, including a hash of the body."""
    summary = (
        f"{request.method} {request.target} len={len(request.body)} "
        f"sha256={hashlib.sha256(request.body).hexdigest()}"
    ).encode()
    writer.write(response(200, summary, {"X-Backend-Connection": str(request.connection_id)}))
    return True


@dataclass
class Backend(LoopbackServer):
    """A listening backend; `requests` records every request it received."""

    handler: Handler = echo_handler
    name: str = "backend"
    requests: list[ReceivedRequest] = field(default_factory=list)
    open_connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        connection_id = self.connections
        try:
            while True:
                request = await read_request(reader, connection_id)
                if request is None:
                    break
                request.headers.append(("X-Test-Backend", self.name))
                self.requests.append(request)
                keep_open = await self.handler(request, writer)
                await writer.drain()
                if not keep_open:
                    break
        finally:
            self.open_connections -= 1
