"""A cluster of loadweaver nodes sharing one real redis-server, and the helpers its tests need.

`cluster_factory` (a fixture; import it into a test module under an alias, as with the Redis
fixtures) hands out `Cluster`s. A Cluster starts nodes that share one Redis and one cluster name:
in-process nodes (fast; the test can look inside them) or real `loadweaver node start`
processes (for SIGKILL and SIGTERM). Every member comes with an aiohttp admin client. Everything
is bounded in time: polls by `wait_until`, traffic by a count and a deadline, and every node is
stopped or killed when the test ends.

Timings are short so tests are fast, but no Redis command timeout is below 100 ms: the test
machine is a noisy 2-core box where a healthy call can take tens of milliseconds.
"""

import asyncio
import contextlib
import inspect
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
import redis

from loadweaver.config.loader import build_config
from loadweaver.node import Node
from tests.support.admin import AdminClient
from tests.support.backend import Backend, Handler, fixed_reply, response
from tests.support.client import RawClient, RawResponse, get
from tests.support.nodes import NodeProcess, admin_port, listener_port, node_config

StartBackend = Callable[..., Awaitable[Backend]]

# Fast cluster timings for tests (production defaults are 1 s / 3 s / 5 s / 1 s and 50 ms).
FAST_CLUSTER: dict[str, Any] = {
    "timeout": 0.2,  # each Redis command
    "connect_timeout": 0.2,
    "heartbeat_interval": 0.2,
    "member_ttl": 1.0,
    "lease_ttl": 2.0,
    "anti_entropy_interval": 0.2,
}
POOL = "app"
REQUEST_TIMEOUT = 2.0  # one proxied request, in the traffic loops
POLL_INTERVAL = 0.02


def unique_cluster_name(label: str) -> str:
    """A cluster name no other test uses, so keys never collide on a shared Redis."""
    return f"{label}-{uuid.uuid4().hex[:10]}"


async def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    message: str = "",
    interval: float = POLL_INTERVAL,
) -> Any:
    """Polls `predicate` (sync, or async: its awaitable is awaited) until it returns something
    truthy, and returns that.

    A connection error while polling (a node that is starting or was just killed) counts as
    "not yet". Fails with `message` and the last error after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, max(deadline - time.monotonic(), 0.01))
            if result:
                return result
        except (OSError, aiohttp.ClientError, TimeoutError) as error:
            last_error = error
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"{message or 'condition not reached'} in {timeout}s{detail}")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------- backends and requests


def answering_with_name(name: str) -> Handler:
    """A backend handler whose every response body is `name`."""
    return fixed_reply(response(200, name.encode()))


async def start_named_backends(start: StartBackend, names: Sequence[str]) -> dict[str, Backend]:
    """Backends that answer with their own name, by name."""
    return {name: await start(answering_with_name(name), name=name) for name in names}


async def fetch(port: int, path: str = "/", extra: str = "") -> RawResponse:
    """One request through the listener on `port`, on a new connection."""
    client = await RawClient.connect(port)
    try:
        await client.send(get(path, extra=extra))
        return await client.read_response(timeout=REQUEST_TIMEOUT)
    finally:
        await client.close()


async def answered_by(port: int, extra: str = "") -> str:
    """The name of the backend that answered one request through `port`; fails on non-200."""
    answer = await fetch(port, extra=extra)
    assert answer.status == 200, (answer.status, answer.body)
    return answer.body.decode()


@dataclass
class Traffic:
    """What one client loop saw: statuses, failures (described), and a sample per status."""

    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    samples: dict[int, RawResponse] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + len(self.failures)

    def merge(self, other: "Traffic") -> "Traffic":
        merged = Traffic(self.statuses + other.statuses, self.failures + other.failures)
        merged.samples = {**other.samples, **self.samples}
        merged.seconds = max(self.seconds, other.seconds)
        return merged


async def paced_traffic(
    port: int,
    per_second: float,
    seconds: float,
    stop: asyncio.Event | None = None,
    extra: str = "",
) -> Traffic:
    """Sends requests on one keep-alive connection at `per_second`, for at most `seconds` (or
    until `stop` is set). Non-2xx statuses are counted by status; connection errors and time-outs
    are failures, after which it reconnects."""
    traffic = Traffic()
    budget = int(per_second * seconds) + 1
    client: RawClient | None = None
    start = time.monotonic()
    try:
        for sent in range(budget):
            due = start + sent / per_second
            if time.monotonic() - start > seconds or (stop is not None and stop.is_set()):
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            try:
                client = client or await RawClient.connect(port)
                await client.send(get("/", extra=extra))
                answer = await client.read_response(timeout=REQUEST_TIMEOUT)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as error:
                traffic.failures.append(f"{time.monotonic() - start:.3f}s: {error!r}")
                if client is not None:
                    await client.close()
                client = None
                continue
            traffic.statuses[answer.status] += 1
            traffic.samples.setdefault(answer.status, answer)
    finally:
        if client is not None:
            await client.close()
    traffic.seconds = time.monotonic() - start
    return traffic


async def traffic_through(
    ports: Sequence[int],
    per_second: float,
    seconds: float,
    stop: asyncio.Event | None = None,
    extra: str = "",
) -> Traffic:
    """`paced_traffic` through every port at once; the tallies merged."""
    results = await asyncio.gather(
        *(paced_traffic(port, per_second, seconds, stop, extra) for port in ports)
    )
    merged = Traffic()
    for result in results:
        merged = merged.merge(result)
    return merged


# ---------------------------------------------------------------- the cluster


def metric_value(exposition: str, name: str) -> float | None:
    """The value of an unlabelled sample in Prometheus text exposition."""
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@dataclass
class Member:
    """One node of the cluster: in-process (`node`) or a real process (`process`)."""

    id: str
    config: dict[str, Any]
    admin: AdminClient
    node: Node | None = None
    process: NodeProcess | None = None
    stopped: bool = False

    @property
    def port(self) -> int:
        """Its listener's port."""
        return listener_port(self.config)

    @property
    def in_process(self) -> Node:
        assert self.node is not None, f"{self.id} runs as a process"
        return self.node

    async def status(self) -> dict[str, Any]:
        """`GET /api/v1/cluster/status`."""
        body: dict[str, Any] = await self.admin.ok("GET", "/cluster/status")
        return body

    async def metric(self, name: str) -> float | None:
        answer = await self.admin.call("GET", "/metrics")
        assert answer.status == 200, answer.text
        return metric_value(answer.text, name)

    async def stop(self) -> None:
        """A graceful stop: SIGTERM for a process, `Node.stop` in-process."""
        if self.stopped:
            return
        self.stopped = True
        if self.process is not None:
            self.process.signal(signal.SIGTERM)
            await self.process.wait_exit(timeout=10)
        if self.node is not None:
            await self.node.stop(grace=0)

    def kill(self) -> None:
        """SIGKILL: no lease release, no goodbye to the member list."""
        assert self.process is not None, "only a process can be killed"
        self.stopped = True
        self.process.kill()


