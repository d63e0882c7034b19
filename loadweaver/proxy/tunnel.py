"""Byte relay after a successful upgrade (WebSocket and friends), with an idle timeout."""

from typing import TYPE_CHECKING

from loguru import logger

from loadweaver.pool.connection import UpstreamConnection

if TYPE_CHECKING:
    from loadweaver.proxy.client import ClientConnection


class Tunnel:
    def __init__(
        self, client: "ClientConnection", upstream: UpstreamConnection, idle_timeout: float
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.idle_timeout = idle_timeout
        self.deadline = client.loop.time() + idle_timeout
        upstream.handler = self
        if upstream.transport is not None:
            upstream.transport.resume_reading()

    def from_client(self, data: bytes) -> None:
        self.deadline = self.client.loop.time() + self.idle_timeout
        self.upstream.write(data)

    def upstream_data(self, data: bytes) -> None:
        self.deadline = self.client.loop.time() + self.idle_timeout
        self.client.write(data)

    def upstream_closed(self, error: Exception | None) -> None:
        del error
        self.client.close()

    def close(self) -> None:
        self.upstream.handler = None
        self.upstream.close()

    def check_deadline(self, now: float) -> None:
        if now >= self.deadline:
            self.client.metrics.timeouts.labels("tunnel_idle").inc()
            logger.info("tunnel from {} idled out", self.client.client_ip)
            self.close()
            self.client.close()

    def upstream_pause_writing(self) -> None:
        self.client.pause_reading("upstream")

    def upstream_resume_writing(self) -> None:
        self.client.resume_reading("upstream")

    def client_pause_writing(self) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def client_resume_writing(self) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.resume_reading()
