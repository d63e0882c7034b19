"""A per-backend keep-alive pool.

Modelled on httpcore's connection pool: each acquire first takes a pure bookkeeping step (reuse an
idle connection, open a new one, or queue) and only then does I/O. Connections still being opened
count against `max_connections`; waiters are served first come, first served; and one cleanup
timer, re-armed for the oldest idle connection, expires idle connections.
"""

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from loadweaver.config.addresses import UpstreamAddress
from loadweaver.pool.connection import UpstreamConnection


@dataclass(frozen=True, slots=True)
class PoolSettings:
    connect_timeout: float = 3.0
    max_connections: int = 0
    max_idle: int = 64
    idle_timeout: float = 60.0
    max_requests: int = 0
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None


class UpstreamConnectError(Exception):
    """A connection could not be opened; `kind` is refused, timeout, tls, error or closed."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class ConnectTimer(Protocol):
    """Told how long each new connection took to open (a prometheus histogram child)."""

    def observe(self, amount: float) -> None: ...


class UpstreamPool:
    def __init__(
        self,
        address: UpstreamAddress,
        settings: PoolSettings,
        loop: asyncio.AbstractEventLoop,
        connect_timer: ConnectTimer | None = None,
    ) -> None:
        self.address = address
        self.settings = settings
        self._loop = loop
        self._connect_timer = connect_timer
        self._idle: deque[UpstreamConnection] = deque()
        self._waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self.open_connections = 0  # open or opening, idle or lent out
        self._cleanup: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        """Requests queued for a connection: what a circuit breaker's max_pending caps."""
        return len(self._waiters)

    def take_idle(self) -> UpstreamConnection | None:
        """An idle connection, newest first, or None; never blocks."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                connection.requests += 1
                return connection
        return None

    async def acquire(self, fresh: bool = False) -> UpstreamConnection:
        """An idle connection (unless `fresh`), a new one within the limit, or the next released."""
        if not fresh and (connection := self.take_idle()):
            return connection
        while True:
            if self._closed:
                raise UpstreamConnectError("closed", "the backend was removed")
            limit = self.settings.max_connections
            if not limit or self.open_connections < limit:
                return await self._open()
            if not fresh and (connection := self.take_idle()):
                return connection
            waiter: asyncio.Future[UpstreamConnection | None] = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                # Cancelled after release() or forget() already chose this waiter: pass it on.
                if waiter.done() and not waiter.cancelled():
                    if (unused := waiter.result()) is not None:
                        self.release(unused, reusable=True)
                    elif (following := self._next_waiter()) is not None:
                        following.set_result(None)
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if handed is not None:
                handed.requests += 1
                return handed
            if self._closed:
                # Queued before the backend was removed: the request is in flight and may
                # finish, on a connection of its own that closes when released.
                return await self._open()

    def release(self, connection: UpstreamConnection, reusable: bool) -> None:
        """Returns a connection after an exchange; a reusable one may go straight to a waiter."""
        connection.handler = None
        settings = self.settings
        if settings.max_requests and connection.requests >= settings.max_requests:
            reusable = False
        if not reusable or connection.closed or self._closed:
            connection.close()
            return
        if self._waiters and (waiter := self._next_waiter()) is not None:
            waiter.set_result(connection)
            return
        if len(self._idle) >= settings.max_idle:
            connection.close()
            return
        connection.idle_since = self._loop.time()
        self._idle.append(connection)
        if self._cleanup is None:
            self._arm_cleanup(settings.idle_timeout)

    def forget(self, connection: UpstreamConnection) -> None:
        """Called once when a connection closes: frees its slot for the next waiter."""
        self.open_connections -= 1
        if connection in self._idle:
            self._idle.remove(connection)
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.set_result(None)

    def close(self) -> None:
        """Stops reuse: idle connections close now, lent ones when released."""
        self._closed = True
        if self._cleanup is not None:
            self._cleanup.cancel()
            self._cleanup = None
        while self._idle:
            self._idle.pop().close()
        while (waiter := self._next_waiter()) is not None:
            waiter.set_result(None)

    async def _open(self) -> UpstreamConnection:
        self.open_connections += 1
        settings = self.settings
        started = self._loop.time()
        try:
            _, connection = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: UpstreamConnection(self),
                    self.address.host,
                    self.address.port,
                    ssl=settings.ssl_context,
                    server_hostname=settings.server_hostname if settings.ssl_context else None,
                ),
                settings.connect_timeout,
            )
        except BaseException as error:
            self.open_connections -= 1
            if (waiter := self._next_waiter()) is not None:
                waiter.set_result(None)
            if isinstance(error, asyncio.CancelledError):
                raise
            raise _connect_error(error) from error
        connection.requests = 1
        if self._connect_timer is not None:
            self._connect_timer.observe(self._loop.time() - started)
        return connection

    def _next_waiter(self) -> asyncio.Future[UpstreamConnection | None] | None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                return waiter
        return None

    def _arm_cleanup(self, delay: float) -> None:
        self._cleanup = self._loop.call_later(max(delay, 0.01), self._expire_idle)

    def _expire_idle(self) -> None:
        self._cleanup = None
        deadline = self._loop.time() - self.settings.idle_timeout
        idle = self._idle
        # The deque is ordered by release time, so the expired ones sit at the left end.
        while idle and idle[0].idle_since <= deadline:
            idle.popleft().close()
        if idle:
            self._arm_cleanup(idle[0].idle_since - deadline)


def _connect_error(error: BaseException) -> UpstreamConnectError:
    if isinstance(error, TimeoutError):
        return UpstreamConnectError("timeout", "connect timed out")
    if isinstance(error, ConnectionRefusedError):
        return UpstreamConnectError("refused", "connection refused")
    if isinstance(error, ssl.SSLError | ssl.CertificateError):
        return UpstreamConnectError("tls", str(error))
    if isinstance(error, OSError):
        return UpstreamConnectError("error", error.strerror or str(error))
    return UpstreamConnectError("error", repr(error))
