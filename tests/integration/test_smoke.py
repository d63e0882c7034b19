"""The basic promise: a request goes through to a backend and the answer comes back."""

from tests.support.client import get
from tests.support.nodes import Proxied


async def test_get_is_proxied_to_the_backend(proxied: Proxied) -> None:
    client = await proxied.connect()
    await client.send(get("/hello?x=1"))
    response = await client.read_response()
    assert response.status == 200
    assert response.body.startswith(b"GET /hello?x=1 len=0")
    await client.close()
