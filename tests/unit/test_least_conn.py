"""Least connections: fewest in-flight per weight, round-robin ties, skips, snapshots, ramps."""

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from loadweaver.balancing.base import Backend, NoBackend, PickContext
from loadweaver.balancing.least_conn import COMPACT_FACTOR, LeastConn
from tests.support.balancing import FakeClock, make_backend, make_backends, names

CLIENT = PickContext("192.0.2.10")


def start(strategy: LeastConn, avoid: Collection[Backend] = ()) -> Backend:
    """Picks and acquires, as the data plane does when a request starts."""
    backend = strategy.pick(CLIENT, avoid)
    assert isinstance(backend, Backend)
    backend.load.in_flight += 1
    strategy.on_acquire(backend)
    return backend


def finish(strategy: LeastConn, backend: Backend) -> None:
    backend.load.in_flight -= 1
    strategy.on_release(backend)


def load_per_weight(backend: Backend) -> float:
    return backend.load.in_flight / backend.weight


def simulate(
    strategy: LeastConn, durations: Mapping[Backend, int], ticks: int, arrivals: int
) -> Counter[Backend]:
    """`arrivals` requests start each tick; each lasts its backend's duration in ticks."""
    finishing: defaultdict[int, list[Backend]] = defaultdict(list)
    started: Counter[Backend] = Counter()
    for tick in range(ticks):
        for backend in finishing.pop(tick, []):
            finish(strategy, backend)
        for _ in range(arrivals):
            backend = start(strategy)
            started[backend] += 1
            finishing[tick + durations[backend]].append(backend)
    return started


def test_the_backend_with_the_fewest_in_flight_is_picked() -> None:
    pool = make_backends(1, 1, 1)
    strategy = LeastConn(pool)
    for backend, count in zip(pool, (3, 1, 2), strict=True):
        for _ in range(count):
            backend.load.in_flight += 1
            strategy.on_acquire(backend)
    assert strategy.pick(CLIENT) is pool[1]


def test_in_flight_counts_are_divided_by_weight() -> None:
    pool = make_backends(4, 1)
    strategy = LeastConn(pool)
    pool[0].load.in_flight = 3  # 0.75 per weight, against 1.0
    pool[1].load.in_flight = 1
    strategy.on_hosts_changed(pool)
    assert strategy.pick(CLIENT) is pool[0]


def test_ties_go_round_robin() -> None:
    pool = make_backends(1, 1, 1)
    strategy = LeastConn(pool)
    chosen = []
    for _ in range(6):
        backend = start(strategy)
        finish(strategy, backend)
        chosen.append(backend)
    assert names(chosen) == ["b0", "b1", "b2", "b0", "b1", "b2"]


def test_ties_go_round_robin_without_acquire_calls_too() -> None:
    pool = make_backends(1, 1, 1)
    strategy = LeastConn(pool)
    assert [strategy.pick(CLIENT) for _ in range(4)] == [pool[0], pool[1], pool[2], pool[0]]


def test_requests_that_never_finish_spread_by_weight() -> None:
    pool = make_backends(2, 1)
    strategy = LeastConn(pool)
    assert Counter(start(strategy) for _ in range(30)) == {pool[0]: 20, pool[1]: 10}


def test_a_slow_backend_gets_a_small_share_under_concurrency() -> None:
    pool = make_backends(1, 1, 1)
    durations = {pool[0]: 1, pool[1]: 1, pool[2]: 20}
    started = simulate(LeastConn(pool), durations, ticks=300, arrivals=6)
    assert started[pool[2]] / sum(started.values()) < 0.1


def test_weight_zero_is_never_picked() -> None:
    pool = make_backends(1, 0, 1)
    strategy = LeastConn(pool)
    assert pool[1] not in [start(strategy) for _ in range(20)]


def test_draining_and_maintenance_backends_are_never_picked() -> None:
    pool = [
        make_backend(0, state="draining"),
        make_backend(1),
        make_backend(2, state="maintenance"),
    ]
    strategy = LeastConn(pool)
    assert {start(strategy) for _ in range(20)} == {pool[1]}


def test_a_backend_at_its_connection_cap_is_skipped() -> None:
    pool = [make_backend(0, max_connections=2), make_backend(1)]
    strategy = LeastConn(pool)
    chosen = [start(strategy) for _ in range(10)]
    assert Counter(chosen) == {pool[0]: 2, pool[1]: 8}


