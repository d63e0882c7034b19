"""One request's journey: route, pick, forward, relay the response, release the connection.

Callbacks never await. Connecting is the one slow path that runs as a task; everything else is
driven by the client connection (request bytes) and the upstream connection (response bytes).
"""

import re
from typing import TYPE_CHECKING

import httptools
from loguru import logger

from loadweaver.balancing.base import Backend, NoBackend, PickContext, Strategy
from loadweaver.balancing.sticky import StickyPolicy
from loadweaver.control.snapshot import PoolRuntime, Snapshot
from loadweaver.observability.request_ids import RequestIdPolicy, valid_request_id
from loadweaver.pool.connection import UpstreamConnection
from loadweaver.pool.pool import UpstreamConnectError
from loadweaver.proxy import replies
from loadweaver.proxy.headers import (
    FORWARDING,
    RESPONSE_SPECIAL,
    Header,
    connection_tokens,
    forwarded_element,
    joined,
    names_extra_headers,
    render_forwarding,
    render_headers,
    status_line,
)
from loadweaver.proxy.replies import LocalReply, RequestRejectedError
from loadweaver.proxy.retry import IDEMPOTENT
from loadweaver.routing.rate_limit import RouteLimit
from loadweaver.routing.table import CompiledRoute

if TYPE_CHECKING:
    from loadweaver.balancing.sticky import SharedSessions
    from loadweaver.proxy.client import ClientConnection

REPLAY_LIMIT = 64 * 1024  # request bytes kept so a stale keep-alive failure can be replayed
BUFFER_HIGH_WATER = 256 * 1024  # body bytes held while connecting before client reads pause
NO_BODY_STATUSES = frozenset((204, 304))
CLIENT_CLOSED = 499  # nginx's status for a client that left before its response

# Response framing towards the client.
NONE, LENGTH, CHUNKED, CLOSE = range(4)


