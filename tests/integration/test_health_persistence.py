"""On a single node with `node.state_dir`, health verdicts survive a restart: a backend known
to be down takes no traffic before its first probe of the new run."""

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

from loadweaver.cluster.memory import VERDICTS_FILE_NAME
from loadweaver.node import Node
from tests.conftest import StartNode
from tests.support.client import RawClient, get
from tests.support.nodes import NodeProcess, node_config
from tests.support.switchable import Switchables
from tests.support.switchable import switchables as switchables_fixture  # noqa: F401

HEALTH = {"path": "/healthz", "interval": "0.2s", "timeout": "0.1s", "rise": 2, "fall": 2}


def healthy(node: Node, backend: str) -> bool:
    runtime = node.holder.current.pools["app"]
    return next(b for b in runtime.backends if b.name == backend).load.healthy


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


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
    assert (tmp_path / "state" / VERDICTS_FILE_NAME).is_file()
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
        await asyncio.sleep(1.0)  # fall 2 at 0.2 s, with room for the file to reach worker 2
        served_before = len(b1.arrivals)
        for _ in range(40):  # fresh connections land on both workers
            client = await RawClient.connect(node.port)
            await client.send(get("/"))
            assert (await client.read_response()).status == 200
            await client.close()
        assert len(b1.arrivals) == served_before, "a worker still sends traffic to b1"
    finally:
        node.signal(signal.SIGTERM)
        await node.wait_exit()
