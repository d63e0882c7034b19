"""Passive detection: every node ejects a backend at once after consecutive failures it saw.

Failures are connect failures, resets, timeouts and, when `on_5xx`, 5xx answers. An ejection
lasts `base_ejection`, doubled for each ejection in a row up to `max_ejection`; at most
`max_ejected_percent` of a pool is ejected at a time, so detection cannot empty a pool.
Calls come from the data plane: they are synchronous and cheap.
"""

import asyncio
from collections.abc import Callable, Sequence

from loguru import logger

from loadweaver.balancing.base import Backend
from loadweaver.config.models import PassiveHealth


class PassiveDetector:
    def __init__(  # noqa: PLR0917 - one call site, HealthManager.detector
        self,
        pool: str,
        settings: PassiveHealth,
        loop: asyncio.AbstractEventLoop,
        backends: Callable[[], Sequence[Backend]],
        on_change: Callable[[str], None],
        on_eject: Callable[[str, str, float], None],
    ) -> None:
        self.pool = pool
        self.settings = settings
        self._loop = loop
        self._backends = backends  # the pool's backends in the current snapshot
        self._on_change = on_change
        self._on_eject = on_eject

    def failure(self, backend: Backend) -> None:
        load = backend.load
        load.failures += 1
        if load.failures >= self.settings.consecutive_failures and not load.ejected:
            self._eject(backend)

    def _eject(self, backend: Backend) -> None:
        settings = self.settings
        members = self._backends()
        ejected = sum(member.load.ejected for member in members)
        if (ejected + 1) * 100 > settings.max_ejected_percent * max(len(members), 1):
            return  # ejecting it too would take more of the pool than allowed
        load = backend.load
        now = self._loop.time()
        if now - load.ejected_at > settings.max_ejection:
            load.ejections = 0  # healthy long enough: the back-off starts over
        load.ejections += 1
        seconds = min(settings.base_ejection * 2 ** (load.ejections - 1), settings.max_ejection)
        load.ejected, load.ejected_at, load.failures = True, now, 0
        logger.warning(
            "backend {}/{} ejected for {:g}s after {} failures in a row",
            self.pool,
            backend.name,
            seconds,
            settings.consecutive_failures,
        )
        self._loop.call_later(seconds, self._readmit, backend)
        self._on_eject(self.pool, backend.name, seconds)
        self._on_change(self.pool)

    def _readmit(self, backend: Backend) -> None:
        if not backend.load.ejected:
            return
        backend.load.ejected = False
        logger.info("backend {}/{} readmitted after its ejection", self.pool, backend.name)
        self._on_change(self.pool)
