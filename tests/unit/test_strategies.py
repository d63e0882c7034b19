"""One conformance suite for every balancing Strategy, plus round robin's own promises."""

import asyncio
from collections import Counter
from collections.abc import Sequence

import pytest

from loadweaver.balancing import Backend, NoBackend, PickContext, Strategy, create_strategy
from loadweaver.balancing.registry import STRATEGIES
from loadweaver.config.addresses import parse_upstream_url
from loadweaver.pool.pool import PoolSettings, UpstreamPool

ALGORITHMS = sorted(STRATEGIES)
CLIENT = PickContext("192.0.2.10")


def backends(*weights: int) -> list[Backend]:
    loop = asyncio.new_event_loop()
    made = []
    for index, weight in enumerate(weights):
        address = parse_upstream_url(f"http://127.0.0.1:{9000 + index}")
        pool = UpstreamPool(address, PoolSettings(), loop)
        made.append(Backend(f"b{index}", "app", address, weight, pool))
    loop.close()
    return made


def picks(strategy: Strategy, count: int, avoid: Sequence[Backend] = ()) -> list[Backend]:
    chosen = []
    for _ in range(count):
        backend = strategy.pick(CLIENT, avoid)
        assert isinstance(backend, Backend)
        chosen.append(backend)
    return chosen


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_pick_is_one_of_the_pool(algorithm: str) -> None:
    pool = backends(1, 1, 1)
    strategy = create_strategy(algorithm, pool)
    assert set(picks(strategy, 30)) <= set(pool)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_pool_says_no_backends_configured(algorithm: str) -> None:
    picked = create_strategy(algorithm, []).pick(CLIENT)
    assert picked == NoBackend("no backends configured")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_all_weight_zero_means_no_available_backend(algorithm: str) -> None:
    picked = create_strategy(algorithm, backends(0, 0)).pick(CLIENT)
    assert picked == NoBackend("no available backend")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_weight_zero_backends_get_no_requests(algorithm: str) -> None:
    pool = backends(1, 0, 1)
    assert pool[1] not in picks(create_strategy(algorithm, pool), 30)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_avoided_backends_are_skipped(algorithm: str) -> None:
    pool = backends(1, 1, 1)
    strategy = create_strategy(algorithm, pool)
    assert pool[0] not in picks(strategy, 30, avoid=[pool[0]])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_avoiding_everything_gives_no_backend(algorithm: str) -> None:
    pool = backends(1, 1)
    assert isinstance(create_strategy(algorithm, pool).pick(CLIENT, pool), NoBackend)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hosts_changed_takes_effect(algorithm: str) -> None:
    first, second = backends(1), backends(1)
    strategy = create_strategy(algorithm, first)
    strategy.on_hosts_changed(second)
    assert set(picks(strategy, 10)) == set(second)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_acquire_and_release_are_accepted(algorithm: str) -> None:
    pool = backends(1, 1)
    strategy = create_strategy(algorithm, pool)
    for backend in picks(strategy, 10):
        strategy.on_acquire(backend)
        strategy.on_release(backend)


def test_round_robin_cycles_evenly() -> None:
    pool = backends(1, 1, 1)
    counts = Counter(picks(create_strategy("round_robin", pool), 300))
    assert [counts[backend] for backend in pool] == [100, 100, 100]
