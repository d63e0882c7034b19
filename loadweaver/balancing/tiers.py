"""Backup backends: a second tier that takes requests only when no primary backend can.

Any algorithm works for both tiers: WithBackups builds one inner strategy per tier and asks
the backup tier only after the primary tier found nothing, so while a primary is available the
backups see no traffic and their strategy state (round-robin turns, hash ring) stays untouched.
The registry uses it only for pools that have backups, so other pools pay nothing.
"""

from collections.abc import Callable, Collection, Sequence

from loadweaver.balancing.base import (
    NO_BACKENDS,
    NONE_AVAILABLE,
    Backend,
    NoBackend,
    PickContext,
    Strategy,
)


def split_tiers(backends: Sequence[Backend]) -> tuple[list[Backend], list[Backend]]:
    """The primary backends and the backup backends, each in their configured order."""
    primaries = [backend for backend in backends if not backend.backup]
    backups = [backend for backend in backends if backend.backup]
    return primaries, backups


class WithBackups:
    """Picks from the primary tier, and from the backup tier only when the primaries give none."""

    def __init__(
        self, backends: Sequence[Backend], make: Callable[[Sequence[Backend]], Strategy]
    ) -> None:
        primaries, backups = split_tiers(backends)
        self._primary = make(primaries)
        self._backup = make(backups)
        self._configured = bool(backends)
        # The data plane reads this once per request: decide it here rather than per call.
        self.load_aware = self._primary.load_aware or self._backup.load_aware

    def pick(self, ctx: PickContext, avoid: Collection[Backend] = ()) -> Backend | NoBackend:
        picked = self._primary.pick(ctx, avoid)
        if not isinstance(picked, NoBackend):
            return picked
        picked = self._backup.pick(ctx, avoid)
        if not isinstance(picked, NoBackend):
            return picked
        # Either tier alone may have had no backends at all; the pool as a whole decides.
        return NONE_AVAILABLE if self._configured else NO_BACKENDS

    def on_hosts_changed(self, backends: Sequence[Backend]) -> None:
        primaries, backups = split_tiers(backends)
        self._configured = bool(backends)
        self._primary.on_hosts_changed(primaries)
        self._backup.on_hosts_changed(backups)

    def on_acquire(self, backend: Backend) -> None:
        self._tier_of(backend).on_acquire(backend)

    def on_release(self, backend: Backend) -> None:
        self._tier_of(backend).on_release(backend)

    def _tier_of(self, backend: Backend) -> Strategy:
        # A Backend is immutable, so the release of a request sees the tier its acquire saw.
        return self._backup if backend.backup else self._primary
