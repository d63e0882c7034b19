"""Failover figures, measured on one in-process node with three loopback backends under steady
load (4 keep-alive clients, 300 requests/s in total), printed (run with -s) so they can be
quoted, and asserted loosely so a busy 2-core machine does not fail them:

  kills        SIGKILL one backend process (a different one each trial, three trials), with
               retries on (the default) and off: requests failed per kill, and the time until
               the node stops using it (passive ejection, or the active check if that came
               first). 1.5 s after the kill it is restarted on its port: the time until it
               serves again (its 1 s ejection is over by then, so the active check's rise
               decides).
  checks       switch one backend's /healthz to 503 and back (three trials): the time until the
               node marks it down and its last request, then the time until it serves again.

Active checks: interval 200 ms, timeout 100 ms, fast_interval 100 ms, fall 3, rise 2.
"""

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import StartProxy
from tests.support.nodes import Proxy
from tests.support.switchable import (
    Load,
    ProcessBackend,
    SwitchableBackend,
    Switchables,
    wait_for,
)
from tests.support.switchable import switchables as switchables_fixture  # noqa: F401
from tests.support.upstream import metric

CLIENTS = 4
PER_SECOND = 300.0
TRIALS = 3
INTERVAL, FALL, RISE = 0.2, 3, 2
HEALTH = {
    "path": "/healthz",
    "interval": INTERVAL,
    "timeout": 0.1,
    "fast_interval": 0.1,
    "rise": RISE,
    "fall": FALL,
}
BASE_EJECTION = 1.0
STEADY = 0.5  # seconds of load before each fault
AFTER_KILL = 1.5  # seconds of load counted after each kill


pytestmark = pytest.mark.usefixtures("quiet_node_logs")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def pool_of(backends: Sequence[SwitchableBackend | ProcessBackend], **settings: Any) -> Any:
    return {
        "health": HEALTH,
        **settings,
        "backends": [{"name": backend.name, "url": backend.url} for backend in backends],
    }


def healthy(proxy: Proxy, name: str) -> float:
    return metric(proxy.node, "loadweaver_backend_healthy", {"pool": "app", "backend": name})


def ejections(proxy: Proxy) -> float:
    return metric(proxy.node, "loadweaver_passive_ejections_total", {"pool": "app"})


# ---------------------------------------------------------------- kills


@dataclass
class Kill:
    backend: str
    failed: int
    total: int
    unused_after: float  # kill -> the node no longer picks it
    passive: bool  # passive detection ejected it (else the active check marked it down first)
    back_after: float  # restart -> its first request served

    def __str__(self) -> str:
        how = "passive ejection" if self.passive else "active check"
        return (
            f"  kill {self.backend}: {self.failed} failed of {self.total}; unused after "
            f"{ms(self.unused_after)} ({how}); serving {self.back_after:.2f} s after restart"
        )


async def one_kill(proxy: Proxy, backend: ProcessBackend) -> Kill:
    async with Load(proxy.port, CLIENTS, PER_SECOND, seconds=STEADY + AFTER_KILL + 5) as load:
        await wait_for(lambda: len(load.served()) == 3, 3.0, "not every backend serving")
        await asyncio.sleep(STEADY)
        ejected_before = ejections(proxy)
        killed_at = time.monotonic()
        backend.kill()
        unused_at = await wait_for(lambda: healthy(proxy, backend.name) == 0, 3.0, "still used")
        passive = ejections(proxy) > ejected_before
        await asyncio.sleep(max(0.0, killed_at + AFTER_KILL - time.monotonic()))
        failed, total = len(load.failures()), load.total
        restarted_at = time.monotonic()
        await backend.start()
        back_at = await wait_for(
            lambda: load.first_served_by(backend.name, restarted_at), 5.0, "never back"
        )
    return Kill(backend.name, failed, total, unused_at - killed_at, passive, back_at - restarted_at)


