"""A real Prometheus for tests: the `promtool` and `prometheus` binaries, and a live server.

`promtool_binary()` and `prometheus_binary()` find the binaries, installing the Debian
`prometheus` package when they are missing, or skip the test with the reason they cannot.
`run_prometheus()` starts a server on a free loopback port with a temporary config that scrapes
the given targets every second, waits until it is ready and always stops it afterwards.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support.apt import binary_or_skip, which
from tests.support.ports import free_port

START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
REQUEST_TIMEOUT = 5.0
PACKAGE = "prometheus"  # Debian's package ships both /usr/bin/prometheus and /usr/bin/promtool


def promtool_binary() -> str:
    """The path of `promtool`; installs it first when it is missing, or skips the test."""
    return binary_or_skip("promtool", PACKAGE)


def prometheus_binary() -> str:
    """The path of the `prometheus` server; installs it first when it is missing, or skips."""
    return binary_or_skip("prometheus", PACKAGE)


def binaries_missing() -> bool:
    """True when a test will first have to install the package (and needs more time)."""
    return which("promtool") is None or which("prometheus") is None


def scrape_config(
    targets: Sequence[str], job: str, rule_files: Sequence[Path], interval: str
) -> dict[str, Any]:
    """A Prometheus config scraping `targets` (host:port) as `job` every `interval`."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path.resolve()) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }


class PrometheusServer:
    """A running server and an HTTP session to its API."""

    def __init__(self, url: str, session: aiohttp.ClientSession, log: Path) -> None:
        self.url = url
        self.log = log
        self._session = session

    async def query(self, expr: str) -> dict[str, Any]:
        """An instant query evaluated now: `status` is "success" or "error" (with `errorType`
        and `error`), whatever the HTTP status."""
        async with self._session.post(f"{self.url}/api/v1/query", data={"query": expr}) as response:
            answer: dict[str, Any] = await response.json(content_type=None)
            return answer

    async def label_values(self, label: str, match: str = "") -> dict[str, Any]:
        """The values of `label` on the series `match` selects (on every series without it)."""
        params = {"match[]": match} if match else {}
        async with self._session.get(
            f"{self.url}/api/v1/label/{label}/values", params=params
        ) as response:
            answer: dict[str, Any] = await response.json(content_type=None)
            return answer

    async def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its `health` ("ok", "err" or "unknown") and `lastError`."""
        async with self._session.get(f"{self.url}/api/v1/rules") as response:
            answer = await response.json(content_type=None)
        return [rule for group in answer["data"]["groups"] for rule in group["rules"]]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextlib.asynccontextmanager
async def run_prometheus(
    binary: str,
    directory: Path,
    targets: Sequence[str],
    *,
    job: str = "loadweaver",
    rule_files: Sequence[Path] = (),
    interval: str = "1s",
) -> AsyncIterator[PrometheusServer]:
    """Runs `prometheus` on a free loopback port, its config and data in `directory`, scraping
    `targets` as `job`; yields once `/-/ready` answers 200; SIGTERM, then SIGKILL, after."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets, job, rule_files, interval)))
    port = free_port()
    log_path = directory / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            server = PrometheusServer(f"http://127.0.0.1:{port}", session, log_path)
            await _wait_ready(process, server, session)
            yield server
    finally:
        await _stop(process)


async def _wait_ready(
    process: subprocess.Popen[bytes], server: PrometheusServer, session: aiohttp.ClientSession
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"prometheus exited with {process.returncode} before it was ready:\n"
                f"{server.log_tail()}"
            )
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{server.url}/-/ready") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise AssertionError(f"prometheus was not ready in {START_TIMEOUT} s:\n{server.log_tail()}")


async def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, up to STOP_TIMEOUT for a clean exit, then SIGKILL to its process group."""
    try:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    finally:
        # Also reached when the wait above is cancelled: the server never outlives the test.
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT)
