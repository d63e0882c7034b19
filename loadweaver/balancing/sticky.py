"""Session affinity on top of any strategy: a signed cookie, or a session table keyed by a header.

Cookie mode: the first response sets a cookie carrying the backend's name, an expiry and an
HMAC-SHA256 over both (keyed by the pool's secret), so any node holding the secret can honour it
and nobody can forge one. A tampered, expired or foreign cookie counts as no cookie. A cookie
naming a backend that is gone, in maintenance or unhealthy is re-picked, and a new cookie is set.

Header mode: the request header's value is a session key; a SessionTable maps it to a backend
name with a sliding TTL. The table is an interface so the cluster store can back it later.
"""

import base64
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from loadweaver.balancing.base import Backend, NoBackend, PickContext, Strategy
from loadweaver.proxy.headers import header_value

SIGNATURE_BYTES = 16
MAX_EXPIRY_DIGITS = 12  # seconds since the epoch, with room to spare
MAX_SESSIONS = 100_000  # per pool and node; the least recently used are forgotten first


class SessionTable(Protocol):
    """Session key -> backend name, with a sliding time to live."""

    ttl: float

    @property
    def consistent_placement(self) -> bool:
        """True: place new sessions by hashing their key, not by the pool's algorithm."""
        ...

    @property
    def shared(self) -> bool:
        """Other nodes read and write the same sessions."""
        ...

    def get(self, key: str) -> str | None: ...

    def put(self, key: str, backend: str) -> None: ...


class SharedSessions(SessionTable, Protocol):
    """A session table other nodes share, which a request may consult before its pick."""

    def cached(self, key: str) -> bool: ...

    async def fetch(self, key: str) -> None: ...


