"""One upstream TCP (or TLS) connection; while lent out, it forwards its events to a handler."""

import asyncio
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    from loadweaver.pool.pool import UpstreamPool


class UpstreamHandler(Protocol):
    """What a connection calls while an exchange holds it."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_closed(self, error: Exception | None) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("closed", "handler", "idle_since", "pool", "requests", "transport", "write_paused")

    def __init__(self, pool: "UpstreamPool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.handler: UpstreamHandler | None = None
        self.requests = 0
        self.idle_since = 0.0
        self.closed = False
        self.write_paused = False

    @property
    def reused(self) -> bool:
        return self.requests > 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.upstream_data(data)
        else:
            # Bytes on an idle connection mean the backend broke framing: it is unusable.
            self.close()

    def eof_received(self) -> bool | None:
        self._lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.handler is not None:
            self.handler.upstream_pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.handler is not None:
            self.handler.upstream_resume_writing()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self.pool.forget(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.close()

    def _lost(self, error: Exception | None) -> None:
        handler, self.handler = self.handler, None
        self.close()
        if handler is not None:
            handler.upstream_closed(error)
