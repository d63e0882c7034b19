"""Turns verdicts and ejections into the one flag strategies read, pool by pool.

Panic threshold (Envoy's): when fewer than `panic_threshold` percent of a pool's primaries are
healthy, traffic is spread over all of them rather than crushing the last few, unless healthy
backups can take it, which is what backups are for.
"""

from collections.abc import Iterable

from loguru import logger

from loadweaver.balancing.base import Backend


def refresh_pool(backends: Iterable[Backend], panic_threshold: int) -> bool:
    """Sets every backend's `healthy`; True when the pool is in panic."""
    members = list(backends)
    primaries = [backend for backend in members if not backend.backup]
    backups = [backend for backend in members if backend.backup]
    healthy = sum(backend.load.routable for backend in primaries)
    backups_can_serve = any(backend.load.routable for backend in backups)
    panic = (
        bool(primaries)
        and panic_threshold > 0
        and healthy * 100 < panic_threshold * len(primaries)
        and not (healthy == 0 and backups_can_serve)
    )
    for backend in members:
        backend.load.healthy = True if panic and not backend.backup else backend.load.routable
    return panic


class PanicLog:
    """Logs entering and leaving panic once per transition, per pool."""

    def __init__(self) -> None:
        self._in_panic: set[str] = set()

    def note(self, pool: str, panic: bool) -> None:
        if panic and pool not in self._in_panic:
            self._in_panic.add(pool)
            logger.error(
                "pool {}: too few healthy backends; panic mode spreads traffic over all of them",
                pool,
            )
        elif not panic and pool in self._in_panic:
            self._in_panic.discard(pool)
            logger.warning("pool {}: enough healthy backends again; panic mode ends", pool)
