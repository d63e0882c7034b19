"""How the config file, its environment layers and API changes compose, through real nodes with a
config file and a state directory: API changes survive restarts, the file takes back the parts it
changes, deletions persist, `sources` names where each value came from, and a damaged state file
stops the node."""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadweaver.cluster.memory import STATE_FILE_NAME
from loadweaver.config.loader import load_config, load_config_layers
from loadweaver.node import Node, NodeStartError
from tests.conftest import StartBackend
from tests.support.admin import AdminClient, named_backends, served_by_many
from tests.support.backend import Backend
from tests.support.nodes import admin_port, listener_port, node_config, write_config

pytestmark = pytest.mark.usefixtures("clean_environment")


@dataclass
class FileNodes:
    """Nodes started from one config file and state directory, one after the other.

    The file defines pools app (backend b0) and other (b2), both routed; b1 is spare for the API.
    `config` is the file's content: edit it, then `write()`.
    """

    path: Path
    config: dict[str, Any]
    backends: list[Backend]
    api: AdminClient
    running: list[Node] = field(default_factory=list)

    @property
    def state_file(self) -> Path:
        return Path(self.config["node"]["state_dir"]) / STATE_FILE_NAME

    def write(self) -> None:
        write_config(self.path, self.config)

    async def start(self) -> Node:
        """A node from the file as `loadweaver node start` reads it: layers, environment and all."""
        loaded = load_config_layers(self.path)
        node = Node(loaded.config, self.path, sources=loaded.sources)
        await node.start()
        self.running.append(node)
        return node

    async def restart(self, node: Node) -> Node:
        await node.stop(grace=0)
        return await self.start()

    async def served(self, count: int = 4) -> set[str]:
        return await served_by_many(listener_port(self.config), count)

    def entry(self, index: int, **fields: Any) -> dict[str, Any]:
        """Backend b<index> as a pool lists it."""
        backend = self.backends[index]
        return {"name": backend.name, "url": backend.url, **fields}


@pytest.fixture
async def nodes(backend_factory: StartBackend, tmp_path: Path) -> AsyncIterator[FileNodes]:
    backends = await named_backends(backend_factory, 3)
    config = node_config([backends[0].url], node={"state_dir": str(tmp_path / "state")})
    async with aiohttp.ClientSession() as session:
        setup = FileNodes(
            tmp_path / "loadweaver.yaml", config, backends, AdminClient(session, admin_port(config))
        )
        config["pools"]["other"] = {"backends": [setup.entry(2)]}
        other = {"name": "other", "match": {"path_prefix": "/other"}, "pool": "other"}
        config["routes"].insert(0, other)
        setup.write()
        yield setup
        for node in setup.running:
            if node.ready:
                await node.stop(grace=0)


def backend_names(node: Node, pool: str = "app") -> list[str]:
    return [backend.name for backend in node.config.pools[pool].backends]


def algorithm(node: Node, pool: str) -> str:
    return node.config.pools[pool].algorithm


# ---- restarts ----


async def test_api_changes_survive_a_restart_and_the_version_continues(nodes: FileNodes) -> None:
    node = await nodes.start()
    await nodes.api.ok("POST", "/pools/app/backends", nodes.entry(1, weight=2))
    changed = node.version
    assert nodes.state_file.is_file()

    node = await nodes.restart(node)
    assert backend_names(node) == ["b0", "b1"]
    assert node.config.pools["app"].backends[1].weight == 2
    assert node.version == changed  # nothing changed: the version neither resets nor moves
    shown = await nodes.api.ok("GET", "/config")
    assert shown["version"] == node.version
    assert shown["sources"]["pools.app"] == "api"
    assert await nodes.served(6) == {"b0", "b1"}


@pytest.mark.parametrize("when", ["reload", "restart"])
async def test_editing_the_file_definition_of_an_api_changed_pool_gives_it_back_to_the_file(
    nodes: FileNodes, when: str
) -> None:
    node = await nodes.start()
    await nodes.api.ok("POST", "/pools/app/backends", nodes.entry(1))
    nodes.config["pools"]["app"]["backends"][0]["weight"] = 3
    nodes.write()

    if when == "reload":
        await nodes.api.ok("POST", "/config/reload")
    else:
        node = await nodes.restart(node)
    assert backend_names(node) == ["b0"]
    assert node.config.pools["app"].backends[0].weight == 3
    sources = (await nodes.api.ok("GET", "/config"))["sources"]
    assert sources["pools.app.backends"] == str(nodes.path)
    assert "pools.app" not in sources
    assert await nodes.served() == {"b0"}

    node = await nodes.restart(node)  # the store no longer holds the API's version
    assert backend_names(node) == ["b0"]


async def test_editing_another_pool_of_the_file_keeps_the_api_change(nodes: FileNodes) -> None:
    node = await nodes.start()
    await nodes.api.ok("POST", "/pools/app/backends", nodes.entry(1))
    nodes.config["pools"]["other"]["algorithm"] = "least_conn"
    nodes.write()

    await nodes.api.ok("POST", "/config/reload")
    assert backend_names(node) == ["b0", "b1"]
    assert algorithm(node, "other") == "least_conn"
    sources = (await nodes.api.ok("GET", "/config"))["sources"]
    assert sources["pools.app"] == "api"
    assert sources["pools.other.algorithm"] == str(nodes.path)

    node = await nodes.restart(node)
    assert backend_names(node) == ["b0", "b1"]
    assert algorithm(node, "other") == "least_conn"