@pytest.mark.parametrize("retry_attempts", [2, 0], ids=["retries", "no_retries"])
async def test_requests_failed_per_backend_kill(
    proxy_factory: StartProxy, switchables: Switchables, retry_attempts: int
) -> None:
    backends = [await switchables.start_process(name) for name in ("b0", "b1", "b2")]
    settings = {
        "retries": {"attempts": retry_attempts},
        "passive": {"base_ejection": BASE_EJECTION},
    }
    proxy = await proxy_factory(pool=pool_of(backends, **settings))
    kills = [await one_kill(proxy, backends[trial % 3]) for trial in range(TRIALS)]
    failed = [kill.failed for kill in kills]
    print(f"\nSIGKILL of one of 3 backends, retries.attempts={retry_attempts}:")
    print("\n".join(str(kill) for kill in kills))
    print(
        f"  failed per kill: mean {statistics.mean(failed):.1f}, max {max(failed)}; "
        f"unused after: max {ms(max(kill.unused_after for kill in kills))}"
    )
    assert all(kill.unused_after < 1.0 for kill in kills)
    assert all(kill.back_after < BASE_EJECTION + RISE * INTERVAL + 2.0 for kill in kills)
    if retry_attempts:
        assert all(kill.failed <= 0.001 * kill.total for kill in kills), failed
    else:
        assert all(kill.failed <= 50 for kill in kills), failed  # a handful, until ejection


# ---------------------------------------------------------------- active checks


@dataclass
class Flip:
    backend: str
    marked_down: float  # /healthz failing -> marked down
    last_request: float  # /healthz failing -> its last request
    back: float  # /healthz passing -> its first request served
    failed: int

    def __str__(self) -> str:
        return (
            f"  {self.backend}: marked down after {ms(self.marked_down)}, last request after "
            f"{ms(self.last_request)}; serving {ms(self.back)} after recovering; "
            f"{self.failed} failed"
        )


async def one_flip(proxy: Proxy, backend: SwitchableBackend) -> Flip:
    async with Load(proxy.port, CLIENTS, PER_SECOND, seconds=STEADY + 5) as load:
        await wait_for(lambda: len(load.served()) == 3, 3.0, "not every backend serving")
        await asyncio.sleep(STEADY)
        failing_at = time.monotonic()
        backend.healthy = False
        down_at = await wait_for(lambda: healthy(proxy, backend.name) == 0, 3.0, "never down")
        await asyncio.sleep(0.4)  # the last requests picked before it went down arrive
        last_request = max(backend.arrivals) - failing_at
        recovered_at = time.monotonic()
        backend.healthy = True
        back_at = await wait_for(
            lambda: load.first_served_by(backend.name, recovered_at), 3.0, "never back"
        )
    return Flip(
        backend.name,
        down_at - failing_at,
        last_request,
        back_at - recovered_at,
        len(load.failures()),
    )


async def test_time_to_eject_and_recover_by_active_checks(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    backends = await switchables.start("b0", "b1", "b2")
    proxy = await proxy_factory(pool=pool_of(backends))
    flips = [await one_flip(proxy, backends[trial % 3]) for trial in range(TRIALS)]
    print(f"\n/healthz failing then passing (interval {ms(INTERVAL)}, fall {FALL}, rise {RISE}):")
    print("\n".join(str(flip) for flip in flips))
    print(
        f"  marked down: max {ms(max(flip.marked_down for flip in flips))} "
        f"(bound {ms(FALL * INTERVAL + 0.5)}); back: max {ms(max(flip.back for flip in flips))} "
        f"(bound {ms(RISE * INTERVAL + 0.5)})"
    )
    assert all(flip.last_request <= FALL * INTERVAL + 0.5 for flip in flips)
    assert all(flip.back <= RISE * INTERVAL + 0.5 for flip in flips)
    assert all(flip.failed == 0 for flip in flips)
