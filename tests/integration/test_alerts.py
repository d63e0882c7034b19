"""Alert rules against real traffic, real backends and a real webhook receiver on loopback:
alerts fire once, resolve once, survive a refused POST, and in a cluster only the leader tells,
and the next leader resolves what the last one fired."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartBackend, StartProxied, StartProxy
from tests.support.backend import ReceivedRequest, response
from tests.support.client import RawClient, get
from tests.support.cluster import MakeCluster, wait_until
from tests.support.cluster import cluster_factory as cluster_factory_fixture  # noqa: F401
from tests.support.redis_server import RedisServer, StartRedis
from tests.support.upstream import metric
from tests.support.webhook import WebhookReceiver

FAST_ALERTS = {"interval": "100ms"}
SETTLE = 5.0  # seconds: a generous bound for what should take a few intervals
HEALTH = {"path": "/healthz", "interval": "100ms", "timeout": "80ms", "rise": 1, "fall": 1}

pytestmark = pytest.mark.usefixtures("quiet_node_logs")


@dataclass
class Switchable:
    """A backend whose answers (and health) the test flips."""

    status: int = 200
    health: int = 200

    async def __call__(self, request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        status = self.health if request.target == "/healthz" else self.status
        writer.write(response(status, b"x"))
        return True


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hook = await WebhookReceiver().start()
    yield hook
    await hook.stop()


def alerts(receiver: WebhookReceiver, *rules: dict[str, Any]) -> dict[str, Any]:
    return {
        **FAST_ALERTS,
        "webhooks": [{"name": "hook", "url": receiver.url, "timeout": "1s"}],
        "rules": list(rules),
    }


async def send(port: int, count: int) -> None:
    client = await RawClient.connect(port)
    try:
        for _ in range(count):
            await client.send(get("/"))
            await client.read_response()
    finally:
        await client.close()


async def test_an_error_ratio_alert_fires_and_resolves_once(
    backend_factory: StartBackend, proxy_factory: StartProxy, receiver: WebhookReceiver
) -> None:
    script = Switchable(status=500)
    backend = await backend_factory(script)
    rule = {"name": "errors", "metric": "error_ratio", "above": "20%", "window": "1s"}
    proxy = await proxy_factory(
        [backend.url], pool={"retries": {"attempts": 0}}, alerts=alerts(receiver, rule)
    )
    node = proxy.node
    await send(proxy.port, 20)
    await wait_until(lambda: receiver.statuses() == ["firing"], SETTLE, "no firing alert")
    assert metric(node, "loadweaver_alerts_firing", {"alertname": "errors"}) == 1

    script.status = 200
    await send(proxy.port, 20)
    await wait_until(lambda: len(receiver.bodies) == 2, SETTLE, "the alert did not resolve")
    await asyncio.sleep(0.3)  # three more evaluations: nothing more may be told
    assert receiver.statuses() == ["firing", "resolved"]
    firing, resolved = (body["alerts"][0] for body in receiver.bodies)
    assert firing["labels"] == {"alertname": "errors", "cluster": "default", "severity": "warning"}
    assert "error_ratio is 100.00%" in firing["annotations"]["summary"]
    assert firing["fingerprint"] == resolved["fingerprint"]
    assert firing["endsAt"] == "0001-01-01T00:00:00Z" != resolved["endsAt"]
    assert receiver.bodies[0]["version"] == "4"
    assert receiver.bodies[0]["receiver"] == "hook"
    assert metric(node, "loadweaver_alerts_firing") == 0
    sent = {"webhook": "hook", "result": "sent"}
    assert metric(node, "loadweaver_alert_notifications_total", sent) == 2


async def test_a_backend_down_alert_names_the_backend(
    backend_factory: StartBackend, proxy_factory: StartProxy, receiver: WebhookReceiver
) -> None:
    healthy, failing = Switchable(), Switchable(health=503)
    backends = [await backend_factory(healthy), await backend_factory(failing)]
    proxy = await proxy_factory(
        [backend.url for backend in backends],
        pool={"health": HEALTH},
        alerts=alerts(receiver, {"name": "down", "metric": "backend_down", "severity": "critical"}),
    )
    await wait_until(lambda: receiver.statuses() == ["firing"], SETTLE, "no firing alert")
    labels = receiver.bodies[0]["alerts"][0]["labels"]
    assert (labels["pool"], labels["backend"], labels["severity"]) == ("app", "b1", "critical")
    failing.health = 200
    await wait_until(
        lambda: receiver.statuses() == ["firing", "resolved"], SETTLE, "no resolve after recovery"
    )
    assert proxy.node.observing.alerts.active() == []


async def test_a_refused_notification_is_sent_again(
    backend_factory: StartBackend, proxy_factory: StartProxy
) -> None:
    receiver = await WebhookReceiver(refuse=1).start()
    try:
        backend = await backend_factory()
        rule = {"name": "busy", "metric": "connections_active", "above": -1, "scope": "node"}
        proxy = await proxy_factory([backend.url], alerts=alerts(receiver, rule))
        await wait_until(lambda: receiver.statuses() == ["firing"], SETTLE, "never delivered")
        assert receiver.attempts == 2
        labels = receiver.bodies[0]["alerts"][0]["labels"]
        assert labels["node"] == proxy.node.config.node.id  # node rules say whose they are
    finally:
        await receiver.stop()


async def test_in_a_cluster_only_the_leader_tells_and_the_next_one_resolves(
    cluster_factory: MakeCluster,
    fresh_redis: RedisServer,
    backend_factory: StartBackend,
    receiver: WebhookReceiver,
) -> None:
    healthy, failing = Switchable(), Switchable(health=503)
    backends = {"b0": await backend_factory(healthy), "b1": await backend_factory(failing)}
    cluster = cluster_factory(
        fresh_redis.url,
        "alerts",
        {name: backend.url for name, backend in backends.items()},
        pool={"health": HEALTH},
        alerts=alerts(receiver, {"name": "down", "metric": "backend_down"}),
    )
    first, second = await cluster.start_in_process(2)
    await wait_until(lambda: receiver.statuses() == ["firing"], SETTLE, "no firing alert")
    # The follower has read the leader's firing alert from its heartbeat before it takes over.
    follower_alerts = second.in_process.observing.alerts
    await wait_until(lambda: follower_alerts.handed_over, SETTLE, "no handover copy")

    await first.stop()
    await wait_until(lambda: second.in_process.is_leader, SETTLE, "no new leader")
    await asyncio.sleep(0.5)  # the new leader judges the still-down backend a few times
    assert receiver.statuses() == ["firing"]  # not fired twice

    failing.health = 200
    resolved = ["firing", "resolved"]
    await wait_until(
        lambda: receiver.statuses() == resolved, SETTLE, "no resolve by the new leader"
    )
    assert receiver.bodies[1]["alerts"][0]["labels"]["backend"] == "b1"


async def test_every_node_tells_that_it_lost_the_store_and_that_it_is_back(
    redis_factory: StartRedis,
    cluster_factory: MakeCluster,
    backend_factory: StartBackend,
    receiver: WebhookReceiver,
) -> None:
    redis = redis_factory()
    backend = await backend_factory()
    cluster = cluster_factory(
        redis.url,
        "store-alerts",
        {"b0": backend.url},
        alerts=alerts(receiver, {"name": "store", "metric": "store_down", "severity": "critical"}),
    )
    await cluster.start_in_process(2)
    redis.kill()
    await wait_until(lambda: receiver.statuses() == ["firing"] * 2, SETTLE, "not every node told")
    nodes = sorted(body["alerts"][0]["labels"]["node"] for body in receiver.bodies)
    assert nodes == ["n1", "n2"]

    await asyncio.to_thread(redis.restart)
    await wait_until(
        lambda: receiver.statuses().count("resolved") == 2, SETTLE, "not every node resolved"
    )


async def test_a_rule_moved_to_the_other_scope_resolves_what_it_fired_there(
    proxied_factory: StartProxied, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    rule = {"name": "busy", "metric": "connections_active", "above": -1, "scope": "node"}
    proxy = await proxied_factory(
        config_file=tmp_path / "loadweaver.yaml", alerts=alerts(receiver, rule)
    )
    await wait_until(lambda: receiver.statuses() == ["firing"], SETTLE, "no firing alert")
    proxy.config["alerts"] = alerts(receiver, {**rule, "scope": "cluster"})
    proxy.rewrite_config()
    assert await proxy.node.reload()
    await wait_until(
        lambda: sorted(receiver.statuses()) == ["firing", "firing", "resolved"],
        SETTLE,
        "the node-scoped alert was not resolved when the rule became a cluster rule",
    )
    resolved = next(body for body in receiver.bodies if body["status"] == "resolved")
    assert "node" in resolved["alerts"][0]["labels"]
