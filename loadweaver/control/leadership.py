"""Leader election on the cluster store's lease.

The lease is a key set with NX and a TTL that holds the node id and a fencing token. The leader
renews it every third of the TTL and steps down as soon as a renewal fails or comes back late:
before the lease could expire in Redis and be taken by another node, this node has stopped
acting as leader. Others try to take it often enough to lead within the TTL plus a second.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from loguru import logger

from loadweaver.cluster.store import ClusterStore, Lease, StoreError


class Leadership:
    def __init__(  # noqa: PLR0917 - one call site, in node.py
        self,
        store: ClusterStore,
        node_id: str,
        ttl: float,
        on_acquire: Callable[[Lease], Awaitable[None]],
        on_loss: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._node_id = node_id
        self._ttl = ttl
        self._on_acquire = on_acquire
        self._on_loss = on_loss
        self._clock = clock
        self.lease: Lease | None = None

    async def run(self) -> None:
        """Campaigns and leads until cancelled."""
        while True:
            if self.lease is None:
                await self._campaign()
                await asyncio.sleep(min(1.0, self._ttl / 10))
            else:
                await self._renew()

    async def _campaign(self) -> None:
        try:
            lease = await self._store.acquire_lease(self._node_id, self._ttl)
        except StoreError:
            return
        if lease is None:
            return
        self.lease = lease
        logger.warning("this node is now the cluster leader (fencing token {})", lease.token)
        try:
            await self._on_acquire(lease)
        except Exception:  # a leader job failing to start must not end the election loop
            logger.exception("a leader job failed to start")

    async def _renew(self) -> None:
        lease = self.lease
        assert lease is not None
        await asyncio.sleep(self._ttl / 3)
        sent = self._clock()
        try:
            renewed = await self._store.renew_lease(lease, self._ttl)
        except StoreError:
            renewed = False
        late = self._clock() - sent > self._ttl / 3
        if not renewed or late:
            self._step_down("renewal failed" if not renewed else "renewal came back late")

    def _step_down(self, why: str) -> None:
        if self.lease is None:
            return
        logger.warning("stepping down as cluster leader: {}", why)
        self.lease = None
        self._on_loss()

    async def release(self) -> None:
        """On a graceful stop: hand the lease over at once instead of letting it expire."""
        lease, self.lease = self.lease, None
        if lease is None:
            return
        self._on_loss()
        with contextlib.suppress(StoreError):
            await self._store.release_lease(lease)
