"""Active health checks against real loopback backends: single probes and the checker's loops."""

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from loguru import logger

from loadweaver.config.addresses import UpstreamAddress
from loadweaver.config.models import HealthCheck, UpstreamTls
from loadweaver.health.checker import ActiveChecker, Target
from loadweaver.health.probe import MAX_BODY, ProbeResult, probe_http, probe_tcp
from loadweaver.health.verdict import Verdict
from loadweaver.proxy.tls import upstream_context
from tests.conftest import StartBackend
from tests.support.backend import Backend, ReceivedRequest, response
from tests.support.polling import eventually
from tests.support.ports import closed_port

TLS_NAME = "backend.internal"


@dataclass
class Scripted:
    """A backend's behaviour, switchable while it runs; it also counts concurrent requests."""

    status: int = 200
    body: bytes = b"ok"
    delay: float = 0.0  # before answering; `release` cuts it short at teardown
    raw: bytes | None = None  # sent instead of a response, then the connection closes
    in_flight: int = 0
    max_in_flight: int = 0
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each request
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        self.arrivals.append(time.monotonic())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), self.delay)
            if self.raw is not None:
                writer.write(self.raw)
                return False
            body = b"" if request.method == "HEAD" else self.body
            writer.write(response(self.status, body, {"Content-Length": str(len(self.body))}))
            return True
        finally:
            self.in_flight -= 1


@dataclass
class HealthBackend:
    backend: Backend
    script: Scripted

    @property
    def requests(self) -> list[ReceivedRequest]:
        return self.backend.requests

    def address(self, scheme: str = "http") -> UpstreamAddress:
        return UpstreamAddress(scheme, self.backend.host, self.backend.port)


StartHealthBackend = Callable[..., Awaitable[HealthBackend]]


@pytest.fixture
async def health_backend(backend_factory: StartBackend) -> AsyncIterator[StartHealthBackend]:
    """Starts scripted backends; at teardown their delayed answers are let go first."""
    scripts: list[Scripted] = []

    async def start(**behaviour: Any) -> HealthBackend:
        script = Scripted(**behaviour)
        scripts.append(script)
        return HealthBackend(await backend_factory(script), script)

    yield start
    for script in scripts:
        script.release.set()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=None),
    ) as client:
        yield client


def health(**fields: Any) -> HealthCheck:
    return HealthCheck(**{"interval": 1.0, "timeout": 0.5, **fields})


def fast_health(**fields: Any) -> HealthCheck:
    """Probes ten times a second, so the checker's loops can be watched within a test."""
    return health(
        **{"interval": 0.1, "fast_interval": 0.05, "timeout": 0.1, "rise": 2, "fall": 3, **fields}
    )


async def probe(
    session: aiohttp.ClientSession, backend: HealthBackend, **fields: Any
) -> ProbeResult:
    return await probe_http(health(**fields), backend.address(), session, None)


# ---- probe_http ----


async def test_a_healthy_backend_passes(
    health_backend: StartHealthBackend, session: aiohttp.ClientSession
) -> None:
    backend = await health_backend()
    result = await probe(session, backend)
    assert result.ok
    assert result.reason == "ok"
    assert 0 < result.latency_ms < 500


async def test_a_status_outside_expect_status_fails_naming_the_status(
    health_backend: StartHealthBackend, session: aiohttp.ClientSession
) -> None:
    backend = await health_backend(status=503)
    result = await probe(session, backend)
    assert result == ProbeResult(False, "status 503", result.latency_ms)
    assert (await probe(session, backend, expect_status="200-299,503")).ok


async def test_a_redirect_is_judged_by_its_status_and_not_followed(
    health_backend: StartHealthBackend, session: aiohttp.ClientSession
) -> None:
    backend = await health_backend(status=302)
    assert (await probe(session, backend)).ok
    assert not (await probe(session, backend, expect_status="200")).ok
    assert len(backend.requests) == 2


async def test_a_body_without_the_expected_text_fails(
    health_backend: StartHealthBackend, session: aiohttp.ClientSession
) -> None:
    backend = await health_backend(body=b'{"status": "degraded"}')
    result = await probe(session, backend, expect_body="healthy")
    assert not result.ok
    assert result.reason == "body lacks 'healthy'"
    assert (await probe(session, backend, expect_body='"degraded"')).ok


