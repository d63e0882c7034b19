"""An immutable view of everything the data plane needs to serve a request."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loadweaver.balancing.base import Backend, Strategy
from loadweaver.balancing.sticky import StickyPolicy
from loadweaver.config.addresses import BindAddress
from loadweaver.config.models import Config
from loadweaver.observability.request_ids import RequestIdPolicy
from loadweaver.proxy.headers import REQUEST_SPECIAL, RESPONSE_SPECIAL
from loadweaver.proxy.retry import RetryPolicy
from loadweaver.proxy.tls import CertificateSet
from loadweaver.routing.table import RouteTable
from loadweaver.security.trusted import TrustedProxies

if TYPE_CHECKING:
    from loadweaver.health.passive import PassiveDetector


@dataclass(frozen=True, slots=True)
class PoolRuntime:
    name: str
    strategy: Strategy
    backends: tuple[Backend, ...]
    response_timeout: float
    total_timeout: float
    sticky: StickyPolicy | None  # cookie or header affinity; None for plain pools
    load_aware: bool  # the strategy wants on_acquire/on_release around each request
    passive: "PassiveDetector | None" = None  # None: passive detection off (tests, benches)
    failures_include_5xx: bool = False
    retry: RetryPolicy | None = None
    replay_limit: int = 64 * 1024  # request bytes kept for a replay
    try_timeout: float = 30.0  # each try's wait for the response head: per-try or response
    max_pending: int = 0  # circuit breaker, per backend; 0: no cap
    max_in_flight: int = 0


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_body_bytes: int
    max_header_bytes: int
    max_url_bytes: int
    max_headers: int


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    name: str
    bind: BindAddress
    request_header_timeout: float
    idle_timeout: float
    tunnel_idle_timeout: float
    certificates: CertificateSet | None
    min_tls_version: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    config: Config
    routes: RouteTable
    pools: Mapping[str, PoolRuntime]
    limits: RequestLimits
    trusted_proxies: TrustedProxies
    listeners: Mapping[str, ListenerSpec]
    sweep_interval: float
    request_id: RequestIdPolicy | None = None  # None: request ids off
    # Headers the proxy takes out of the request or response and writes itself.
    request_special: frozenset[bytes] = REQUEST_SPECIAL
    response_special: frozenset[bytes] = RESPONSE_SPECIAL


class SnapshotHolder:
    """The one mutable reference: the control plane swaps it, each request reads it once."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot

    def swap(self, snapshot: Snapshot) -> Snapshot:
        previous, self.current = self.current, snapshot
        return previous
