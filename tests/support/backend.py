"""A real HTTP/1.1 backend on loopback whose behaviour each test scripts.

It is written on raw asyncio streams, not a framework, so tests control framing byte for byte:
chunked or close-delimited responses, trailers, 100-continue, stalls and abrupt closes.
"""

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class ReceivedRequest:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    connection_id: int

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


Handler = Callable[["ReceivedRequest", asyncio.StreamWriter], Awaitable[bool]]
"""Writes a response; returns False to close the connection afterwards."""


async def read_request(reader: asyncio.StreamReader, connection_id: int) -> ReceivedRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    request = ReceivedRequest(method, target, version, headers, b"", connection_id)
    if (request.header("Transfer-Encoding") or "").lower() == "chunked":
        request.body = await _read_chunked(reader)
    elif (length := request.header("Content-Length")) is not None:
        if (request.header("Expect") or "").lower() == "100-continue":
            pass  # the handler decides whether to send 100 Continue before the body is read
        else:
            request.body = await reader.readexactly(int(length))
    return request


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X"]
    fields = {"Content-Length": str(len(body)), **(headers or {})}
    lines += [f"{name}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def echo_handler(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
    """Answers with a summary of what arrived, including a hash of the body."""
    summary = (
        f"{request.method} {request.target} len={len(request.body)} "
        f"sha256={hashlib.sha256(request.body).hexdigest()}"
    ).encode()
    writer.write(response(200, summary, {"X-Backend-Connection": str(request.connection_id)}))
    return True


@dataclass
class Backend:
    """A listening backend; `requests` records every request it received."""

    handler: Handler = echo_handler
    name: str = "backend"
    requests: list[ReceivedRequest] = field(default_factory=list)
    connections: int = 0
    open_connections: int = 0
    port: int = 0
    host: str = "127.0.0.1"
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> "Backend":
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        connection_id = self.connections
        self._writers.add(writer)
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
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            writer.close()
