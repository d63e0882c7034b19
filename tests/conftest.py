"""Fixtures shared by every test: uvloop, loopback backends and in-process nodes.

`proxy_factory` starts a node in front of given backend URLs; `proxied_factory` also starts the
scripted backend it fronts; `proxied` is that with the echo backend and the default config.
Each returns a `Proxy`/`Proxied` whose `connect()` opens a raw client to the node's listener.
"""

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
import uvloop
from loguru import logger

from loadweaver.node import Node
from tests.support.backend import Backend, Handler, echo_handler
from tests.support.nodes import Proxied, Proxy, node_config, start_node, write_config

# Real redis-server processes: one shared per session, and private ones for fault tests.
from tests.support.redis_server import fresh_redis, redis_factory, redis_server  # noqa: F401

StartBackend = Callable[..., Awaitable[Backend]]


class StartNode(Protocol):
    async def __call__(self, config: dict[str, Any], config_file: Path | None = None) -> Node:
        """Starts a node from `config`; with `config_file`, written there first, for reloads."""
        ...


class StartProxy(Protocol):
    async def __call__(
        self, backends: Sequence[str] = (), *, config_file: Path | None = None, **sections: Any
    ) -> Proxy:
        """A node in front of `backends` (URLs); `sections` go to `node_config`."""
        ...


class StartProxied(Protocol):
    async def __call__(
        self, handler: Handler = echo_handler, *, config_file: Path | None = None, **sections: Any
    ) -> Proxied:
        """A backend answering with `handler` and a node in front of it."""
        ...


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on uvloop, as the node does in production."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def backend_factory() -> AsyncIterator[StartBackend]:
    started: list[Backend] = []

    async def start(handler: Handler = echo_handler, name: str = "backend") -> Backend:
        backend = await Backend(handler=handler, name=name).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


@pytest.fixture
async def node_factory() -> AsyncIterator[StartNode]:
    started: list[Node] = []

    async def start(config: dict[str, Any], config_file: Path | None = None) -> Node:
        if config_file is not None:
            write_config(config_file, config)
        node = await start_node(config, config_file)
        started.append(node)
        return node

    yield start
    for node in started:
        await node.stop(grace=0)


@pytest.fixture
def proxy_factory(node_factory: StartNode) -> StartProxy:
    """Starts nodes from `node_config(backends, **sections)`; they stop at teardown."""

    async def start(
        backends: Sequence[str] = (), *, config_file: Path | None = None, **sections: Any
    ) -> Proxy:
        config = node_config(backends, **sections)
        node = await node_factory(config, config_file)
        return Proxy(node, config, config_file=config_file)

    return start


@pytest.fixture
def proxied_factory(backend_factory: StartBackend, proxy_factory: StartProxy) -> StartProxied:
    """Starts a backend running `handler` and a node in front of it; both stop at teardown."""

    async def start(
        handler: Handler = echo_handler, *, config_file: Path | None = None, **sections: Any
    ) -> Proxied:
        backend = await backend_factory(handler)
        proxy = await proxy_factory([backend.url], config_file=config_file, **sections)
        return Proxied(proxy.node, proxy.config, backend, config_file=config_file)

    return start


@pytest.fixture
async def proxied(proxied_factory: StartProxied) -> Proxied:
    """An echo backend behind a node with the default config."""
    return await proxied_factory()


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LOADWEAVER_* variable and no stray `.env` from outside may reach a test's node."""
    for name in list(os.environ):
        if name.upper().startswith("LOADWEAVER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _stderr(message: str) -> None:
    # Looked up at each write: pytest swaps sys.stderr between tests.
    sys.stderr.write(message)


@pytest.fixture
def quiet_node_logs() -> Iterator[None]:
    """In-process nodes log to this process's stderr: keep warnings, so printed figures stand
    out."""
    logger.remove()
    logger.add(_stderr, level="WARNING")
    yield
    logger.remove()
    logger.add(_stderr)  # every level, as loguru's default handler
