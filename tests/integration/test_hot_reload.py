"""Config changes while traffic flows: SIGHUP, the file watcher and the API all reload, and a
broken file keeps the running config, without failing a request or closing a connection."""

import asyncio
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from loadweaver.node import Node
from tests.conftest import StartBackend, StartNode
from tests.support.backend import Backend, fixed_reply, response
from tests.support.client import RawClient, get
from tests.support.nodes import NodeProcess, admin_port, node_config, write_config
from tests.support.ports import free_port
from tests.support.upstream import metric

CLIENTS = 8
MAX_REQUESTS_PER_CLIENT = 4000
MAX_LOAD_SECONDS = 30.0


@dataclass
class Load:
    """Keep-alive clients sending requests back to back until told to stop."""

    port: int
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    completed: int = 0
    failures: list[str] = field(default_factory=list)

    async def client(self) -> None:
        connection = await RawClient.connect(self.port)
        deadline = time.monotonic() + MAX_LOAD_SECONDS
        try:
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                await connection.send(get("/load"))
                try:
                    answer = await connection.read_response()
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
                    self.failures.append(f"connection lost: {error!r}")
                    return
                if answer.status != 200:
                    self.failures.append(f"status {answer.status}: {answer.body[:80]!r}")
                self.completed += 1
        finally:
            await connection.close()

    async def until(self, condition: Callable[[], object], what: str, timeout: float = 10) -> None:
        """Lets the load run until `condition()` holds, with some requests on each side."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)
        before = self.completed
        while self.completed < before + 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


class Admin:
    def __init__(self, session: aiohttp.ClientSession, config: dict[str, Any]) -> None:
        self._session = session
        self._base = f"http://127.0.0.1:{admin_port(config)}"

    async def version(self) -> int:
        async with self._session.get(f"{self._base}/api/v1/config") as response:
            return int((await response.json())["version"])

    async def reload(self) -> tuple[int, dict[str, Any]]:
        async with self._session.post(f"{self._base}/api/v1/config/reload") as response:
            return response.status, json.loads(await response.text())

    async def reload_failures(self) -> float:
        async with self._session.get(f"{self._base}/metrics") as response:
            return exposition_value(await response.text(), "loadweaver_config_reload_failures")


def with_backends(config: dict[str, Any], backends: list[Backend], weight: int = 1) -> None:
    config["pools"]["app"]["backends"] = [
        {"name": backend.name, "url": backend.url, "weight": weight} for backend in backends
    ]


async def test_reloads_under_keep_alive_load_fail_no_request(
    backend_factory: StartBackend, tmp_path: Path
) -> None:
    backends = [await backend_factory(name=f"b{index}") for index in range(3)]
    config = node_config([backend.url for backend in backends[:2]])
    node = NodeProcess(config, tmp_path)
    load = Load(node.port)
    try:
        await node.wait_ready()
        async with aiohttp.ClientSession() as session:
            admin = Admin(session, config)
            clients = [asyncio.create_task(load.client()) for _ in range(CLIENTS)]
            await load.until(lambda: load.completed > 500, "the load to start")

            # 1. SIGHUP: a good file adds a backend and a listener.
            version = await admin.version()
            with_backends(config, backends)
            extra = {"name": "extra", "bind": f"127.0.0.1:{free_port()}"}
            config["listeners"].append(extra)
            write_config(node.path, config)
            node.signal(signal.SIGHUP)
            await wait_for_version_above(admin, version)
            await load.until(lambda: backends[2].requests, "the added backend to serve")
            extra_client = await RawClient.connect(int(extra["bind"].rsplit(":", 1)[1]))
            await extra_client.send(get("/extra"))
            assert (await extra_client.read_response()).status == 200
            await extra_client.close()

            # 2. SIGHUP: a broken file is refused; the running config stays.
            version = await admin.version()
            failures = await admin.reload_failures()
            broken = json.loads(json.dumps(config))
            broken["pools"]["app"]["backends"][0]["weight"] = 999
            write_config(node.path, broken)
            node.signal(signal.SIGHUP)
            await wait_until_async(admin.reload_failures, failures)
            await load.until(lambda: True, "traffic on the old config")
            assert await admin.version() == version

            # 3. The file watcher: a good file removes the listener and changes weights.
            config["listeners"] = config["listeners"][:1]
            with_backends(config, backends, weight=2)
            write_config(node.path, config)
            await wait_for_version_above(admin, version)
            await load.until(lambda: True, "traffic after the watcher's reload")
            assert await refused_within(int(extra["bind"].rsplit(":", 1)[1]), 2.0)

            # 4. The API: reloading the unchanged file applies it again.
            version = await admin.version()
            status, answer = await admin.reload()
            assert status == 200, answer
            assert answer["version"] > version
            await load.until(lambda: True, "traffic after the API reload")

            load.stop.set()
            await asyncio.gather(*clients)
        assert load.failures == [], load.failures[:5]
        # Every keep-alive client kept its one connection through all four reloads.
        print(f"\nhot reload under load: {load.completed} requests, 0 failed, 4 reloads")
        assert load.completed >= 4 * 200
        assert "Traceback" not in node.log.read_text()
    finally:
        load.stop.set()
        node.kill()


async def refused_within(port: int, timeout: float) -> bool:
    """True once nothing accepts connections on `port`: the listener was closed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return True
        writer.close()
        await asyncio.sleep(0.05)
    return False


