"""Keeps each rate-limit policy's limiter alive across snapshots, the way PoolManager keeps
connections: a policy whose definition did not change keeps its buckets and leased tokens."""

import asyncio
from collections.abc import Callable, Iterable

from loguru import logger

from loadweaver.cluster.store import ClusterStore
from loadweaver.config.models import RateLimitPolicy
from loadweaver.traffic.limiter import Limiter, create_limiter


class LimiterRegistry:
    def __init__(
        self,
        store: ClusterStore,
        live_nodes: Callable[[], int],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._store = store
        self._live_nodes = live_nodes
        self._loop = loop
        self._limiters: dict[str, tuple[RateLimitPolicy, Limiter]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, name: str, policy: RateLimitPolicy) -> Limiter:
        found = self._limiters.get(name)
        if found is not None and found[0] == policy:
            return found[1]
        if found is not None:
            self._close(found[1])
        limiter = create_limiter(name, policy, self._store, self._live_nodes, self._loop)
        self._limiters[name] = (policy, limiter)
        return limiter

    def retain_only(self, names: Iterable[str]) -> None:
        keep = set(names)
        for name in [name for name in self._limiters if name not in keep]:
            self._close(self._limiters.pop(name)[1])

    async def close_all(self) -> None:
        limiters = [limiter for _, limiter in self._limiters.values()]
        self._limiters.clear()
        for limiter in limiters:
            await limiter.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _close(self, limiter: Limiter) -> None:
        """Closes in the background: returning leased tokens talks to the store."""
        task = self._loop.create_task(self._closed(limiter))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _closed(limiter: Limiter) -> None:
        try:
            await limiter.close()
        except Exception:  # a limiter that fails to close must not take the control plane down
            logger.exception("closing a rate limiter failed")
