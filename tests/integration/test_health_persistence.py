"""On a single node with `node.state_dir`, health verdicts survive a restart: a backend known
to be down takes no traffic before its first probe of the new run."""

import asyncio
import time
from pathlib import Path
from typing import Any

from loadweaver.cluster.memory import VERDICTS_FILE_NAME
from loadweaver.node import Node
from tests.conftest import StartNode
from tests.support.nodes import node_config
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
