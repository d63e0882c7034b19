"""Backup tiers: backups take requests only when no primary can, with any inner algorithm."""

import dataclasses
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Any

import pytest

from loadweaver.balancing.base import (
    NO_BACKENDS,
    NONE_AVAILABLE,
    Backend,
    NoBackend,
    PickContext,
    Strategy,
)
from loadweaver.balancing.ip_hash import IpHash
from loadweaver.balancing.round_robin import RoundRobin
from loadweaver.balancing.tiers import WithBackups, split_tiers
from tests.support.balancing import make_backend

CLIENTS = [PickContext(f"192.0.2.{host}") for host in range(1, 201)]
INNER: dict[str, Callable[[Sequence[Backend]], Strategy]] = {
    "round_robin": RoundRobin,
    "ip_hash": IpHash,
}


def tiered_pool(primaries: int = 2, backups: int = 2) -> list[Backend]:
    """Primaries b0.., then backups; the backups are listed first to prove order is irrelevant."""
    made = [make_backend(index) for index in range(primaries)]
    made += [make_backend(primaries + index, backup=True) for index in range(backups)]
    return made[primaries:] + made[:primaries]


def primaries_of(pool: Sequence[Backend]) -> list[Backend]:
    return [backend for backend in pool if not backend.backup]


def backups_of(pool: Sequence[Backend]) -> list[Backend]:
    return [backend for backend in pool if backend.backup]


def picked(strategy: Strategy, avoid: Collection[Backend] = ()) -> list[Backend]:
    chosen = []
    for ctx in CLIENTS:
        backend = strategy.pick(ctx, avoid)
        assert isinstance(backend, Backend)
        chosen.append(backend)
    return chosen


def fresh_copy(backend: Backend, **changes: Any) -> Backend:
    return dataclasses.replace(backend, **changes)


@pytest.fixture(params=sorted(INNER))
def make(request: pytest.FixtureRequest) -> Callable[[Sequence[Backend]], Strategy]:
    return INNER[request.param]


def test_split_keeps_the_configured_order() -> None:
    pool = tiered_pool()
    primaries, backups = split_tiers(pool)
    assert primaries == primaries_of(pool)
    assert backups == backups_of(pool)


def test_backups_get_nothing_while_a_primary_is_available(make: Callable[..., Strategy]) -> None:
    pool = tiered_pool(primaries=3)
    primaries = primaries_of(pool)
    primaries[0].load.healthy = False
    primaries[1].load.healthy = False
    assert set(picked(WithBackups(pool, make))) == {primaries[2]}


def test_backups_take_over_when_every_primary_is_down_and_hand_back(
    make: Callable[..., Strategy],
) -> None:
    pool = tiered_pool()
    strategy = WithBackups(pool, make)
    for backend in primaries_of(pool):
        backend.load.healthy = False
    assert set(picked(strategy)) == set(backups_of(pool))
    primaries_of(pool)[1].load.healthy = True
    assert set(picked(strategy)) == {primaries_of(pool)[1]}


@pytest.mark.parametrize("change", [{"state": "draining"}, {"state": "maintenance"}, {"weight": 0}])
def test_primaries_that_take_no_new_requests_leave_it_to_the_backups(
    make: Callable[..., Strategy], change: dict[str, Any]
) -> None:
    pool = tiered_pool()
    changed = [fresh_copy(b, **change) for b in primaries_of(pool)] + backups_of(pool)
    assert set(picked(WithBackups(changed, make))) == set(backups_of(pool))


def test_a_retry_avoiding_every_primary_goes_to_a_backup(make: Callable[..., Strategy]) -> None:
    pool = tiered_pool()
    strategy = WithBackups(pool, make)
    assert set(picked(strategy, avoid=primaries_of(pool))) == set(backups_of(pool))
    assert set(picked(strategy, avoid=primaries_of(pool)[:1])) == set(primaries_of(pool)[1:])


def test_round_robin_backups_keep_their_weights() -> None:
    backups = [make_backend(1, 2, backup=True), make_backend(2, 1, backup=True)]
    pool = [make_backend(0, state="maintenance"), *backups]
    strategy = WithBackups(pool, RoundRobin)
    counts = Counter(strategy.pick(CLIENTS[0]) for _ in range(300))
    assert [counts[backend] for backend in backups] == [200, 100]


