"""Real backends for failover tests: switchable, killable, restartable, and the load to watch them.

`SwitchableBackend` is an in-process loopback HTTP/1.1 server: its `/healthz` answer, the status
of every other answer, a delay and a reset-before-response mode can be switched while it runs;
`kill` closes its listening socket and aborts every open connection at once (what a crash looks
like from the proxy), and `restart` listens again on the same port. `ProcessBackend` is the same
server as a child Python process, for a real SIGKILL. Both answer with `X-Served-By: <name>`.

`Load` runs bounded keep-alive client loops through a node and records every outcome with the
backend that served it, so tests can ask who served what, when, and what failed.
"""

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import pytest

from tests.support.backend import ReceivedRequest, read_request, response
from tests.support.client import RawClient, get
from tests.support.ports import free_port

HEALTH_PATH = "/healthz"
REPOSITORY = Path(__file__).resolve().parents[2]


@dataclass
class SwitchableBackend:
    """A backend whose behaviour each test switches while traffic flows; see the module doc."""

    name: str
    port: int = 0
    healthy: bool = True  # /healthz answers 200, else 503
    status: int = 200  # the status of every other answer
    delay: float = 0.0  # seconds before answering other requests
    reset: bool = False  # read other requests, then close the connection without an answer
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each non-probe request
    bodies: list[bytes] = field(default_factory=list)  # the body of each non-probe request
    probes: int = 0  # health requests received
    in_flight: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> Self:
        """Listens on `port` (a free one the first time); SO_REUSEADDR lets a restart rebind."""
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def kill(self) -> None:
        """Stops abruptly: the listening socket closes and every open connection is aborted."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await server.wait_closed()

    async def restart(self) -> Self:
        return await self.start()

    def served_between(self, start: float, end: float = float("inf")) -> int:
        return sum(start <= at < end for at in self.arrivals)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._answer_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # killed, or the peer went away
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answers the next request; False when the connection should end."""
        request = await read_request(reader, 0)
        if request is None:
            return False
        if request.target == HEALTH_PATH:
            self.probes += 1
            writer.write(response(200 if self.healthy else 503, b"health", self._headers()))
            return True
        return await self._answer_traffic(request, writer)

    async def _answer_traffic(self, request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        self.arrivals.append(time.monotonic())
        self.bodies.append(request.body)
        self.in_flight += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if self.reset or writer.is_closing():
            return False
        writer.write(response(self.status, self.name.encode(), self._headers()))
        await writer.drain()
        return True

    def _headers(self) -> dict[str, str]:
        return {"X-Served-By": self.name}


class ProcessBackend:
    """A SwitchableBackend (always healthy, answering 200) in a child Python process."""

    def __init__(self, name: str, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 10.0) -> Self:
        """Spawns the process and waits until its port accepts connections."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.switchable", self.name, str(self.port)],
            cwd=REPOSITORY,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        deadline = time.monotonic() + timeout
        while not await _accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"backend process {self.name} did not start listening")
            await asyncio.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL: the kernel closes the listening socket and every connection."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=5)


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


class Switchables:
    """Starts named backends for one test and kills whatever is left at its end."""

    def __init__(self) -> None:
        self.started: list[SwitchableBackend] = []
        self.processes: list[ProcessBackend] = []

    async def start(self, *names: str) -> list[SwitchableBackend]:
        backends = [await SwitchableBackend(name).start() for name in names]
        self.started += backends
        return backends

    async def start_process(self, name: str) -> ProcessBackend:
        backend = await ProcessBackend(name).start()
        self.processes.append(backend)
        return backend

    async def close(self) -> None:
        for backend in self.started:
            await backend.kill()
        for process in self.processes:
            process.kill()


@pytest.fixture(name="switchables")
async def switchables() -> AsyncIterator[Switchables]:
    """Import under an alias (`switchables as switchables_fixture  # noqa: F401`) to use it."""
    switchables = Switchables()
    yield switchables
    await switchables.close()


# ---------------------------------------------------------------- load


@dataclass(frozen=True, slots=True)
class Outcome:
    at: float  # monotonic: when the answer, or the failure, came
    status: int  # 0: no answer (a connection error or a time-out)
    backend: str  # X-Served-By; "" when no backend named itself
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class Load:
    """`clients` keep-alive connections sending GETs through `port` at `per_second` in total.

    Bounded in count (`seconds * per_second` requests at most) and time (`seconds`), or until
    `stop`; after a failure a client reconnects. Use as `async with Load(port) as load:`.
    """

    port: int
    clients: int = 4
    per_second: float = 200.0
    seconds: float = 20.0
    request_timeout: float = 3.0
    outcomes: list[Outcome] = field(default_factory=list)
    started: float = 0.0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list["asyncio.Task[None]"] = field(default_factory=list)

    async def __aenter__(self) -> Self:
        self.started = time.monotonic()
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    def failures(self, start: float = 0.0, end: float = float("inf")) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok and start <= o.at < end]

    def served(self, start: float = 0.0, end: float = float("inf")) -> dict[str, int]:
        """Successful answers per backend between `start` and `end` (monotonic)."""
        counts: dict[str, int] = {}
        for outcome in self._ok_between(start, end):
            counts[outcome.backend] = counts.get(outcome.backend, 0) + 1
        return counts

    def first_served_by(self, name: str, start: float = 0.0) -> float | None:
        return next(
            (o.at for o in self._ok_between(start, float("inf")) if o.backend == name), None
        )

    def _ok_between(self, start: float, end: float) -> Iterator[Outcome]:
        return (o for o in self.outcomes if o.ok and start <= o.at < end)

    async def _client(self) -> None:
        period = self.clients / self.per_second
        deadline = self.started + self.seconds
        budget = int(self.seconds * self.per_second / self.clients) + 1
        client: RawClient | None = None
        next_due = time.monotonic()
        try:
            for _ in range(budget):
                if self._stop.is_set() or time.monotonic() > deadline:
                    break
                await asyncio.sleep(max(0.0, next_due - time.monotonic()))
                next_due = max(next_due + period, time.monotonic() - period)  # no bursts
                client = await self._one_request(client)
        finally:
            if client is not None:
                await client.close()

    async def _one_request(self, client: RawClient | None) -> RawClient | None:
        """Sends one request and records it; the connection to use next (None: reconnect)."""
        try:
            client = client or await RawClient.connect(self.port)
            await client.send(get("/"))
            answer = await client.read_response(timeout=self.request_timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as error:
            self.outcomes.append(Outcome(time.monotonic(), 0, "", repr(error)))
            if client is not None:
                await client.close()
            return None
        backend = answer.header("X-Served-By") or ""
        self.outcomes.append(Outcome(time.monotonic(), answer.status, backend, answer.reason))
        if (answer.header("Connection") or "").lower() == "close":
            await client.close()
            return None
        return client


async def wait_for(condition: Callable[[], object], timeout: float, message: str) -> float:
    """Polls every 5 ms until `condition()`; returns the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (not within {timeout:g}s)")
        await asyncio.sleep(0.005)
    return time.monotonic()


# ---------------------------------------------------------------- as a process


async def _serve_forever(name: str, port: int) -> None:
    await SwitchableBackend(name, port).start()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()


if __name__ == "__main__":
    arguments = argparse.ArgumentParser(description="a SwitchableBackend in its own process")
    arguments.add_argument("name")
    arguments.add_argument("port", type=int)
    parsed = arguments.parse_args()
    asyncio.run(_serve_forever(parsed.name, parsed.port))
