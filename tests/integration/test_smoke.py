"""The basic promise: a request goes through to a backend and the answer comes back."""

from tests.conftest import StartBackend, StartNode
from tests.support.client import RawClient, get
from tests.support.nodes import listener_port, node_config


async def test_get_is_proxied_to_the_backend(
    backend_factory: StartBackend, node_factory: StartNode
) -> None:
    backend = await backend_factory()
    config = node_config([backend.url])
    await node_factory(config)
    client = await RawClient.connect(listener_port(config))
    await client.send(get("/hello?x=1"))
    response = await client.read_response()
    assert response.status == 200
    assert response.body.startswith(b"GET /hello?x=1 len=0")
    await client.close()