async def test_expect_body_searches_only_the_first_64_kib(
    health_backend: StartHealthBackend, session: aiohttp.ClientSession
) -> None:
    backend = await health_backend(body=b"x" * (MAX_BODY - 10) + b"ready" + b"x" * MAX_BODY)
    assert (await probe(session, backend, expect_body="ready")).ok
    backend.script.body = b"x" * MAX_BODY + b"ready"
    assert not (await probe(session, backend, expect_body="ready")).ok


async def test_a_slow_backend_times_out_after_the_check_timeout(
    health_backend: StartHealthBackend, session: aiohttp.ClientSession
) -> None:
    backend = await health_backend(delay=5.0)
    result = await probe(session, backend, timeout=0.2)
    assert not result.ok
    assert result.reason == "timed out after 0.2s"
    assert 190 <= result.latency_ms < 1000


async def test_a_closed_port_fails_with_connection_refused(
    session: aiohttp.ClientSession,
) -> None:
    address = UpstreamAddress("http", "127.0.0.1", closed_port())
    result = await probe_http(health(), address, session, None)
    assert not result.ok
    assert result.reason == "connection refused"


async def test_a_connection_closed_without_an_answer_fails(
    health_backend: StartHealthBackend, session: aiohttp.ClientSession
) -> None:
    backend = await health_backend(raw=b"")
    result = await probe(session, backend)
    assert not result.ok
    assert result.reason == "connection closed before a response"


async def test_a_malformed_answer_fails_as_an_invalid_response(
    health_backend: StartHealthBackend, session: aiohttp.ClientSession
) -> None:
    backend = await health_backend(raw=b"SMTP ready\r\n\r\n")
    result = await probe(session, backend)
    assert not result.ok
    assert result.reason == "invalid response: Bad status line"


async def test_the_request_carries_method_path_host_and_headers(
    health_backend: StartHealthBackend, session: aiohttp.ClientSession
) -> None:
    backend = await health_backend()
    await probe(session, backend, method="OPTIONS", path="/healthz?deep=1")
    await probe(session, backend, host="app.example", headers={"X-Probe-Token": "s3cret"})
    default, custom = backend.requests
    assert (default.method, default.target) == ("OPTIONS", "/healthz?deep=1")
    assert default.header("Host") == f"127.0.0.1:{backend.backend.port}"
    assert default.header("User-Agent") == "loadweaver-health"
    assert custom.header("Host") == "app.example"
    assert custom.header("X-Probe-Token") == "s3cret"


async def test_a_head_probe_passes_without_a_body(
    health_backend: StartHealthBackend, session: aiohttp.ClientSession
) -> None:
    backend = await health_backend(body=b"large page")
    result = await probe(session, backend, method="HEAD")
    assert result.ok
    assert backend.requests[0].method == "HEAD"


# ---- probe_tcp ----


async def test_a_tcp_probe_passes_when_the_port_accepts(
    health_backend: StartHealthBackend,
) -> None:
    backend = await health_backend()
    result = await probe_tcp(health(type="tcp"), backend.address())
    assert result == ProbeResult(True, "ok", result.latency_ms)
    await eventually(lambda: backend.backend.connections == 1)
    assert backend.requests == []


async def test_a_tcp_probe_of_a_closed_port_fails_with_connection_refused() -> None:
    address = UpstreamAddress("http", "127.0.0.1", closed_port())
    result = await probe_tcp(health(type="tcp"), address)
    assert not result.ok
    assert result.reason == "connection refused"


# ---- https backends ----


@dataclass
class TlsSetup:
    backend: HealthBackend
    ca_file: Path

    def tls(self, **fields: Any) -> UpstreamTls:
        return UpstreamTls(**{"ca_file": str(self.ca_file), "server_name": TLS_NAME, **fields})


@pytest.fixture
async def tls_setup(tmp_path: Path) -> AsyncIterator[TlsSetup]:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(TLS_NAME).configure_cert(context)
    script = Scripted()
    backend = await Backend(handler=script, name="tls", ssl_context=context).start()
    yield TlsSetup(HealthBackend(backend, script), ca_file)
    await backend.stop()


async def probe_tls(
    setup: TlsSetup, session: aiohttp.ClientSession, tls: UpstreamTls
) -> ProbeResult:
    address = setup.backend.address("https")
    context = upstream_context(tls)
    return await probe_http(health(), address, session, context, server_name=tls.server_name)


