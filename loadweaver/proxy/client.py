"""The client-side protocol: one object per accepted connection.

It feeds bytes to llhttp, turns each request head into an Exchange, and answers them strictly in
order (pipelining). Only the exchange at the head of the queue talks to a backend; later ones
buffer their bodies, bounded by pausing reads. Nothing here awaits.
"""

import asyncio
from typing import TYPE_CHECKING, cast

import httptools
from loguru import logger

from loadweaver.balancing.base import PickContext
from loadweaver.control.snapshot import ListenerSpec
from loadweaver.observability.metrics import Metrics
from loadweaver.observability.runtime_collector import ListenerStats
from loadweaver.pool.connection import UpstreamConnection
from loadweaver.proxy import replies
from loadweaver.proxy.exchange import Exchange
from loadweaver.proxy.headers import (
    Header,
    forwarded_element,
    render_forwarding,
)
from loadweaver.proxy.replies import LocalReply, RequestRejectedError
from loadweaver.proxy.tunnel import Tunnel

if TYPE_CHECKING:
    from loadweaver.proxy.listener import ProxyContext

PIPELINE_DEPTH = 16  # queued requests per connection before reads pause
LINGER_SECONDS = 2.0  # how long unread input is drained after an error reply
HELD_TUNNEL_BYTES = 256 * 1024  # bytes sent after an upgrade request, held until the 101
HEAD_SLACK = 4096


class LocalReplyItem:
    """A queued local reply that keeps its place among pipelined responses."""

    finished = False

    def __init__(
        self, client: "ClientConnection", reply: LocalReply, request: Exchange | None = None
    ) -> None:
        self.client = client
        self.reply = reply
        self.request = request  # the request it answers, when its head could be parsed

    def start(self) -> None:
        self.finished = True
        client = self.client
        reply = self.reply
        client.metrics.local_replies.labels(reply.status, reply.reason).inc()
        keep_alive = not reply.close and not client.closing
        request = self.request
        data = reply.render(keep_alive, request.reply_id_line() if request is not None else b"")
        client.write(data)
        now = client.loop.time()
        client.recorder.record(client, request, reply.status, now, reply.reason, len(data))
        client.exchange_done(self, keep_alive)

    def check_deadline(self, now: float) -> None:
        pass

    def abandon(self) -> None:
        pass

    def client_body(self, chunk: bytes) -> None:
        pass

    def client_body_done(self, trailers: list[Header]) -> None:
        pass

    def client_pause_writing(self) -> None:
        pass

    def client_resume_writing(self) -> None:
        pass


