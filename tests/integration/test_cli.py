"""The real `loadweaver` console script against a real node: `cluster backends ...`,
`cluster status` and `config show|validate` print what the admin API says, change what the
listener serves, and exit 0 (done), 1 (refused), 2 (usage) or 3 (node unreachable).

Each test starts its own in-process node (quick, and no state leaks between tests); the CLI
runs as a child process so the node's event loop keeps serving while it waits. Every CLI run
costs about half a second of start-up, so set-up steps that are not under test go through the
node's editor in-process, and checks read the node's config unless the CLI's view is the point.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from loadweaver.config.models import Backend as BackendConfig
from loadweaver.node import Node
from tests.conftest import StartBackend, StartNode
from tests.support.backend import Backend, ReceivedRequest, response
from tests.support.cli import (
    LOADWEAVER,
    CliResult,
    cli_environment,
    finish_cli,
    read_stderr_until,
    run_cli,
    start_cli,
)
from tests.support.client import RawClient, get
from tests.support.cluster import wait_until
from tests.support.nodes import admin_port, listener_port, node_config, write_config
from tests.support.polling import eventually
from tests.support.ports import closed_port

NODE_ID = "cli-test-node"
TOKEN_VARIABLE = "LOADWEAVER_ADMIN_TOKEN"
TOKEN = "cli-test-token"
TABLE_HEADER = ["POOL", "NAME", "URL", "WEIGHT", "STATE", "HEALTH", "IN-FLIGHT", "BACKUP", "SOURCE"]
BACKEND_FIELDS = {
    "pool",
    "name",
    "url",
    "weight",
    "backup",
    "max_connections",
    "slow_start",
    "state",
    "healthy",
    "in_flight",
    "source",
}


@dataclass
class Named:
    """A backend handler naming its backend in `X-Served-By`; paths under /hold wait for
    `release`, so a test decides when a request in flight ends."""

    name: str
    release: asyncio.Event = field(default_factory=asyncio.Event)
    holding: int = 0

    async def __call__(self, request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        if request.target.startswith("/hold"):
            self.holding += 1
            await self.release.wait()
            self.holding -= 1
        writer.write(response(200, self.name.encode(), {"X-Served-By": self.name}))
        return True


@dataclass
class Deployment:
    """A node with pools `app` (b0, b1) and `spare` (empty, routed from /spare), one more
    backend `c` that no pool uses yet, and the CLI pointed at the node's admin API."""

    node: Node
    config: dict[str, Any]
    handlers: dict[str, Named]
    backends: dict[str, Backend]
    workdir: Path

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{admin_port(self.config)}"

    async def cli(self, *args: str, **variables: str) -> CliResult:
        """`loadweaver ARGS --admin URL`, with `variables` as its only LOADWEAVER_ settings."""
        return await run_cli(
            *args, "--admin", self.admin_url, cwd=self.workdir, variables=variables
        )

    async def start_cli(self, *args: str) -> tuple[asyncio.subprocess.Process, tuple[str, ...]]:
        full = (*args, "--admin", self.admin_url)
        return await start_cli(*full, cwd=self.workdir), full

    async def backends_json(self, *args: str) -> list[dict[str, Any]]:
        result = await self.cli("cluster", "backends", "list", "--json", *args)
        assert result.returncode == 0, result
        backends: list[dict[str, Any]] = json.loads(result.stdout)
        return backends

    def backend(self, pool: str, name: str) -> BackendConfig:
        """The backend as the node's effective config has it now."""
        found = [b for b in self.node.config.pools[pool].backends if b.name == name]
        assert len(found) == 1, found
        return found[0]

    def names(self) -> list[tuple[str, str]]:
        """(pool, backend) for every backend of the node's effective config."""
        pools = self.node.config.pools
        return [(pool, backend.name) for pool in pools for backend in pools[pool].backends]

    async def add_c_to(self, pool: str, name: str = "c") -> None:
        """Set-up, not under test: backend `c` (as `name`) joins `pool` in-process."""
        await self.node.editor.add_backend(pool, {"name": name, "url": self.backends["c"].url})

    async def served_by(self, path: str = "/") -> str:
        """The backend that answered one request to `path` through the listener."""
        client = await RawClient.connect(listener_port(self.config))
        try:
            await client.send(get(path))
            result = await client.read_response()
        finally:
            await client.close()
        assert result.status == 200, (result.status, result.body)
        name = result.header("X-Served-By")
        assert name is not None
        return name

    async def hold_a_request(self) -> tuple[str, "asyncio.Task[str]"]:
        """A request to /hold in flight; returns the backend holding it and the request."""
        request = asyncio.create_task(self.served_by("/hold"))
        await eventually(
            lambda: any(h.holding for h in self.handlers.values()) or request.done(),
            message="the held request reached no backend",
        )
        holders = [name for name, handler in self.handlers.items() if handler.holding]
        assert len(holders) == 1, (holders, request)
        return holders[0], request


