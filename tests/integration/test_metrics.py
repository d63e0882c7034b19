"""`/metrics` after known traffic: every request is counted once, on the right labels.

Real loopback backends and a real node; the numbers are read from the node's own registry, and
once from `GET /metrics` to check the exposition a scraper sees.
"""

import asyncio
import socket
import struct
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from loadweaver.node import Node
from tests.conftest import StartBackend, StartProxy
from tests.support.admin import AdminClient
from tests.support.backend import ReceivedRequest, response
from tests.support.client import RawClient, get
from tests.support.cluster import wait_until
from tests.support.nodes import NodeProcess, admin_port, node_config
from tests.support.polling import eventually
from tests.support.ports import closed_port
from tests.support.upstream import metric

REQUESTS = 50


async def requests_on_one_connection(port: int, paths: list[str]) -> list[int]:
    client = await RawClient.connect(port)
    try:
        statuses = []
        for path in paths:
            await client.send(get(path))
            statuses.append((await client.read_response()).status)
        return statuses
    finally:
        await client.close()


async def status_from_path(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
    """`/status/503` answers 503; anything else 200."""
    status = int(request.target.rsplit("/", 1)[1]) if request.target.startswith("/status/") else 200
    writer.write(response(status, b"ok"))
    return True


def requests_total(node: Node, **labels: str) -> float:
    return metric(node, "loadweaver_requests_total", labels)


async def test_fifty_requests_add_fifty_on_their_labels(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    backend = await backend_factory(status_from_path, name="b0")
    proxy = await proxy_factory([backend.url], pool={"retries": {"attempts": 0}})
    node = proxy.node
    labels = {"listener": "web", "route": "default", "pool": "app", "backend": "b0"}

    statuses = await requests_on_one_connection(proxy.port, ["/"] * REQUESTS)
    assert statuses == [200] * REQUESTS
    assert requests_total(node, **labels, code="2xx") == REQUESTS
    assert metric(node, "loadweaver_request_duration_seconds_count", {"route": "default"}) == 50
    assert metric(node, "loadweaver_requests_received_total") == REQUESTS
    assert metric(node, "loadweaver_responses_total", {"code": "2xx"}) == REQUESTS

    await requests_on_one_connection(proxy.port, ["/status/503"] * 7 + ["/status/404"] * 3)
    assert requests_total(node, **labels, code="5xx") == 7
    assert requests_total(node, **labels, code="4xx") == 3
    assert requests_total(node, **labels, code="2xx") == REQUESTS
    assert metric(node, "loadweaver_request_duration_seconds_count") == REQUESTS + 10
    assert metric(node, "loadweaver_connections_total", {"listener": "web"}) == 2


async def test_local_replies_are_counted_with_what_is_known_of_them(
    proxy_factory: StartProxy,
) -> None:
    proxy = await proxy_factory(
        [f"http://127.0.0.1:{closed_port()}"],
        routes=[
            {"name": "app-only", "match": {"host": "app.test"}, "pool": "app"},
        ],
    )
    client = await RawClient.connect(proxy.port)
    await client.send(get("/", host="other.test"))
    assert (await client.read_response()).status == 404
    await client.send(get("/", host="app.test"))
    assert (await client.read_response()).status == 502
    await client.close()

    node = proxy.node
    unrouted = {"listener": "web", "route": "", "pool": "", "backend": ""}
    assert requests_total(node, **unrouted, code="4xx") == 1
    refused = {"route": "app-only", "pool": "app", "backend": "b0", "code": "5xx"}
    assert requests_total(node, **refused) == 1
    errors = {"pool": "app", "backend": "b0", "kind": "connect"}
    assert metric(node, "loadweaver_upstream_errors_total", errors) == 1


async def test_backend_and_pool_gauges_follow_the_live_pool(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    fast, slow = await backend_factory(name="fast"), await backend_factory(name="slow")
    proxy = await proxy_factory(
        [fast.url, slow.url],
        pool={"backends": [
            {"name": "b0", "url": fast.url, "weight": 3},
            {"name": "b1", "url": slow.url, "weight": 5, "state": "draining"},
        ]},
    )  # fmt: skip
    node = proxy.node
    await requests_on_one_connection(proxy.port, ["/"] * 5)

    assert metric(node, "loadweaver_backend_up", {"backend": "b0"}) == 1
    assert metric(node, "loadweaver_backend_weight", {"backend": "b0"}) == 3
    assert metric(node, "loadweaver_backend_weight", {"backend": "b1"}) == 0  # draining
    assert metric(node, "loadweaver_backend_in_flight", {"backend": "b0"}) == 0
    idle = {"pool": "app", "backend": "b0", "state": "idle"}
    assert metric(node, "loadweaver_pool_connections", idle) == 1
    assert metric(node, "loadweaver_pool_connections", {**idle, "state": "active"}) == 0
    connects = {"pool": "app", "backend": "b0"}
    assert metric(node, "loadweaver_upstream_connect_duration_seconds_count", connects) == 1

    await eventually(
        lambda: metric(node, "loadweaver_connections_active", {"listener": "web"}) == 0,
        message="the closed connection was still counted",
    )
    client = await RawClient.connect(proxy.port)
    await eventually(
        lambda: metric(node, "loadweaver_connections_active", {"listener": "web"}) == 1,
        message="the open connection was not counted",
    )
    await client.close()


async def test_slow_start_shows_the_ramped_weight(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    backend = await backend_factory()
    proxy = await proxy_factory(
        [],
        pool={"backends": [{"name": "b0", "url": backend.url, "weight": 100, "slow_start": "60s"}]},
    )
    weight = metric(proxy.node, "loadweaver_backend_weight", {"backend": "b0"})
    assert 10 <= weight < 20  # from 10% of its weight, a few seconds into a minute's ramp


async def test_health_checks_and_flaps_are_counted(proxy_factory: StartProxy) -> None:
    proxy = await proxy_factory(
        [f"http://127.0.0.1:{closed_port()}"],
        pool={"health": {"type": "tcp", "interval": "100ms", "timeout": "50ms", "fall": 1}},
    )
    node = proxy.node
    await eventually(
        lambda: metric(node, "loadweaver_backend_up", {"backend": "b0"}) == 0,
        message="the unreachable backend was not marked down",
    )
    failures = {"pool": "app", "result": "failure"}
    assert metric(node, "loadweaver_health_checks_total", failures) >= 1
    assert metric(node, "loadweaver_backend_flaps_total", {"backend": "b0"}) == 1


async def test_per_request_series_can_be_turned_off(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    backend = await backend_factory()
    proxy = await proxy_factory([backend.url], metrics={"enabled": False})
    await requests_on_one_connection(proxy.port, ["/"] * 3)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{admin_port(proxy.config)}/metrics") as answer,
    ):
        text = await answer.text()
    assert "loadweaver_requests_total" not in text
    assert "loadweaver_request_duration_seconds" not in text
    assert 'loadweaver_responses_total{code="2xx"} 3.0' in text  # the node-wide totals stay
    assert 'loadweaver_backend_up{backend="b0",pool="app"} 1.0' in text


async def test_the_exposition_carries_node_and_build_info(proxy_factory: StartProxy) -> None:
    proxy = await proxy_factory([])
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{admin_port(proxy.config)}/metrics") as answer,
    ):
        text = await answer.text()
    node_id = proxy.node.config.node.id
    assert f'loadweaver_node_info{{cluster="default",node="{node_id}",store="memory"}} 1.0' in text
    assert "loadweaver_build_info{" in text
    assert "process_resident_memory_bytes" in text
    for family in ("loadweaver_cluster_leader", "loadweaver_cluster_store_up"):
        assert f"\n{family} 1.0" in text


async def test_with_workers_one_scrape_has_every_workers_numbers(
    backend_factory: StartBackend, tmp_path: Path
) -> None:
    backend = await backend_factory()
    config = node_config([backend.url])
    node = NodeProcess(config, tmp_path, "--workers", "2")
    try:
        await node.wait_ready()
        for _ in range(REQUESTS):  # fresh connections: SO_REUSEPORT spreads them over both
            await requests_on_one_connection(node.port, ["/"])
        url = f"http://127.0.0.1:{admin_port(config)}/metrics"

        async def counted() -> dict[str, float] | None:
            async with aiohttp.ClientSession() as session, session.get(url) as answer:
                text = await answer.text()
            by_worker = {
                sample.labels["worker"]: sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "loadweaver_requests_total"
            }
            return by_worker if sum(by_worker.values()) == REQUESTS else None

        by_worker = await wait_until(counted, 5.0, "the workers' requests did not add up")
        assert set(by_worker) == {"0", "1"}, by_worker
    finally:
        node.kill()


async def slow_or_cut(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
    """/slow answers after a while; /cut sends half a response and closes."""
    if request.target == "/slow":
        await asyncio.sleep(1.0)
    if request.target == "/cut":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it")
        return False
    writer.write(response(200, b"ok"))
    return True


def reset(client: RawClient) -> None:
    """Closes with a reset, as a client that vanished does."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


async def test_requests_cut_short_are_counted_once(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    backend = await backend_factory(slow_or_cut, name="b0")
    proxy = await proxy_factory([backend.url], pool={"retries": {"attempts": 0}})
    node = proxy.node
    labels = {"route": "default", "backend": "b0"}

    client = await RawClient.connect(proxy.port)
    await client.send(get("/slow"))
    await eventually(lambda: len(backend.requests) == 1, message="the request never arrived")
    reset(client)  # gone before the answer (a FIN would still be answered: a half-close)
    await eventually(
        lambda: requests_total(node, **labels, code="4xx") == 1,
        message="a client that left was not counted",
    )

    client = await RawClient.connect(proxy.port)
    await client.send(get("/cut"))
    await eventually(lambda: len(backend.requests) == 2, message="the second request never arrived")
    await eventually(
        lambda: requests_total(node, **labels, code="2xx") == 1,
        message="a response cut short was not counted",
    )
    await client.close()
    assert metric(node, "loadweaver_upstream_errors_total", {"kind": "reset"}) == 1
    assert metric(node, "loadweaver_requests_total") == 2


def series_naming(node: Node, backend: str) -> list[str]:
    return [
        sample.name
        for family in node.metrics.registry.collect()
        for sample in family.samples
        if sample.labels.get("backend") == backend
    ]


async def test_a_removed_backend_takes_its_series_with_it(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    serving = await backend_factory(name="b0")
    proxy = await proxy_factory(
        [serving.url, f"http://127.0.0.1:{closed_port()}"],
        pool={"retries": {"attempts": 0}, "passive": {"consecutive_failures": 100}},
    )
    node = proxy.node
    statuses = [(await requests_on_one_connection(proxy.port, ["/"]))[0] for _ in range(10)]
    assert sorted(statuses) == [200] * 5 + [502] * 5  # a 502 closes its connection
    assert metric(node, "loadweaver_upstream_errors_total", {"backend": "b1"}) == 5
    assert "loadweaver_requests_total" in series_naming(node, "b1")

    async with aiohttp.ClientSession() as session:
        api = AdminClient(session, admin_port(proxy.config))
        removed = await api.call("DELETE", "/api/v1/pools/app/backends/b1")
        assert removed.status == 204, removed.text
        assert series_naming(node, "b1") == []
        assert requests_total(node, backend="b0", code="2xx") == 5

        added = await api.call(
            "POST", "/api/v1/pools/app/backends", {"name": "b1", "url": serving.url}
        )
        assert added.status == 201, added.text
    await requests_on_one_connection(proxy.port, ["/"] * 4)
    # Back under the same name, it starts from nothing: Prometheus' rate() sees a reset.
    assert requests_total(node, backend="b1", code="2xx") == 2
    assert metric(node, "loadweaver_upstream_errors_total", {"backend": "b1"}) == 0
