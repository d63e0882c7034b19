"""Smooth weighted round robin: exact proportions, interleaving, skips, host changes, slow start."""

import dataclasses
from collections import Counter
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from loadweaver.balancing.base import Backend, NoBackend, PickContext
from loadweaver.balancing.round_robin import RoundRobin
from tests.support.balancing import FakeClock, make_backend, make_backends, names, picks

CLIENT = PickContext("192.0.2.10")


def counts(pool: Sequence[Backend], chosen: Sequence[Backend]) -> list[int]:
    tally = Counter(chosen)
    return [tally[backend] for backend in pool]


def longest_run(chosen: Sequence[Backend], backend: Backend) -> int:
    longest = run = 0
    for picked in chosen:
        run = run + 1 if picked is backend else 0
        longest = max(longest, run)
    return longest


def test_weights_5_3_1_give_exactly_500_300_100_in_900_picks() -> None:
    pool = make_backends(5, 3, 1)
    assert counts(pool, picks(RoundRobin(pool), 900)) == [500, 300, 100]


def test_weights_5_3_1_interleave_within_the_cycle() -> None:
    pool = make_backends(5, 3, 1)
    assert names(picks(RoundRobin(pool), 9)) == [
        "b0",
        "b1",
        "b0",
        "b0",
        "b1",
        "b2",
        "b0",
        "b1",
        "b0",
    ]


def test_every_window_of_nine_picks_holds_each_backend_its_weight() -> None:
    pool = make_backends(5, 3, 1)
    chosen = picks(RoundRobin(pool), 900)
    for start in range(len(chosen) - 9 + 1):
        assert counts(pool, chosen[start : start + 9]) == [5, 3, 1], start


def test_the_heaviest_backend_never_runs_more_than_twice_in_a_row() -> None:
    pool = make_backends(5, 3, 1)
    assert longest_run(picks(RoundRobin(pool), 900), pool[0]) == 2


def test_equal_weights_alternate() -> None:
    pool = make_backends(1, 1, 1)
    assert names(picks(RoundRobin(pool), 6)) == ["b0", "b1", "b2", "b0", "b1", "b2"]


def test_weight_zero_is_never_picked_and_the_rest_keep_their_proportions() -> None:
    pool = make_backends(2, 0, 1)
    assert counts(pool, picks(RoundRobin(pool), 300)) == [200, 0, 100]


def test_draining_and_maintenance_backends_are_never_picked() -> None:
    pool = [
        make_backend(0),
        make_backend(1, state="draining"),
        make_backend(2, state="maintenance"),
        make_backend(3),
    ]
    assert counts(pool, picks(RoundRobin(pool), 100)) == [50, 0, 0, 50]


def test_only_unavailable_backends_mean_none_available() -> None:
    pool = [make_backend(0, state="draining"), make_backend(1, state="maintenance")]
    assert RoundRobin(pool).pick(CLIENT) == NoBackend("no available backend")


def test_a_backend_at_its_connection_cap_is_skipped_until_it_has_room() -> None:
    pool = [make_backend(0, max_connections=2), make_backend(1), make_backend(2)]
    strategy = RoundRobin(pool)
    pool[0].load.in_flight = 2
    assert pool[0] not in picks(strategy, 30)
    pool[0].load.in_flight = 1
    assert counts(pool, picks(strategy, 30)) == [10, 10, 10]


def test_an_unhealthy_backend_comes_back_without_a_burst() -> None:
    pool = make_backends(3, 3)
    strategy = RoundRobin(pool)
    pool[0].load.healthy = False
    assert set(picks(strategy, 50)) == {pool[1]}
    pool[0].load.healthy = True
    chosen = picks(strategy, 60)
    assert counts(pool, chosen) == [30, 30]
    assert longest_run(chosen, pool[0]) == 1


def test_an_avoided_backend_keeps_its_turn_for_the_next_pick() -> None:
    pool = make_backends(1, 1, 1)
    strategy = RoundRobin(pool)
    assert strategy.pick(CLIENT, [pool[0]]) is pool[1]
    assert names(picks(strategy, 5)) == ["b0", "b2", "b0", "b1", "b2"]