class Cluster:
    """Nodes sharing the Redis at `redis_url` under one cluster `name`."""

    def __init__(
        self,
        redis_url: str,
        name: str,
        session: aiohttp.ClientSession,
        directory: Path,
        backends: dict[str, str],
        **sections: Any,
    ) -> None:
        """`backends` (name -> URL) form pool `app`; `sections` go to every node's config
        (`cluster` is merged over the fast timings)."""
        self.redis_url = redis_url
        self.name = name
        self._session = session
        self._directory = directory
        self._backends = dict(backends)
        self._sections = sections
        self.members: list[Member] = []

    def config_for(self, node_id: str) -> dict[str, Any]:
        """A node's config: the shared pools, routes and limits; its own ports and id."""
        sections = dict(self._sections)
        cluster = {**FAST_CLUSTER, **sections.pop("cluster", {})}
        pool = sections.pop("pool", None)
        config = node_config(list(self._backends.values()), pool, **sections)
        config["pools"][POOL]["backends"] = [
            {"name": name, "url": url} for name, url in self._backends.items()
        ]
        config["node"] = {"id": node_id, "shutdown_grace": 1, "watch_config": False}
        config["cluster"] = {"redis_url": self.redis_url, "name": self.name, **cluster}
        return config

    def _member(self, node_id: str, config: dict[str, Any]) -> Member:
        admin = AdminClient(self._session, admin_port(config))
        return Member(node_id, config, admin)

    async def start_in_process(self, count: int, first: int = 1) -> list[Member]:
        """`count` in-process nodes, n<first>...; returns once each has started.

        When the cluster is new, the first node is given time to take the lease and publish its
        file layer before the others start: a node that starts while that happens may not hear
        of it until its first anti-entropy check (see `add_in_process`).
        """
        started = [await self.add_in_process(f"n{first}")]
        if first == 1:
            node = started[0].in_process
            await wait_until(lambda: node.is_leader and node.version > 0, 5.0, "no leader")
        for index in range(first + 1, first + count):
            started.append(await self.add_in_process(f"n{index}"))
        return started

    async def add_in_process(
        self, node_id: str, prepare: Callable[[Node], None] | None = None
    ) -> Member:
        """One in-process node; `prepare` may adjust the Node after it is built, before it
        starts (to interpose on its store, say)."""
        member = self._member(node_id, self.config_for(node_id))
        node = Node(build_config(member.config, "test"))
        if prepare is not None:
            prepare(node)
        self.members.append(member)
        member.node = node
        try:
            await node.start()
        except BaseException:
            member.stopped = True
            raise
        return member

    async def start_processes(self, count: int, first: int = 1) -> list[Member]:
        """`count` `loadweaver node start` processes, n<first>...; returns once all listen.

        As in `start_in_process`, a new cluster's first node leads and publishes before the
        others start; those start together (each process takes a while to import).
        """
        started = [self._spawn(f"n{first}")]
        if first == 1:
            await self._wait_ready(started)
            leader = started[0]
            await wait_until(lambda: self._leads(leader), 10.0, f"{leader.id} did not lead")
        started += [self._spawn(f"n{index}") for index in range(first + 1, first + count)]
        await self._wait_ready(started)
        return started

    def _spawn(self, node_id: str) -> Member:
        member = self._member(node_id, self.config_for(node_id))
        directory = self._directory / node_id
        directory.mkdir(parents=True, exist_ok=True)
        member.process = NodeProcess(member.config, directory)
        self.members.append(member)
        return member

    @staticmethod
    async def _wait_ready(members: Sequence[Member]) -> None:
        for member in members:
            assert member.process is not None
            await member.process.wait_ready()

    @staticmethod
    async def _leads(member: Member) -> bool:
        status = await member.status()
        return bool(status["leader"] == member.id and status["config_version"] > 0)

    @property
    def running(self) -> list[Member]:
        return [member for member in self.members if not member.stopped]

    def member(self, node_id: str) -> Member:
        return next(member for member in self.members if member.id == node_id)

    async def converged(self) -> int | None:
        """The config version when every running node agrees on it, on the member list and on
        one leader, as each one's cluster status says; else None."""
        running = self.running
        expected = {member.id for member in running}
        versions: set[int] = set()
        for member in running:
            status = await member.status()
            nodes = status["nodes"]
            leaders = [node["id"] for node in nodes if node["leader"]]
            if {node["id"] for node in nodes} != expected or leaders != [status["leader"]]:
                return None
            versions |= {node["config_version"] for node in nodes} | {status["config_version"]}
        if len(versions) != 1 or 0 in versions:
            return None
        return versions.pop()

    async def wait_converged(self, timeout: float = 10.0) -> int:
        """Waits for `converged` and returns the agreed config version."""
        version: int = await wait_until(
            self.converged, timeout, f"cluster {self.name} did not converge", interval=0.05
        )
        return version

    async def leader(self) -> Member:
        """The member that holds the lease, as the first running member's status says."""
        status = await self.running[0].status()
        leader_id = status["leader"]
        assert leader_id is not None, status
        return self.member(leader_id)

    def redis_client(self) -> "redis.Redis":
        """A synchronous redis-py client to the cluster's Redis (close it when done)."""
        return redis.Redis.from_url(self.redis_url, socket_timeout=1.0)

    def stored_version(self) -> int:
        """The `version` field of the cluster's config hash in Redis (0 when absent)."""
        with contextlib.closing(self.redis_client()) as client:
            raw = client.hget(self.key("config"), "version")
        return int(raw) if raw is not None else 0

    def key(self, suffix: str) -> str:
        """A key of this cluster, as `loadweaver.cluster.keys` lays them out."""
        return f"lw:{{{self.name}}}:{suffix}"

    async def close(self) -> None:
        """Stops in-process nodes and kills processes; never waits on a dead Redis for long."""
        for member in self.members:
            if member.process is not None:
                member.process.kill()
            elif member.node is not None and not member.stopped:
                member.stopped = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(member.node.stop(grace=0), 5.0)


class MakeCluster(Protocol):
    def __call__(
        self, redis_url: str, label: str, backends: dict[str, str], **sections: Any
    ) -> Cluster:
        """A Cluster named `<label>-<random>`; see `Cluster` for the arguments."""
        ...


@pytest.fixture(name="cluster_factory")
async def cluster_factory(tmp_path: Path) -> AsyncIterator[MakeCluster]:
    """`make(redis_url, label, backends, **sections)`: a Cluster with a unique name; its nodes
    are stopped (in-process) or killed (processes) when the test ends."""
    clusters: list[Cluster] = []
    async with aiohttp.ClientSession() as session:

        def make(redis_url: str, label: str, backends: dict[str, str], **sections: Any) -> Cluster:
            name = unique_cluster_name(label)
            cluster = Cluster(redis_url, name, session, tmp_path / name, backends, **sections)
            clusters.append(cluster)
            return cluster

        yield make
        for cluster in clusters:
            await cluster.close()
