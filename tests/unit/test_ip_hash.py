"""IP hash: stable placement, minimal disruption on changes, even and weighted spread."""

import dataclasses
import random
from collections import Counter
from collections.abc import Collection, Sequence
from hashlib import blake2b
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadweaver.balancing.base import (
    NO_BACKENDS,
    NONE_AVAILABLE,
    Backend,
    BackendLoad,
    PickContext,
)
from loadweaver.balancing.ip_hash import (
    MAX_RING_POINTS,
    VNODES_PER_WEIGHT,
    IpHash,
    ring_points,
    vnode_halvings,
)
from tests.support.balancing import make_backend, make_backends


def clients(count: int, seed: int = 1) -> list[PickContext]:
    """Distinct client addresses; their hashes are computed once, as on a real connection."""
    rng = random.Random(seed)
    addresses = {f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"}
    while len(addresses) < count:
        addresses.add(f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}")
    contexts = [PickContext(address) for address in sorted(addresses)]
    for ctx in contexts:
        assert ctx.client_hash >= 0
    return contexts


CLIENTS = clients(20_000)
FEW_CLIENTS = CLIENTS[:2_000]


def placement(
    strategy: IpHash, contexts: Sequence[PickContext], avoid: Collection[Backend] = ()
) -> list[str]:
    """The backend name each client goes to."""
    chosen = []
    for ctx in contexts:
        backend = strategy.pick(ctx, avoid)
        assert isinstance(backend, Backend)
        chosen.append(backend.name)
    return chosen


def shares(chosen: Sequence[str]) -> Counter[str]:
    return Counter(chosen)


def moved(before: Sequence[str], after: Sequence[str]) -> list[tuple[str, str]]:
    return [(old, new) for old, new in zip(before, after, strict=True) if old != new]


def fresh_copy(backend: Backend, **changes: Any) -> Backend:
    """The same backend as the next snapshot would carry it (same load counters)."""
    return dataclasses.replace(backend, **changes)


# Placement is stable


def test_the_same_client_always_gets_the_same_backend() -> None:
    strategy = IpHash(make_backends(1, 1, 1, 1, 1))
    first = placement(strategy, FEW_CLIENTS)
    assert placement(strategy, FEW_CLIENTS) == first
    again = [PickContext(ctx.client_ip) for ctx in FEW_CLIENTS]
    assert placement(strategy, again) == first


def test_placement_does_not_depend_on_backend_order() -> None:
    """Every node builds the same ring whatever order its snapshot lists the backends in."""
    pool = make_backends(1, 2, 1, 3, 1, 1)
    shuffled = pool[:]
    random.Random(3).shuffle(shuffled)
    assert placement(IpHash(pool), FEW_CLIENTS) == placement(IpHash(shuffled), FEW_CLIENTS)


def test_ring_points_are_blake2b_of_pool_and_name() -> None:
    """Changing this format would re-place every client during a rolling upgrade."""
    digest = blake2b(b"app/b0#0", digest_size=64).digest()
    expected = [int.from_bytes(digest[i : i + 8], "big") for i in range(0, 64, 8)]
    assert list(ring_points("app/b0", 8)) == expected
    assert list(ring_points("app/b0", 20))[:5] == list(ring_points("app/b0", 5))


def test_a_new_snapshot_of_the_same_backends_keeps_placement_and_hands_out_new_objects() -> None:
    pool = make_backends(1, 1, 1)
    strategy = IpHash(pool)
    before = placement(strategy, FEW_CLIENTS)
    snapshot = [fresh_copy(backend) for backend in pool]
    strategy.on_hosts_changed(snapshot)
    assert placement(strategy, FEW_CLIENTS) == before
    picked = strategy.pick(FEW_CLIENTS[0])
    assert any(picked is backend for backend in snapshot)


def test_slow_start_does_not_change_placement() -> None:
    """The ring uses configured weights: a ramping backend takes its full share at once."""
    plain = make_backends(1, 1, 1)
    ramping = [*plain[:2], make_backend(2, slow_start=30.0, joined_at=100.0)]
    strategy = IpHash(ramping, clock=lambda: 101.0)
    assert placement(strategy, FEW_CLIENTS) == placement(IpHash(plain), FEW_CLIENTS)


# Unavailable and avoided backends


def unavailable_variants(backend: Backend) -> dict[str, Backend]:
    at_cap = fresh_copy(backend, max_connections=1, load=BackendLoad(0.0))
    at_cap.load.in_flight = 1
    unhealthy = fresh_copy(backend, load=BackendLoad(0.0))
    unhealthy.load.healthy = False
    return {
        "draining": fresh_copy(backend, state="draining"),
        "maintenance": fresh_copy(backend, state="maintenance"),
        "unhealthy": unhealthy,
        "at its connection cap": at_cap,
    }


@pytest.mark.parametrize(
    "reason", ["draining", "maintenance", "unhealthy", "at its connection cap"]
)
def test_an_unavailable_backends_clients_go_where_its_removal_would_send_them(reason: str) -> None:
    pool = make_backends(1, 1, 1, 1, 1)
    before = placement(IpHash(pool), FEW_CLIENTS)
    without = placement(IpHash(pool[:2] + pool[3:]), FEW_CLIENTS)
    strategy = IpHash(pool)
    strategy.on_hosts_changed([*pool[:2], unavailable_variants(pool[2])[reason], *pool[3:]])
    assert placement(strategy, FEW_CLIENTS) == without
    strategy.on_hosts_changed(pool)
    assert placement(strategy, FEW_CLIENTS) == before


def test_health_flaps_take_effect_without_a_rebuild() -> None:
    pool = make_backends(1, 1, 1)
    strategy = IpHash(pool)
    before = placement(strategy, FEW_CLIENTS)
    pool[1].load.healthy = False
    assert "b1" not in placement(strategy, FEW_CLIENTS)
    pool[1].load.healthy = True
    assert placement(strategy, FEW_CLIENTS) == before


def test_avoid_skips_to_the_next_distinct_backend() -> None:
    pool = make_backends(1, 1, 1, 1)
    strategy = IpHash(pool)
    for ctx in FEW_CLIENTS[:300]:
        first = strategy.pick(ctx)
        assert isinstance(first, Backend)
        retry = strategy.pick(ctx, [first])
        assert isinstance(retry, Backend)
        assert retry is not first
        remaining = [backend for backend in pool if backend is not first]
        assert retry.name == placement(IpHash(remaining), [ctx])[0]


def test_nothing_available_gives_none_available() -> None:
    pool = make_backends(1, 1, 1)
    for backend in pool:
        backend.load.healthy = False
    assert IpHash(pool).pick(CLIENTS[0]) is NONE_AVAILABLE


def test_a_large_pool_with_nothing_available_gives_none_available() -> None:
    pool = make_backends(*[1] * 200)
    for backend in pool[:100]:
        backend.load.healthy = False
    assert IpHash(pool).pick(CLIENTS[0], avoid=pool[100:]) is NONE_AVAILABLE


def test_avoiding_every_backend_gives_none_available() -> None:
    pool = make_backends(1, 1, 1)
    assert IpHash(pool).pick(CLIENTS[0], pool) is NONE_AVAILABLE


def test_only_one_available_in_a_large_pool_is_found() -> None:
    pool = make_backends(*[1] * 200)
    for backend in pool[:-1]:
        backend.load.healthy = False
    strategy = IpHash(pool)
    assert {strategy.pick(ctx) for ctx in FEW_CLIENTS[:50]} == {pool[-1]}


def test_empty_pool_and_weightless_pool() -> None:
    assert IpHash([]).pick(CLIENTS[0]) is NO_BACKENDS
    assert IpHash(make_backends(0, 0)).pick(CLIENTS[0]) is NONE_AVAILABLE


def test_weight_zero_backends_get_no_clients() -> None:
    assert "b1" not in placement(IpHash(make_backends(1, 0, 1)), FEW_CLIENTS)


# Minimal disruption


@pytest.mark.parametrize("size", [3, 5, 10, 20, 50])
def test_adding_a_backend_moves_at_most_its_fair_share(size: int) -> None:
    pool = make_backends(*[1] * (size + 1))
    strategy = IpHash(pool[:size])
    before = placement(strategy, CLIENTS)
    strategy.on_hosts_changed(pool)
    changes = moved(before, placement(strategy, CLIENTS))
    assert len(changes) / len(CLIENTS) <= 1 / (size + 1) + 0.02
    assert {new for _, new in changes} == {pool[size].name}  # only to the newcomer


@settings(max_examples=25, deadline=None)
@given(size=st.integers(min_value=2, max_value=30), data=st.data())
def test_removing_a_backend_moves_only_its_own_clients(size: int, data: st.DataObject) -> None:
    pool = make_backends(*[1] * size)
    removed = pool[data.draw(st.integers(min_value=0, max_value=size - 1), label="removed")]
    strategy = IpHash(pool)
    before = placement(strategy, FEW_CLIENTS)
    strategy.on_hosts_changed([backend for backend in pool if backend is not removed])
    changes = moved(before, placement(strategy, FEW_CLIENTS))
    assert {old for old, _ in changes} <= {removed.name}
    assert len(changes) == before.count(removed.name)


def test_reweighting_moves_clients_only_to_or_from_that_backend() -> None:
    pool = make_backends(1, 1, 1, 1)
    strategy = IpHash(pool)
    before = placement(strategy, CLIENTS)
    heavier = [*pool[:2], fresh_copy(pool[2], weight=2), pool[3]]
    strategy.on_hosts_changed(heavier)
    doubled = placement(strategy, CLIENTS)
    assert {new for _, new in moved(before, doubled)} == {"b2"}
    strategy.on_hosts_changed(pool)
    assert placement(strategy, CLIENTS) == before


changes_of_a_pool = st.lists(
    st.tuples(st.integers(min_value=0, max_value=15), st.integers(min_value=0, max_value=4)),
    min_size=1,
    max_size=8,
)


@settings(max_examples=25, deadline=None)
@given(changes=changes_of_a_pool)
def test_a_ring_updated_in_place_equals_one_built_afresh(changes: list[tuple[int, int]]) -> None:
    """Each change sets backend `index` to `weight` (0 removes it); the kept points are reused."""
    weights = dict.fromkeys(range(6), 1)
    strategy = IpHash([make_backend(index) for index in weights])
    for index, weight in changes:
        weights[index] = weight
        strategy.on_hosts_changed([make_backend(i, w) for i, w in weights.items() if w])
    fresh = IpHash([make_backend(i, w) for i, w in weights.items() if w])
    if not any(weights.values()):
        assert strategy.pick(CLIENTS[0]) is fresh.pick(CLIENTS[0]) is NO_BACKENDS
        return
    assert placement(strategy, FEW_CLIENTS[:500]) == placement(fresh, FEW_CLIENTS[:500])


# Spread


@pytest.mark.parametrize(
    ("size", "tolerance"), [(2, 0.15), (3, 0.15), (5, 0.15), (10, 0.15), (20, 0.2)]
)
def test_equal_weights_spread_evenly(size: int, tolerance: float) -> None:
    counts = shares(placement(IpHash(make_backends(*[1] * size)), CLIENTS))
    fair = len(CLIENTS) / size
    assert len(counts) == size
    for count in counts.values():
        assert abs(count / fair - 1) <= tolerance


@pytest.mark.parametrize("weights", [(1, 2, 3, 4), (1, 10), (5, 3, 1)])
def test_shares_follow_weights(weights: tuple[int, ...]) -> None:
    counts = shares(placement(IpHash(make_backends(*weights)), CLIENTS))
    total = sum(weights)
    for index, weight in enumerate(weights):
        expected = len(CLIENTS) * weight / total
        assert abs(counts[f"b{index}"] / expected - 1) <= 0.15


# Ring size


def test_large_pools_get_fewer_points_per_weight_to_stay_under_the_cap() -> None:
    assert vnode_halvings(MAX_RING_POINTS // VNODES_PER_WEIGHT) == 0
    assert vnode_halvings(MAX_RING_POINTS // VNODES_PER_WEIGHT + 1) == 1
    for total_weight in (1, 100, 2049, 10_000, 256_000):
        points = (VNODES_PER_WEIGHT * total_weight) >> vnode_halvings(total_weight)
        assert points <= MAX_RING_POINTS


def test_a_thousand_backends_build_and_pick() -> None:
    pool = [make_backend(index) for index in range(1000)]
    strategy = IpHash(pool)
    assert len(set(placement(strategy, CLIENTS))) > 990


def test_not_load_aware_and_the_hooks_are_harmless() -> None:
    pool = make_backends(1, 1)
    strategy = IpHash(pool)
    assert IpHash.load_aware is False
    before = placement(strategy, FEW_CLIENTS)
    strategy.on_acquire(pool[0])
    strategy.on_release(pool[0])
    assert placement(strategy, FEW_CLIENTS) == before
