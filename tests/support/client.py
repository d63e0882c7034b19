"""A raw-socket HTTP/1.1 client for framing tests: it sends exact bytes and parses strictly."""

import asyncio
import contextlib
from dataclasses import dataclass

from tests.support.framing import HeaderLookup, Headers, read_chunked_body, read_head


@dataclass
class RawResponse(HeaderLookup):
    status: int
    reason: str
    headers: Headers
    body: bytes
    trailers: Headers


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", **kwargs: object) -> "RawClient":
        reader, writer = await asyncio.open_connection(host, port, **kwargs)  # type: ignore[arg-type]
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_response(self, head_request: bool = False, timeout: float = 5.0) -> RawResponse:
        return await asyncio.wait_for(self._read_response(head_request), timeout)

    async def _read_response(self, head_request: bool) -> RawResponse:
        while True:
            status_line, headers = await read_head(self.reader)
            _, status_text, *reason = status_line.split(" ", 2)
            status = int(status_text)
            if not 100 <= status < 200 or status == 101:
                break
        result = RawResponse(status, reason[0] if reason else "", headers, b"", [])
        if head_request or status in (204, 304, 101):
            return result
        encoding = (result.header("Transfer-Encoding") or "").lower()
        if encoding == "chunked":
            result.body, result.trailers = await read_chunked_body(self.reader)
        elif (length := result.header("Content-Length")) is not None:
            result.body = await self.reader.readexactly(int(length))
        else:
            result.body = await self.reader.read()
        return result

    async def read_informational(self, timeout: float = 5.0) -> int:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        return int(head.split(b" ", 2)[1])

    async def is_closed(self, timeout: float = 2.0) -> bool:
        """True when the server closed the connection (EOF) within `timeout`."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout)
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def get(path: str = "/", host: str = "example.test", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
