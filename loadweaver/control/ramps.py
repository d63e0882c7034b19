"""Slow start: while a backend's weight ramps up, its strategy re-reads weights each second."""

import asyncio
from collections.abc import Callable

from loadweaver.control.snapshot import SnapshotHolder

RAMP_REFRESH_SECONDS = 1.0


async def refresh_ramping_pools(holder: SnapshotHolder, clock: Callable[[], float]) -> None:
    ramping_before: set[str] = set()
    while True:
        await asyncio.sleep(RAMP_REFRESH_SECONDS)
        now = clock()
        ramping_now: set[str] = set()
        for name, pool in holder.current.pools.items():
            if any(backend.ramping(now) for backend in pool.backends):
                ramping_now.add(name)
            # One refresh after the ramp ends too, so the final weight is the full one.
            if name in ramping_now or name in ramping_before:
                pool.strategy.on_hosts_changed(pool.backends)
        ramping_before = ramping_now