def test_avoiding_every_backend_leaves_the_schedule_alone() -> None:
    pool = make_backends(2, 1)
    strategy = RoundRobin(pool)
    assert strategy.pick(CLIENT, pool) == NoBackend("no available backend")
    assert names(picks(strategy, 3)) == ["b0", "b1", "b0"]


def test_hosts_changed_with_the_same_backends_keeps_the_sequence() -> None:
    pool = make_backends(5, 3, 1)
    undisturbed = picks(RoundRobin(pool), 40)
    strategy = RoundRobin(pool)
    chosen = []
    for step in range(40):
        if step % 3 == 1:
            strategy.on_hosts_changed(pool)
        chosen.extend(picks(strategy, 1))
    assert chosen == undisturbed


def test_a_new_snapshot_of_the_same_backends_keeps_the_sequence() -> None:
    pool = make_backends(2, 1)
    strategy = RoundRobin(pool)
    first = picks(strategy, 2)
    strategy.on_hosts_changed([dataclasses.replace(backend) for backend in pool])
    assert names(first + picks(strategy, 4)) == ["b0", "b1", "b0", "b0", "b1", "b0"]


def test_reweighting_takes_effect() -> None:
    pool = make_backends(1, 1)
    strategy = RoundRobin(pool)
    picks(strategy, 5)
    reweighted = [dataclasses.replace(pool[0], weight=3), pool[1]]
    strategy.on_hosts_changed(reweighted)
    picks(strategy, 2)  # finish the cycle the change landed in
    assert counts(reweighted, picks(strategy, 400)) == [300, 100]


def test_an_added_backend_joins_the_schedule() -> None:
    pool = make_backends(1, 1)
    strategy = RoundRobin(pool)
    picks(strategy, 3)
    grown = [*pool, make_backend(2)]
    strategy.on_hosts_changed(grown)
    picks(strategy, 2)
    assert counts(grown, picks(strategy, 300)) == [100, 100, 100]


def test_slow_start_begins_at_a_tenth_of_the_weight_and_ends_at_full() -> None:
    clock = FakeClock(0.0)
    pool = [make_backend(0), make_backend(1, slow_start=10.0, joined_at=0.0)]
    strategy = RoundRobin(pool, clock=clock)
    assert counts(pool, picks(strategy, 1100)) == [1000, 100]  # 10% of weight 1
    clock.now = 5.0
    strategy.on_hosts_changed(pool)
    picks(strategy, 150)  # finish the cycle the change landed in
    assert counts(pool, picks(strategy, 1500)) == [1000, 500]
    clock.now = 10.0
    strategy.on_hosts_changed(pool)
    picks(strategy, 2)
    assert counts(pool, picks(strategy, 100)) == [50, 50]


weight_vectors = st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=10)


@settings(max_examples=60, deadline=None)
@given(weights=weight_vectors)
def test_one_full_cycle_gives_each_backend_exactly_its_weight(weights: list[int]) -> None:
    pool = make_backends(*weights)
    chosen = picks(RoundRobin(pool), sum(weights)) if sum(weights) else []
    assert counts(pool, chosen) == weights


@settings(max_examples=40, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8),
    offset=st.integers(min_value=0, max_value=100),
)
def test_any_window_of_one_cycle_gives_each_backend_exactly_its_weight(
    weights: list[int], offset: int
) -> None:
    pool = make_backends(*weights)
    chosen = picks(RoundRobin(pool), offset + sum(weights))
    assert counts(pool, chosen[offset:]) == weights


@settings(max_examples=40, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8),
    changes=st.sets(st.integers(min_value=0, max_value=59)),
)
def test_rescheduling_the_same_backends_never_changes_the_sequence(
    weights: list[int], changes: set[int]
) -> None:
    pool = make_backends(*weights)
    undisturbed = picks(RoundRobin(pool), 60)
    strategy = RoundRobin(pool)
    chosen = []
    for step in range(60):
        if step in changes:
            strategy.on_hosts_changed(pool)
        chosen.extend(picks(strategy, 1))
    assert chosen == undisturbed
