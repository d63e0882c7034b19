"""A node's background work against the cluster store: heartbeats, and following the config.

pub/sub is fire-and-forget, so the change feed is only a hint: every hint, every reconnect and a
periodic check (anti-entropy) read the versioned record itself, so a node that missed messages
still converges.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from loadweaver.cluster.store import ClusterStore, StoreError

RECONNECT_BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0)


async def heartbeat_forever(
    store: ClusterStore,
    node_id: str,
    record: Callable[[], dict[str, Any]],
    interval: float,
    ttl: float,
) -> None:
    while True:
        with contextlib.suppress(StoreError):  # the breaker logs an outage once; serving goes on
            await store.heartbeat(node_id, record(), ttl)
        await asyncio.sleep(interval)


async def follow_changes(
    store: ClusterStore, applied: Callable[[], int], resync: Callable[[], Awaitable[object]]
) -> None:
    """Resyncs on every announced version above the applied one, and after every reconnect."""
    failures = 0
    while True:
        try:
            async for version in store.changes():
                failures = 0
                if version > applied():
                    await resync()
        except StoreError as error:
            logger.debug("change feed interrupted: {}", error)
        delay = RECONNECT_BACKOFF[min(failures, len(RECONNECT_BACKOFF) - 1)]
        failures += 1
        await asyncio.sleep(delay)
        await resync()  # whatever was announced while the feed was down


async def anti_entropy(check: Callable[[], Awaitable[object]], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await check()
        except Exception:  # one failed check must not end the loop that repairs the next
            logger.exception("cluster config check failed")