async def test_an_https_backend_passes_with_its_ca_file_and_verification_on(
    tls_setup: TlsSetup, session: aiohttp.ClientSession
) -> None:
    result = await probe_tls(tls_setup, session, tls_setup.tls())
    assert result.ok, result.reason
    assert tls_setup.backend.requests[0].method == "GET"


async def test_an_https_backend_with_an_unknown_ca_fails_verification(
    tls_setup: TlsSetup, session: aiohttp.ClientSession
) -> None:
    result = await probe_tls(tls_setup, session, tls_setup.tls(ca_file=None))
    assert not result.ok
    assert result.reason.startswith("TLS certificate rejected: ")
    assert (await probe_tls(tls_setup, session, tls_setup.tls(ca_file=None, verify=False))).ok


async def test_an_https_certificate_for_another_name_fails_verification(
    tls_setup: TlsSetup, session: aiohttp.ClientSession
) -> None:
    result = await probe_tls(tls_setup, session, tls_setup.tls(server_name=None))
    assert not result.ok
    assert result.reason.startswith("TLS certificate rejected: ")
    assert "mismatch" in result.reason.lower()


# ---- ActiveChecker ----


@dataclass
class Changes:
    """Records on_change calls."""

    seen: list[tuple[str, str, Verdict]] = field(default_factory=list)

    def __call__(self, pool: str, backend: str, verdict: Verdict) -> None:
        self.seen.append((pool, backend, verdict))

    def ups(self) -> list[bool]:
        return [verdict.up for _, _, verdict in self.seen]


@pytest.fixture
async def changes() -> Changes:
    return Changes()


