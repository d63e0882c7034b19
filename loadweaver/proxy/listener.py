"""Listening sockets, the shared proxy context, and the registry that sweeps client deadlines.

Deadlines are plain floats checked by one periodic sweep rather than a timer per request: setting
a float costs nothing on the hot path, and the sweep interval follows the shortest timeout.
"""

import asyncio
import contextlib
import errno
import socket
from dataclasses import dataclass, field

from loguru import logger

from loadweaver.control.snapshot import ListenerSpec, SnapshotHolder
from loadweaver.observability.metrics import Metrics
from loadweaver.observability.request_ids import RequestIds
from loadweaver.observability.runtime_collector import ListenerStats
from loadweaver.proxy.client import ClientConnection
from loadweaver.proxy.tls import SniSelector, listener_context


class ConnectionRegistry:
    def __init__(self, loop: asyncio.AbstractEventLoop, holder: SnapshotHolder) -> None:
        self._loop = loop
        self._holder = holder
        self._connections: set[ClientConnection] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._connections)

    def add(self, connection: ClientConnection) -> None:
        self._connections.add(connection)

    def discard(self, connection: ClientConnection) -> None:
        self._connections.discard(connection)

    def start(self) -> None:
        self._sweeper = self._loop.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._holder.current.sweep_interval)
            now = self._loop.time()
            for connection in list(self._connections):
                connection.check_deadline(now)

    async def drain(self, grace: float) -> int:
        """Asks every connection to finish; aborts those still open after `grace`. Returns them."""
        for connection in list(self._connections):
            connection.shutdown()
        deadline = self._loop.time() + grace
        while self._connections and self._loop.time() < deadline:
            await asyncio.sleep(0.05)
        left = list(self._connections)
        for connection in left:
            connection.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        return len(left)


@dataclass
class ProxyContext:
    loop: asyncio.AbstractEventLoop
    holder: SnapshotHolder
    metrics: Metrics
    connections: ConnectionRegistry
    # Per listener name, kept across reloads so its counters never go back.
    listener_stats: dict[str, ListenerStats] = field(default_factory=dict)
    request_ids: RequestIds = field(default_factory=RequestIds)


class ListenError(Exception):
    pass


class Listener:
    """One bound socket; TLS certificates are looked up per handshake so reloads apply live."""

    def __init__(self, context: ProxyContext, spec: ListenerSpec, reuse_port: bool) -> None:
        self.context = context
        self.spec = spec
        self.reuse_port = reuse_port
        self.sni: SniSelector | None = None
        self._server: asyncio.Server | None = None
        self.stats = context.listener_stats.setdefault(spec.name, ListenerStats())

    async def start(self) -> None:
        spec = self.spec
        ssl_context = None
        if spec.certificates is not None:
            self.sni = SniSelector(spec.certificates)
            ssl_context = listener_context(self.sni, spec.min_tls_version)
        try:
            self._server = await self.context.loop.create_server(
                self._new_connection,
                spec.bind.host,
                spec.bind.port,
                ssl=ssl_context,
                backlog=4096,
                reuse_address=True,
                reuse_port=self.reuse_port or None,
                # A handshake is part of the request head: slowloris over TLS is cut the same.
                ssl_handshake_timeout=(spec.request_header_timeout or None)
                if ssl_context
                else None,
            )
        except OSError as error:
            raise ListenError(_listen_failure(spec, error)) from None
        logger.info(
            "listener {} on {}://{}", spec.name, "https" if ssl_context else "http", spec.bind
        )

    def update(self, spec: ListenerSpec) -> None:
        """Applies a new snapshot's timeouts and certificates to connections accepted from now."""
        self.spec = spec
        if self.sni is not None and spec.certificates is not None:
            self.sni.certificates = spec.certificates

    def _new_connection(self) -> ClientConnection:
        return ClientConnection(self.context, self.spec, self.stats)

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._server.sockets) if self._server else []

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()


def _listen_failure(spec: ListenerSpec, error: OSError) -> str:
    reason = {
        errno.EADDRINUSE: "the address is already in use",
        errno.EACCES: "permission denied (ports below 1024 need privileges)",
        errno.EADDRNOTAVAIL: "the address does not belong to this machine",
    }.get(error.errno or 0, error.strerror or str(error))
    return f"cannot listen on {spec.bind} for listener {spec.name!r}: {reason}"
