"""X-Request-ID: made when the client sent none, kept when it sent a sound one, and carried to
the backend and back in the response, including the replies the proxy writes itself."""

import asyncio
import re
from typing import Any

import pytest

from tests.conftest import StartBackend, StartProxied, StartProxy
from tests.support.backend import ReceivedRequest, response
from tests.support.client import RawClient, get
from tests.support.cluster import fetch

MADE_ID = re.compile(r"^[0-9a-f]{16}-[0-9a-f]+$")


async def echo_own_id(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
    """A backend that answers with an id of its own, as some frameworks do."""
    writer.write(response(200, b"ok", {"X-Request-ID": "backend-made-1"}))
    return True


async def test_a_request_without_an_id_gets_one_sent_both_ways(
    proxied_factory: StartProxied,
) -> None:
    proxied = await proxied_factory()
    first = await fetch(proxied.port, "/")
    second = await fetch(proxied.port, "/")
    sent = [request.header("X-Request-ID") for request in proxied.backend.requests]
    assert sent[0] is not None, sent
    assert MADE_ID.match(sent[0]), sent
    assert sent[0] != sent[1]
    assert [first.header("X-Request-ID"), second.header("X-Request-ID")] == sent


async def test_a_sound_client_id_is_kept_and_a_bad_one_replaced(
    proxied_factory: StartProxied,
) -> None:
    proxied = await proxied_factory()
    kept = await fetch(proxied.port, "/", extra="X-Request-ID: trace-7f3a.b2\r\n")
    assert proxied.backend.requests[-1].header("X-Request-ID") == "trace-7f3a.b2"
    assert kept.header("X-Request-ID") == "trace-7f3a.b2"
    assert proxied.backend.requests[-1].headers_named("X-Request-ID") == ["trace-7f3a.b2"]

    replaced = await fetch(proxied.port, "/", extra="X-Request-ID: has spaces in it\r\n")
    made = proxied.backend.requests[-1].header("X-Request-ID")
    assert made is not None
    assert MADE_ID.match(made)
    assert replaced.header("X-Request-ID") == made


@pytest.mark.parametrize("request_id", [{}, {"response": False}], ids=["echo", "no-echo"])
async def test_the_backends_own_id_reaches_the_client(
    proxied_factory: StartProxied, request_id: dict[str, Any]
) -> None:
    # Without echo too: the id is the backend's own header, not the proxy's.
    proxied = await proxied_factory(echo_own_id, request_id=request_id)
    answer = await fetch(proxied.port, "/")
    assert answer.headers_named("X-Request-ID") == ["backend-made-1"]


async def test_local_replies_carry_the_id_too(proxy_factory: StartProxy) -> None:
    proxy = await proxy_factory(
        [], routes=[{"name": "only", "match": {"host": "known.test"}, "pool": "app"}]
    )
    client = await RawClient.connect(proxy.port)
    await client.send(get("/", host="unknown.test", extra="X-Request-ID: lost-one\r\n"))
    not_found = await client.read_response()
    await client.send(get("/", host="known.test"))
    no_backend = await client.read_response()
    await client.close()
    assert (not_found.status, not_found.header("X-Request-ID")) == (404, "lost-one")
    made = no_backend.header("X-Request-ID")
    assert no_backend.status == 503
    assert made is not None
    assert MADE_ID.match(made)


async def test_a_custom_header_name_and_no_echo(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    backend = await backend_factory()
    proxy = await proxy_factory(
        [backend.url], request_id={"header": "X-Correlation-ID", "response": False}
    )
    client = await RawClient.connect(proxy.port)
    await client.send(get("/", extra="X-Correlation-ID: c-1\r\n"))
    answer = await client.read_response()
    await client.close()
    assert backend.requests[-1].header("X-Correlation-ID") == "c-1"
    assert backend.requests[-1].header("X-Request-ID") is None
    assert answer.header("X-Correlation-ID") is None


async def test_turned_off_the_clients_header_passes_untouched(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    backend = await backend_factory()
    proxy = await proxy_factory([backend.url], request_id={"enabled": False})
    client = await RawClient.connect(proxy.port)
    await client.send(get("/", extra="X-Request-ID: has spaces in it\r\n"))
    answer = await client.read_response()
    await client.send(get("/"))
    second = await client.read_response()
    await client.close()
    assert backend.requests[0].header("X-Request-ID") == "has spaces in it"
    assert backend.requests[1].header("X-Request-ID") is None
    assert answer.header("X-Request-ID") is None
    assert second.header("X-Request-ID") is None