@pytest.fixture
async def checker(changes: Changes) -> AsyncIterator[ActiveChecker]:
    active = ActiveChecker(changes)
    yield active
    await active.close()


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """The messages loguru logs during the test."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)


def target(backend: HealthBackend, name: str = "b1", **fields: Any) -> Target:
    return Target("app", name, backend.address(), fast_health(**fields), UpstreamTls())


async def test_a_failing_backend_goes_down_after_fall_probes_and_up_after_rise(
    health_backend: StartHealthBackend,
    checker: ActiveChecker,
    changes: Changes,
    log_lines: list[str],
) -> None:
    backend = await health_backend()
    checker.update([target(backend)])
    await eventually(lambda: checker.verdicts()[("app", "b1")].reason == "ok")
    backend.script.status = 503
    await eventually(lambda: changes.ups() == [False], message="never went down")
    pool, name, down = changes.seen[0]
    assert (pool, name) == ("app", "b1")
    assert (down.reason, down.failures) == ("status 503", 3)
    backend.script.status = 200
    await eventually(lambda: changes.ups() == [False, True], message="never came back")
    assert changes.seen[1][2].successes == 2
    assert checker.verdicts()[("app", "b1")].up
    changes_logged = [line for line in log_lines if line.startswith("backend app/b1")]
    assert changes_logged == [
        "backend app/b1 is DOWN: status 503 (3 failures)",
        "backend app/b1 is UP again",
    ]


async def test_a_backend_between_states_is_probed_at_the_fast_interval(
    health_backend: StartHealthBackend, checker: ActiveChecker, changes: Changes
) -> None:
    backend = await health_backend(status=503)
    checker.update([target(backend, interval=1.0, timeout=0.5, fast_interval=0.05, jitter=0)])
    await eventually(lambda: changes.ups() == [False], timeout=3.0)
    first, _, third = backend.script.arrivals[:3]
    assert third - first < 0.5  # three probes to fall, far quicker than two 1 s intervals
    await asyncio.sleep(0.3)
    assert len(backend.script.arrivals) == 3  # settled down: back to the 1 s interval


async def test_each_backend_gets_about_one_probe_per_interval(
    health_backend: StartHealthBackend, checker: ActiveChecker
) -> None:
    backends = [await health_backend() for _ in range(3)]
    checker.update([target(backend, f"b{index}") for index, backend in enumerate(backends)])
    await eventually(lambda: all(backend.requests for backend in backends))
    before = [len(backend.requests) for backend in backends]
    await asyncio.sleep(1.0)  # ten intervals
    counts = [
        len(backend.requests) - start for backend, start in zip(backends, before, strict=True)
    ]
    assert all(7 <= count <= 11 for count in counts), counts
    assert checker.probes_sent >= sum(counts)


async def test_removing_a_target_stops_its_probes_and_forgets_its_verdict(
    health_backend: StartHealthBackend, checker: ActiveChecker
) -> None:
    kept, removed = await health_backend(), await health_backend()
    checker.update([target(kept, "kept"), target(removed, "removed")])
    await eventually(lambda: kept.requests and removed.requests)
    checker.update([target(kept, "kept")])
    await asyncio.sleep(0.05)  # a request already on the wire may still land
    stopped_at = len(removed.requests)
    kept_at = len(kept.requests)
    await asyncio.sleep(0.5)
    assert len(removed.requests) == stopped_at
    assert len(kept.requests) > kept_at
    assert list(checker.verdicts()) == [("app", "kept")]


async def test_a_changed_check_restarts_the_loop_keeping_the_state(
    health_backend: StartHealthBackend, checker: ActiveChecker, changes: Changes
) -> None:
    backend = await health_backend(status=503)
    checker.update([target(backend)])
    await eventually(lambda: changes.ups() == [False])
    checker.update([target(backend, path="/ready")])
    await eventually(lambda: backend.requests[-1].target == "/ready")
    await eventually(lambda: checker.verdicts()[("app", "b1")].failures >= 5)
    assert changes.ups() == [False]  # still down: no fresh start as up


async def test_a_seeded_verdict_is_where_a_backend_starts(
    health_backend: StartHealthBackend, checker: ActiveChecker, changes: Changes
) -> None:
    backend = await health_backend()
    stored = Verdict(up=False, reason="status 503", changed_at=time.time() - 60, failures=7)
    checker.seed({("app", "b1"): stored})
    checker.update([target(backend)])
    assert checker.verdicts()[("app", "b1")] == stored
    await eventually(lambda: changes.ups() == [True])


async def test_probes_stay_under_the_concurrency_cap(
    health_backend: StartHealthBackend, changes: Changes
) -> None:
    slow = await health_backend(delay=0.08)
    checker = ActiveChecker(changes, max_concurrent=2)
    try:
        slow_check = {"interval": 0.2, "timeout": 0.2}
        checker.update([target(slow, f"b{index}", **slow_check) for index in range(8)])
        await eventually(lambda: slow.script.max_in_flight >= 2)
        await asyncio.sleep(0.5)
        assert slow.script.max_in_flight == 2
        assert all(verdict.up for verdict in checker.verdicts().values())
    finally:
        await checker.close()


async def test_a_failing_on_change_does_not_stop_the_loop(
    health_backend: StartHealthBackend,
) -> None:
    calls: list[bool] = []

    def broken(pool: str, backend: str, verdict: Verdict) -> None:
        calls.append(verdict.up)
        raise RuntimeError("listener broke")

    backend = await health_backend(status=500)
    checker = ActiveChecker(broken)
    try:
        checker.update([target(backend, fall=1, rise=1)])
        await eventually(lambda: calls == [False])
        backend.script.status = 200
        await eventually(lambda: calls == [False, True])
    finally:
        await checker.close()


async def test_a_tcp_target_at_a_closed_port_goes_down(
    checker: ActiveChecker, changes: Changes
) -> None:
    address = UpstreamAddress("http", "127.0.0.1", closed_port())
    checker.update([Target("app", "tcp", address, fast_health(type="tcp"), UpstreamTls())])
    await eventually(lambda: changes.ups() == [False])
    assert changes.seen[0][2].reason == "connection refused"


async def test_an_https_target_is_probed_with_its_tls_settings(
    tls_setup: TlsSetup, checker: ActiveChecker
) -> None:
    address = tls_setup.backend.address("https")
    checker.update([Target("app", "secure", address, fast_health(), tls_setup.tls())])
    await eventually(lambda: checker.verdicts()[("app", "secure")].reason == "ok")


async def test_close_stops_every_loop(health_backend: StartHealthBackend, changes: Changes) -> None:
    backend = await health_backend()
    checker = ActiveChecker(changes)
    checker.update([target(backend)])
    await eventually(lambda: backend.requests)
    await checker.close()
    await asyncio.sleep(0.05)
    stopped_at = len(backend.requests)
    await asyncio.sleep(0.3)
    assert len(backend.requests) == stopped_at
    with pytest.raises(RuntimeError, match="closed"):
        checker.update([target(backend)])
