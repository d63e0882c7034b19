"""Fixtures shared by every test: uvloop, loopback backends and in-process nodes."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
import uvloop

from loadweaver.node import Node
from tests.support.backend import Backend, Handler, echo_handler
from tests.support.nodes import start_node

StartBackend = Callable[..., Awaitable[Backend]]
StartNode = Callable[[dict[str, Any]], Awaitable[Node]]


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

    async def start(config: dict[str, Any]) -> Node:
        node = await start_node(config)
        started.append(node)
        return node

    yield start
    for node in started:
        await node.stop(grace=0)
