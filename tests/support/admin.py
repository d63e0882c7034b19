"""A client for a node's admin API over real HTTP (aiohttp), and backends that say who answered.

`AdminClient` sends JSON, adds the bearer token, and hands back status, headers and the parsed
body; `ApiResponse.version` reads the `ETag` config version. `named_backends` starts loopback
backends b0, b1... (as `node_config` names them) that answer with `X-Served-By: <name>`, and
`served_by` sends one request through a node's listener and says which backend answered.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from tests.support.backend import Backend, Handler, ReceivedRequest, response
from tests.support.client import RawClient, get

PREFIX = "/api/v1"
TIMEOUT = aiohttp.ClientTimeout(total=10)
UNSET: Any = object()  # no JSON body at all (distinct from a JSON `null`)


@dataclass
class ApiResponse:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    @property
    def body(self) -> Any:
        return json.loads(self.text)

    @property
    def version(self) -> int:
        """The config version in the `ETag: "N"` header."""
        etag = self.headers.get("ETag")
        assert etag is not None, f"no ETag on a {self.status} answer: {self.text}"
        return int(etag.strip('"'))

    @property
    def error(self) -> dict[str, Any]:
        """The `error` object of a JSON error body; fails unless it is one for this status."""
        assert self.headers.get("Content-Type", "").startswith("application/json"), self.headers
        error: dict[str, Any] = self.body["error"]
        assert error["status"] == self.status, error
        assert error["message"], error
        return error

    @property
    def problems(self) -> list[str]:
        problems: list[str] = self.error["problems"]
        return problems


class AdminClient:
    """Requests to one node's admin listener; `token=None` sends no Authorization header."""

    def __init__(self, session: aiohttp.ClientSession, port: int, token: str | None = None):
        self.session = session
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    async def call(
        self,
        method: str,
        path: str,
        body: Any = UNSET,
        *,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        authorization: str | None = None,
    ) -> ApiResponse:
        """`path` as given (`/healthz`); `body` goes as JSON; `authorization` replaces the token."""
        sent = dict(headers or {})
        if authorization is not None:
            sent["Authorization"] = authorization
        elif self.token is not None:
            sent["Authorization"] = f"Bearer {self.token}"
        if body is not UNSET:
            data = json.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.base + path, data=data, headers=sent, timeout=TIMEOUT
        ) as answer:
            return ApiResponse(answer.status, answer.headers, await answer.text())

    async def api(self, method: str, path: str, body: Any = UNSET, **options: Any) -> ApiResponse:
        """As `call`, under `/api/v1`."""
        return await self.call(method, PREFIX + path, body, **options)

    async def get(self, path: str, **options: Any) -> ApiResponse:
        return await self.api("GET", path, **options)

    async def ok(self, method: str, path: str, body: Any = UNSET, **options: Any) -> Any:
        """The JSON body of a 2xx answer; fails on any other status."""
        answer = await self.api(method, path, body, **options)
        assert 200 <= answer.status < 300, f"{method} {path}: {answer.status} {answer.text}"
        return answer.body if answer.text else None

    async def events(self, path: str, count: int, timeout: float = 5.0) -> list[tuple[str, Any]]:
        """The first `count` Server-Sent Events of `path` (under /api/v1): (event, parsed data)."""

        async def read() -> list[tuple[str, Any]]:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            async with self.session.get(self.base + PREFIX + path, headers=headers) as answer:
                assert answer.status == 200, await answer.text()
                assert answer.headers["Content-Type"].startswith("text/event-stream")
                return [event async for event in _first_events(answer.content, count)]

        return await asyncio.wait_for(read(), timeout)


async def _first_events(stream: aiohttp.StreamReader, count: int) -> AsyncIterator[tuple[str, Any]]:
    seen = 0
    event, data = "message", ""
    while seen < count:
        line = (await stream.readline()).decode()
        if not line:
            raise AssertionError(f"the stream ended after {seen} event(s)")
        line = line.rstrip("\n")
        if line.startswith("event:"):
            event = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data += line.partition(":")[2].strip()
        elif not line and data:
            yield event, json.loads(data)
            seen += 1
            event, data = "message", ""


def answering_as(name: str, gate: asyncio.Event | None = None) -> Handler:
    """Answers with `X-Served-By: name`; paths under /wait first wait for `gate` to be set."""

    async def handler(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        if gate is not None and request.target.startswith("/wait"):
            await gate.wait()
        writer.write(response(200, name.encode(), {"X-Served-By": name}))
        return True

    return handler


StartBackend = Callable[..., Awaitable[Backend]]


async def named_backends(
    start: StartBackend, count: int, gate: asyncio.Event | None = None, first: int = 0
) -> list[Backend]:
    """Backends b<first>, b<first+1>... answering as `answering_as` does."""
    names = [f"b{index}" for index in range(first, first + count)]
    return [await start(answering_as(name, gate), name=name) for name in names]


async def served_by(port: int, path: str = "/", extra: str = "") -> str:
    """Which backend answered one request sent to the listener on `port`."""
    client = await RawClient.connect(port)
    try:
        await client.send(get(path, extra=extra))
        answer = await client.read_response()
    finally:
        await client.close()
    assert answer.status == 200, (answer.status, answer.body)
    name = answer.header("X-Served-By")
    assert name is not None, answer.headers
    return name


async def served_by_many(port: int, count: int) -> set[str]:
    """The backends that answered `count` requests, one after the other."""
    return {await served_by(port) for _ in range(count)}
