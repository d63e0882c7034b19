"""Headless Chromium for browser tests, driven over the DevTools Protocol with aiohttp.

`chromium_binary()` finds Chromium, installing the Debian package when it is missing, or skips
the test with the reason it cannot. `open_browser()` launches it on a loopback debugging port and
yields a `Page` that can navigate and evaluate JavaScript; the browser is always killed after.
"""

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.apt import binary_or_skip

LAUNCH_TIMEOUT = 15.0
CALL_TIMEOUT = 10.0
LISTENING = "DevTools listening on "


def chromium_binary() -> str:
    """The path of Chromium; installs it first when it is missing, or skips the test."""
    return binary_or_skip("chromium", "chromium")


class Page:
    """One browser tab, reached through its own DevTools websocket."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Sends a DevTools command and returns its result; events in between are dropped."""
        call_id = next(self._ids)
        await self._socket.send_json({"id": call_id, "method": method, "params": params})
        async with asyncio.timeout(CALL_TIMEOUT):
            while True:
                message = await self._socket.receive()
                if message.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"the DevTools socket closed during {method}")
                answer = json.loads(message.data)
                if answer.get("id") == call_id:
                    break
        if "error" in answer:
            raise AssertionError(f"{method} failed: {answer['error']}")
        result: dict[str, Any] = answer["result"]
        return result

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises are awaited)."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise AssertionError(f"{expression!r} threw: {text}")
        return result["result"].get("value")

    async def open(self, url: str) -> None:
        """Navigates to `url` and waits until its document has loaded."""
        navigation = await self.call("Page.navigate", url=url)
        if error := navigation.get("errorText"):
            raise AssertionError(f"cannot open {url}: {error}")
        await self.wait_for("document.readyState === 'complete'", message=f"{url} did not load")

    async def wait_for(self, expression: str, timeout: float = 10.0, message: str = "") -> Any:
        """Evaluates `expression` every 50 ms until it is truthy and returns that value."""
        deadline = time.monotonic() + timeout
        while not (value := await self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(message or f"{expression} stayed false for {timeout} s")
            await asyncio.sleep(0.05)
        return value


@contextlib.asynccontextmanager
async def open_browser(binary: str, profile: Path) -> AsyncIterator[Page]:
    """Launches headless Chromium with its profile in `profile`; yields its first tab."""
    profile.mkdir(parents=True, exist_ok=True)
    log_path = profile / "chromium.log"
    with log_path.open("wb") as log:
        # A session of its own, so killing its group also ends the renderer and GPU children.
        process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-breakpad",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    try:
        # stderr goes to a file rather than a pipe so a chatty browser can never block on it.
        browser_url = await devtools_url(process, log_path)
        async with aiohttp.ClientSession() as session:
            page_url = await first_page_url(session, browser_url)
            async with session.ws_connect(page_url, max_msg_size=0) as socket:
                page = Page(socket)
                await page.call("Page.enable")
                yield page
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


async def devtools_url(process: subprocess.Popen[bytes], log_path: Path) -> str:
    """The browser's `ws://127.0.0.1:PORT/devtools/browser/ID`, read from its stderr."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith(LISTENING):
                return line.removeprefix(LISTENING).strip()
        if process.poll() is not None:
            break
        await asyncio.sleep(0.05)
    log = log_path.read_text(errors="replace")[-2000:]
    raise AssertionError(f"Chromium did not open its DevTools port (exit {process.poll()}):\n{log}")


async def first_page_url(session: aiohttp.ClientSession, browser_url: str) -> str:
    """The DevTools websocket of the browser's first tab, from `/json/list`."""
    host_and_port = browser_url.removeprefix("ws://").split("/", 1)[0]
    async with asyncio.timeout(CALL_TIMEOUT):
        while True:
            async with session.get(f"http://{host_and_port}/json/list") as response:
                targets = await response.json()
            pages = [target for target in targets if target.get("type") == "page"]
            if pages:
                url: str = pages[0]["webSocketDebuggerUrl"]
                return url
            await asyncio.sleep(0.05)
