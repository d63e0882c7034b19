"""The node as a real process: start, signals, graceful drain, workers, admin and the CLI."""

import asyncio
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadweaver.config.loader import load_default_config
from loadweaver.node import Node, NodeStartError
from loadweaver.proxy.listener import ListenError
from tests.conftest import StartBackend
from tests.support.backend import ReceivedRequest, response
from tests.support.client import RawClient, get
from tests.support.nodes import NodeProcess, admin_port, node_config, write_config

SLOW_SECONDS = 1.0


@pytest.fixture
def processes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for process in started:
        process.kill()


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


async def refused_within(port: int, timeout: float) -> bool:
    """True once a new connection to `port` is refused, polling for at most `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
        except ConnectionRefusedError:
            return True
        except (OSError, TimeoutError):
            pass
        else:
            writer.close()
        await asyncio.sleep(0.05)
    return False


async def slow_handler(request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(SLOW_SECONDS)
    writer.write(response(200, b"slow done"))
    return True


async def admin_get(config: dict[str, Any], path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{admin_port(config)}{path}", timeout=aiohttp.ClientTimeout(total=5)
        ) as reply,
    ):
        return reply.status, await reply.text()


def start(
    processes: list[NodeProcess], config: dict[str, Any], directory: Path, *extra: str
) -> NodeProcess:
    directory.mkdir(parents=True, exist_ok=True)
    process = NodeProcess(config, directory, *extra)
    processes.append(process)
    return process


# ---- signals and draining ----


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_drains_the_in_flight_request_and_exits_0(
    signum: signal.Signals,
    tmp_path: Path,
    backend_factory: StartBackend,
    processes: list[NodeProcess],
) -> None:
    backend = await backend_factory(slow_handler)
    config = node_config([backend.url], node={"shutdown_grace": "5s"})
    node = start(processes, config, tmp_path)
    await node.wait_ready()
    assert await admin_get(config, "/readyz") == (200, '{"status": "ready"}')

    client = await RawClient.connect(node.port)
    await client.send(get("/slow"))
    assert await eventually(lambda: len(backend.requests) == 1)
    sent_at = asyncio.get_running_loop().time()
    node.signal(signum)

    assert await refused_within(node.port, 1.0), "the listener still accepts after the signal"
    status, _ = await admin_get(config, "/readyz")
    assert status == 503  # still draining, no longer ready

    reply = await client.read_response(timeout=5)
    assert reply.status == 200
    assert reply.body == b"slow done"
    assert reply.header("Connection") == "close"
    assert await client.is_closed()
    await client.close()

    assert await node.wait_exit(timeout=5) == 0
    assert asyncio.get_running_loop().time() - sent_at < 4.0
    log = node.log.read_text()
    assert "Traceback" not in log


async def test_idle_keep_alive_connections_close_promptly_on_sigterm(
    tmp_path: Path, backend_factory: StartBackend, processes: list[NodeProcess]
) -> None:
    backend = await backend_factory()
    config = node_config([backend.url], node={"shutdown_grace": "5s"})
    node = start(processes, config, tmp_path)
    await node.wait_ready()
    clients = [await RawClient.connect(node.port) for _ in range(3)]
    for client in clients:
        await client.send(get("/warm"))
        assert (await client.read_response()).status == 200
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    node.signal(signal.SIGTERM)
    for client in clients:
        assert await client.is_closed(timeout=2.0)
        await client.close()
    assert loop.time() - sent_at < 2.0
    assert await node.wait_exit(timeout=5) == 0
    assert loop.time() - sent_at < 3.0
    assert "Traceback" not in node.log.read_text()


async def test_requests_still_running_after_the_grace_period_are_cut(
    tmp_path: Path, backend_factory: StartBackend, processes: list[NodeProcess]
) -> None:
    backend = await backend_factory(slow_handler)
    config = node_config([backend.url], node={"shutdown_grace": "300ms"})
    node = start(processes, config, tmp_path)
    await node.wait_ready()
    client = await RawClient.connect(node.port)
    await client.send(get("/slow"))
    assert await eventually(lambda: len(backend.requests) == 1)
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    node.signal(signal.SIGTERM)
    assert await node.wait_exit(timeout=5) == 0
    assert loop.time() - sent_at < SLOW_SECONDS
    assert await client.is_closed(timeout=1.0)
    await client.close()
    assert "Traceback" not in node.log.read_text()


# ---- the built-in default config ----


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_default_config_answers_503_without_backends() -> None:
    config = load_default_config()
    assert [listener.bind for listener in config.listeners] == ["127.0.0.1:8080"]
    assert config.admin.bind == "127.0.0.1:9090"
    if not (_port_is_free(8080) and _port_is_free(9090)):
        pytest.skip("127.0.0.1:8080 or 127.0.0.1:9090 is in use on this machine")
    node = Node(config)
    try:
        await node.start()
    except (ListenError, NodeStartError) as error:
        await node.stop(grace=0)
        pytest.skip(f"the default ports were taken meanwhile: {error}")
    try:
        client = await RawClient.connect(8080)
        await client.send(get("/"))
        reply = await client.read_response()
        await client.close()
        assert reply.status == 503
        assert b"no backends configured" in reply.body.lower()
        async with (
            aiohttp.ClientSession() as session,
            session.get("http://127.0.0.1:9090/healthz") as health,
        ):
            assert health.status == 200
    finally:
        await node.stop(grace=0)


# ---- admin endpoints ----


async def test_admin_endpoints(
    tmp_path: Path, backend_factory: StartBackend, processes: list[NodeProcess]
) -> None:
    backend = await backend_factory()
    config = node_config([backend.url])
    node = start(processes, config, tmp_path)
    await node.wait_ready()
    client = await RawClient.connect(node.port)
    for _ in range(3):
        await client.send(get("/counted"))
        assert (await client.read_response()).status == 200
    await client.close()

    status, body = await admin_get(config, "/healthz")
    assert status == 200
    assert "ok" in body
    assert (await admin_get(config, "/readyz"))[0] == 200

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{admin_port(config)}/metrics") as metrics,
    ):
        assert metrics.status == 200
        assert metrics.headers["Content-Type"].startswith("text/plain")
        text = await metrics.text()
    assert "# TYPE loadweaver_requests_total counter" in text
    assert "# TYPE loadweaver_request_duration_seconds histogram" in text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples["loadweaver_requests_received_total"] == 3.0
    assert samples['loadweaver_responses_total{code="2xx"}'] == 3.0

    node.signal(signal.SIGTERM)
    assert await node.wait_exit(timeout=5) == 0


# ---- start failures ----


@pytest.mark.parametrize("taken", ["listener", "admin"])
async def test_port_in_use_exits_1_with_one_line(
    taken: str, tmp_path: Path, processes: list[NodeProcess]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        bind = f"127.0.0.1:{holder.getsockname()[1]}"
        config = node_config(["http://127.0.0.1:1"])
        if taken == "listener":
            config["listeners"][0]["bind"] = bind
        else:
            config["admin"]["bind"] = bind
        node = start(processes, config, tmp_path)
        assert await node.wait_exit(timeout=10) == 1
    log = node.log.read_text()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "already in use" in line]
    assert len(lines) == 1, log
    assert bind in lines[0]


async def test_invalid_config_file_stops_node_start(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    config = node_config(["ftp://127.0.0.1:1"])
    node = start(processes, config, tmp_path)
    assert await node.wait_exit(timeout=10) == 1
    log = node.log.read_text()
    assert "Traceback" not in log
    assert "pools.app.backends.0.url" in log
    assert str(node.path) in log


# ---- workers ----


def child_pids(parent: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return sorted(children)


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_two_workers_share_the_port(
    tmp_path: Path, backend_factory: StartBackend, processes: list[NodeProcess]
) -> None:
    backend = await backend_factory()
    config = node_config([backend.url], node={"shutdown_grace": "2s"})
    node = start(processes, config, tmp_path, "--workers", "2")
    await node.wait_ready()
    parent = node.process.pid
    assert await eventually(lambda: len(child_pids(parent)) == 2)
    workers = child_pids(parent)

    # Each worker keeps its own upstream pool, so a second backend connection shows that the
    # kernel spread client connections over both workers.
    for _ in range(100):
        client = await RawClient.connect(node.port)
        await client.send(get("/spread"))
        reply = await client.read_response()
        await client.close()
        assert reply.status == 200
        if backend.connections >= 2:
            break
    assert backend.connections >= 2, "only one worker answered"

    node.signal(signal.SIGTERM)
    assert await node.wait_exit(timeout=10) == 0
    assert not any(process_alive(pid) for pid in workers)
    assert await refused_within(node.port, 1.0)
    assert "Traceback" not in node.log.read_text()


# ---- config validate ----


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadweaver", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout
    assert "Traceback" not in result.stderr


VALID = {
    "listeners": [{"name": "web", "bind": "127.0.0.1:18080"}],
    "pools": {
        "app": {
            "backends": [
                {"name": "a", "url": "http://127.0.0.1:9001"},
                {"name": "b", "url": "http://127.0.0.1:9002"},
            ]
        }
    },
    "routes": [{"name": "default", "pool": "app"}],
}


def test_validate_a_valid_file(tmp_path: Path) -> None:
    path = write_config(tmp_path / "good.yaml", VALID)
    result = run_cli("config", "validate", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: valid")
    for part in ("1 listener", "1 pool", "2 backend", "1 route"):
        assert part in lines[0]
    assert_no_traceback(result)


def test_validate_lists_every_field_problem(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "bad.yaml",
        {
            "listeners": [
                {"name": "web", "bind": "127.0.0.1:18080", "timeouts": {"idle": "5 parsecs"}}
            ],
            "pools": {
                "app": {
                    "algorithm": "least_magic",
                    "backends": [
                        {"name": "a", "url": "http://127.0.0.1:9001", "weight": 300},
                        {"name": "b", "url": "ftp://127.0.0.1:9002"},
                    ],
                }
            },
            "routes": [{"name": "default", "pool": "app"}],
        },
    )
    result = run_cli("config", "validate", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    for field_path in (
        "pools.app.backends.0.weight",
        "pools.app.algorithm",
        "pools.app.backends.1.url",
        "listeners.0.timeouts.idle",
    ):
        lines = [line for line in result.stderr.splitlines() if field_path in line]
        assert len(lines) == 1, result.stderr
        assert str(path) in lines[0]
    assert_no_traceback(result)


def test_validate_route_to_a_missing_pool(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "route.yaml", {**VALID, "routes": [{"name": "r", "pool": "nowhere"}]}
    )
    result = run_cli("config", "validate", str(path))
    assert result.returncode == 1
    assert str(path) in result.stderr
    assert "routes.0.pool" in result.stderr
    assert "nowhere" in result.stderr
    assert_no_traceback(result)


def test_validate_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    result = run_cli("config", "validate", str(path))
    assert result.returncode == 1
    assert str(path) in result.stderr
    assert "does not exist" in result.stderr
    assert_no_traceback(result)


def test_validate_a_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "syntax.yaml"
    path.write_text("pools:\n  app:\n    backends: [\n      {name: a, url: x\n  routes: ]\n")
    result = run_cli("config", "validate", str(path))
    assert result.returncode == 1
    assert str(path) in result.stderr
    assert "line " in result.stderr
    assert_no_traceback(result)


def test_usage_error_exits_2() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert_no_traceback(result)