Item = Exchange | LocalReplyItem


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "client_ip",
        "closed",
        "closing",
        "context",
        "deadline",
        "deadline_kind",
        "forwarding_cache",
        "forwarding_host",
        "head_bytes",
        "head_snapshot",
        "header_bytes",
        "header_count",
        "headers",
        "in_head",
        "limits",
        "listener",
        "loop",
        "metrics",
        "parser",
        "parsing",
        "pick_context",
        "queue",
        "read_pauses",
        "received_any",
        "recorder",
        "rejected",
        "special",
        "special_names",
        "stats",
        "tls",
        "tls_version",
        "trailers",
        "transport",
        "trusted",
        "trusted_proxies",
        "tunnel",
        "upgrading",
        "url",
        "write_paused",
    )

    def __init__(
        self, context: "ProxyContext", listener: ListenerSpec, stats: ListenerStats
    ) -> None:
        self.context = context
        self.loop = context.loop
        self.metrics: Metrics = context.metrics
        self.recorder = context.metrics.recorder
        self.stats = stats
        self.listener = listener
        self.tls = listener.certificates is not None
        self.tls_version: str | None = None  # negotiated: "TLSv1.3"
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.trusted = False
        self.trusted_proxies = context.holder.current.trusted_proxies
        self.parser = httptools.HttpRequestParser(self)
        self.queue: list[Item] = []  # at most PIPELINE_DEPTH + 1 long: a list is enough
        self.parsing: Item | None = None
        self.tunnel: Tunnel | None = None
        self.closing = False
        self.closed = False
        self.upgrading = False  # parsing stopped at an upgrade request; bytes wait for the 101
        self.rejected = False  # a fatal error reply was queued; later input is dropped
        self.write_paused = False
        self.read_pauses: frozenset[str] = frozenset()  # rarely non-empty: no set per connection
        self.deadline = 0.0
        self.deadline_kind = "request_header"
        self.received_any = False
        # the request head being parsed
        self.in_head = False
        self.head_bytes = 0
        self.url = b""
        self.headers: list[Header] = []
        self.special: list[Header] = []
        self.header_bytes = 0
        self.header_count = 0
        self.trailers: list[Header] = []
        self.limits = context.holder.current.limits
        self.special_names = context.holder.current.request_special
        self.head_snapshot = context.holder.current
        self.pick_context = PickContext("")
        self.forwarding_host: bytes | None = None
        self.forwarding_cache = b""

    # ---- connection lifecycle ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        if self.tls:  # made once the handshake is done
            ssl_object = transport.get_extra_info("ssl_object")
            self.tls_version = ssl_object.version() if ssl_object is not None else None
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "unknown"
        self.pick_context = PickContext(self.client_ip)
        snapshot = self.context.holder.current
        self.trusted_proxies = snapshot.trusted_proxies
        self.trusted = snapshot.trusted_proxies.trusts(self.client_ip)
        self.deadline = self.loop.time() + self.listener.request_header_timeout
        self.context.connections.add(self)
        stats = self.stats
        stats.active += 1
        stats.total += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.context.connections.discard(self)
        self.stats.active -= 1
        for item in self.queue:
            item.abandon()
        self.queue.clear()
        if self.tunnel is not None:
            self.tunnel.close()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self.rejected:
            return  # lingering after an error reply: input is read and dropped
        if self.upgrading:
            self._hold_for_tunnel(data)
            return
        self.received_any = True
        if self.in_head:
            self.head_bytes += len(data)
            limits = self.context.holder.current.limits
            if self.head_bytes > limits.max_header_bytes + limits.max_url_bytes + HEAD_SLACK:
                self._reject(replies.HEADERS_TOO_LARGE)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgrading = True
            self._hold_for_tunnel(data[upgrade.args[0] :])
        except RequestRejectedError as rejected:
            self._reject(rejected.reply)
        except httptools.HttpParserError as error:
            # httptools wraps an exception raised in a callback; the original is its context.
            cause = error.__context__
            if isinstance(cause, RequestRejectedError):
                self._reject(cause.reply)
            else:
                self._reject(_parse_error_reply(error))

    def eof_received(self) -> bool | None:
        # A half-closed client may still want its pending responses (HTTP/1.0 style).
        if not self.queue or self.deadline_kind == "linger":
            return False
        self.closing = True
        return True

    # ---- llhttp callbacks ----

    def on_url(self, url: bytes) -> None:
        # llhttp reports the URL first, so the message begins here (saves a callback).
        if not self.in_head:
            self.in_head = True
            self.head_bytes = 0
            self.url = url
            self.headers = []
            self.special = []
            self.header_bytes = 0
            self.header_count = 0
            self.trailers = []
            snapshot = self.head_snapshot = self.context.holder.current
            self.limits = snapshot.limits
            self.special_names = snapshot.request_special
            if not self.queue:
                self.deadline = self.loop.time() + self.listener.request_header_timeout
                self.deadline_kind = "request_header"
        else:
            self.url += url
        if len(self.url) > self.limits.max_url_bytes:
            raise RequestRejectedError(replies.URL_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            self.trailers.append((name, value))
            return
        self.header_bytes += len(name) + len(value) + 4
        self.header_count += 1
        limits = self.limits
        if self.header_bytes > limits.max_header_bytes or self.header_count > limits.max_headers:
            raise RequestRejectedError(replies.HEADERS_TOO_LARGE)
        lowered = name.lower()
        if lowered in self.special_names:
            self.special.append((lowered, value))
        else:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        if not self.queue:
            self.deadline = 0.0
        exchange = self._new_exchange()
        self.recorder.received += 1
        if not exchange.has_body and not exchange.upgrade:
            # Complete already: a reply sent during start() may keep the connection.
            exchange.request_complete = True
        # The snapshot the head was parsed under: its request-id header was parsed apart.
        problem = exchange.prepare(self.head_snapshot)
        item: Item = exchange if problem is None else LocalReplyItem(self, problem, exchange)
        if problem is not None:
            logger.info(
                "{} {} from {}: {}",
                problem.status,
                problem.reason,
                self.client_ip,
                exchange.target[:200].decode("latin-1"),
            )
        self.parsing = item
        self.queue.append(item)
        if len(self.queue) == 1:
            item.start()
        elif len(self.queue) > PIPELINE_DEPTH:
            self.pause_reading("pipeline")

    def on_body(self, chunk: bytes) -> None:
        if self.parsing is not None:
            self.parsing.client_body(chunk)

    def on_message_complete(self) -> None:
        item, self.parsing = self.parsing, None
        if item is None:
            return
        if isinstance(item, Exchange) and not item.chunked:
            item.request_complete = True  # nothing to send: skip the call
        else:
            item.client_body_done(self.trailers)

    # ---- called by exchanges ----

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def exchange_done(self, item: Item, keep_alive: bool) -> None:
        queue = self.queue
        if not queue or queue[0] is not item:
            return
        del queue[0]
        # Pauses taken on behalf of that exchange end with it.
        if self.read_pauses:
            self.resume_reading("upstream")
            self.resume_reading("buffer")
        if not keep_alive or self.closing:
            self.close()
            return
        if "pipeline" in self.read_pauses and len(queue) <= PIPELINE_DEPTH:
            self.resume_reading("pipeline")
        if queue:
            queue[0].start()
        elif self.in_head:
            self.deadline = self.loop.time() + self.listener.request_header_timeout
            self.deadline_kind = "request_header"
        else:
            self.deadline = self.loop.time() + self.listener.idle_timeout
            self.deadline_kind = "idle"

    def start_tunnel(
        self, upstream: UpstreamConnection, first_bytes: bytes, held: list[bytes] | None
    ) -> None:
        """After a 101: bytes flow both ways untouched until either side closes or idles out."""
        if self.queue:
            del self.queue[0]
        tunnel = Tunnel(self, upstream, self.listener.tunnel_idle_timeout)
        self.tunnel = tunnel
        self.deadline = 0.0
        self.resume_reading("tunnel")
        if first_bytes:
            self.write(first_bytes)
        for data in held or ():
            tunnel.from_client(data)

    def _new_exchange(self) -> Exchange:
        """The parsed request head as an Exchange; raises RequestRejectedError for bad framing."""
        parser = self.parser
        content_length: int | None = None
        chunked = False
        host: bytes | None = None
        for lowered, value in self.special:
            if lowered == b"host":
                if host is not None:
                    raise RequestRejectedError(replies.MULTIPLE_HOSTS)
                host = value
            elif lowered == b"content-length":
                content_length = int(value)
            elif lowered == b"transfer-encoding":
                if value.strip().lower() != b"chunked" or chunked:
                    raise RequestRejectedError(replies.NOT_IMPLEMENTED_TE)
                chunked = True
        if chunked and content_length is not None:
            raise RequestRejectedError(replies.LENGTH_AND_CHUNKED)
        return Exchange(
            self,
            parser.get_method(),
            self.url,
            self.headers,
            self.special,
            parser.get_http_version() == "1.1",
            parser.should_keep_alive(),
            parser.should_upgrade(),
            content_length,
            chunked,
            host,
        )

    def forwarding_block(self, host: bytes) -> bytes:
        """This client's own forwarding headers; cached, as a connection rarely changes Host."""
        scheme = b"https" if self.tls else b"http"
        self.forwarding_host = host
        self.forwarding_cache = render_forwarding(
            self.client_ip.encode(), scheme, host, forwarded_element(self.client_ip, scheme, host)
        )
        return self.forwarding_cache

    def _hold_for_tunnel(self, data: bytes) -> None:
        """Bytes after an upgrade request wait for the backend's 101."""
        if not data:
            return
        item = self.queue[-1] if self.queue else None
        if isinstance(item, Exchange):
            if item.tunnel_data is None:
                item.tunnel_data = []
            item.tunnel_data.append(data)
            if sum(map(len, item.tunnel_data)) > HELD_TUNNEL_BYTES:
                self.pause_reading("tunnel")

    # ---- flow control ----

    def pause_reading(self, reason: str) -> None:
        if not self.read_pauses and self.transport is not None:
            self.transport.pause_reading()
        self.read_pauses |= {reason}

    def resume_reading(self, reason: str) -> None:
        pauses = self.read_pauses
        if reason in pauses:
            self.read_pauses = pauses = pauses - {reason}
            if not pauses and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.client_pause_writing()
        elif self.queue:
            self.queue[0].client_pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.client_resume_writing()
        elif self.queue:
            self.queue[0].client_resume_writing()

    # ---- timeouts, rejection, shutdown ----

    def check_deadline(self, now: float) -> None:
        if self.tunnel is not None:
            self.tunnel.check_deadline(now)
            return
        if self.queue:
            self.queue[0].check_deadline(now)
            return
        if self.deadline and now >= self.deadline:
            self._time_out()

    def _time_out(self) -> None:
        kind = self.deadline_kind
        self.deadline = 0.0
        if kind == "linger":
            self.abort()
            return
        if kind == "request_header" and (self.received_any or self.in_head):
            self.metrics.timeouts.labels("request_header").inc()
            logger.info("request headers from {} timed out", self.client_ip)
            self._reject(replies.HEADER_TIMEOUT)
            return
        self.metrics.timeouts.labels("idle" if kind == "idle" else "request_header").inc()
        self.close()

    def _reject(self, reply: LocalReply) -> None:
        """A fatal request error: answer in order after earlier responses, then close."""
        self.rejected = True
        self.in_head = False
        if self.transport is not None:
            self.transport.pause_reading()
        logger.info("rejected request from {}: {} {}", self.client_ip, reply.status, reply.reason)
        parsing, self.parsing = self.parsing, None
        request = parsing if isinstance(parsing, Exchange) else None
        if request is not None and not request.request_complete:
            # The request being streamed is cut short and cannot complete.
            if self.queue and self.queue[0] is request:
                request.fail(reply)
                return
            request.abandon()
            self.queue.remove(request)
        elif request is not None:
            request = None  # complete and queued: the reply answers a request not yet parsed
        item = LocalReplyItem(self, reply, request)
        self.queue.append(item)
        if len(self.queue) == 1:
            item.start()

    def shutdown(self) -> None:
        """Graceful stop: close when idle, otherwise after the response in flight."""
        self.closing = True
        if not self.queue and self.tunnel is None:
            self.close()

    def close(self) -> None:
        """Closes after pending writes; lingers when the client may still be sending."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if (self.rejected or self.parsing is not None) and transport.can_write_eof():
            self._linger(transport)
        else:
            transport.close()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Like nginx's lingering close: a FIN now, then unread input is drained and dropped.

        Closing a socket with unread data sends a reset, which can destroy the error reply
        before the client reads it; draining for a moment lets the reply arrive.
        """
        self.rejected = True
        self.parsing = None
        for item in self.queue:
            item.abandon()
        self.queue.clear()
        transport.write_eof()
        self.read_pauses = frozenset()
        transport.resume_reading()
        self.deadline = self.loop.time() + LINGER_SECONDS
        self.deadline_kind = "linger"

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


def _parse_error_reply(error: httptools.HttpParserError) -> LocalReply:
    text = str(error)
    if "Transfer-Encoding" in text and "Content-Length" in text:
        return replies.LENGTH_AND_CHUNKED
    if "Content-Length" in text:
        return replies.bad_request("bad_content_length", "The Content-Length header is invalid.")
    if "Transfer-Encoding" in text:
        return replies.bad_request("bad_transfer_encoding", "The Transfer-Encoding is invalid.")
    if "chunk" in text.lower():
        return replies.bad_request("bad_chunk", "The chunked body is malformed.")
    return replies.bad_request("malformed_request", "The request is not valid HTTP/1.1.")