def test_nothing_available_anywhere_gives_none_available(make: Callable[..., Strategy]) -> None:
    pool = tiered_pool()
    for backend in pool:
        backend.load.healthy = False
    assert WithBackups(pool, make).pick(CLIENTS[0]) is NONE_AVAILABLE


def test_avoiding_every_backend_gives_none_available(make: Callable[..., Strategy]) -> None:
    pool = tiered_pool()
    assert WithBackups(pool, make).pick(CLIENTS[0], pool) is NONE_AVAILABLE


def test_only_unavailable_backups_configured_gives_none_available(
    make: Callable[..., Strategy],
) -> None:
    pool = tiered_pool(primaries=0)
    for backend in pool:
        backend.load.healthy = False
    assert WithBackups(pool, make).pick(CLIENTS[0]) is NONE_AVAILABLE


def test_only_backups_configured_still_serves(make: Callable[..., Strategy]) -> None:
    pool = tiered_pool(primaries=0)
    assert set(picked(WithBackups(pool, make))) == set(pool)


def test_an_empty_pool_has_no_backends(make: Callable[..., Strategy]) -> None:
    strategy = WithBackups([], make)
    assert strategy.pick(CLIENTS[0]) is NO_BACKENDS
    strategy.on_hosts_changed(tiered_pool())
    strategy.on_hosts_changed([])
    assert strategy.pick(CLIENTS[0]) is NO_BACKENDS


def test_hosts_changed_moves_backends_between_tiers(make: Callable[..., Strategy]) -> None:
    pool = tiered_pool()
    strategy = WithBackups(pool, make)
    demoted = [fresh_copy(b, backup=True) for b in primaries_of(pool)]
    promoted = [fresh_copy(b, backup=False) for b in backups_of(pool)]
    strategy.on_hosts_changed(demoted + promoted)
    assert set(picked(strategy)) == set(promoted)


class Recorder:
    """An inner strategy that picks its first backend and records the load events it gets."""

    def __init__(self, backends: Sequence[Backend], load_aware: bool) -> None:
        self.backends = list(backends)
        self.load_aware = load_aware
        self.events: list[tuple[str, str]] = []

    def pick(self, ctx: PickContext, avoid: Collection[Backend] = ()) -> Backend | NoBackend:
        return self.backends[0] if self.backends else NO_BACKENDS

    def on_hosts_changed(self, backends: Sequence[Backend]) -> None:
        self.backends = list(backends)

    def on_acquire(self, backend: Backend) -> None:
        self.events.append(("acquire", backend.name))

    def on_release(self, backend: Backend) -> None:
        self.events.append(("release", backend.name))


def recording(load_aware_tiers: set[str]) -> tuple[Callable[..., Strategy], list[Recorder]]:
    """A factory of Recorders; the first one built is the primary tier, the second the backup."""
    made: list[Recorder] = []

    def make(backends: Sequence[Backend]) -> Recorder:
        tier = "primary" if not made else "backup"
        made.append(Recorder(backends, load_aware=tier in load_aware_tiers))
        return made[-1]

    return make, made


def test_load_events_reach_the_tier_of_the_backend() -> None:
    pool = tiered_pool(primaries=1, backups=1)
    make, made = recording({"primary"})
    strategy = WithBackups(pool, make)
    primary, backup = made
    for backend in pool:
        strategy.on_acquire(backend)
        strategy.on_release(backend)
    assert primary.events == [("acquire", "b0"), ("release", "b0")]
    assert backup.events == [("acquire", "b1"), ("release", "b1")]


@pytest.mark.parametrize(
    ("load_aware_tiers", "expected"),
    [(set(), False), ({"primary"}, True), ({"backup"}, True), ({"primary", "backup"}, True)],
)
def test_load_aware_when_either_tier_is(load_aware_tiers: set[str], expected: bool) -> None:
    make, _ = recording(load_aware_tiers)
    assert WithBackups(tiered_pool(), make).load_aware is expected