def test_an_unhealthy_backend_is_skipped_and_comes_back() -> None:
    pool = make_backends(1, 1)
    strategy = LeastConn(pool)
    pool[0].load.healthy = False
    assert {strategy.pick(CLIENT) for _ in range(5)} == {pool[1]}
    pool[0].load.healthy = True
    assert strategy.pick(CLIENT) is pool[0]


def test_avoided_backends_are_skipped() -> None:
    pool = make_backends(1, 1, 1)
    strategy = LeastConn(pool)
    assert pool[0] not in [start(strategy, avoid=[pool[0]]) for _ in range(20)]


def test_nothing_to_pick() -> None:
    pool = make_backends(1, 1)
    assert LeastConn([]).pick(CLIENT) == NoBackend("no backends configured")
    assert LeastConn(make_backends(0)).pick(CLIENT) == NoBackend("no available backend")
    strategy = LeastConn(pool)
    assert strategy.pick(CLIENT, pool) == NoBackend("no available backend")
    assert strategy.pick(CLIENT) is pool[0]  # the failed pick left the heap whole


def test_an_in_flight_count_changed_behind_its_back_is_noticed() -> None:
    pool = make_backends(1, 1)
    strategy = LeastConn(pool)
    pool[0].load.in_flight = 5
    assert strategy.pick(CLIENT) is pool[1]


def test_releases_through_an_older_snapshots_backend_count() -> None:
    pool = make_backends(1, 1)
    strategy = LeastConn(pool)
    for backend in (pool[0], pool[0], pool[1]):
        backend.load.in_flight += 1
        strategy.on_acquire(backend)
    snapshot = [dataclasses.replace(backend) for backend in pool]  # same loads, new objects
    strategy.on_hosts_changed(snapshot)
    finish(strategy, pool[0])
    finish(strategy, pool[0])
    assert strategy.pick(CLIENT) is snapshot[0]


def test_releases_of_a_removed_backend_are_ignored() -> None:
    pool = make_backends(1, 1)
    strategy = LeastConn(pool)
    gone = start(strategy)
    strategy.on_hosts_changed([pool[1]])
    finish(strategy, gone)
    assert strategy.pick(CLIENT) is pool[1]


def test_the_heap_stays_bounded() -> None:
    pool = make_backends(1, 2, 3, 4, 5)
    strategy = LeastConn(pool)
    outstanding = []
    for step in range(5000):
        outstanding.append(start(strategy))
        if step % 2 or len(outstanding) > 20:
            finish(strategy, outstanding.pop(0))
    assert len(strategy._heap) <= COMPACT_FACTOR * len(pool)


def test_slow_start_ramps_the_share_from_a_tenth_to_full() -> None:
    clock = FakeClock(0.0)
    pool = [make_backend(0), make_backend(1, slow_start=10.0, joined_at=0.0)]
    strategy = LeastConn(pool, clock=clock)
    ramping = Counter(start(strategy) for _ in range(1100))
    assert 90 <= ramping[pool[1]] <= 110  # weight 0.1 against 1
    clock.now = 10.0
    strategy.on_hosts_changed(pool)
    full = Counter(start(strategy) for _ in range(2000))
    assert ramping[pool[1]] + full[pool[1]] == ramping[pool[0]] + full[pool[0]]


backend_specs = st.lists(
    st.tuples(st.integers(min_value=1, max_value=5), st.integers(min_value=0, max_value=3)),
    min_size=1,
    max_size=6,
)
operations = st.lists(
    st.tuples(st.sampled_from(["start", "finish"]), st.integers(min_value=0, max_value=10**6)),
    max_size=80,
)


@settings(max_examples=80, deadline=None)
@given(specs=backend_specs, ops=operations)
def test_the_pick_always_has_the_least_load_per_weight_among_candidates(
    specs: list[tuple[int, int]], ops: list[tuple[str, int]]
) -> None:
    pool = [make_backend(i, weight, max_connections=cap) for i, (weight, cap) in enumerate(specs)]
    strategy = LeastConn(pool)
    outstanding: list[Backend] = []
    for op, number in ops:
        if op == "finish" and outstanding:
            finish(strategy, outstanding.pop(number % len(outstanding)))
            continue
        avoid = [pool[number % len(pool)]] if number % 3 == 0 else []
        candidates = [b for b in pool if b.available and b not in avoid]
        picked = strategy.pick(CLIENT, avoid)
        if not candidates:
            assert picked == NoBackend("no available backend")
            continue
        assert isinstance(picked, Backend)
        assert picked in candidates
        assert load_per_weight(picked) == min(load_per_weight(b) for b in candidates)
        picked.load.in_flight += 1
        strategy.on_acquire(picked)
        outstanding.append(picked)
