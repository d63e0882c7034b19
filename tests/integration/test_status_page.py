"""The status page at the admin server's `/`, rendered in headless Chromium: it lists the pools
and backends, keeps its numbers live from `/api/v1/stats/stream` while traffic flows, and asks
for the admin token when the API needs one."""

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from loadweaver.node import Node
from tests.conftest import StartBackend, StartNode
from tests.support.apt import INSTALL_TIMEOUT
from tests.support.chromium import Page, chromium_binary, open_browser
from tests.support.client import RawClient, get
from tests.support.nodes import admin_port, listener_port, node_config
from tests.support.ports import closed_port

# The first test may have to install Chromium, which takes longer than a test may otherwise.
pytestmark = [] if shutil.which("chromium") else [pytest.mark.timeout(INSTALL_TIMEOUT + 60)]

TOKEN_ENV = "LOADWEAVER_ADMIN_TOKEN"
TOKEN = "status-page-test-token"
TRAFFIC_SECONDS = 10.0
MAX_REQUESTS = 400
BACKENDS = ("b0", "b1")

UPDATES = "Number(document.body.dataset.updates)"
TOKEN_FORM_SHOWN = "!document.getElementById('token-form').hidden"
# The page prints counts with thousands separators ("1,234").
BACKEND_REQUESTS = (
    "[...document.querySelectorAll('tr[data-pool=\"app\"] td.requests')]"
    ".reduce((sum, cell) => sum + Number(cell.textContent.replace(/,/g, '')), 0)"
)
TOTAL_RPS = "Number(document.getElementById('total-rps').textContent)"


def text_of(element_id: str) -> str:
    return f"document.getElementById('{element_id}').textContent"


CONNECTION_STATE = text_of("connection-state")


def row(backend: str) -> str:
    return f'document.querySelector(\'tr[data-pool="app"][data-backend="{backend}"]\')'


# Compared with null because DevTools returns an element by value as {}, which is falsy here.
BOTH_ROWS_SHOWN = " && ".join(f"{row(name)} !== null" for name in BACKENDS)


def cell(backend: str, column: str) -> str:
    return f"{row(backend)}?.querySelector('td.{column}')?.textContent"


@pytest.fixture(scope="session")
def chromium() -> str:
    return chromium_binary()


@pytest.fixture
async def browser(chromium: str, tmp_path: Path) -> AsyncIterator[Page]:
    async with open_browser(chromium, tmp_path / "chromium") as page:
        yield page


