"""Header-keyed sticky sessions shared through the cluster store, with a local cache in front.

The data plane never waits on the store inside a pick: a session this node has not seen is
fetched by a short task before the pick (see Exchange.start), pins are written behind the response,
and while the store is unreachable new sessions are placed by hashing the session key, so every
node still agrees on where a new session goes.
"""

import asyncio

from loguru import logger

from loadweaver.balancing.sticky import MemorySessionTable
from loadweaver.cluster.store import ClusterStore, StoreError


class SharedSessionTable:
    def __init__(
        self, store: ClusterStore, pool: str, ttl: float, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._store = store
        self._pool = pool
        self._loop = loop
        self._local = MemorySessionTable(ttl)
        self._writes: set[asyncio.Task[None]] = set()
        self.available = True  # the store answered the last call

    @property
    def ttl(self) -> float:
        return self._local.ttl

    @ttl.setter
    def ttl(self, value: float) -> None:
        self._local.ttl = value

    shared = True

    @property
    def consistent_placement(self) -> bool:
        """While the store is down, place new sessions by hash so all nodes agree."""
        return not self.available

    def cached(self, key: str) -> bool:
        return self._local.get(key) is not None

    def get(self, key: str) -> str | None:
        return self._local.get(key)

    def put(self, key: str, backend: str) -> None:
        self._local.put(key, backend)
        task = self._loop.create_task(self._write(key, backend))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def fetch(self, key: str) -> None:
        """Copies the cluster's pin for `key` into the local cache, if there is one."""
        try:
            backend = await self._store.session_get(self._pool, key, self.ttl)
        except StoreError:
            self.available = False
            return
        self.available = True
        if backend is not None:
            self._local.put(key, backend)

    async def _write(self, key: str, backend: str) -> None:
        try:
            await self._store.session_set(self._pool, key, backend, self.ttl)
        except StoreError as error:
            self.available = False
            logger.debug("session pin for pool {} kept locally only: {}", self._pool, error)
        else:
            self.available = True
