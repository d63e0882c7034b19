"""The Strategy interface, after HAProxy's `struct lb_ops` and Envoy's `chooseHost`.

A snapshot's Backend objects are immutable. What changes per request (in-flight count) or outlives
a snapshot (when the backend joined, whether it is healthy) lives in its BackendLoad, which the
control plane carries over from one snapshot to the next for the same backend.
"""

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from loadweaver.config.addresses import UpstreamAddress
from loadweaver.observability.backend_stats import BackendStats

if TYPE_CHECKING:
    from loadweaver.pool.pool import UpstreamPool

BackendState = Literal["active", "draining", "maintenance"]
SLOW_START_FLOOR = 0.1  # a ramping backend starts at this fraction of its weight


class BackendLoad:
    """Mutable counters of one backend, shared by every snapshot that contains it.

    `healthy` is what strategies read: the active verdict and passive ejection combined, and
    overridden to True for every backend of a pool in panic (see health/pools.py).
    """

    __slots__ = (
        "ejected",
        "ejected_at",
        "ejections",
        "failures",
        "healthy",
        "in_flight",
        "joined_at",
        "stats",
        "verdict_up",
    )

    def __init__(self, joined_at: float) -> None:
        self.in_flight = 0
        self.joined_at = joined_at
        self.healthy = True
        self.stats = BackendStats()
        self.verdict_up = True  # the active checks' verdict
        self.ejected = False  # passively ejected by this node
        self.ejected_at = 0.0
        self.ejections = 0  # ejections in a row: each doubles the next one's length
        self.failures = 0  # consecutive failures this node saw

    @property
    def routable(self) -> bool:
        """Healthy by every signal, before any panic override."""
        return self.verdict_up and not self.ejected


@dataclass(frozen=True, slots=True, eq=False)
class Backend:
    """One backend as a snapshot sees it; identity, not value, makes two backends equal."""

    name: str
    pool_name: str
    address: UpstreamAddress
    weight: int
    connections: "UpstreamPool"
    load: BackendLoad
    backup: bool = False
    max_connections: int = 0  # 0: no cap
    slow_start: float = 0.0  # seconds over which the weight ramps after joining; 0: none
    state: BackendState = "active"

    def __repr__(self) -> str:
        return f"Backend({self.pool_name}/{self.name} {self.address.authority})"

    @property
    def available(self) -> bool:
        """Takes new requests: active, weighted, healthy and under its connection cap."""
        load = self.load
        return (
            self.state == "active"
            and self.weight > 0
            and load.healthy
            and (not self.max_connections or load.in_flight < self.max_connections)
        )

    @property
    def serves_sessions(self) -> bool:
        """May take requests of sessions already pinned to it: draining backends still do."""
        load = self.load
        return (
            self.state != "maintenance"
            and load.healthy
            and (not self.max_connections or load.in_flight < self.max_connections)
        )

    def effective_weight(self, now: float) -> float:
        """The weight, ramped linearly from 10% over `slow_start` after the backend joined."""
        if not self.slow_start:
            return float(self.weight)
        ramp = (now - self.load.joined_at) / self.slow_start
        if ramp >= 1.0:
            return float(self.weight)
        return self.weight * max(ramp, SLOW_START_FLOOR)

    def ramping(self, now: float) -> bool:
        return bool(self.slow_start) and now - self.load.joined_at < self.slow_start


@dataclass(frozen=True, slots=True)
class NoBackend:
    """Why a pick found nothing; the proxy answers 503 with this reason."""

    reason: str


NO_BACKENDS = NoBackend("no backends configured")
NONE_AVAILABLE = NoBackend("no available backend")


class PickContext:
    """What a strategy may know about the request: the client, and for sticky pools its session.

    One context lives per client connection (the client address does not change); sticky pools
    use a fresh one per request so pipelined requests cannot see each other's session.
    """

    __slots__ = ("_client_hash", "client_ip", "new_session", "session")

    def __init__(self, client_ip: str, session: str | None = None) -> None:
        self.client_ip = client_ip
        self.session = session  # the sticky cookie or header value the request carried
        self.new_session: str | None = None  # set by a sticky strategy: the value to hand out
        self._client_hash: int | None = None

    @property
    def client_hash(self) -> int:
        """A stable 64-bit hash of the client address, computed once per connection."""
        if self._client_hash is None:
            digest = hashlib.blake2b(self.client_ip.encode(), digest_size=8).digest()
            self._client_hash = int.from_bytes(digest, "big")
        return self._client_hash


class Strategy(Protocol):
    """How a pool chooses a backend. Picks must not rescan the pool: O(1) or O(log n)."""

    # Whether the strategy wants on_acquire/on_release; the data plane skips the calls otherwise.
    load_aware: bool

    def pick(self, ctx: PickContext, avoid: Collection[Backend] = ()) -> Backend | NoBackend:
        """An available backend for this request, skipping those in `avoid` (a retry's failures).

        Returns NO_BACKENDS for an empty pool and NONE_AVAILABLE when none can take it.
        """

    def on_hosts_changed(self, backends: Sequence[Backend]) -> None:
        """The backend set, weights or availability changed (also called while slow start ramps)."""

    def on_acquire(self, backend: Backend) -> None:
        """A request started on `backend` (its load.in_flight already counts it)."""

    def on_release(self, backend: Backend) -> None:
        """A request on `backend` finished (its load.in_flight no longer counts it)."""