class StartDeployment(Protocol):
    async def __call__(self, extra_pools: dict[str, Any] | None = None) -> Deployment:
        """A new deployment; `extra_pools` are added to its config."""
        ...


@pytest.fixture
async def start_deployment(
    backend_factory: StartBackend,
    node_factory: StartNode,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[StartDeployment]:
    """Starts deployments whose admin API needs no token, unless the test sets one first."""
    # The in-process node reads its token from the environment, else from `.env` in its
    # working directory: clear the one and use an empty directory for the other.
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    started: list[Deployment] = []

    async def start(extra_pools: dict[str, Any] | None = None) -> Deployment:
        handlers = {name: Named(name) for name in ("b0", "b1", "c")}
        backends = {name: await backend_factory(h, name=name) for name, h in handlers.items()}
        config = node_config([backends["b0"].url, backends["b1"].url], node={"id": NODE_ID})
        config["pools"].update(spare={"backends": []}, **(extra_pools or {}))
        config["routes"].insert(
            0, {"name": "spare", "match": {"path_prefix": "/spare"}, "pool": "spare"}
        )
        node = await node_factory(config, tmp_path / "loadweaver.yaml")
        started.append(Deployment(node, config, handlers, backends, tmp_path))
        return started[-1]

    yield start
    for deployment in started:
        for handler in deployment.handlers.values():
            handler.release.set()  # a held request must not keep its backend from stopping


@pytest.fixture
async def deployment(start_deployment: StartDeployment) -> Deployment:
    return await start_deployment()


def assert_exit(result: CliResult, code: int, *texts: str, stream: str = "stderr") -> None:
    """`result` exited with `code` and its `stream` contains every one of `texts`."""
    assert result.returncode == code, result
    output = result.stderr if stream == "stderr" else result.stdout
    for text in texts:
        assert text in output, f"{text!r} missing from {stream}:\n{result}"
    assert "Traceback" not in result.stderr, result


# ---- backends add ----


async def test_an_added_backend_serves_traffic_through_the_listener(
    deployment: Deployment,
) -> None:
    url = deployment.backends["c"].url
    added = await deployment.cli(
        "cluster", "backends", "add", "c", "--url", url, "--pool", "spare",
        "--weight", "3", "--max-connections", "5",
    )  # fmt: skip

    assert_exit(added, 0, f"added spare/c ({url}, weight 3)", stream="stdout")
    assert await deployment.served_by("/spare/x") == "c"
    [backend] = await deployment.backends_json("--pool", "spare")
    assert (backend["weight"], backend["max_connections"], backend["backup"]) == (3, 5, False)
    assert (backend["state"], backend["source"]) == ("active", "api")


async def test_a_backend_added_as_backup_gets_no_traffic_while_primaries_are_up(
    deployment: Deployment,
) -> None:
    added = await deployment.cli(
        "cluster", "backends", "add", "c", "--url", deployment.backends["c"].url,
        "--pool", "app", "--backup",
    )  # fmt: skip

    assert_exit(added, 0, "added app/c", stream="stdout")
    assert deployment.backend("app", "c").backup is True
    assert {await deployment.served_by() for _ in range(6)} == {"b0", "b1"}


async def test_refused_additions_exit_1_with_the_servers_reason(deployment: Deployment) -> None:
    url = deployment.backends["c"].url

    def add(name: str, pool: str, *options: str) -> Awaitable[CliResult]:
        return deployment.cli("cluster", "backends", "add", name, "--pool", pool, *options)

    duplicate, bad_url, heavy, unknown_pool = await asyncio.gather(
        add("b0", "app", "--url", url),
        add("c", "app", "--url", "ftp://example.test"),
        add("c", "app", "--url", url, "--weight", "999"),
        add("c", "nope", "--url", url),
    )

    assert_exit(duplicate, 1, "refused (409)", "pool 'app' already has a backend named 'b0'")
    # The API checks the body before the config, so the field path is the body's.
    assert_exit(bad_url, 1, "refused (422)", "\n  url: backend url 'ftp://example.test' must")
    assert_exit(heavy, 1, "refused (422)", "\n  weight: Input should be less than or equal to 256")
    assert_exit(unknown_pool, 1, "refused (404)", "no pool named 'nope'")
    assert deployment.names() == [("app", "b0"), ("app", "b1")]


# ---- backends list ----


async def test_list_prints_a_table_with_a_header_and_one_row_per_backend(
    deployment: Deployment,
) -> None:
    everything = await deployment.cli("cluster", "backends", "list")

    assert_exit(everything, 0)
    header, *rows = [line.split() for line in everything.stdout.splitlines()]
    assert header == TABLE_HEADER
    assert [row[:2] for row in rows] == [["app", "b0"], ["app", "b1"]]
    source = str(deployment.workdir / "loadweaver.yaml")
    b0_url = deployment.backends["b0"].url
    assert rows[0][2:] == [b0_url, "1", "active", "healthy", "0", "no", source]


async def test_list_narrows_to_a_pool_and_refuses_an_unknown_one(deployment: Deployment) -> None:
    await deployment.add_c_to("spare")

    spare, unknown = await asyncio.gather(
        deployment.cli("cluster", "backends", "list", "--pool", "spare"),
        deployment.cli("cluster", "backends", "list", "--pool", "nope"),
    )

    assert_exit(spare, 0)
    header, *rows = [line.split() for line in spare.stdout.splitlines()]
    assert header == TABLE_HEADER
    assert [row[:2] for row in rows] == [["spare", "c"]]
    assert_exit(unknown, 1, "refused (404)", "no pool named 'nope'")
    assert unknown.stdout == ""


async def test_list_json_has_the_documented_fields(deployment: Deployment) -> None:
    backends = await deployment.backends_json()

    assert [(b["pool"], b["name"]) for b in backends] == [("app", "b0"), ("app", "b1")]
    for backend in backends:
        assert set(backend) == BACKEND_FIELDS
    assert backends[1]["url"] == deployment.backends["b1"].url
    assert (backends[1]["weight"], backends[1]["in_flight"], backends[1]["healthy"]) == (1, 0, True)


# ---- backends remove and set-weight ----


async def test_remove_takes_a_backend_out_of_rotation(deployment: Deployment) -> None:
    removed = await deployment.cli("cluster", "backends", "remove", "b1")

    assert_exit(removed, 0, "removed app/b1", stream="stdout")
    assert deployment.names() == [("app", "b0")]
    assert {await deployment.served_by() for _ in range(4)} == {"b0"}

    with_pool = await deployment.cli("cluster", "backends", "remove", "b0", "--pool", "app")
    assert_exit(with_pool, 0, "removed app/b0", stream="stdout")
    assert deployment.names() == []


async def test_remove_refuses_an_unknown_name_and_asks_for_pool_when_ambiguous(
    deployment: Deployment,
) -> None:
    await deployment.add_c_to("spare", name="b1")

    unknown, ambiguous, wrong_pool = await asyncio.gather(
        deployment.cli("cluster", "backends", "remove", "b9"),
        deployment.cli("cluster", "backends", "remove", "b1"),
        deployment.cli("cluster", "backends", "remove", "b0", "--pool", "spare"),
    )

    assert_exit(unknown, 1, "no pool has a backend named 'b9'")
    assert_exit(ambiguous, 2, "backend 'b1' is in pools app, spare", "choose one with --pool")
    assert_exit(wrong_pool, 1, "refused (404)", "pool 'spare' has no backend named 'b0'")
    assert len(deployment.names()) == 3

    chosen = await deployment.cli("cluster", "backends", "remove", "b1", "--pool", "spare")
    assert_exit(chosen, 0, "removed spare/b1", stream="stdout")
    assert deployment.names() == [("app", "b0"), ("app", "b1")]


async def test_set_weight_changes_the_weight_and_refuses_an_invalid_one(
    deployment: Deployment,
) -> None:
    changed = await deployment.cli("cluster", "backends", "set-weight", "b0", "5")
    assert_exit(changed, 0, "app/b0: weight 5", stream="stdout")
    assert [b["weight"] for b in await deployment.backends_json()] == [5, 1]

    too_heavy = await deployment.cli("cluster", "backends", "set-weight", "b0", "999")
    assert_exit(too_heavy, 1, "refused (422)", "weight: Input should be less than or equal to 256")
    assert deployment.backend("app", "b0").weight == 5


# ---- backends drain ----


async def test_drain_waits_for_the_request_in_flight_and_stops_new_ones(
    deployment: Deployment,
) -> None:
    holder, held = await deployment.hold_a_request()
    other = ({"b0", "b1"} - {holder}).pop()
    process, args = await deployment.start_cli(
        "cluster", "backends", "drain", holder, "--timeout", "10"
    )

    progress = await read_stderr_until(process, "in flight")
    assert f"draining app/{holder}: 1 request(s) in flight" in progress
    assert deployment.backend("app", holder).state == "draining"
    assert {await deployment.served_by() for _ in range(4)} == {other}
    deployment.handlers[holder].release.set()
    drained = await finish_cli(process, args)

    assert_exit(drained, 0, f"draining app/{holder}: 0 in flight: drained")
    assert await held == holder
    assert deployment.backend("app", holder).state == "draining"


async def test_drain_gives_up_after_its_timeout_and_leaves_the_backend_draining(
    deployment: Deployment,
) -> None:
    holder, held = await deployment.hold_a_request()

    result = await deployment.cli("cluster", "backends", "drain", holder, "--timeout", "0.5")

    assert_exit(
        result,
        1,
        f"draining app/{holder}: 1 request(s) in flight",
        "still 1 in flight after 0.5 s",
        f"app/{holder} stays draining",
    )
    deployment.handlers[holder].release.set()
    assert await held == holder
    assert deployment.backend("app", holder).state == "draining"


async def test_drain_of_an_idle_backend_returns_at_once(deployment: Deployment) -> None:
    result = await deployment.cli("cluster", "backends", "drain", "b1", "--pool", "app")

    assert_exit(result, 0, "draining app/b1: 0 in flight: drained")
    assert "request(s) in flight" not in result.stderr
    assert deployment.backend("app", "b1").state == "draining"


# ---- status and config ----


async def test_status_names_the_leader_and_config_version(deployment: Deployment) -> None:
    text, raw = await asyncio.gather(
        deployment.cli("cluster", "status"), deployment.cli("cluster", "status", "--json")
    )

    assert_exit(raw, 0)
    report = json.loads(raw.stdout)
    assert {"nodes", "leader", "config_version"} <= set(report)
    assert report["leader"] == NODE_ID
    assert [node["id"] for node in report["nodes"]] == [NODE_ID]
    version = report["config_version"]
    assert version == deployment.node.holder.current.version
    assert_exit(text, 0, f"leader: {NODE_ID}", f"config version: {version}", stream="stdout")
    assert NODE_ID in text.stdout.splitlines()[2]  # the node table's row, under its header


async def test_traffic_prints_the_top_lists_and_refuses_a_bad_top(
    deployment: Deployment,
) -> None:
    for _ in range(4):
        await deployment.served_by("/popular")
    await deployment.served_by("/rare")

    async def counted() -> bool:
        result = await deployment.cli("cluster", "traffic", "--json", "--node")
        return result.returncode == 0 and json.loads(result.stdout)["requests"] >= 5

    await wait_until(counted, 5.0, "the requests were not counted")
    text = await deployment.cli("cluster", "traffic", "--top", "1")
    assert_exit(text, 0, "5 requests in the last", "PATH", "/popular", stream="stdout")
    assert "/rare" not in text.stdout
    refused = await deployment.cli("cluster", "traffic", "--top", "0")
    assert_exit(refused, 1, "top must be a whole number from 1 to 100")


async def test_alerts_lists_what_fires(deployment: Deployment) -> None:
    result = await deployment.cli("cluster", "alerts")
    assert_exit(result, 0, "no alerts pending or firing", "0 rule(s)", stream="stdout")
    raw = await deployment.cli("cluster", "alerts", "--json")
    assert json.loads(raw.stdout) == {"leader": True, "rules": [], "alerts": []}


async def test_config_show_prints_yaml_and_where_values_came_from(
    deployment: Deployment,
) -> None:
    await deployment.add_c_to("spare")
    text, raw = await asyncio.gather(
        deployment.cli("config", "show"), deployment.cli("config", "show", "--json")
    )

    assert_exit(raw, 0)
    view = json.loads(raw.stdout)
    assert {"version", "config", "sources"} <= set(view)
    assert_exit(text, 0, f"# effective config of {deployment.admin_url}", stream="stdout")
    # The sources table is written as YAML comments, so the whole output is the config.
    assert yaml.safe_load(text.stdout) == view["config"]
    assert [b["name"] for b in view["config"]["pools"]["spare"]["backends"]] == ["c"]
    comments = [line.removeprefix("# ").split() for line in text.stdout.splitlines()]
    sources_table = comments[comments.index(["PATH", "SOURCE"]) + 1 :]
    assert sources_table == [[path, source] for path, source in view["sources"].items()]
    assert view["sources"]["pools.spare"] == "api"
    assert view["sources"]["admin.bind"] == str(deployment.workdir / "loadweaver.yaml")


async def test_config_validate_accepts_a_good_file_and_names_the_bad_field(
    tmp_path: Path,
) -> None:
    good = write_config(tmp_path / "good.yaml", node_config(["http://127.0.0.1:8001"]))
    broken_config = node_config(["http://127.0.0.1:8001"])
    broken_config["pools"]["app"]["backends"][0]["weight"] = 999
    broken = write_config(tmp_path / "broken.yaml", broken_config)

    valid, invalid = await asyncio.gather(
        run_cli("config", "validate", str(good), cwd=tmp_path),
        run_cli("config", "validate", str(broken), cwd=tmp_path),
    )

    assert_exit(valid, 0, f"{good}: valid: 1 listener(s), 1 pool(s), 1 backend(s)", stream="stdout")
    assert_exit(invalid, 1, str(broken), "pools.app.backends.0.weight")
    assert invalid.stdout == ""


# ---- auth and connection ----


async def test_a_token_is_required_when_the_node_has_one(
    start_deployment: StartDeployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    deployment = await start_deployment()

    def status(*args: str, **variables: str) -> Awaitable[CliResult]:
        return deployment.cli("cluster", "status", *args, **variables)

    missing, wrong, flag, variable = await asyncio.gather(
        status(),
        status(LOADWEAVER_ADMIN_TOKEN="not-the-token"),
        status("--token", TOKEN),
        status(LOADWEAVER_ADMIN_TOKEN=TOKEN),
    )

    assert_exit(missing, 1, "refused (401): a valid admin token is required")
    assert_exit(wrong, 1, "refused (401): a valid admin token is required")
    for allowed in (flag, variable):
        assert_exit(allowed, 0, f"leader: {NODE_ID}", stream="stdout")


async def test_the_admin_url_comes_from_the_flag_or_the_environment(
    deployment: Deployment, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{closed_port()}"

    def status(*args: str, **variables: str) -> Awaitable[CliResult]:
        return run_cli("cluster", "status", *args, cwd=tmp_path, variables=variables)

    by_variable, flag_wins, unreachable = await asyncio.gather(
        status(LOADWEAVER_ADMIN_URL=deployment.admin_url),
        status("--admin", deployment.admin_url, LOADWEAVER_ADMIN_URL=nowhere),
        status("--admin", nowhere),
    )

    assert_exit(by_variable, 0, f"leader: {NODE_ID}", stream="stdout")
    assert_exit(flag_wins, 0, f"leader: {NODE_ID}", stream="stdout")
    assert_exit(
        unreachable, 3, f"cannot reach the admin API at {nowhere}: the connection was refused"
    )


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    def cli(*args: str) -> Awaitable[CliResult]:
        return run_cli(*args, cwd=tmp_path)

    no_url, no_group, bad_weight = await asyncio.gather(
        cli("cluster", "backends", "add", "c", "--pool", "app"),
        cli("cluster"),
        cli("cluster", "backends", "set-weight", "b0", "heavy"),
    )

    assert_exit(no_url, 2, "the following arguments are required: --url")
    assert_exit(no_group, 2, "the following arguments are required: GROUP")
    assert_exit(bad_weight, 2, "invalid int value: 'heavy'")
    assert all(result.stdout == "" for result in (no_url, no_group, bad_weight))


# ---- output into a closed pipe ----


async def pipe_into_head(deployment: Deployment, *args: str) -> CliResult:
    """`loadweaver ARGS | head -c 10`, with the CLI's own exit status."""
    script = '"$0" "$@" | head -c 10; exit "${PIPESTATUS[0]}"'
    command = (str(LOADWEAVER), *args, "--admin", deployment.admin_url)
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", script, *command,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=cli_environment(), cwd=deployment.workdir,
    )  # fmt: skip
    return await finish_cli(process, args)


async def test_a_reader_that_stops_early_gets_no_traceback(
    deployment: Deployment,
) -> None:
    result = await pipe_into_head(deployment, "cluster", "status", "--json")

    assert_exit(result, 0)
    assert result.stdout == '{\n  "nodes'  # the first 10 bytes
    assert result.stderr == ""


async def test_output_larger_than_the_pipe_buffer_into_a_closed_pipe_gets_no_traceback(
    start_deployment: StartDeployment,
) -> None:
    # Enough backends that the JSON (~150 KB) outgrows the pipe buffer, so the CLI really
    # writes into a pipe whose reader has gone.
    bulk = [{"name": f"n{index}", "url": "http://127.0.0.1:9"} for index in range(500)]
    deployment = await start_deployment({"bulk": {"backends": bulk}})

    result = await pipe_into_head(deployment, "cluster", "backends", "list", "--json")

    assert_exit(result, 0)
    assert result.stdout == "[\n  {\n    "  # the first 10 bytes
    assert result.stderr == ""
