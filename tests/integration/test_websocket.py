"""WebSocket upgrades through the proxy: an aiohttp backend and an aiohttp client."""

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from tests.conftest import StartProxied, StartProxy
from tests.support.backend import fixed_reply, response
from tests.support.nodes import Proxy
from tests.support.ports import free_port

RECEIVE_TIMEOUT = 5.0


@dataclass
class WsBackend:
    """An aiohttp app: `/ws` echoes, `/plain` is ordinary HTTP, `/refuse` answers 400."""

    port: int = 0
    close_codes: list[int | None] = field(default_factory=list)
    upgrade_headers: list[dict[str, str]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "WsBackend":
        app = web.Application()
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/plain", self._plain)
        app.router.add_get("/refuse", self._refuse)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        self.port = free_port()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        self.upgrade_headers.append(dict(request.headers))
        ws = web.WebSocketResponse(max_msg_size=8 * 1024 * 1024)
        await ws.prepare(request)
        await ws.send_str("welcome")
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                text = message.data
                if text.startswith("push:"):
                    for index in range(int(text[5:])):
                        await ws.send_str(f"push {index}")
                elif text == "close-me":
                    await ws.close(code=4001, message=b"bye")
                else:
                    await ws.send_str(text)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        self.close_codes.append(ws.close_code)
        return ws

    async def _plain(self, request: web.Request) -> web.Response:
        return web.Response(text="plain http", headers={"X-Plain": "yes"})

    async def _refuse(self, request: web.Request) -> web.Response:
        return web.Response(status=400, text="no upgrade for you")


@pytest.fixture
async def ws_backend() -> AsyncIterator[WsBackend]:
    backend = await WsBackend().start()
    yield backend
    await backend.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def proxy(ws_backend: WsBackend, proxy_factory: StartProxy) -> Proxy:
    """A node in front of the aiohttp backend, with the default config."""
    return await proxy_factory([ws_backend.url])


async def receive(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await ws.receive(timeout=RECEIVE_TIMEOUT)


async def test_text_and_binary_messages_echo(
    ws_backend: WsBackend, proxy: Proxy, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(f"{proxy.url}/ws", autoclose=False) as ws:
        switched_with_id = ws._response.headers.get("X-Request-ID")
        assert (await receive(ws)).data == "welcome"
        for text in ("hello", "ünïcödé ✓", "x" * 70_000):
            await ws.send_str(text)
            message = await receive(ws)
            assert message.type == aiohttp.WSMsgType.TEXT
            assert message.data == text
        for payload in (b"\x00\x01\x02", os.urandom(126), os.urandom(65_536)):
            await ws.send_bytes(payload)
            message = await receive(ws)
            assert message.type == aiohttp.WSMsgType.BINARY
            assert message.data == payload
        await ws.close()
    headers = ws_backend.upgrade_headers[0]
    assert headers["Upgrade"].lower() == "websocket"
    assert "upgrade" in headers["Connection"].lower()
    assert "Sec-WebSocket-Key" in headers
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert switched_with_id is not None
    assert switched_with_id == headers["X-Request-ID"]  # the 101 carries the request id too


async def test_one_megabyte_binary_message(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    payload = os.urandom(1024 * 1024)
    async with session.ws_connect(f"{proxy.url}/ws", max_msg_size=8 * 1024 * 1024) as ws:
        assert (await receive(ws)).data == "welcome"
        await ws.send_bytes(payload)
        message = await receive(ws)
        assert message.type == aiohttp.WSMsgType.BINARY
        assert len(message.data) == len(payload)
        assert message.data == payload


async def test_server_initiated_messages(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async with session.ws_connect(f"{proxy.url}/ws") as ws:
        assert (await receive(ws)).data == "welcome"  # sent before the client said anything
        await ws.send_str("push:20")
        received = [(await receive(ws)).data for _ in range(20)]
        assert received == [f"push {index}" for index in range(20)]


async def test_client_close_handshake(
    ws_backend: WsBackend, proxy: Proxy, session: aiohttp.ClientSession
) -> None:
    ws = await session.ws_connect(f"{proxy.url}/ws")
    assert (await receive(ws)).data == "welcome"
    assert await asyncio.wait_for(ws.close(code=1000, message=b"done"), RECEIVE_TIMEOUT)
    assert ws.closed
    assert ws.close_code == 1000
    for _ in range(50):
        if ws_backend.close_codes:
            break
        await asyncio.sleep(0.02)
    assert ws_backend.close_codes == [1000]


async def test_server_close_handshake(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async with session.ws_connect(f"{proxy.url}/ws") as ws:
        assert (await receive(ws)).data == "welcome"
        await ws.send_str("close-me")
        message = await receive(ws)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert message.data == 4001
        assert message.extra == "bye"
        closed = await receive(ws)
        assert closed.type == aiohttp.WSMsgType.CLOSED
        assert ws.close_code == 4001


async def test_plain_http_alongside_a_websocket(
    proxy: Proxy, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(f"{proxy.url}/ws") as ws:
        assert (await receive(ws)).data == "welcome"
        async with aiohttp.ClientSession() as other:
            for _ in range(3):
                async with other.get(f"{proxy.url}/plain") as plain:
                    assert plain.status == 200
                    assert await plain.text() == "plain http"
                    assert plain.headers["X-Plain"] == "yes"
        await ws.send_str("still here")
        assert (await receive(ws)).data == "still here"


async def test_two_websockets_at_once(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async with (
        session.ws_connect(f"{proxy.url}/ws") as one,
        session.ws_connect(f"{proxy.url}/ws") as two,
    ):
        assert (await receive(one)).data == "welcome"
        assert (await receive(two)).data == "welcome"
        await one.send_str("to one")
        await two.send_str("to two")
        assert (await receive(two)).data == "to two"
        assert (await receive(one)).data == "to one"


async def test_tunnel_idle_timeout_closes_an_idle_websocket(
    ws_backend: WsBackend, proxy_factory: StartProxy, session: aiohttp.ClientSession
) -> None:
    proxy = await proxy_factory([ws_backend.url], listener={"timeouts": {"tunnel_idle": "500ms"}})
    loop = asyncio.get_running_loop()
    async with session.ws_connect(f"{proxy.url}/ws", autoping=False) as ws:
        assert (await receive(ws)).data == "welcome"
        # Traffic keeps the tunnel alive past the idle limit.
        for _ in range(4):
            await asyncio.sleep(0.2)
            await ws.send_str("tick")
            assert (await receive(ws)).data == "tick"
        idle_since = loop.time()
        message = await receive(ws)
        waited = loop.time() - idle_since
        assert message.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        )
        assert 0.4 <= waited < 2.0
    value = proxy.node.metrics.registry.get_sample_value(
        "loadweaver_timeouts_total", {"kind": "tunnel_idle"}
    )
    assert value == 1.0


async def test_websocket_over_a_tls_listener(
    tmp_path: Path, ws_backend: WsBackend, proxy_factory: StartProxy, session: aiohttp.ClientSession
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("ws.test")
    cert_file, key_file = tmp_path / "ws.pem", tmp_path / "ws.key"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    proxy = await proxy_factory(
        [ws_backend.url],
        listener={
            "tls": {"certificates": [{"cert_file": str(cert_file), "key_file": str(key_file)}]}
        },
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False  # the URL uses the IP address; the CA check still applies
    url = f"wss://127.0.0.1:{proxy.port}/ws"
    async with session.ws_connect(url, ssl=context) as ws:
        assert (await receive(ws)).data == "welcome"
        payload = os.urandom(300_000)
        await ws.send_bytes(payload)
        assert (await receive(ws)).data == payload
        await ws.send_str("over tls")
        assert (await receive(ws)).data == "over tls"
    assert ws_backend.upgrade_headers[0]["X-Forwarded-Proto"] == "https"


async def test_client_vanishing_closes_the_backend_side(
    ws_backend: WsBackend, proxy: Proxy
) -> None:
    client = await proxy.connect()
    await client.send(UPGRADE_REQUEST % b"/ws")
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), RECEIVE_TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101 ")
    client.writer.transport.abort()
    for _ in range(100):
        if ws_backend.close_codes:
            break
        await asyncio.sleep(0.02)
    assert len(ws_backend.close_codes) == 1


async def test_refused_upgrade_is_relayed_as_a_normal_response(
    proxy: Proxy, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await session.ws_connect(f"{proxy.url}/refuse")
    assert caught.value.status == 400


UPGRADE_REQUEST = (
    b"GET %s HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        (b"/plain", 200, b"plain http"),
        (b"/refuse", 400, b"no upgrade for you"),
    ],
)
async def test_refused_upgrade_raw(proxy: Proxy, path: bytes, status: int, body: bytes) -> None:
    client = await proxy.connect()
    await client.send(UPGRADE_REQUEST % path)
    reply = await client.read_response()
    assert reply.status == status
    assert reply.body == body
    assert reply.header("Upgrade") is None
    # Either the connection stays usable, or the proxy said it would close it.
    if (reply.header("Connection") or "").lower() == "close":
        assert await client.is_closed()
    else:
        await client.send(b"GET /plain HTTP/1.1\r\nHost: example.test\r\n\r\n")
        assert (await client.read_response()).status == 200
    await client.close()


async def test_refused_upgrade_from_a_raw_backend(proxied_factory: StartProxied) -> None:
    proxied = await proxied_factory(
        fixed_reply(response(200, b"not switching", {"X-Handled": "plain"}))
    )
    client = await proxied.connect()
    await client.send(UPGRADE_REQUEST % b"/chat")
    reply = await client.read_response()
    assert reply.status == 200
    assert reply.body == b"not switching"
    assert reply.header("X-Handled") == "plain"
    assert proxied.backend.requests[0].header("Upgrade") == "websocket"
    await client.close()