class MemorySessionTable:
    """A bounded LRU table in this process; expired entries read as absent."""

    consistent_placement = False  # one node: its own algorithm decides
    shared = False

    def __init__(
        self, ttl: float, limit: int = MAX_SESSIONS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._limit = limit
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        backend, expires = entry
        now = self._clock()
        if now >= expires:
            del self._entries[key]
            return None
        self._entries[key] = (backend, now + self.ttl)
        self._entries.move_to_end(key)
        return backend

    def put(self, key: str, backend: str) -> None:
        self._entries[key] = (backend, self._clock() + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)


class CookieSigner:
    """Encodes `backend.expiry.signature` cookie values and checks them."""

    def __init__(self, secret: bytes, pool: str, clock: Callable[[], float] = time.time) -> None:
        self._key = hashlib.sha256(secret + b"\0" + pool.encode()).digest()
        self._clock = clock

    def sign(self, backend: str, ttl: float) -> str:
        name = _b64(backend.encode())
        expiry = str(int(self._clock() + ttl))
        return f"{name}.{expiry}.{self._signature(name, expiry)}"

    def verify(self, value: str) -> tuple[str, float] | None:
        """The backend a cookie names and seconds it has left; None if forged or expired."""
        parts = value.split(".")
        if len(parts) != 3:
            return None
        name, expiry, signature = parts
        # isdigit() also accepts digits like "²" that int() refuses; a cookie is untrusted text.
        if not (expiry.isascii() and expiry.isdigit()) or len(expiry) > MAX_EXPIRY_DIGITS:
            return None
        remaining = int(expiry) - self._clock()
        expected = self._signature(name, expiry).encode()
        if remaining <= 0 or not hmac.compare_digest(signature.encode("latin-1"), expected):
            return None
        try:
            return base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode(), remaining
        except (ValueError, UnicodeDecodeError):
            return None

    def _signature(self, name: str, expiry: str) -> str:
        mac = hmac.new(self._key, f"{name}.{expiry}".encode(), hashlib.sha256)
        return _b64(mac.digest()[:SIGNATURE_BYTES])


class StickyPolicy:
    """What the data plane needs: read the session from a request, render the Set-Cookie line."""

    def __init__(
        self,
        pool: str,
        ttl: float,
        secret: bytes,
        cookie: str | None = None,
        header: str | None = None,
    ) -> None:
        self.pool = pool
        self.ttl = ttl
        self.cookie = cookie
        self.header = header
        self.signer = CookieSigner(secret, pool)
        self.shared: SharedSessions | None = None  # header sessions kept in the cluster store
        self._cookie_prefix = f"{cookie}=".encode() if cookie else b""
        self._header = header.lower().encode() if header else b""

    def session_of(
        self, headers: Sequence[tuple[bytes, bytes]], special: Sequence[tuple[bytes, bytes]] = ()
    ) -> str | None:
        """The request's cookie value (cookie mode) or header value (header mode); `special`
        holds the headers the proxy re-renders (Host, X-Forwarded-For...), lower-cased."""
        if self._header:
            value = header_value(headers, special, self._header)
            return (value.decode("latin-1").strip() or None) if value is not None else None
        for name, value in headers:
            if name.lower() == b"cookie":
                found = self._cookie_in(value)
                if found is not None:
                    return found
        return None

    def _cookie_in(self, header: bytes) -> str | None:
        prefix = self._cookie_prefix
        for raw in header.split(b";"):
            pair = raw.strip()
            if pair.startswith(prefix):
                return pair[len(prefix) :].decode("latin-1")
        return None

    def set_cookie_line(self, value: str, secure: bool) -> bytes:
        """A complete `Set-Cookie:` header line for a response."""
        attributes = f"; Max-Age={int(self.ttl)}; Path=/; HttpOnly; SameSite=Lax"
        if secure:
            attributes += "; Secure"
        return f"Set-Cookie: {self.cookie}={value}{attributes}\r\n".encode("latin-1")


class Sticky:
    """Wraps a strategy: requests of a known session go to its backend while it can serve."""

    def __init__(
        self,
        inner: Strategy,
        policy: StickyPolicy,
        sessions: SessionTable | None = None,
        backends: Sequence[Backend] = (),
    ) -> None:
        """`backends` are the inner strategy's; sessions pinned to them are honoured at once."""
        self.inner = inner
        self.policy = policy
        self.sessions = sessions if sessions is not None else MemorySessionTable(policy.ttl)
        self.load_aware = inner.load_aware
        self._by_name = {backend.name: backend for backend in backends}

    def pick(self, ctx: PickContext, avoid: Collection[Backend] = ()) -> Backend | NoBackend:
        pinned, remaining = self._pinned(ctx.session)
        if pinned is not None and pinned.serves_sessions and pinned not in avoid:
            if remaining < self.policy.ttl / 2 and pinned.state == "active":
                # Slide an active session's cookie; a draining backend's sessions run out.
                self._remember(ctx, pinned)
            return pinned
        if ctx.session is not None and self._place_by_hash(ctx.session):
            picked = self._hashed(ctx.session, avoid)
        else:
            picked = self.inner.pick(ctx, avoid)
        if isinstance(picked, Backend):
            self._remember(ctx, picked)
        return picked

    def _place_by_hash(self, session: str) -> bool:
        """Hash where every node must agree without asking: while the shared table is out of
        reach, and when a shared pin must move (each node would otherwise re-pick its own way
        and overwrite the others' pins)."""
        sessions = self.sessions
        if sessions.consistent_placement:
            return True
        return sessions.shared and not self.policy.cookie and sessions.get(session) is not None

    def _hashed(self, session: str, avoid: Collection[Backend]) -> Backend | NoBackend:
        """Rendezvous hashing: every node with the same backends picks the same one."""
        usable = [b for b in self._by_name.values() if b.available and b not in avoid]
        candidates = [b for b in usable if not b.backup] or usable
        if not candidates:
            return self.inner.pick(PickContext("", session), avoid)
        return max(candidates, key=lambda backend: _rendezvous(session, backend.name))

    def _pinned(self, session: str | None) -> tuple[Backend | None, float]:
        """The session's backend and, for cookies, the seconds its cookie has left."""
        if session is None:
            return None, 0.0
        if not self.policy.cookie:
            name = self.sessions.get(session)
            return (self._by_name.get(name) if name is not None else None), self.policy.ttl
        verified = self.policy.signer.verify(session)
        if verified is None:
            return None, 0.0
        return self._by_name.get(verified[0]), verified[1]

    def _remember(self, ctx: PickContext, backend: Backend) -> None:
        if self.policy.cookie:
            ctx.new_session = self.policy.signer.sign(backend.name, self.policy.ttl)
        elif ctx.session is not None:
            self.sessions.put(ctx.session, backend.name)

    def on_hosts_changed(self, backends: Sequence[Backend]) -> None:
        self._by_name = {backend.name: backend for backend in backends}
        self.inner.on_hosts_changed(backends)

    def on_acquire(self, backend: Backend) -> None:
        self.inner.on_acquire(backend)

    def on_release(self, backend: Backend) -> None:
        self.inner.on_release(backend)


def _rendezvous(session: str, backend: str) -> int:
    digest = hashlib.blake2b(f"{session}\0{backend}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