class Exchange:
    __slots__ = (
        "backend",
        "body_received",
        "bytes_out",
        "chunked",
        "client",
        "connected_at",
        "content_length",
        "deadline",
        "ended",
        "finished",
        "head",
        "headers",
        "host",
        "http11",
        "id_policy",
        "informational",
        "keep_alive",
        "keep_client",
        "max_body",
        "method",
        "out",
        "parser",
        "pending",
        "pending_size",
        "pool",
        "replay",
        "replay_limit",
        "replay_size",
        "request_complete",
        "request_id",
        "response_at",
        "response_done",
        "response_framing",
        "response_headers",
        "response_names",
        "response_special",
        "response_started",
        "retried",
        "retry_status",
        "route",
        "served_by",
        "set_cookie",
        "special",
        "started",
        "status",
        "target",
        "total_deadline",
        "trailers",
        "tried",
        "tries",
        "tunnel_data",
        "upgrade",
        "upstream",
        "upstream_keep_alive",
        "upstream_until_close",
    )

    def __init__(  # noqa: PLR0917, PLR0915 - one positional call per request; a slot a line
        self,
        client: "ClientConnection",
        method: bytes,
        target: bytes,
        headers: list[Header],
        special: list[Header],
        http11: bool,
        keep_alive: bool,
        upgrade: bool,
        content_length: int | None,
        chunked: bool,
        host: bytes | None,
    ) -> None:
        self.client = client
        # The request as llhttp parsed it; `special` holds the lower-cased framing, hop-by-hop,
        # Host and forwarding headers that the proxy re-renders, `headers` everything else.
        self.method = method
        self.target = target
        self.headers = headers
        self.special = special
        self.http11 = http11
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.content_length = content_length
        self.chunked = chunked
        self.host = host
        self.pending: list[bytes] | None = []  # request bytes not yet written upstream
        self.replay: list[bytes] | None = []  # request bytes kept for one replay
        self.response_headers: list[Header] = []
        self.response_special: list[Header] = []
        self.out: list[bytes] = []
        self.pool: PoolRuntime | None = None
        self.backend: Backend | None = None
        self.upstream: UpstreamConnection | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.head = b""
        self.pending_size = 0
        self.replay_size = 0
        self.body_received = 0
        self.max_body = 0
        self.request_complete = False
        self.retried = False
        self.finished = False
        self.deadline = 0.0
        self.total_deadline = 0.0
        self.started = 0.0
        self.tries = 0  # retries made on other backends
        self.tried: list[Backend] | None = None  # backends that failed this request
        self.retry_status = 0  # a retryable status being discarded instead of relayed
        self.replay_limit = REPLAY_LIMIT
        self.status = 0
        self.response_started = False
        self.response_framing = NONE
        self.response_done = False
        self.upstream_until_close = False  # the backend's body ends when it closes the connection
        self.informational = False
        self.keep_client = True
        self.set_cookie: bytes | None = None  # a sticky pool's Set-Cookie line for the response
        self.upstream_keep_alive = False
        self.tunnel_data: list[bytes] | None = None
        self.trailers: list[Header] | None = None
        # For metrics and the access log:
        self.route: CompiledRoute | None = None
        self.served_by: Backend | None = None  # the last backend that carried the request
        self.request_id = b""
        self.id_policy: RequestIdPolicy | None = None
        self.response_names = RESPONSE_SPECIAL
        self.bytes_out = 0
        self.connected_at = 0.0  # loop time a connection was attached
        self.response_at = 0.0  # loop time the response head arrived
        self.ended = 0.0  # loop time the backend was released

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    # ---- preparation (client side, at headers complete) ----

    def prepare(self, snapshot: Snapshot) -> LocalReply | None:
        """Routes the request and renders its upstream head; a LocalReply when it cannot go on."""
        target = self.target
        host = self.host
        if target[:1] == b"/" and host and not host.translate(None, _HOST_CHARACTERS):
            # The common case, inlined: origin-form target and a well-formed Host.
            path = target.partition(b"?")[0].decode("latin-1")
            hostname = host.partition(b":")[0].lower().decode("latin-1")
        else:
            if self.method == b"CONNECT":
                return replies.CONNECT_REJECTED
            found, problem = _request_host(self)
            if problem is not None:
                return problem
            # HTTP/1.0 without Host: the backend still needs one.
            host = found or str(self.client.listener.bind).encode()
            path = _path_of(target)
            hostname = _host_without_port(host).lower()
        limits = snapshot.limits
        self.max_body = limits.max_body_bytes
        if self.content_length is not None and self.content_length > limits.max_body_bytes:
            return replies.BODY_TOO_LARGE
        self.id_policy = snapshot.request_id
        self.response_names = snapshot.response_special
        route = self.route = snapshot.routes.match(
            hostname, path, self.method.decode(), self.headers, self.special
        )
        if route is None:
            return replies.NO_ROUTE if not self.has_body else _closing(replies.NO_ROUTE)
        if route.limit is not None:
            refused = self._rate_limited(route.limit)
            if refused is not None:
                return refused
        pool = self.pool = snapshot.pools[route.pool]
        self.replay_limit = pool.replay_limit
        self.head = self._render_upstream_head(host)
        return None

    def _rate_limited(self, limit: RouteLimit) -> LocalReply | None:
        client = self.client
        client_ip = client.client_ip
        if limit.key == "client_ip" and client.trusted and self._forwarded_for_present():
            forwarded_for = [value for name, value in self.special if name == b"x-forwarded-for"]
            client_ip = client.trusted_proxies.real_client(client_ip, forwarded_for)
        decision = limit.limiter.admit(limit.key_of(client_ip, self.headers, self.special))
        if decision.allowed:
            return None
        client.metrics.rate_limited.labels(limit.policy).inc()
        reply = replies.too_many_requests(
            decision.limit, decision.remaining, decision.reset, decision.retry_after
        )
        return reply if not self.has_body else _closing(reply)

    def _render_upstream_head(self, host: bytes) -> bytes:
        """Host first, the client's end-to-end headers, then forwarding and framing headers."""
        client = self.client
        headers = self.headers
        connection: list[bytes] = []
        upgrade: list[bytes] = []
        forwarding: list[Header] = []
        policy = self.id_policy
        incoming_id: bytes | None = None
        for name, value in self.special:
            if name == b"connection":
                connection.append(value)
            elif name == b"upgrade":
                upgrade.append(value)
            elif name in FORWARDING:
                forwarding.append((name, value))
            elif policy is not None and name == policy.lowered:
                incoming_id = value
        if connection and names_extra_headers(connection):
            dropped = connection_tokens(connection)
            headers = [(name, value) for name, value in headers if name.lower() not in dropped]
        if forwarding and client.trusted:
            block = _forwarding_block(client.client_ip, client.tls, host, forwarding)
        elif host == client.forwarding_host:
            block = client.forwarding_cache
        else:
            block = client.forwarding_block(host)
        target = self.target
        lines = [
            self.method,
            b" ",
            target if target[:1] == b"/" else origin_form(target),
            b" HTTP/1.1\r\nHost: ",
            host,
            b"\r\n",
        ]
        if headers:
            lines += (b"\r\n".join(map(b": ".join, headers)), b"\r\n")
        lines.append(block)
        if policy is not None:
            if incoming_id is None:
                ids = client.context.request_ids
                incoming_id = ids.prefix + b"%x" % next(ids.counter)  # RequestIds.next, inlined
            elif not valid_request_id(incoming_id):
                incoming_id = client.context.request_ids.next()
            self.request_id = incoming_id
            lines += (policy.line_start, incoming_id, b"\r\n")
        if self.upgrade:
            lines += (b"Connection: Upgrade\r\nUpgrade: ", joined(upgrade), b"\r\n")
        if self.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif self.content_length is not None:
            lines.append(b"Content-Length: %d\r\n" % self.content_length)
        lines.append(b"\r\n")
        return b"".join(lines)

    # ---- start: pick a backend and get a connection ----

    def start(self) -> None:
        pool = self.pool
        assert pool is not None
        # A pipelined request starts after the one before it: pick from the pool as it is now,
        # not as it was when its headers arrived, or it could pick a backend removed since.
        current = self.client.context.holder.current.pools.get(pool.name)
        if current is not None and current is not pool:
            pool = self.pool = current
        now = self.started = self.client.loop.time()
        if pool.total_timeout:
            self.total_deadline = now + pool.total_timeout
        # Until a connection is attached, this bounds the wait for a free slot in the pool.
        self.deadline = now + pool.response_timeout
        sticky = pool.sticky
        client = self.client
        if sticky is None and not (client.trusted and self._forwarded_for_present()):
            picked = pool.strategy.pick(client.pick_context)  # the common case, inlined
            if isinstance(picked, NoBackend):
                self.fail(replies.no_backend(picked.reason))
                return
            self._go(pool, picked)
            return
        if sticky is not None and sticky.shared is not None:
            session = sticky.session_of(self.headers, self.special)
            if session is not None and not sticky.shared.cached(session):
                # A session this node has not seen may be pinned on another: ask first.
                client.loop.create_task(self._start_after_lookup(sticky.shared, session))
                return
        self._pick_and_go(pool)

    async def _start_after_lookup(self, shared: "SharedSessions", session: str) -> None:
        await shared.fetch(session)
        pool = self.pool
        if not self.finished and pool is not None:
            self._pick_and_go(pool)

    def _pick_and_go(self, pool: PoolRuntime) -> None:
        """The pick for sticky pools and trusted proxies; start() inlines the common one."""
        picked = self._pick_with_request_context(pool.strategy, pool.sticky)
        if isinstance(picked, NoBackend):
            self.fail(replies.no_backend(picked.reason))
            return
        self._go(pool, picked)

    def _go(self, pool: PoolRuntime, picked: Backend) -> None:
        if (pool.max_in_flight or pool.max_pending) and self._breaker_refuses(pool, picked):
            return
        self.backend = picked
        picked.load.in_flight += 1
        if pool.load_aware:
            pool.strategy.on_acquire(picked)
        connection = picked.connections.take_idle()
        if connection is not None:
            self._attach(connection)
        else:
            self.client.loop.create_task(self._connect(picked, fresh=False))

    def _breaker_refuses(self, pool: PoolRuntime, picked: Backend) -> bool:
        """A backend at its circuit breaker's limit: a fast 503 instead of a queue."""
        if pool.max_in_flight and picked.load.in_flight >= pool.max_in_flight:
            limit = "max_in_flight"
        elif pool.max_pending and picked.connections.waiting >= pool.max_pending:
            limit = "max_pending"
        else:
            return False
        self.client.metrics.breaker_rejections.labels(pool.name, limit).inc()
        self.fail(replies.CIRCUIT_OPEN)
        return True

    def _forwarded_for_present(self) -> bool:
        return any(name == b"x-forwarded-for" for name, _ in self.special)

    def _pick_with_request_context(
        self, strategy: Strategy, sticky: StickyPolicy | None
    ) -> Backend | NoBackend:
        """A per-request context: the real client behind trusted proxies, and the session.

        Pipelined requests get one each, so they cannot see each other's session.
        """
        client = self.client
        forwarded_for = [value for name, value in self.special if name == b"x-forwarded-for"]
        client_ip = client.trusted_proxies.real_client(client.client_ip, forwarded_for)
        session = sticky.session_of(self.headers, self.special) if sticky is not None else None
        ctx = PickContext(client_ip, session)
        picked = strategy.pick(ctx)
        if ctx.new_session is not None and sticky is not None and sticky.cookie:
            self.set_cookie = sticky.set_cookie_line(ctx.new_session, client.tls)
        return picked

    def _finish(self, failed: bool = False, fault: bool = False) -> None:
        """The exchange is over, whichever way it ended: its backend no longer carries it."""
        self.finished = True
        self._release(failed, fault)
        if self.tries:
            pool = self.pool
            if pool is not None and pool.retry is not None:
                pool.retry.counter.active -= 1

    def _release(self, failed: bool, fault: bool) -> None:
        """The current backend no longer carries this request; `fault`: it failed it."""
        backend, self.backend = self.backend, None
        if backend is None:
            return
        self.served_by = backend
        pool = self.pool
        if fault:
            if pool is not None and pool.passive is not None:
                pool.passive.failure(backend)
        elif not failed:
            backend.load.failures = 0
        load = backend.load
        load.in_flight -= 1
        stats = load.stats
        self.ended = now = self.client.loop.time()
        stats.pending.append(now - self.started)  # bucketed off the hot path
        if failed:
            stats.errors += 1
        if pool is not None and pool.load_aware:
            # After a config swap the pool's current strategy must learn of the release too,
            # or it would think the backend busier than it is.
            current = self.client.context.holder.current.pools.get(pool.name)
            if current is not None and current.load_aware:
                pool = current
            pool.strategy.on_release(backend)

    async def _connect(self, backend: Backend, fresh: bool) -> None:
        try:
            connection = await backend.connections.acquire(fresh=fresh)
        except UpstreamConnectError as error:
            if not self.finished:
                self._connect_failed(backend, error)
            return
        if self.finished:
            backend.connections.release(connection, reusable=True)
            return
        self._attach(connection)

    def _connect_failed(self, backend: Backend, error: UpstreamConnectError) -> None:
        pool = self.pool
        retry = pool.retry if pool is not None else None
        if error.kind != "closed":  # "closed": the backend was removed, not a failure of its own
            self._upstream_error("connect", backend)
        if retry is not None and retry.on_connect and self._retry_elsewhere("connect_failure"):
            return  # nothing was sent: any method may go to another backend
        metrics = self.client.metrics
        if error.kind == "timeout":
            metrics.timeouts.labels("connect").inc()
            reply = replies.CONNECT_TIMEOUT
        else:
            reply = replies.bad_gateway(
                f"upstream_connect_{error.kind}",
                f"The backend could not be reached ({error.detail}).",
            )
        logger.warning(
            "upstream connect to {} ({}) failed: {}",
            backend,
            backend.address.authority,
            error.detail,
        )
        self.fail(reply, fault=True)

    def _attach(self, connection: UpstreamConnection) -> None:
        pool = self.pool
        assert pool is not None
        self.upstream = connection
        connection.handler = self
        self.parser = httptools.HttpResponseParser(self)
        self.connected_at = now = self.client.loop.time()
        self.deadline = now + pool.try_timeout
        pending = self.pending
        assert pending is not None
        self.pending = None
        transport = connection.transport
        assert transport is not None
        transport.write(self.head + b"".join(pending) if pending else self.head)
        if self.client.write_paused:
            transport.pause_reading()
        if self.replay is not None:
            self.replay.insert(0, self.head)
        if self.pending_size > BUFFER_HIGH_WATER:
            self.client.resume_reading("buffer")
        if connection.write_paused:
            self.client.pause_reading("upstream")

    # ---- request body from the client ----

    def client_body(self, chunk: bytes) -> None:
        self.body_received += len(chunk)
        if self.body_received > self.max_body:
            raise RequestRejectedError(replies.BODY_TOO_LARGE)
        data = b"%x\r\n%s\r\n" % (len(chunk), chunk) if self.chunked else chunk
        self._send_upstream(data)

    def client_body_done(self, trailers: list[Header]) -> None:
        self.request_complete = True
        if self.chunked:
            self._send_upstream(b"0\r\n" + render_headers(trailers) + b"\r\n")

    def _send_upstream(self, data: bytes) -> None:
        if self.finished:
            return
        if self.replay is not None:
            self.replay_size += len(data)
            if self.replay_size > self.replay_limit:
                self.replay = None
            else:
                self.replay.append(data)
        if self.pending is not None:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > BUFFER_HIGH_WATER:
                self.client.pause_reading("buffer")
        elif self.upstream is not None:
            self.upstream.write(data)

    # ---- the response, from the upstream connection ----

    def upstream_data(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._flush_to_client()
            self._switch_to_tunnel(data[upgrade.args[0] :])
            return
        except httptools.HttpParserError as error:
            self._flush_to_client()
            self._invalid_response(str(error))
            return
        if self.retry_status:
            self._retry_after_status()
            return
        out = self.out
        if out:
            client = self.client
            data = out[0] if len(out) == 1 else b"".join(out)
            self.bytes_out += len(data)
            if not client.closed:
                client.transport.write(data)  # type: ignore[union-attr]
            out.clear()
        if self.response_done:
            self._complete()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response_started:
            if self.trailers is None:
                self.trailers = []
            self.trailers.append((name, value))
            return
        lowered = name.lower()
        if lowered in self.response_names:
            self.response_special.append((lowered, value))
            if lowered != b"content-length":
                return
        self.response_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._relay_informational(status)
            return
        if status >= 502 and (self.retry_status or self._status_retryable(status)):
            self.retry_status = status  # its body is discarded with the connection
            return
        self.status = status
        self.deadline = self.total_deadline
        self.response_started = True
        self.response_at = self.client.loop.time()
        self.out.append(self._render_response_head(status))
        # llhttp forgets keep-alive once the message completes, so it is read now.
        self.upstream_keep_alive = parser.should_keep_alive()
        if self.response_framing == NONE and status != 101:
            self.response_done = True

    def on_body(self, chunk: bytes) -> None:
        if self.retry_status:
            return
        if self.response_framing == CHUNKED:
            self.out.append(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self.out.append(chunk)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.retry_status:
            return
        if self.response_framing == CHUNKED:
            self.out.append(b"0\r\n" + render_headers(self.trailers or ()) + b"\r\n")
        self.response_done = True

    def _relay_informational(self, status: int) -> None:
        self.informational = True
        headers, self.response_headers = self.response_headers, []
        self.response_special = []
        if self.http11:
            self.out.append(b"%s%s\r\n" % (status_line(status), render_headers(headers)))

    def _render_response_head(self, status: int) -> bytes:
        headers = self.response_headers
        has_length = chunked = False
        connection: list[bytes] = []
        upgrade: list[bytes] = []
        policy = self.id_policy
        backends_id: bytes | None = None
        for name, value in self.response_special:
            if name == b"content-length":
                has_length = True
            elif name == b"connection":
                connection.append(value)
            elif name == b"upgrade":
                upgrade.append(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif policy is not None and name == policy.lowered:
                backends_id = value
        if connection and names_extra_headers(connection):
            dropped = connection_tokens(connection)
            headers = [(name, value) for name, value in headers if name.lower() not in dropped]
        block = render_headers(headers)
        head = status_line(status)
        extra = b""
        if policy is not None:
            if backends_id is not None:  # the backend's own id passes, whatever `respond` says
                extra = policy.line_start + backends_id + b"\r\n"
            elif policy.respond and self.request_id:
                extra = policy.line_start + self.request_id + b"\r\n"
        if status == 101:
            return b"%s%s%sConnection: Upgrade\r\nUpgrade: %s\r\n\r\n" % (
                head,
                block,
                extra,
                joined(upgrade),
            )
        keep_alive = self.keep_alive and not self.client.closing and not self.upgrade
        if self.method == b"HEAD" or status in NO_BODY_STATUSES:
            self.response_framing = NONE
        elif has_length and not chunked:
            self.response_framing = LENGTH
        elif self.http11:
            self.response_framing = CHUNKED
            extra += b"Transfer-Encoding: chunked\r\n"
            self.upstream_until_close = not chunked
        else:
            self.response_framing = CLOSE
            keep_alive = False
        self.keep_client = keep_alive
        if self.set_cookie is not None:
            extra += self.set_cookie
        if not keep_alive:
            extra += b"Connection: close\r\n"
        elif not self.http11:
            extra += b"Connection: keep-alive\r\n"
        return b"%s%s%s\r\n" % (head, block, extra)

    def _flush_to_client(self) -> None:
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            self.bytes_out += len(data)
            self.client.write(data)
            out.clear()

    def _complete(self) -> None:
        """The whole response reached the client's transport."""
        if self.finished:
            return
        failed = self.status >= 500
        pool = self.pool
        self.finished = True  # _finish, inlined for the common case
        self._release(failed, failed and pool is not None and pool.failures_include_5xx)
        if self.tries and pool is not None and pool.retry is not None:
            pool.retry.counter.active -= 1
        connection, self.upstream = self.upstream, None
        if connection is not None:
            if self.client.write_paused and connection.transport is not None:
                connection.transport.resume_reading()  # paused for this client only
            reusable = (
                self.request_complete
                and self.response_framing != CLOSE
                and self.upstream_keep_alive
            )
            connection.pool.release(connection, reusable)
        self.parser = None
        self.replay = None  # the request's bytes: an access log may keep the exchange a while
        client = self.client
        client.recorder.record(client, self, self.status, self.ended or client.loop.time())
        client.exchange_done(self, self.keep_client and self.request_complete)

    # ---- failures ----

    def upstream_closed(self, error: Exception | None) -> None:
        connection = self.upstream
        self.upstream = None
        if self.finished:
            return
        if self.response_started:
            if error is None and (self.response_framing == CLOSE or self.upstream_until_close):
                if self.response_framing == CHUNKED:
                    self.client.write(b"0\r\n\r\n")
                self._complete()
            else:
                self._upstream_error("reset")
                logger.warning("backend {} closed the connection mid-response", self.backend)
                self._finish(failed=True, fault=True)
                self._record(self.status, "upstream_reset")
                self.client.abort()
            return
        if (
            connection is not None
            and connection.reused
            and not self.retried
            and self.replay is not None
            and self.backend is not None
        ):
            self._retry_fresh(self.backend)
            return
        self._upstream_error("reset")
        logger.warning("backend {} closed the connection before responding", self.backend)
        pool = self.pool
        retry = pool.retry if pool is not None else None
        if (
            retry is not None
            and retry.on_reset
            and self._may_resend()
            and self._retry_elsewhere("reset_before_response")
        ):
            return
        self.fail(
            replies.bad_gateway("upstream_reset", "The backend closed the connection early."),
            fault=True,
        )

    def _retry_fresh(self, backend: Backend) -> None:
        """The stale keep-alive race: the backend closed an idle connection as we reused it."""
        self.retried = True
        self.client.metrics.retries.inc()
        assert self.replay is not None
        self.pending = self.replay[1:]  # the head is re-sent by _attach
        self.replay = []
        self.parser = None
        self.informational = False
        self.trailers = None
        self.response_headers = []
        self.response_special = []
        self.client.loop.create_task(self._connect(backend, fresh=True))

    # ---- retries on other backends ----

    def _may_resend(self) -> bool:
        """Bytes already went out: only an idempotent request whose bytes are all kept."""
        return self.method in IDEMPOTENT and self.request_complete and self.replay is not None

    def _status_retryable(self, status: int) -> bool:
        pool = self.pool
        retry = pool.retry if pool is not None else None
        return (
            retry is not None
            and status in retry.statuses
            and self.request_complete
            and self.replay is not None
            and self.tries < retry.attempts
        )

    def _retry_after_status(self) -> None:
        status, self.retry_status = self.retry_status, 0
        self.out.clear()
        self._drop_upstream()  # its body was not read: the connection cannot be reused
        if not self._retry_elsewhere(f"status {status}"):
            self.fail(
                LocalReply(status, f"upstream_{status}", f"The backend answered {status}."),
                fault=True,
            )

    def _retry_elsewhere(self, why: str) -> bool:
        """Re-picks, avoiding every backend that failed this request; False if it may not."""
        pool, backend = self.pool, self.backend
        retry = pool.retry if pool is not None else None
        if pool is None or retry is None or backend is None or self.tries >= retry.attempts:
            return False
        in_flight = sum(member.load.in_flight for member in pool.backends)
        if not retry.allows_another(in_flight):
            self.client.metrics.retries_refused.labels(pool.name).inc()
            return False
        if self.pending is None:  # it was sent: resend what the replay buffer kept
            if self.replay is None:
                return False
            self.pending, self.replay = self.replay[1:], []
        tried = self.tried = [*(self.tried or ()), backend]
        self._release(failed=True, fault=True)
        picked = pool.strategy.pick(PickContext(self.client.client_ip), tried)
        if isinstance(picked, NoBackend):
            return False
        if not self.tries:
            retry.counter.active += 1
        self.tries += 1
        self.client.metrics.retries_by_reason.labels(pool.name, why).inc()
        logger.info("retrying on {} after {} from {}", picked, why, backend)
        self.parser = None
        self.informational = False
        self.trailers = None
        self.response_headers = []
        self.response_special = []
        self._go(pool, picked)
        return True

    def _upstream_error(self, kind: str, backend: Backend | None = None) -> None:
        """`kind`: connect, timeout, reset or protocol; charged to `backend` (default: the
        current one)."""
        backend = backend or self.backend
        pool = self.pool
        self.client.metrics.upstream_error(
            pool.name if pool is not None else "", backend.name if backend is not None else "", kind
        )

    def _invalid_response(self, detail: str) -> None:
        self._upstream_error("protocol")
        logger.warning("backend {} sent an invalid response: {}", self.backend, detail)
        self.fail(
            replies.bad_gateway("invalid_response", "The backend sent an invalid response."),
            fault=True,
        )

    def check_deadline(self, now: float) -> None:
        if self.finished:
            return
        if self.total_deadline and now >= self.total_deadline:
            self.client.metrics.timeouts.labels("total").inc()
            logger.warning("request to {} exceeded its total time", self.backend)
            self.fail(replies.TOTAL_TIMEOUT, fault=self.upstream is not None)
        elif self.deadline and now >= self.deadline and not self.response_started:
            if self.upstream is None:
                self.client.metrics.timeouts.labels("queue").inc()
                logger.warning("no connection to {} became free in time", self.backend)
                self.fail(replies.QUEUE_TIMEOUT)
                return
            self.client.metrics.timeouts.labels("response").inc()
            self._upstream_error("timeout")
            logger.warning("backend {} did not answer in time", self.backend)
            pool = self.pool
            retry = pool.retry if pool is not None else None
            if retry is not None and retry.on_timeout and self._may_resend():
                self._drop_upstream()
                if self._retry_elsewhere("timeout"):
                    return
            self.fail(replies.UPSTREAM_TIMEOUT, fault=True)

    def fail(self, reply: LocalReply, fault: bool = False) -> None:
        """Ends the exchange with a local reply; the client connection closes when unsafe.

        `fault`: the backend failed the request, which passive health detection counts.
        """
        if self.finished:
            return
        self._finish(reply.status >= 500, fault)
        self._drop_upstream()
        if self.response_started:
            self._record(self.status, reply.reason)  # cut short
            self.client.abort()  # the status line is gone: cutting the connection is the signal
            return
        client = self.client
        client.metrics.local_replies.labels(reply.status, reply.reason).inc()
        logger.info(
            "{} {} for {} {} from {}",
            reply.status,
            reply.reason,
            self.method.decode("latin-1"),
            self.target[:200].decode("latin-1"),
            client.client_ip,
        )
        keep_alive = (
            not reply.close and self.request_complete and self.keep_alive and not self.upgrade
        )
        data = reply.render(keep_alive and not client.closing, self.reply_id_line())
        self.bytes_out += len(data)
        client.write(data)
        self.status = reply.status
        self._record(reply.status, reply.reason)
        client.exchange_done(self, keep_alive)

    def reply_id_line(self) -> bytes:
        """The request id header for a reply the proxy writes itself; b"" when ids are off."""
        policy = self.id_policy
        if policy is None or not policy.respond:
            return b""
        if not self.request_id:
            incoming = next((value for name, value in self.special if name == policy.lowered), None)
            self.request_id = self.client.context.request_ids.keep_or_make(incoming)
        return policy.line_start + self.request_id + b"\r\n"

    def abandon(self) -> None:
        """The client went away: drop the upstream side unless it finished cleanly."""
        if self.finished:
            return
        self._finish()
        self._drop_upstream()
        if self.started:  # it was being served, not waiting behind another pipelined request
            # Cut short: the status the client got the start of, or nginx's 499 if nothing.
            status = self.status if self.response_started else CLIENT_CLOSED
            self._record(status, "client_closed")

    def _record(self, status: int, reason: str = "") -> None:
        """Counts the request as over and queues it for the access log, which may hold the
        exchange a while: its request bytes are let go first. (`_complete` does the same
        inline, on the path every request takes.)"""
        self.replay = None
        client = self.client
        client.recorder.record(client, self, status, self.ended or client.loop.time(), reason)

    def _drop_upstream(self) -> None:
        """Aborts the upstream connection mid-exchange: it cannot be reused."""
        connection, self.upstream = self.upstream, None
        if connection is not None:
            connection.handler = None
            connection.abort()

    # ---- flow control ----

    def upstream_pause_writing(self) -> None:
        self.client.pause_reading("upstream")

    def upstream_resume_writing(self) -> None:
        self.client.resume_reading("upstream")

    def client_pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def client_resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    # ---- upgrade ----

    def _switch_to_tunnel(self, first_bytes: bytes) -> None:
        connection = self.upstream
        if self.status != 101 or not self.upgrade or connection is None:
            self._invalid_response("101 Switching Protocols without an upgrade request")
            return
        self._finish()
        self.upstream = None
        self._record(101)
        self.client.start_tunnel(connection, first_bytes, self.tunnel_data)


def _forwarding_block(client_ip: str, tls: bool, host: bytes, received: list[Header]) -> bytes:
    """Forwarding headers for a trusted peer: its chain is extended, its proto and host kept."""
    scheme = b"https" if tls else b"http"
    chain = [value for name, value in received if name == b"x-forwarded-for"]
    elements = [value for name, value in received if name == b"forwarded"]
    proto = scheme
    forwarded_host = host
    for name, value in received:
        if name == b"x-forwarded-proto":
            proto = value
        elif name == b"x-forwarded-host":
            forwarded_host = value
    chain.append(client_ip.encode())
    elements.append(forwarded_element(client_ip, scheme, host))
    return render_forwarding(joined(chain), proto, forwarded_host, joined(elements))


def _closing(reply: LocalReply) -> LocalReply:
    return LocalReply(reply.status, reply.reason, reply.message, close=True)


def _request_host(request: Exchange) -> tuple[bytes, LocalReply | None]:
    target = request.target
    if not target.startswith(b"/") and target[:4].lower() == b"http":
        authority = target.split(b"//", 1)[-1].split(b"/", 1)[0].split(b"?", 1)[0]
        if not authority or b"@" in authority:
            return b"", replies.bad_request("bad_target", "The request target is malformed.")
        return authority, None
    host = request.host
    if host is None:
        if request.http11:
            return b"", replies.bad_request("missing_host", "HTTP/1.1 requests need a Host header.")
        return b"", None
    if host.translate(None, _HOST_CHARACTERS) and not _BRACKETED_HOST(host):
        return b"", replies.bad_request("bad_host", "The Host header is malformed.")
    return host, None


# A Host made only of these characters is safe to route on and forward as it is; translate()
# with them deleted leaves nothing, which is one C call instead of a regex match per request.
_HOST_CHARACTERS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:"
_BRACKETED_HOST = re.compile(rb"\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?").fullmatch


def _host_without_port(host: bytes) -> str:
    if host.startswith(b"["):
        return host.split(b"]", 1)[0].decode("latin-1") + "]"
    return host.partition(b":")[0].decode("latin-1")


def origin_form(target: bytes) -> bytes:
    """The path and query of an absolute-form target; any other target as it is (origin form,
    `*`, or a CONNECT's authority, which only the access log and traffic patterns see)."""
    _, absolute, rest = target.partition(b"//")
    if target.startswith(b"/") or not absolute:
        return target
    slash = rest.find(b"/")
    query = rest.find(b"?")
    if slash == -1:
        return b"/" + rest[query:] if query != -1 else b"/"
    return rest[slash:]


def _path_of(target: bytes) -> str:
    return origin_form(target).partition(b"?")[0].decode("latin-1")
