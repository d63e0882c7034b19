"""Failover through a running node under load: real backends fail their checks, get killed
(in-process and as SIGKILLed processes) and come back, while keep-alive clients keep sending.

Covered: ejection by active checks and by passive detection, recovery and slow start, the panic
threshold, backup failover and failback, retries (statuses, resets, bodies, budget), the
circuit breaker, flap damping, and passive detection's cap and back-off.
"""

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from tests.conftest import StartProxy
from tests.support.client import RawClient, RawResponse, get
from tests.support.nodes import Proxy
from tests.support.polling import eventually
from tests.support.switchable import (
    Load,
    ProcessBackend,
    SwitchableBackend,
    Switchables,
    wait_for,
)
from tests.support.switchable import switchables as switchables_fixture  # noqa: F401
from tests.support.upstream import local_reply_count, metric

INTERVAL = 0.2
FALL = 3
RISE = 2
SLACK = 0.5  # what the spec allows on top of the check's own timing
HEALTH = {
    "path": "/healthz",
    "interval": INTERVAL,
    "timeout": 0.1,
    "fast_interval": 0.1,
    "rise": RISE,
    "fall": FALL,
}
NO_RETRIES = {"attempts": 0}
MAX_FAILED_FRACTION = 0.001


def pool_of(
    backends: Sequence[SwitchableBackend | ProcessBackend],
    health: dict[str, Any] | None = HEALTH,
    per_backend: dict[str, dict[str, Any]] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """A pool section naming each backend by its own name; `per_backend` adds settings."""
    extra = per_backend or {}
    return {
        **({"health": health} if health is not None else {}),
        **settings,
        "backends": [
            {"name": backend.name, "url": backend.url, **extra.get(backend.name, {})}
            for backend in backends
        ],
    }


def healthy(proxy: Proxy, name: str) -> float:
    return metric(proxy.node, "loadweaver_backend_healthy", {"pool": "app", "backend": name})


def panic(proxy: Proxy) -> float:
    return metric(proxy.node, "loadweaver_pool_panic", {"pool": "app"})


def retries(proxy: Proxy, reason: str) -> float:
    return metric(proxy.node, "loadweaver_retries_total", {"pool": "app", "reason": reason})


def ejections(proxy: Proxy) -> float:
    return metric(proxy.node, "loadweaver_passive_ejections_total", {"pool": "app"})


async def all_serving(load: Load, names: Sequence[str]) -> None:
    await eventually(lambda: set(names) <= set(load.served()), 3.0, f"not all of {names} served")


async def marked(proxy: Proxy, names: Sequence[str], value: float, timeout: float = 3.0) -> float:
    """Waits until every named backend's healthy gauge reads `value`; returns when."""
    return await wait_for(
        lambda: all(healthy(proxy, name) == value for name in names),
        timeout,
        f"{names} never marked healthy={value}",
    )


async def served_during(load: Load, seconds: float) -> dict[str, int]:
    """Who served the load's requests during the next `seconds`."""
    start = time.monotonic()
    await asyncio.sleep(seconds)
    return load.served(start)


def assert_few_failures(load: Load) -> None:
    failed = load.failures()
    assert len(failed) <= MAX_FAILED_FRACTION * load.total, (len(failed), load.total, failed[:5])


# ---- ejection and recovery under load ----


async def test_a_backend_failing_its_health_check_stops_getting_traffic_within_fall_intervals(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    b0, b1, b2 = await switchables.start("b0", "b1", "b2")
    proxy = await proxy_factory(pool=pool_of([b0, b1, b2]))
    async with Load(proxy.port) as load:
        await all_serving(load, ["b0", "b1", "b2"])
        failed_at = time.monotonic()
        b1.healthy = False
        await marked(proxy, ["b1"], 0)
        after = await served_during(load, 0.5)
    last_request = max(b1.arrivals)
    assert last_request - failed_at <= FALL * INTERVAL + SLACK
    assert set(after) == {"b0", "b2"}
    assert load.failures() == []


async def test_a_killed_backend_fails_almost_no_requests_and_is_ejected_within_a_second(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    """No active checks here: passive detection alone ejects it, on its connect failures."""
    b0, b1, b2 = await switchables.start("b0", "b1", "b2")
    proxy = await proxy_factory(pool=pool_of([b0, b1, b2], health=None))
    async with Load(proxy.port) as load:
        await all_serving(load, ["b0", "b1", "b2"])
        killed_at = time.monotonic()
        await b1.kill()
        ejected_at = await marked(proxy, ["b1"], 0, timeout=2.0)
        await asyncio.sleep(0.1)  # requests already connecting to b1 settle
        tries_after_ejection = retries(proxy, "connect_failure")
        after = await served_during(load, 0.5)
    assert ejected_at - killed_at < 1.0
    assert ejections(proxy) == 1
    assert retries(proxy, "connect_failure") == tries_after_ejection  # b1 is not tried any more
    assert set(after) == {"b0", "b2"}
    assert_few_failures(load)


async def test_a_sigkilled_backend_process_fails_almost_no_requests_and_serves_after_restart(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    b0, b1, b2 = [await switchables.start_process(name) for name in ("b0", "b1", "b2")]
    base_ejection = 1.0
    passive = {"base_ejection": base_ejection}
    proxy = await proxy_factory(pool=pool_of([b0, b1, b2], passive=passive))
    async with Load(proxy.port, seconds=30) as load:
        await all_serving(load, ["b0", "b1", "b2"])
        killed_at = time.monotonic()
        b1.kill()
        ejected_at = await marked(proxy, ["b1"], 0, timeout=2.0)
        await b1.start()  # the same port again
        back_at = await wait_for(
            lambda: load.first_served_by("b1", killed_at), 5.0, "b1 never served again"
        )
    assert ejected_at - killed_at < 1.0
    # It is back once its passive ejection ends and its checks pass again, whichever is later.
    assert back_at - killed_at < base_ejection + RISE * INTERVAL + SLACK + 1.0
    assert_few_failures(load)


async def test_a_recovered_backend_returns_within_rise_intervals(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    b0, b1, b2 = await switchables.start("b0", "b1", "b2")
    proxy = await proxy_factory(pool=pool_of([b0, b1, b2]))
    async with Load(proxy.port) as load:
        await all_serving(load, ["b0", "b1", "b2"])
        b1.healthy = False
        await marked(proxy, ["b1"], 0)
        await asyncio.sleep(INTERVAL)  # settled: probed at the normal interval again
        recovered_at = time.monotonic()
        b1.healthy = True
        back_at = await wait_for(
            lambda: load.first_served_by("b1", recovered_at), 3.0, "b1 never served again"
        )
    assert back_at - recovered_at <= RISE * INTERVAL + SLACK
    assert load.failures() == []


SLOW_START = 2.0


async def test_a_recovered_backend_ramps_up_over_its_slow_start(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    b0, b1, b2 = await switchables.start("b0", "b1", "b2")
    slow = {"b1": {"slow_start": SLOW_START}}
    proxy = await proxy_factory(pool=pool_of([b0, b1, b2], per_backend=slow))
    joined_at = time.monotonic()
    async with Load(proxy.port, per_second=300) as load:
        b1.healthy = False
        await marked(proxy, ["b1"], 0)
        await asyncio.sleep(max(0.0, joined_at + SLOW_START + 0.2 - time.monotonic()))
        recovered_at = time.monotonic()
        b1.healthy = True  # the ramp after joining is over: any ramp now is the recovery's
        back_at = await wait_for(
            lambda: load.first_served_by("b1", recovered_at), 3.0, "b1 never served again"
        )
        await asyncio.sleep(SLOW_START + 0.6)
    early = share_of("b1", load.served(back_at, back_at + 0.6))
    late = share_of("b1", load.served(back_at + SLOW_START, back_at + SLOW_START + 0.6))
    assert late > 0.25, late  # a full third, give or take
    assert early < 0.5 * late, (early, late)


def share_of(name: str, served: dict[str, int]) -> float:
    return served.get(name, 0) / max(1, sum(served.values()))


# ---- panic threshold ----


async def four_behind_a_node(
    proxy_factory: StartProxy, switchables: Switchables
) -> tuple[Proxy, list[SwitchableBackend]]:
    backends = await switchables.start("b0", "b1", "b2", "b3")
    proxy = await proxy_factory(pool=pool_of(backends, panic_threshold=50))
    return proxy, backends


async def test_with_half_the_backends_unhealthy_only_the_healthy_half_serves(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    proxy, backends = await four_behind_a_node(proxy_factory, switchables)
    for backend in backends[2:]:
        backend.healthy = False
    async with Load(proxy.port) as load:
        await marked(proxy, ["b2", "b3"], 0)
        await asyncio.sleep(0.1)  # requests picked just before settle
        served = await served_during(load, 0.8)
    assert set(served) == {"b0", "b1"}
    assert panic(proxy) == 0


async def test_below_the_panic_threshold_traffic_spreads_over_every_backend(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    proxy, backends = await four_behind_a_node(proxy_factory, switchables)
    for backend in backends[1:]:
        backend.healthy = False
    async with Load(proxy.port) as load:
        await marked(proxy, ["b1", "b2", "b3"], 0)
        served = await served_during(load, 0.8)
    assert panic(proxy) == 1
    assert set(served) == {"b0", "b1", "b2", "b3"}
    assert min(served.values()) > 0.15 * sum(served.values()), served  # spread, not trickled
    assert load.failures() == []


# ---- backups ----


async def test_a_backup_serves_only_while_every_primary_is_down_and_traffic_fails_back(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    b0, b1, spare = await switchables.start("b0", "b1", "spare")
    backup = {"spare": {"backup": True}}
    proxy = await proxy_factory(pool=pool_of([b0, b1, spare], per_backend=backup))
    async with Load(proxy.port) as load:
        await all_serving(load, ["b0", "b1"])
        b0.healthy = False
        await marked(proxy, ["b0"], 0)
        one_primary_left = await served_during(load, 0.5)
        every_primary_failing_at = time.monotonic()
        b1.healthy = False
        await marked(proxy, ["b1"], 0)
        no_primary_left = await served_during(load, 0.5)
        b0.healthy = b1.healthy = True
        primary_back_at = await marked(proxy, ["b0", "b1"], 1)
        await asyncio.sleep(0.05)  # requests picked just before settle
        primaries_back = await served_during(load, 0.5)
    assert set(one_primary_left) == {"b1"}
    assert set(no_primary_left) == {"spare"}
    assert set(primaries_back) == {"b0", "b1"}
    assert load.failures() == []
    assert every_primary_failing_at <= min(spare.arrivals)
    assert max(spare.arrivals) <= primary_back_at + 0.05  # picked before the change at most


# ---- retries ----


async def send(client: RawClient, request: bytes) -> RawResponse:
    await client.send(request)
    return await client.read_response()


def post(body: bytes) -> bytes:
    head = f"POST /form HTTP/1.1\r\nHost: example.test\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def three_with_b1_answering(
    proxy_factory: StartProxy, switchables: Switchables, **behaviour: Any
) -> tuple[Proxy, list[SwitchableBackend]]:
    """b0, b1 and b2 behind a node without active checks; b1 behaves as told."""
    backends = await switchables.start("b0", "b1", "b2")
    for name, value in behaviour.items():
        setattr(backends[1], name, value)
    proxy = await proxy_factory(pool=pool_of(backends, health=None))
    return proxy, backends


async def test_a_503_is_retried_on_another_backend_and_counted(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    proxy, (_, b1, _) = await three_with_b1_answering(proxy_factory, switchables, status=503)
    client = await proxy.connect()
    answers = [await send(client, get()) for _ in range(12)]
    assert [answer.status for answer in answers] == [200] * 12
    assert {answer.header("X-Served-By") for answer in answers} == {"b0", "b2"}
    assert len(b1.arrivals) >= 2
    assert retries(proxy, "status 503") == len(b1.arrivals)


async def test_a_reset_before_the_response_is_retried_on_another_backend(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    proxy, (_, b1, _) = await three_with_b1_answering(proxy_factory, switchables, reset=True)
    client = await proxy.connect()
    answers = [await send(client, get()) for _ in range(6)]
    assert [answer.status for answer in answers] == [200] * 6
    assert len(b1.arrivals) >= 1
    assert retries(proxy, "reset_before_response") == len(b1.arrivals)


async def test_a_post_with_a_small_body_is_retried_on_503_with_its_body(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    proxy, (b0, b1, b2) = await three_with_b1_answering(proxy_factory, switchables, status=503)
    client = await proxy.connect()
    bodies = [f"field={index}&".encode() * 10 for index in range(6)]
    answers = [await send(client, post(body)) for body in bodies]
    assert [answer.status for answer in answers] == [200] * 6
    assert retries(proxy, "status 503") == len(b1.arrivals) >= 1
    assert sorted(b0.bodies + b2.bodies) == sorted(bodies)  # each whole body, served once


async def test_a_body_larger_than_max_buffered_body_is_not_retried_on_status(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    failing, working = await switchables.start("failing", "working")
    failing.status = 503
    settings: dict[str, Any] = {"retries": {"max_buffered_body": 1024}}
    proxy = await proxy_factory(pool=pool_of([failing, working], health=None, **settings))
    client = await proxy.connect()
    answers = [await send(client, post(b"x" * 4096)) for _ in range(4)]
    by_backend = {(answer.header("X-Served-By"), answer.status) for answer in answers}
    assert by_backend == {("failing", 503), ("working", 200)}
    assert retries(proxy, "status 503") == 0
    small = [await send(client, post(b"x" * 512)) for _ in range(4)]
    assert [answer.status for answer in small] == [200] * 4  # under the limit: retried
    small_to_failing = len(failing.arrivals) - 2
    assert retries(proxy, "status 503") == small_to_failing >= 1


async def test_retries_never_go_to_the_same_backend_twice(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    backends = await switchables.start("b0", "b1", "b2")
    for backend in backends:
        backend.status = 503
    settings: dict[str, Any] = {"retries": {"attempts": 5}}
    proxy = await proxy_factory(pool=pool_of(backends, health=None, **settings))
    client = await proxy.connect()
    answer = await send(client, get())
    assert answer.status == 503
    assert [len(backend.arrivals) for backend in backends] == [1, 1, 1]
    assert retries(proxy, "status 503") == 2


async def test_a_small_retry_budget_runs_out_when_many_requests_fail_at_once(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    backends = await switchables.start("b0", "b1", "b2")
    for backend in backends:
        backend.status, backend.delay = 503, 0.3  # so the failures and retries overlap
    settings: dict[str, Any] = {"retries": {"attempts": 1, "budget": 0.1}}
    proxy = await proxy_factory(pool=pool_of(backends, health=None, **settings))
    requests = 60
    clients = [await proxy.connect() for _ in range(requests)]
    answers = await asyncio.gather(*(send(client, get()) for client in clients))
    assert all(answer.status == 503 for answer in answers)
    retried = retries(proxy, "status 503")
    refused = metric(proxy.node, "loadweaver_retry_budget_exhausted_total", {"pool": "app"})
    assert refused > 0
    assert 3 <= retried < requests / 2, retried
    assert retried + refused == requests  # each first failure was either retried or refused


# ---- circuit breaker ----


async def test_a_backend_at_max_in_flight_gets_a_fast_503_from_the_circuit_breaker(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    (slow,) = await switchables.start("slow")
    slow.delay = 1.0
    settings: dict[str, Any] = {"circuit_breaker": {"max_in_flight": 2}}
    proxy = await proxy_factory(pool=pool_of([slow], health=None, **settings))
    first, second, third = [await proxy.connect() for _ in range(3)]
    waiting = [asyncio.create_task(send(client, get())) for client in (first, second)]
    await eventually(lambda: slow.in_flight == 2)
    started = time.monotonic()
    refused = await send(third, get())
    elapsed = time.monotonic() - started
    assert refused.status == 503
    assert elapsed < 0.3
    labels = {"pool": "app", "limit": "max_in_flight"}
    assert metric(proxy.node, "loadweaver_circuit_breaker_rejections_total", labels) == 1
    assert local_reply_count(proxy.node, 503, "circuit_breaker") == 1
    assert [answer.status for answer in await asyncio.gather(*waiting)] == [200, 200]


# ---- flap damping ----

FLAPPY_HEALTH = {
    **HEALTH,
    "interval": 0.1,
    "fast_interval": 0.1,
    "rise": 1,
    "fall": 1,
    "flap_limit": 3,
    "flap_window": 5.0,
    "flap_hold": 1.5,
}
FLAP_HOLD = 1.5


async def flap_three_times(proxy: Proxy, backend: SwitchableBackend) -> float:
    """Down, up, down again: the third change within the window; returns when it came."""
    for healthy_now in (False, True):
        backend.healthy = healthy_now
        await marked(proxy, [backend.name], 1 if healthy_now else 0)
    backend.healthy = False
    held_at = await marked(proxy, [backend.name], 0)
    backend.healthy = True  # and it stays healthy from now on
    return held_at


async def test_a_flapping_backend_is_held_down_for_flap_hold_while_its_checks_pass(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    b0, flappy = await switchables.start("b0", "flappy")
    proxy = await proxy_factory(pool=pool_of([b0, flappy], health=FLAPPY_HEALTH))
    async with Load(proxy.port) as load:
        await all_serving(load, ["b0", "flappy"])
        held_at = await flap_three_times(proxy, flappy)
        probes_at_hold = flappy.probes
        await asyncio.sleep(FLAP_HOLD - 0.3)
        still_held = healthy(proxy, "flappy") == 0
        passing_probes = flappy.probes - probes_at_hold
        back_at = await marked(proxy, ["flappy"], 1, timeout=FLAP_HOLD + 1.0)
    assert still_held
    assert passing_probes >= 5  # probed (and passing) every 0.1 s while held
    assert load.served(held_at + 0.1, held_at + FLAP_HOLD - 0.2).keys() == {"b0"}
    assert FLAP_HOLD - 0.1 <= back_at - held_at <= FLAP_HOLD + 0.1 + SLACK
    assert load.failures() == []
    assert metric(proxy.node, "loadweaver_health_flaps_total", {"pool": "app"}) == 1


# ---- passive detection ----


async def test_max_ejected_percent_caps_passive_ejections(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    backends = await switchables.start("b0", "b1")
    passive = {"consecutive_failures": 3, "max_ejected_percent": 50}
    pool = pool_of(backends, health=None, passive=passive, retries=NO_RETRIES)
    proxy = await proxy_factory(pool=pool)
    for backend in backends:
        await backend.kill()
    client = await proxy.connect()
    for _ in range(20):
        answer = await send(client, get())
        assert answer.status == 502
        if (answer.header("Connection") or "").lower() == "close":
            await client.close()
            client = await proxy.connect()
    assert ejections(proxy) == 1
    assert sorted([healthy(proxy, "b0"), healthy(proxy, "b1")]) == [0, 1]


async def test_each_ejection_in_a_row_lasts_longer_than_the_one_before(
    proxy_factory: StartProxy, switchables: Switchables
) -> None:
    b0, dead = await switchables.start("b0", "dead")
    base = 0.4
    passive = {"consecutive_failures": 2, "base_ejection": base}
    proxy = await proxy_factory(pool=pool_of([b0, dead], health=None, passive=passive))
    await dead.kill()
    async with Load(proxy.port) as load:
        starts = await ejection_starts(proxy, count=3, timeout=base * 3 + 2.0)
    # Under steady load a readmitted dead backend fails again within milliseconds, so the time
    # from one ejection to the next is the first one's length.
    first, second = starts[1] - starts[0], starts[2] - starts[1]
    assert base - 0.1 <= first <= base + 0.3, (first, second)
    assert 2 * base - 0.1 <= second <= 2 * base + 0.3, (first, second)
    assert_few_failures(load)


async def ejection_starts(proxy: Proxy, count: int, timeout: float) -> list[float]:
    """When each of the pool's next `count` passive ejections happened, by its counter."""
    starts: list[float] = []
    seen = ejections(proxy)
    deadline = time.monotonic() + timeout
    while len(starts) < count:
        assert time.monotonic() < deadline, f"saw only the ejections at {starts}"
        if (now := ejections(proxy)) > seen:
            starts.append(time.monotonic())
            seen = now
        await asyncio.sleep(0.005)
    return starts
