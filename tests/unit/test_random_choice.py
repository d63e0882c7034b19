"""Weighted random and power of two choices: proportions under a fixed seed, skips, slow start."""

import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadweaver.balancing.base import Backend, NoBackend, PickContext
from loadweaver.balancing.random_choice import PowerOfTwo, RandomChoice
from tests.support.balancing import FakeClock, make_backend, make_backends, picks

CLIENT = PickContext("192.0.2.10")
KINDS = [RandomChoice, PowerOfTwo]


def seeded(
    kind: type[RandomChoice],
    pool: Sequence[Backend],
    clock: Callable[[], float] = time.monotonic,
) -> RandomChoice:
    return kind(pool, clock, rng=random.Random(1234))


def shares(pool: Sequence[Backend], chosen: Sequence[Backend]) -> list[float]:
    tally = Counter(chosen)
    return [tally[backend] / len(chosen) for backend in pool]


def simulate(
    strategy: RandomChoice, durations: Mapping[Backend, int], ticks: int, arrivals: int
) -> list[Backend]:
    """`arrivals` requests start each tick; each lasts its backend's duration in ticks."""
    finishing: defaultdict[int, list[Backend]] = defaultdict(list)
    started = []
    for tick in range(ticks):
        for backend in finishing.pop(tick, []):
            backend.load.in_flight -= 1
            strategy.on_release(backend)
        for _ in range(arrivals):
            backend = picks(strategy, 1)[0]
            backend.load.in_flight += 1
            strategy.on_acquire(backend)
            started.append(backend)
            finishing[tick + durations[backend]].append(backend)
    return started


@pytest.mark.parametrize("kind", KINDS)
def test_idle_picks_follow_the_weights(kind: type[RandomChoice]) -> None:
    pool = make_backends(5, 3, 1)
    observed = shares(pool, picks(seeded(kind, pool), 20000))
    assert observed == pytest.approx([5 / 9, 3 / 9, 1 / 9], abs=0.015)


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_seed_gives_the_same_picks(kind: type[RandomChoice]) -> None:
    pool = make_backends(1, 2, 3)
    assert picks(seeded(kind, pool), 50) == picks(seeded(kind, pool), 50)


@pytest.mark.parametrize("kind", KINDS)
def test_weight_zero_is_never_picked(kind: type[RandomChoice]) -> None:
    pool = make_backends(1, 0, 1)
    assert pool[1] not in picks(seeded(kind, pool), 500)


@pytest.mark.parametrize("kind", KINDS)
def test_draining_maintenance_and_capped_backends_are_never_picked(
    kind: type[RandomChoice],
) -> None:
    pool = [
        make_backend(0, state="draining"),
        make_backend(1, state="maintenance"),
        make_backend(2, max_connections=1),
        make_backend(3),
    ]
    pool[2].load.in_flight = 1
    assert set(picks(seeded(kind, pool), 200)) == {pool[3]}


@pytest.mark.parametrize("kind", KINDS)
def test_avoided_backends_are_skipped_and_the_rest_keep_their_proportions(
    kind: type[RandomChoice],
) -> None:
    pool = make_backends(5, 3, 1)
    observed = shares(pool, picks(seeded(kind, pool), 20000, avoid=[pool[0]]))
    assert observed == pytest.approx([0, 3 / 4, 1 / 4], abs=0.015)


@pytest.mark.parametrize("kind", KINDS)
def test_the_one_backend_left_of_many_is_found(kind: type[RandomChoice]) -> None:
    pool = make_backends(*[1] * 100)
    for backend in pool[:-1]:
        backend.load.healthy = False
    assert set(picks(seeded(kind, pool), 50)) == {pool[-1]}


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_to_pick(kind: type[RandomChoice]) -> None:
    pool = make_backends(1, 1)
    assert seeded(kind, []).pick(CLIENT) == NoBackend("no backends configured")
    assert seeded(kind, make_backends(0, 0)).pick(CLIENT) == NoBackend("no available backend")
    assert seeded(kind, pool).pick(CLIENT, pool) == NoBackend("no available backend")


@pytest.mark.parametrize("kind", KINDS)
def test_hosts_changed_takes_effect(kind: type[RandomChoice]) -> None:
    strategy = seeded(kind, make_backends(1, 1))
    replacement = make_backends(2)
    strategy.on_hosts_changed(replacement)
    assert set(picks(strategy, 20)) == set(replacement)


@pytest.mark.parametrize("kind", KINDS)
def test_slow_start_ramps_the_share_from_a_tenth_to_full(kind: type[RandomChoice]) -> None:
    clock = FakeClock(0.0)
    pool = [make_backend(0), make_backend(1, slow_start=10.0, joined_at=0.0)]
    strategy = seeded(kind, pool, clock)
    assert shares(pool, picks(strategy, 20000))[1] == pytest.approx(0.1 / 1.1, abs=0.01)
    clock.now = 10.0
    strategy.on_hosts_changed(pool)
    assert shares(pool, picks(strategy, 20000))[1] == pytest.approx(0.5, abs=0.015)


def test_random_choice_ignores_load() -> None:
    pool = make_backends(1, 1)
    pool[0].load.in_flight = 100
    assert shares(pool, picks(seeded(RandomChoice, pool), 20000)) == pytest.approx(
        [0.5, 0.5], abs=0.015
    )
    assert RandomChoice.load_aware is False


def test_power_of_two_prefers_the_less_loaded_candidate() -> None:
    pool = make_backends(1, 1)
    pool[0].load.in_flight = 10
    # The busy backend wins only when it is drawn twice: a quarter of the time.
    observed = shares(pool, picks(seeded(PowerOfTwo, pool), 20000))
    assert observed == pytest.approx([0.25, 0.75], abs=0.015)
    # It reads load.in_flight, which the data plane keeps: it needs no acquire/release calls.
    assert PowerOfTwo.load_aware is False


def test_power_of_two_compares_load_per_weight() -> None:
    pool = make_backends(4, 4)
    pool[0].load.in_flight = 3  # 0.75 per weight
    pool[1].load.in_flight = 4  # 1.0 per weight
    observed = shares(pool, picks(seeded(PowerOfTwo, pool), 20000))
    assert observed == pytest.approx([0.75, 0.25], abs=0.015)


def test_power_of_two_gives_a_slow_backend_a_small_share_under_concurrency() -> None:
    pool = make_backends(1, 1, 1)
    durations = {pool[0]: 1, pool[1]: 1, pool[2]: 20}
    started = simulate(seeded(PowerOfTwo, pool), durations, ticks=300, arrivals=6)
    assert shares(pool, started)[2] < 0.15


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    specs=st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=8),
    avoided=st.sets(st.integers(0, 7)),
    seed=st.integers(0, 2**32),
)
def test_a_pick_is_always_available_and_not_avoided(
    kind: type[RandomChoice], specs: list[tuple[int, bool]], avoided: set[int], seed: int
) -> None:
    pool = make_backends(*(weight for weight, _ in specs))
    for backend, (_, healthy) in zip(pool, specs, strict=True):
        backend.load.healthy = healthy
    avoid = [pool[index] for index in avoided if index < len(pool)]
    candidates = [b for b in pool if b.available and b not in avoid]
    strategy = kind(pool, rng=random.Random(seed))
    for _ in range(20):
        picked = strategy.pick(CLIENT, avoid)
        if candidates:
            assert picked in candidates
        else:
            assert picked == NoBackend("no available backend")
