"""Changing backends at runtime through the internal editor API while traffic flows: adding,
removing, re-weighting and draining drop no request; a removed backend's in-flight requests
finish and its pooled connections close; refused changes leave the running config alone."""

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field

import pytest

from loadweaver.control.editor import EditError
from tests.conftest import StartBackend, StartProxy
from tests.support.backend import Backend, ReceivedRequest, response
from tests.support.client import RawResponse, get
from tests.support.nodes import Proxy
from tests.support.polling import eventually

LOAD_SECONDS = 2.0
LOAD_CLIENTS = 8
MAX_REQUESTS_PER_CLIENT = 1500


@dataclass
class Served:
    """A backend handler naming its backend in `X-Served-By` and noting when each request came.

    Paths starting with /slow take `slow` seconds, /hold `hold` seconds; others answer at once.
    """

    name: str
    slow: float = 0.5
    hold: float = 0.05
    arrivals: list[float] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)

    async def __call__(self, request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        self.arrivals.append(time.monotonic())
        self.targets.append(request.target)
        if request.target.startswith("/slow"):
            await asyncio.sleep(self.slow)
        elif request.target.startswith("/hold"):
            await asyncio.sleep(self.hold)
        writer.write(response(200, self.name.encode(), {"X-Served-By": self.name}))
        return True

    def arrived_between(self, start: float, end: float = float("inf")) -> int:
        return sum(start <= moment < end for moment in self.arrivals)


async def served_backends(
    backend_factory: StartBackend, count: int
) -> tuple[list[Backend], list[Served]]:
    handlers = [Served(f"b{index}") for index in range(count)]
    backends = [await backend_factory(handler, name=handler.name) for handler in handlers]
    return backends, handlers


async def fetch(proxy: Proxy, path: str = "/") -> RawResponse:
    client = await proxy.connect()
    try:
        await client.send(get(path))
        return await client.read_response()
    finally:
        await client.close()


def served_by(result: RawResponse) -> str:
    assert result.status == 200, (result.status, result.body)
    name = result.header("X-Served-By")
    assert name is not None
    return name


def in_flight(proxy: Proxy) -> dict[str, int]:
    """Requests the node counts as in flight, per backend of the running snapshot."""
    backends = proxy.node.holder.current.pools["app"].backends
    return {backend.name: backend.load.in_flight for backend in backends}


async def keep_alive_client(proxy: Proxy, until: float, statuses: Counter[int]) -> None:
    """Sequential requests on one keep-alive connection until `until` (bounded in count too)."""
    client = await proxy.connect()
    try:
        for index in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() >= until:
                break
            await client.send(get(f"/load/{index}"))
            result = await client.read_response()
            statuses[result.status] += 1
            if (result.header("Connection") or "").lower() == "close":
                await client.close()
                client = await proxy.connect()
    finally:
        await client.close()


# ---- changes under load ----


async def test_add_reweight_drain_and_remove_under_load_fail_no_request(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    backends, handlers = await served_backends(backend_factory, 4)
    b0, b1, b2, b3 = handlers
    proxy = await proxy_factory([backend.url for backend in backends[:3]])
    editor = proxy.node.editor
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    load = asyncio.gather(
        *(keep_alive_client(proxy, started + LOAD_SECONDS, statuses) for _ in range(LOAD_CLIENTS))
    )
    await asyncio.sleep(0.3)
    await editor.add_backend("app", {"name": "b3", "url": backends[3].url, "weight": 1})
    added = time.monotonic()
    await asyncio.sleep(0.3)
    await editor.set_weight("app", "b0", 3)
    reweighted = time.monotonic()
    await asyncio.sleep(0.3)
    await editor.drain("app", "b1")
    drained = time.monotonic()
    await asyncio.sleep(0.3)
    await editor.remove_backend("app", "b2")
    removed = time.monotonic()
    await load

    assert set(statuses) == {200}, f"failed requests: {statuses}"
    assert statuses[200] > 200, f"too little load to prove anything: {statuses}"
    settle = 0.05  # a request picked just before a change may still be on its way
    assert b3.arrived_between(added + settle) > 0, "the added backend got no traffic"
    after_reweight = (reweighted + settle, drained)
    assert b0.arrived_between(*after_reweight) >= 2 * b3.arrived_between(*after_reweight)
    assert b1.arrived_between(drained + settle) == 0, "the drained backend got new requests"
    assert b2.arrived_between(removed + settle) == 0, "the removed backend got new requests"
    assert in_flight(proxy) == {"b0": 0, "b1": 0, "b3": 0}
    await eventually(
        lambda: backends[2].open_connections == 0,
        message=f"{backends[2].open_connections} connection(s) to the removed backend left open",
    )


async def test_a_removed_backend_finishes_in_flight_requests_and_closes_idle_connections(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    backends, handlers = await served_backends(backend_factory, 2)
    removed, _ = backends
    proxy = await proxy_factory([backend.url for backend in backends])
    # Overlapping requests leave more than one pooled connection to each backend.
    await asyncio.gather(*(fetch(proxy, "/hold") for _ in range(4)))
    assert removed.open_connections >= 2
    slow = [asyncio.ensure_future(fetch(proxy, f"/slow/{index}")) for index in range(2)]
    await eventually(
        lambda: any(target.startswith("/slow") for target in handlers[0].targets),
        message="no slow request reached b0",
    )
    leaving = proxy.node.holder.current.pools["app"].backends[0]
    assert leaving.name == "b0"
    await proxy.node.editor.remove_backend("app", "b0")

    await eventually(
        lambda: removed.open_connections == 1,
        message=f"idle connections not closed: {removed.open_connections} open",
    )
    for _ in range(5):
        assert served_by(await fetch(proxy)) == "b1"
    results = await asyncio.gather(*slow)
    assert sorted(served_by(result) for result in results) == ["b0", "b1"]
    assert leaving.load.in_flight == 0
    assert in_flight(proxy) == {"b1": 0}
    await eventually(
        lambda: removed.open_connections == 0,
        message="the connection of the finished request stayed open",
    )


# ---- refused changes ----


async def assert_refused(
    proxy: Proxy, status: int, change: Awaitable[object], text: str = ""
) -> None:
    """`change` (an awaitable editor call) raises EditError(status); nothing changed."""
    node = proxy.node
    config, version = node.config, node.holder.current.version
    with pytest.raises(EditError) as caught:
        await change
    assert caught.value.status == status, caught.value.message
    assert text in str(caught.value)
    assert node.config is config
    assert node.holder.current.version == version


async def test_refused_changes_leave_the_running_config_unchanged(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    backends, _ = await served_backends(backend_factory, 2)
    proxy = await proxy_factory([backend.url for backend in backends])
    editor = proxy.node.editor
    new = {"name": "b2", "url": "http://127.0.0.1:9", "weight": 1}

    await assert_refused(proxy, 404, editor.add_backend("nope", new), "nope")
    await assert_refused(proxy, 404, editor.remove_backend("nope", "b0"), "nope")
    await assert_refused(proxy, 404, editor.remove_backend("app", "b9"), "b9")
    await assert_refused(proxy, 404, editor.set_weight("app", "b9", 2), "b9")
    await assert_refused(proxy, 404, editor.drain("app", "b9"), "b9")
    await assert_refused(proxy, 409, editor.add_backend("app", {**new, "name": "b1"}), "b1")
    await assert_refused(
        proxy, 422, editor.add_backend("app", {**new, "weight": 999}), "pools.app.backends.2.weight"
    )
    await assert_refused(
        proxy, 422, editor.set_weight("app", "b0", 999), "pools.app.backends.0.weight"
    )
    await assert_refused(proxy, 422, editor.set_weight("app", "b0", -1), "pools.app.backends.0")
    await assert_refused(
        proxy,
        422,
        editor.update_backend("app", "b1", state="paused"),
        "pools.app.backends.1.state",
    )
    await assert_refused(
        proxy, 422, editor.add_backend("app", {**new, "url": "ftp://x"}), "pools.app.backends.2"
    )
    await assert_refused(
        proxy, 422, editor.add_backend("app", {**new, "name": "bad name!"}), "backends.2.name"
    )

    seen = {served_by(await fetch(proxy)) for _ in range(6)}
    assert seen == {"b0", "b1"}


async def test_successful_changes_return_the_new_snapshot(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    backends, _ = await served_backends(backend_factory, 3)
    proxy = await proxy_factory([backend.url for backend in backends[:2]])
    editor = proxy.node.editor
    before = proxy.node.holder.current.version
    snapshot = await editor.add_backend("app", {"name": "b2", "url": backends[2].url})
    assert proxy.node.holder.current is snapshot
    assert snapshot.version > before
    assert [backend.name for backend in snapshot.pools["app"].backends] == ["b0", "b1", "b2"]
    snapshot = await editor.update_backend("app", "b1", weight=7, state="draining")
    b1 = snapshot.pools["app"].backends[1]
    assert (b1.weight, b1.state) == (7, "draining")
    assert proxy.node.config.pools["app"].backends[1].weight == 7
    snapshot = await editor.remove_backend("app", "b0")
    assert [backend.name for backend in snapshot.pools["app"].backends] == ["b1", "b2"]


# ---- slow start ----


async def test_a_backend_added_with_slow_start_ramps_up(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    backends, _ = await served_backends(backend_factory, 2)
    proxy = await proxy_factory([backends[0].url])
    warm = await proxy.connect()
    for _ in range(3):
        await warm.send(get("/"))
        assert served_by(await warm.read_response()) == "b0"
    await proxy.node.editor.add_backend(
        "app", {"name": "b1", "url": backends[1].url, "weight": 1, "slow_start": "3s"}
    )
    seen: Counter[str] = Counter()
    until = time.monotonic() + 0.8
    for _ in range(400):
        if time.monotonic() >= until:
            break
        await warm.send(get("/"))
        seen[served_by(await warm.read_response())] += 1
    await warm.close()
    share = seen["b1"] / sum(seen.values())
    assert seen["b1"] > 0, f"a ramping backend still gets some traffic: {seen}"
    assert share < 0.35, f"b1 took {share:.0%} in its first second of a 3 s slow start: {seen}"