async def wait_for_version_above(admin: Admin, version: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while await admin.version() <= version:
        assert time.monotonic() < deadline, f"the config stayed at version {version}"
        await asyncio.sleep(0.05)


async def wait_until_async(read: Callable[[], Any], above: float, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while await read() <= above:
        assert time.monotonic() < deadline, "the reload failure was not counted"
        await asyncio.sleep(0.05)


async def test_pools_that_did_not_change_keep_their_pooled_connections(
    backend_factory: StartBackend, node_factory: StartNode, tmp_path: Path
) -> None:
    backend = await backend_factory()
    config = node_config([backend.url])
    config_file = write_config(tmp_path / "loadweaver.yaml", config)
    node = await node_factory(config, config_file)
    client = await RawClient.connect(int(config["listeners"][0]["bind"].rsplit(":", 1)[1]))
    for _ in range(5):
        await client.send(get())
        assert (await client.read_response()).status == 200
    opened = backend.connections

    config["pools"]["other"] = {"backends": [{"name": "x", "url": "http://127.0.0.1:9"}]}
    config["limits"] = {"max_headers": 50}
    write_config(config_file, config)
    assert await node.reload()
    for _ in range(5):
        await client.send(get())
        assert (await client.read_response()).status == 200
    await client.close()
    assert backend.connections == opened, "the reload reopened connections to an unchanged pool"


async def watched_node(
    backend_factory: StartBackend, node_factory: StartNode, tmp_path: Path
) -> tuple[Node, dict[str, Any], Path]:
    """A node in front of one backend, started from a file it watches."""
    backend = await backend_factory()
    config = node_config([backend.url])
    config_file = write_config(tmp_path / "loadweaver.yaml", config)
    node = await node_factory(config, config_file)
    node.start_watching()
    await asyncio.sleep(0.2)  # the watch is registered asynchronously
    return node, config, config_file


async def test_the_watcher_reloads_a_burst_of_writes_once(
    backend_factory: StartBackend, node_factory: StartNode, tmp_path: Path
) -> None:
    node, config, config_file = await watched_node(backend_factory, node_factory, tmp_path)
    version = node.version
    for weight in (2, 3, 4, 5):  # an editor saving several times in quick succession
        config["pools"]["app"]["backends"][0]["weight"] = weight
        write_config(config_file, config)
        await asyncio.sleep(0.02)
    deadline = time.monotonic() + 10
    while node.config.pools["app"].backends[0].weight != 5:
        assert time.monotonic() < deadline, "the watcher did not reload the file"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.8)  # longer than the quiet period: a second reload would show by now
    assert node.version == version + 1


async def test_a_broken_file_seen_by_the_watcher_keeps_the_running_config(
    backend_factory: StartBackend, node_factory: StartNode, tmp_path: Path
) -> None:
    node, config, config_file = await watched_node(backend_factory, node_factory, tmp_path)
    version = node.version
    config_file.write_text("pools: {app: {backends: [{name: b0, url: 'ftp://nope'}]}}\n")
    deadline = time.monotonic() + 10
    while metric(node, "loadweaver_config_reload_failures_total") < 1:
        assert time.monotonic() < deadline, "the broken file was not noticed"
        await asyncio.sleep(0.05)
    assert node.version == version
    client = await RawClient.connect(int(config["listeners"][0]["bind"].rsplit(":", 1)[1]))
    await client.send(get())
    assert (await client.read_response()).status == 200
    await client.close()


def exposition_value(text: str, family: str) -> float:
    """The one sample of a counter family in a Prometheus text exposition."""
    for found in text_string_to_metric_families(text):
        if found.name == family:
            return float(found.samples[0].value)
    raise AssertionError(f"{family} is not exported")


async def test_every_worker_follows_api_changes_through_the_state_file(
    backend_factory: StartBackend, tmp_path: Path
) -> None:
    old = await backend_factory(fixed_reply(response(200, b"old")))
    new = await backend_factory(fixed_reply(response(200, b"new")))
    config = node_config(
        [old.url], node={"state_dir": str(tmp_path / "state")}, logging={"level": "info"}
    )
    node = NodeProcess(config, tmp_path, "--workers", "2")
    try:
        await node.wait_ready()
        base = f"http://127.0.0.1:{admin_port(config)}/api/v1/pools/app/backends"
        async with aiohttp.ClientSession() as session:
            added = await session.post(base, json={"name": "b1", "url": new.url})
            assert added.status == 201, await added.text()
            drained = await session.patch(f"{base}/b0", json={"weight": 0})
            assert drained.status == 200, await drained.text()
        # Fresh connections land on either worker; all of them must now pick the new backend.
        deadline = time.monotonic() + 10
        in_a_row = 0
        while in_a_row < 40:
            assert time.monotonic() < deadline, "a worker kept sending traffic to b0"
            client = await RawClient.connect(node.port)
            await client.send(get("/which"))
            answer = await client.read_response()
            await client.close()
            in_a_row = in_a_row + 1 if answer.body == b"new" else 0
        node.signal(signal.SIGTERM)
        assert await node.wait_exit() == 0
        log = node.log.read_text()
        assert "applied cluster config version" in log, "the second worker did not follow"
        assert "Traceback" not in log
    finally:
        node.kill()
