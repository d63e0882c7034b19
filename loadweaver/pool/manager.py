"""Owns every UpstreamPool so that pooled connections outlive the snapshots that point at them."""

import asyncio
from collections.abc import Callable, Iterable

from loadweaver.config.addresses import UpstreamAddress
from loadweaver.pool.pool import ConnectTimer, PoolSettings, UpstreamPool

PoolKey = tuple[str, str, UpstreamAddress, PoolSettings]


class PoolManager:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        connect_timers: Callable[[str, str], ConnectTimer] | None = None,
    ) -> None:
        """`connect_timers(pool, backend)`: where a backend's connect times go."""
        self._loop = loop
        self._connect_timers = connect_timers
        self._pools: dict[PoolKey, UpstreamPool] = {}

    def get(
        self, pool_name: str, backend_name: str, address: UpstreamAddress, settings: PoolSettings
    ) -> UpstreamPool:
        """The pool for this backend, reused when nothing that affects its connections changed."""
        key = (pool_name, backend_name, address, settings)
        pool = self._pools.get(key)
        if pool is None:
            timer = self._connect_timers(pool_name, backend_name) if self._connect_timers else None
            pool = self._pools[key] = UpstreamPool(address, settings, self._loop, timer)
        return pool

    def retain_only(self, in_use: Iterable[UpstreamPool]) -> None:
        """Closes the pools no snapshot uses any more; their lent connections finish first."""
        keep = {id(pool) for pool in in_use}
        for key, pool in list(self._pools.items()):
            if id(pool) not in keep:
                del self._pools[key]
                pool.close()

    def close_all(self) -> None:
        self.retain_only(())

    def __iter__(self) -> "Iterable[UpstreamPool]":
        return iter(list(self._pools.values()))
