"""One conformance suite for every balancing Strategy in the registry, wrapped or not."""

from collections import Counter
from collections.abc import Sequence

import pytest

from loadweaver.balancing import Backend, NoBackend, PickContext, Strategy, create_strategy
from loadweaver.balancing.base import NO_BACKENDS, NONE_AVAILABLE
from loadweaver.balancing.registry import STRATEGIES
from loadweaver.balancing.sticky import StickyPolicy
from tests.support.balancing import make_backend, make_backends

ALGORITHMS = sorted(STRATEGIES)
SECRET = b"conformance-secret-0123456789"


def build(algorithm: str, backends: Sequence[Backend], sticky: bool) -> Strategy:
    policy = StickyPolicy("app", 3600, SECRET, cookie="lw") if sticky else None
    return create_strategy(algorithm, backends, policy)


@pytest.fixture(params=[False, True], ids=["plain", "sticky"])
def sticky(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def picks(strategy: Strategy, count: int, avoid: Sequence[Backend] = ()) -> list[Backend]:
    chosen = []
    for index in range(count):
        backend = strategy.pick(PickContext(f"192.0.2.{index % 250}"), avoid)
        assert isinstance(backend, Backend), backend
        chosen.append(backend)
    return chosen


def run_requests(strategy: Strategy, backends: Sequence[Backend], count: int) -> Counter[str]:
    """Picks with the data plane's bookkeeping around each request."""
    seen: Counter[str] = Counter()
    for index in range(count):
        backend = strategy.pick(PickContext(f"198.51.100.{index % 250}"))
        assert isinstance(backend, Backend)
        backend.load.in_flight += 1
        if strategy.load_aware:
            strategy.on_acquire(backend)
        backend.load.in_flight -= 1
        if strategy.load_aware:
            strategy.on_release(backend)
        seen[backend.name] += 1
    assert all(backend.load.in_flight == 0 for backend in backends)
    return seen


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_pick_is_one_of_the_pool(algorithm: str, sticky: bool) -> None:
    pool = make_backends(1, 1, 1)
    assert set(picks(build(algorithm, pool, sticky), 60)) <= set(pool)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_backend_gets_traffic(algorithm: str, sticky: bool) -> None:
    pool = make_backends(1, 1, 1)
    assert set(run_requests(build(algorithm, pool, sticky), pool, 600)) == {"b0", "b1", "b2"}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_pool_says_no_backends_configured(algorithm: str, sticky: bool) -> None:
    assert build(algorithm, [], sticky).pick(PickContext("192.0.2.1")) == NO_BACKENDS


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_all_weight_zero_means_no_available_backend(algorithm: str, sticky: bool) -> None:
    picked = build(algorithm, make_backends(0, 0), sticky).pick(PickContext("192.0.2.1"))
    assert picked == NONE_AVAILABLE


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "unavailable",
    [
        {"weight": 0},
        {"state": "draining"},
        {"state": "maintenance"},
        {"max_connections": 1, "busy": True},
        {"unhealthy": True},
    ],
    ids=["weight-0", "draining", "maintenance", "at-connection-cap", "unhealthy"],
)
def test_unavailable_backends_get_no_new_requests(
    algorithm: str, sticky: bool, unavailable: dict[str, object]
) -> None:
    options = dict(unavailable)
    busy = bool(options.pop("busy", False))
    unhealthy = bool(options.pop("unhealthy", False))
    odd = make_backend(1, **options)  # type: ignore[arg-type]
    if busy:
        odd.load.in_flight = 1
    if unhealthy:
        odd.load.healthy = False
    pool = [make_backend(0), odd, make_backend(2)]
    assert odd not in picks(build(algorithm, pool, sticky), 60)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_avoided_backends_are_skipped(algorithm: str, sticky: bool) -> None:
    pool = make_backends(1, 1, 1)
    assert pool[0] not in picks(build(algorithm, pool, sticky), 60, avoid=[pool[0]])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_avoiding_everything_gives_no_available_backend(algorithm: str, sticky: bool) -> None:
    pool = make_backends(1, 1)
    assert build(algorithm, pool, sticky).pick(PickContext("192.0.2.1"), pool) == NONE_AVAILABLE


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hosts_changed_takes_effect(algorithm: str, sticky: bool) -> None:
    first, second = make_backends(1), [make_backend(5), make_backend(6)]
    strategy = build(algorithm, first, sticky)
    strategy.on_hosts_changed(second)
    assert set(picks(strategy, 60)) <= set(second)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_backend_is_a_reason(algorithm: str, sticky: bool) -> None:
    picked = build(algorithm, [], sticky).pick(PickContext("192.0.2.1"))
    assert isinstance(picked, NoBackend)
    assert picked.reason


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_backups_only_serve_when_no_primary_can(algorithm: str, sticky: bool) -> None:
    primary, backup = make_backend(0), make_backend(1, backup=True)
    strategy = build(algorithm, [primary, backup], sticky)
    assert set(picks(strategy, 30)) == {primary}
    primary.load.healthy = False
    assert set(picks(strategy, 30)) == {backup}