async def test_a_pool_deleted_through_put_stays_deleted_until_the_file_changes_it(
    nodes: FileNodes,
) -> None:
    node = await nodes.start()
    routes = [route for route in nodes.config["routes"] if route["pool"] == "app"]
    body = {"pools": {"app": nodes.config["pools"]["app"]}, "routes": routes}
    await nodes.api.ok("PUT", "/config", body)
    assert list(node.config.pools) == ["app"]

    node = await nodes.restart(node)
    assert list(node.config.pools) == ["app"]
    assert [route.name for route in node.config.routes] == ["default"]

    nodes.config["pools"]["other"]["algorithm"] = "random"
    nodes.write()
    node = await nodes.restart(node)
    assert sorted(node.config.pools) == ["app", "other"]
    assert algorithm(node, "other") == "random"


async def test_undoing_an_api_change_gives_the_pool_back_to_the_file(nodes: FileNodes) -> None:
    node = await nodes.start()
    await nodes.api.ok("POST", "/pools/app/backends", nodes.entry(1))
    assert node.sources["pools.app"] == "api"
    await nodes.api.ok("DELETE", "/pools/app/backends/b1")
    assert node.sources["pools.app.backends"] == str(nodes.path)
    assert "app" not in node.stored.pools


async def test_setting_a_value_back_to_what_the_file_means_gives_the_pool_back_to_the_file(
    nodes: FileNodes,
) -> None:
    node = await nodes.start()
    await nodes.api.ok("PATCH", "/pools/app/backends/b0", {"weight": 3})
    await nodes.api.ok("PATCH", "/pools/app/backends/b0", {"weight": 1})  # the file's default
    assert node.sources["pools.app.backends"] == str(nodes.path)


async def test_a_get_put_round_trip_without_edits_leaves_every_part_with_the_file(
    nodes: FileNodes,
) -> None:
    node = await nodes.start()
    config = (await nodes.api.ok("GET", "/config"))["config"]
    await nodes.api.ok("PUT", "/config", {"pools": config["pools"], "routes": config["routes"]})
    assert "api" not in node.sources.values()


# ---- sources ----


async def test_sources_name_the_api_the_file_and_the_environment(
    nodes: FileNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOADWEAVER_LIMITS__MAX_HEADERS", "50")
    node = await nodes.start()
    await nodes.api.ok("PATCH", "/pools/app/backends/b0", {"weight": 2})

    shown = await nodes.api.ok("GET", "/config")
    sources, file = shown["sources"], str(nodes.path)
    assert sources["pools.app"] == "api"
    assert not [path for path in sources if path.startswith("pools.app.")]
    assert (sources["pools.other.backends"], sources["listeners"]) == (file, file)
    assert sources["limits.max_headers"] == "environment"
    assert "limits.max_url_bytes" not in sources  # a default: absent from the map
    assert shown["config"]["limits"]["max_headers"] == node.config.limits.max_headers == 50
    pools = (await nodes.api.ok("GET", "/pools"))["pools"]
    assert {pool["name"]: pool["source"] for pool in pools} == {"app": "api", "other": file}


async def test_a_node_started_from_its_file_names_environment_values_before_any_reload(
    nodes: FileNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOADWEAVER_LIMITS__MAX_HEADERS", "50")
    node = Node(load_config(nodes.path), nodes.path)
    await node.start()
    nodes.running.append(node)
    assert node.sources["limits.max_headers"] == "environment"


async def test_the_environment_name_layers_its_file_over_the_config_file(
    nodes: FileNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = write_config(
        nodes.path.with_name("loadweaver.production.yaml"),
        {"pools": {"other": {"algorithm": "least_conn"}}, "limits": {"max_url_bytes": "2KiB"}},
    )
    monkeypatch.setenv("LOADWEAVER_ENV", "production")
    node = await nodes.start()
    assert algorithm(node, "other") == "least_conn"
    assert node.config.limits.max_url_bytes == 2048
    assert backend_names(node, "other") == ["b2"]
    assert node.sources["pools.other.algorithm"] == str(layer)
    assert node.sources["limits.max_url_bytes"] == str(layer)
    assert node.sources["pools.other.backends"] == str(nodes.path)

    write_config(layer, {"pools": {"other": {"algorithm": "random"}}})
    await nodes.api.ok("POST", "/config/reload")
    assert algorithm(node, "other") == "random"
    assert node.config.limits.max_url_bytes == 8 * 1024
    assert node.sources["pools.other.algorithm"] == str(layer)


# ---- the state file ----


@pytest.mark.parametrize(
    "damage",
    ["{not json", json.dumps({"format": 99, "version": 1}), json.dumps({"format": 1})],
    ids=["not-json", "unknown-format", "missing-fields"],
)
async def test_a_damaged_state_file_stops_the_node_naming_the_file(
    nodes: FileNodes, damage: str
) -> None:
    nodes.state_file.parent.mkdir()
    nodes.state_file.write_text(damage)
    with pytest.raises(NodeStartError) as caught:
        await nodes.start()
    assert str(nodes.state_file) in str(caught.value)
    assert "damaged" in str(caught.value)

    # What the message advises: with the file moved away, the config file alone starts.
    nodes.state_file.rename(nodes.path.with_name("state.bad"))
    node = await nodes.start()
    assert backend_names(node) == ["b0"]
