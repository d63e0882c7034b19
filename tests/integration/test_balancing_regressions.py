"""Regressions found in review of the balancing work: each proved first, then fixed."""

import asyncio

from loadweaver.config.loader import build_config
from tests.conftest import StartBackend, StartNode, StartProxy
from tests.integration.test_sticky import sticky_proxy
from tests.support.backend import ReceivedRequest, response
from tests.support.client import RawClient, get
from tests.support.nodes import listener_port, node_config
from tests.support.ports import free_port

# A cookie that looks signed but carries bytes no signature has: it must count as no cookie.
MALFORMED_COOKIES = [
    "lw=YjA.9999999999.\xe9\xe9",  # a non-ASCII signature
    "lw=YjA.\u00b2\u00b2.c2ln",  # Unicode digits that int() refuses
    "lw=YjA." + "9" * 5000 + ".c2ln",  # an expiry int() refuses to parse
]


async def test_malformed_cookies_are_no_cookie_alone_and_pipelined(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    proxy, _ = await sticky_proxy(backend_factory, proxy_factory)
    for cookie in MALFORMED_COOKIES:
        extra = f"Cookie: {cookie}\r\n".encode("latin-1", "replace").decode("latin-1")
        client = await proxy.connect()
        await client.send(get("/") + get("/", extra=extra).decode().encode("latin-1", "replace"))
        first = await client.read_response(timeout=3)
        second = await client.read_response(timeout=3)
        assert (first.status, second.status) == (200, 200)
        assert second.header("Set-Cookie") is not None  # re-pinned, as with no cookie
        await client.close()


async def test_a_change_racing_a_reload_keeps_the_new_backends_pool_open(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    first, second = await backend_factory(name="b0"), await backend_factory(name="b1")
    config = node_config([first.url])
    node = await node_factory(config)
    with_listener = {
        **config,
        "listeners": [*config["listeners"], {"name": "web2", "bind": f"127.0.0.1:{free_port()}"}],
    }
    reload = asyncio.create_task(node.apply(build_config(with_listener, "reload")))
    await asyncio.sleep(0)  # the reload now waits for its new listener
    await node.editor.add_backend("app", {"name": "b1", "url": second.url})
    await reload
    statuses = []
    for _ in range(4):
        client = await RawClient.connect(listener_port(config))
        await client.send(get("/"))
        statuses.append((await client.read_response()).status)
        await client.close()
    assert statuses == [200, 200, 200, 200]


async def test_a_pipelined_request_picks_from_the_pool_as_it_is_when_it_starts(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    gate = asyncio.Event()

    async def slow(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        await gate.wait()
        writer.write(response(200, b"slow"))
        return True

    old = await backend_factory(slow, name="b0")
    new = await backend_factory(name="b1")
    config = node_config([old.url])
    node = await node_factory(config)
    client = await RawClient.connect(listener_port(config))
    await client.send(get("/one") + get("/two"))
    await asyncio.sleep(0.2)
    await node.editor.add_backend("app", {"name": "b1", "url": new.url})
    await node.editor.remove_backend("app", "b0")
    gate.set()
    first, second = await client.read_response(), await client.read_response()
    assert (first.status, second.status) == (200, 200)
    assert [request.target for request in new.requests] == ["/two"]
    await client.close()
