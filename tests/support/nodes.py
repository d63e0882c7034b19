"""Builds configs for tests and runs nodes in-process or as a real `loadweaver` subprocess."""

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loadweaver.config.loader import build_config
from loadweaver.node import Node
from tests.support.backend import Backend
from tests.support.client import RawClient
from tests.support.ports import free_port


def node_config(
    backends: Sequence[str] = (),
    pool: dict[str, Any] | None = None,
    listener: dict[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A one-listener, one-pool config; extra top-level sections are merged in."""
    config: dict[str, Any] = {
        "listeners": [{"name": "web", "bind": f"127.0.0.1:{free_port()}", **(listener or {})}],
        "pools": {
            "app": {
                "backends": [
                    {"name": f"b{index}", "url": url} for index, url in enumerate(backends)
                ],
                **(pool or {}),
            }
        },
        "routes": [{"name": "default", "match": {"host": "*", "path_prefix": "/"}, "pool": "app"}],
        "admin": {"bind": f"127.0.0.1:{free_port()}"},
        "logging": {"level": "warning"},
    }
    config.update(sections)
    return config


def listener_port(config: dict[str, Any], index: int = 0) -> int:
    return int(config["listeners"][index]["bind"].rsplit(":", 1)[1])


def admin_port(config: dict[str, Any]) -> int:
    return int(config["admin"]["bind"].rsplit(":", 1)[1])


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Writes `config` as the YAML file a node loads and reloads."""
    path.write_text(yaml.safe_dump(config))
    return path


async def start_node(config: dict[str, Any], config_path: Path | None = None) -> Node:
    node = Node(build_config(config, "test"), config_path)
    await node.start()
    return node


@dataclass
class Proxy:
    """A node running in-process from `config` (read from `config_file` when it has one)."""

    node: Node
    config: dict[str, Any]
    config_file: Path | None = field(default=None, kw_only=True)

    @property
    def port(self) -> int:
        """The port of its (first) listener."""
        return listener_port(self.config)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rewrite_config(self, config: dict[str, Any] | None = None) -> None:
        """Writes `config`, or the (edited) `self.config`, to the file `node.reload()` reads."""
        assert self.config_file is not None, "the node was not started from a file"
        write_config(self.config_file, self.config if config is None else config)

    async def connect(self, **kwargs: Any) -> RawClient:
        """A new raw client connection to the listener (`kwargs` as for `open_connection`)."""
        return await RawClient.connect(self.port, **kwargs)


@dataclass
class Proxied(Proxy):
    """A node in front of one scripted loopback backend."""

    backend: Backend


class NodeProcess:
    """`loadweaver node start` as a child process, for signals and the real CLI."""

    def __init__(self, config: dict[str, Any], directory: Path, *extra: str) -> None:
        self.config = config
        self.path = write_config(directory / "loadweaver.yaml", config)
        self.log = directory / "node.log"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadweaver",
                "node",
                "start",
                "--config",
                str(self.path),
                *extra,
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def port(self) -> int:
        return listener_port(self.config)

    async def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"node exited early:\n{self.log.read_text()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", admin_port(self.config))
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        raise AssertionError(f"node not ready in {timeout}s:\n{self.log.read_text()}")

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def wait_exit(self, timeout: float = 15.0) -> int:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.process.poll() is None:
            if asyncio.get_running_loop().time() > deadline:
                self.process.kill()
                raise AssertionError("node did not exit in time")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
