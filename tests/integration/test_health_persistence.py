"""On a single node with `node.state_dir`, health verdicts survive a restart: a backend known
to be down takes no traffic before its first probe of the new run."""

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

from loadweaver.cluster.memory import VERDICTS_FILE_NAME
from loadweaver.config.loader import build_config
from loadweaver.node import Node
from tests.conftest import StartNode
from tests.support.client import RawClient, get
from tests.support.nodes import NodeProcess, node_config
from tests.support.switchable import SwitchableBackend, Switchables
from tests.support.switchable import switchables as switchables_fixture  # noqa: F401

HEALTH = {
    "path": "/healthz",
    "interval": "0.2s",
    "timeout": "0.1s",
    "fast_interval": "0.1s",
    "rise": 2,
    "fall": 2,
}


def healthy(node: Node, backend: str) -> bool:
    runtime = node.holder.current.pools["app"]
    return next(b for b in runtime.backends if b.name == backend).load.healthy


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def marked_down(verdicts: Path, key: str) -> bool:
    try:
        recorded = json.loads(verdicts.read_text())
    except (OSError, ValueError):
        return False
    return key in recorded and recorded[key]["up"] is False


async def a_round_avoids(port: int, backend: SwitchableBackend, requests: int = 40) -> bool:
    served_before = len(backend.arrivals)
    for _ in range(requests):
        client = await RawClient.connect(port)
        await client.send(get("/"))
        assert (await client.read_response()).status == 200
        await client.close()
    return len(backend.arrivals) == served_before


async def test_a_down_verdict_survives_a_restart_of_a_single_node(
    switchables: Switchables, node_factory: StartNode, tmp_path: Path
) -> None:
    b0, b1 = await switchables.start("b0", "b1")
    config = node_config(
        [b0.url, b1.url], pool={"health": HEALTH}, node={"state_dir": str(tmp_path / "state")}
    )
    node = await node_factory(config)
    b1.healthy = False
    await until(lambda: not healthy(node, "b1"))
    # Written behind the change: wait for it before the node stops.
    await until(lambda: marked_down(tmp_path / "state" / VERDICTS_FILE_NAME, "app/b1"))
    await node.stop(grace=0)

    probes_before = b1.probes
    restarted = await node_factory(config)
    assert not healthy(restarted, "b1"), "the restarted node forgot b1 was down"
    assert b1.probes == probes_before  # known from the store, not from a new probe
    assert healthy(restarted, "b0")


async def test_with_two_workers_one_probes_and_both_follow_its_verdicts(
    switchables: Switchables, tmp_path: Path
) -> None:
    b0, b1 = await switchables.start("b0", "b1")
    config = node_config(
        [b0.url, b1.url],
        pool={"health": HEALTH, "retries": {"attempts": 0}},
        node={"state_dir": str(tmp_path / "state")},
    )
    node = NodeProcess(config, tmp_path, "--workers", "2")
    try:
        await node.wait_ready()
        await asyncio.sleep(1.0)  # five intervals
        probes = b1.probes
        assert 3 <= probes <= 8, f"{probes} probes in 5 intervals: more than one worker probes"
        b1.healthy = False
        verdicts = tmp_path / "state" / VERDICTS_FILE_NAME
        await until(lambda: marked_down(verdicts, "app/b1"))
        # The other worker reads the file on a watch (or within a second): fresh connections
        # land on both workers, and a round of them must all avoid b1.
        deadline = time.monotonic() + 5.0
        while not await a_round_avoids(node.port, b1):
            assert time.monotonic() < deadline, "a worker still sends traffic to b1"
    finally:
        node.signal(signal.SIGTERM)
        await node.wait_exit()


async def test_removing_the_health_check_releases_a_backend_it_held_down(
    switchables: Switchables, node_factory: StartNode, tmp_path: Path
) -> None:
    b0, b1 = await switchables.start("b0", "b1")
    config = node_config([b0.url, b1.url], pool={"health": HEALTH})
    node = await node_factory(config)
    b1.healthy = False
    await until(lambda: not healthy(node, "b1"))
    del config["pools"]["app"]["health"]
    await node.apply(build_config(config, "test"))
    assert healthy(node, "b1"), "a verdict outlived the check that made it"