@pytest.fixture(autouse=True)
def no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node also reads a token from `.env` in its working directory; run from an empty one
    so each test sees only the token it sets itself."""
    monkeypatch.chdir(tmp_path)


async def start_two_backend_node(
    backend_factory: StartBackend, node_factory: StartNode
) -> tuple[Node, dict[str, Any]]:
    backends = [await backend_factory(name=name) for name in BACKENDS]
    config = node_config([backend.url for backend in backends])
    return await node_factory(config), config


def status_url(config: dict[str, Any]) -> str:
    return f"http://127.0.0.1:{admin_port(config)}/"


async def send_requests(port: int) -> None:
    """About 50 requests a second on one keep-alive connection, bounded in count and time."""
    client = await RawClient.connect(port)
    deadline = time.monotonic() + TRAFFIC_SECONDS
    try:
        for _ in range(MAX_REQUESTS):
            if time.monotonic() > deadline:
                return
            await client.send(get())
            response = await client.read_response()
            assert response.status == 200, response
            await asyncio.sleep(0.02)
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def traffic(port: int) -> AsyncIterator[None]:
    """Sends requests to the listener in the background while the block runs."""
    sender = asyncio.create_task(send_requests(port))
    try:
        yield
    finally:
        sender.cancel()
        # Re-raises a failure of the sender itself, so a broken proxy is not reported as a
        # page that did not update.
        with contextlib.suppress(asyncio.CancelledError):
            await sender


async def wait_until_live(browser: Page) -> None:
    await browser.wait_for(
        f"{CONNECTION_STATE} === 'live'", message="the page never showed its stream as live"
    )


async def submit_token(browser: Page, token: str) -> None:
    await browser.evaluate(
        f"document.getElementById('token-input').value = {json.dumps(token)};"
        "document.getElementById('token-form').requestSubmit()"
    )


async def test_status_page_lists_backends_and_updates_while_traffic_flows(
    backend_factory: StartBackend,
    node_factory: StartNode,
    browser: Page,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    node, config = await start_two_backend_node(backend_factory, node_factory)

    await browser.open(status_url(config))
    await wait_until_live(browser)
    await browser.wait_for(BOTH_ROWS_SHOWN, message="the page did not list both backends")
    assert await browser.evaluate(text_of("node-id")) == node.config.node.id
    assert (await browser.evaluate(text_of("config-version"))).isdigit()
    for name in BACKENDS:
        assert await browser.evaluate(cell(name, "state")) == "active"
        assert await browser.evaluate(cell(name, "health")) == "healthy"
        assert await browser.evaluate(cell(name, "weight")) == "1"

    updates_before = await browser.evaluate(UPDATES)
    requests_before = await browser.evaluate(BACKEND_REQUESTS)
    async with traffic(listener_port(config)):
        await browser.wait_for(
            f"{BACKEND_REQUESTS} >= {requests_before + 20}",
            message="the backends' request counts did not rise while traffic flowed",
        )
        await browser.wait_for(f"{TOTAL_RPS} > 0", message="the total req/s stayed at 0")
    assert await browser.evaluate(UPDATES) > updates_before
    assert await browser.evaluate(CONNECTION_STATE) == "live"


async def test_status_page_asks_for_the_token_and_then_shows_the_data(
    backend_factory: StartBackend,
    node_factory: StartNode,
    browser: Page,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    _, config = await start_two_backend_node(backend_factory, node_factory)

    await browser.open(status_url(config))
    await browser.wait_for(TOKEN_FORM_SHOWN, message="the page did not ask for the token")
    assert await browser.evaluate(f"{row('b0')} === null")

    await submit_token(browser, "not-the-token")
    await browser.wait_for(
        f"{TOKEN_FORM_SHOWN} && document.getElementById('token-error').textContent",
        message="a wrong token was not refused",
    )

    await submit_token(browser, TOKEN)
    await wait_until_live(browser)
    await browser.wait_for(BOTH_ROWS_SHOWN, message="the page did not list both backends")
    stored = "sessionStorage.getItem('loadweaver-admin-token')"
    assert await browser.evaluate(stored) == TOKEN
    assert TOKEN not in await browser.evaluate("location.href")


async def test_status_page_shows_traffic_patterns_and_firing_alerts(
    backend_factory: StartBackend,
    node_factory: StartNode,
    browser: Page,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    backend = await backend_factory(name="b0")
    config = node_config(
        [backend.url, f"http://127.0.0.1:{closed_port()}"],
        pool={"health": {"interval": "200ms", "timeout": "100ms", "fall": 1, "rise": 1}},
        alerts={"interval": "200ms", "rules": [{"name": "gone", "metric": "backend_down"}]},
    )
    await node_factory(config)

    await browser.open(status_url(config))
    await wait_until_live(browser)
    async with traffic(listener_port(config)):
        await browser.wait_for(
            "document.querySelector('[data-dimension=\"paths\"] td.key')?.textContent === '/'",
            message="the traffic section did not show the path being requested",
        )
    status_codes = '[data-dimension="status_codes"] td.key'
    assert await browser.evaluate(f"document.querySelector('{status_codes}').textContent") == (
        "200"
    )
    await browser.wait_for(
        "document.querySelector('#alert-list tr.firing')?.textContent.includes('gone')",
        message="the firing backend_down alert was not shown",
    )
    firing = await browser.evaluate("document.querySelector('#alert-list tr.firing').textContent")
    assert "backend=b1" in firing
