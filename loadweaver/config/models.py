"""The configuration schema.

Field names are part of the promised interface: extend them, never rename them.
"""

import ipaddress
import os
import socket
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, field_validator, model_validator

from loadweaver.config.addresses import parse_bind, parse_upstream_url
from loadweaver.config.base import STRICT, Name
from loadweaver.config.observability import (
    PER_REQUEST_METRICS,
    AlertsConfig,
    MetricsConfig,
    RequestIdConfig,
    TrafficPatternsConfig,
)
from loadweaver.config.units import ByteSize, Duration, Fraction


class Strict(BaseModel):
    model_config = STRICT


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class NodeConfig(Strict):
    id: Name = Field(default_factory=_default_node_id)
    state_dir: str | None = None  # where API changes persist; unset: kept in memory only
    shutdown_grace: Duration = 30.0
    watch_config: bool = True  # reload when the config file changes


class ClientTimeouts(Strict):
    request_header: Duration = 10.0
    idle: Duration = 60.0
    tunnel_idle: Duration = 300.0


class Certificate(Strict):
    cert_file: str
    key_file: str


class ListenerTls(Strict):
    certificates: list[Certificate] = Field(min_length=1)
    min_version: Literal["1.2", "1.3"] = "1.2"


class Listener(Strict):
    name: Name
    bind: str
    timeouts: ClientTimeouts = ClientTimeouts()
    tls: ListenerTls | None = None

    @field_validator("bind")
    @classmethod
    def _valid_bind(cls, value: str) -> str:
        parse_bind(value)
        return value


class PoolTimeouts(Strict):
    connect: Duration = 3.0
    response: Duration = 30.0
    total: Duration = 0.0


class ConnectionPoolConfig(Strict):
    max_connections: int = Field(default=0, ge=0)
    max_idle: int = Field(default=64, ge=0)
    idle_timeout: Duration = 60.0
    max_requests: int = Field(default=0, ge=0)


class UpstreamTls(Strict):
    verify: bool = True
    ca_file: str | None = None
    server_name: str | None = None


UPSTREAM_URL_SHAPE = r"^https?://[^/?#@\s]+/?$"  # documents the shape; the validator decides


class Backend(Strict):
    name: Name
    url: str = Field(json_schema_extra={"pattern": UPSTREAM_URL_SHAPE})
    weight: int = Field(default=1, ge=0, le=256)  # 0: no new requests
    backup: bool = False  # used only while no primary backend is available
    max_connections: int = Field(default=0, ge=0)  # in-flight requests; 0: no cap
    slow_start: Duration = 0.0  # ramp the weight from 10% over this long after joining
    state: Literal["active", "draining", "maintenance"] = "active"

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        parse_upstream_url(value)
        return value


STATUS_RANGES = r"^\s*\d{3}(\s*-\s*\d{3})?(\s*,\s*\d{3}(\s*-\s*\d{3})?)*\s*$"


class HealthCheck(Strict):
    """Active probes, run by the cluster's leader (or each node while there is none).

    Defaults follow HAProxy: every 2 s, 2 successes to rise, 3 failures to fall.
    """

    type: Literal["http", "tcp"] = "http"
    path: str = Field(default="/", pattern=r"^/")
    method: Literal["GET", "HEAD", "OPTIONS", "POST"] = "GET"
    host: str | None = None  # the Host header; default: the backend's own host:port
    expect_status: str = Field(default="200-399", pattern=STATUS_RANGES)
    expect_body: str | None = None  # a substring the body must contain
    headers: dict[str, str] = {}
    interval: Duration = 2.0
    timeout: Duration = 1.0
    rise: int = Field(default=2, ge=1)
    fall: int = Field(default=3, ge=1)
    fast_interval: Duration = 0.5  # while a backend is between states
    jitter: Fraction = Field(default=0.1, ge=0, le=0.5)  # a fraction of the interval, or "10%"
    flap_window: Duration = 60.0
    flap_limit: int = Field(
        default=4, ge=2
    )  # state changes within the window that count as flapping
    flap_hold: Duration = 30.0  # a flapping backend stays down at least this long

    @model_validator(mode="after")
    def _timing(self) -> "HealthCheck":
        if self.interval <= 0 or self.fast_interval <= 0 or self.timeout <= 0:
            raise ValueError("health.interval, fast_interval and timeout must be more than 0")
        if self.timeout > self.interval:
            raise ValueError("health.timeout must not exceed health.interval")
        return self

    def accepts(self, status: int) -> bool:
        for part in self.expect_status.split(","):
            low, _, high = part.strip().partition("-")
            if int(low) <= status <= int(high or low):
                return True
        return False


class PassiveHealth(Strict):
    """Every node ejects a backend at once after consecutive failures it saw itself."""

    consecutive_failures: int = Field(default=5, ge=1)
    on_5xx: bool = False  # count 5xx responses as failures too
    base_ejection: Duration = 10.0  # doubled for each ejection in a row, up to max_ejection
    max_ejection: Duration = 300.0
    max_ejected_percent: int = Field(default=50, ge=0, le=100)


RetryCondition = Literal["connect_failure", "reset_before_response", "timeout", "502", "503", "504"]


class Retries(Strict):
    attempts: int = Field(default=2, ge=0, le=10)  # tries after the first
    on: list[RetryCondition] = ["connect_failure", "reset_before_response", "502", "503", "504"]
    budget: Fraction = Field(default=0.2, gt=0, le=1)  # retries in flight / requests in flight
    max_buffered_body: ByteSize = 64 * 1024  # bigger bodies are sent once: no status retries
    per_try_timeout: Duration = 0.0  # 0: the pool's response timeout


class CircuitBreaker(Strict):
    """Per backend: past these, requests get a fast 503 instead of queueing."""

    max_pending: int = Field(default=0, ge=0)  # requests waiting for a connection; 0: no cap
    max_in_flight: int = Field(default=0, ge=0)  # 0: no cap


Algorithm = Literal["round_robin", "least_conn", "ip_hash", "random", "p2c"]
COOKIE_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"  # an RFC 6265 token


class StickyConfig(Strict):
    """Session affinity: a signed cookie naming the backend, or a request header's value."""

    cookie: str | None = Field(default=None, pattern=COOKIE_NAME)
    header: str | None = Field(default=None, pattern=COOKIE_NAME)
    ttl: Duration = 3600.0
    # The HMAC key for cookies; every node of a cluster needs the same one. Unset: the node's
    # LOADWEAVER_STICKY_SECRET (environment or .env), else a random key per process.
    secret: str | None = Field(default=None, min_length=16)

    @model_validator(mode="after")
    def _one_source(self) -> "StickyConfig":
        if (self.cookie is None) == (self.header is None):
            raise ValueError("sticky needs exactly one of cookie: NAME or header: NAME")
        if self.ttl < 1:
            raise ValueError("sticky.ttl must be at least 1s (cookies count Max-Age in seconds)")
        return self


class Pool(Strict):
    algorithm: Algorithm = "round_robin"
    sticky: StickyConfig | None = None
    timeouts: PoolTimeouts = PoolTimeouts()
    connection_pool: ConnectionPoolConfig = ConnectionPoolConfig()
    tls: UpstreamTls = UpstreamTls()
    health: HealthCheck | None = None
    passive: PassiveHealth = PassiveHealth()
    panic_threshold: int = Field(default=50, ge=0, le=100)  # % healthy below which all serve
    retries: Retries = Retries()
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    backends: list[Backend] = []

    @model_validator(mode="after")
    def _sticky_fits_algorithm(self) -> "Pool":
        if self.sticky is not None and self.algorithm == "ip_hash":
            raise ValueError(
                "sticky: ip_hash already pins each client address to a backend; "
                "use sticky with round_robin, least_conn, random or p2c"
            )
        return self

    @field_validator("backends")
    @classmethod
    def _unique_backend_names(cls, backends: list[Backend]) -> list[Backend]:
        seen: set[str] = set()
        for backend in backends:
            if backend.name in seen:
                raise ValueError(f"backend name {backend.name!r} is used twice in this pool")
            seen.add(backend.name)
        return backends


Method = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"]


class RouteMatch(Strict):
    host: str = "*"
    path_prefix: str = Field(default="/", json_schema_extra={"pattern": "^/"})
    methods: list[Method] = []
    headers: dict[str, str] = {}

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        if value == "*" or (value.startswith("*.") and "*" not in value[2:]):
            return value.lower()
        if "*" in value:
            raise ValueError("a wildcard host must look like *.example.com, or be * alone")
        return value.lower()

    @field_validator("path_prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("path_prefix must start with /")
        return value


class Route(Strict):
    name: Name
    match: RouteMatch = RouteMatch()
    pool: str
    priority: int = 0
    rate_limit: str | None = None  # a name from rate_limits


RATE_LIMIT_KEY = r"^(client_ip|route|header:[A-Za-z0-9!#$%&'*+.^_`|~-]+)$"


class RateLimitPolicy(Strict):
    """A token bucket: `rate` requests per `period`, and up to `burst` at once."""

    key: str = Field(default="client_ip", pattern=RATE_LIMIT_KEY)  # or route, header:NAME
    rate: float = Field(gt=0)
    period: Duration = 1.0
    burst: int = Field(default=1, ge=1)
    scope: Literal["cluster", "node"] = "cluster"
    on_store_error: Literal["local", "allow", "deny"] = "local"

    @field_validator("period")
    @classmethod
    def _positive_period(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("period must be more than 0, such as 1s or 1m")
        return value

    @property
    def per_second(self) -> float:
        return self.rate / self.period


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class AdminConfig(Strict):
    bind: str = "127.0.0.1:9090"
    enabled: bool = True
    # The bearer token: the first line of `token_file` when set, else this environment variable.
    token_env: str = Field(default="LOADWEAVER_ADMIN_TOKEN", pattern=ENV_NAME)
    token_file: str | None = None

    @field_validator("bind")
    @classmethod
    def _valid_bind(cls, value: str) -> str:
        parse_bind(value)
        return value


class Limits(Strict):
    max_request_body_bytes: ByteSize = 100 * 1024**2
    max_header_bytes: ByteSize = 32 * 1024
    max_url_bytes: ByteSize = 8 * 1024
    max_headers: int = Field(default=100, ge=1)


class SecurityConfig(Strict):
    trusted_proxies: list[str] = []

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_cidrs(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an IP address or CIDR such as 10.0.0.0/8"
                ) from None
        return values


LogLevel = Literal["trace", "debug", "info", "warning", "error", "critical"]
LogFormat = Literal["text", "json"]


def _lowercase(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class LogSink(Strict):
    """Where log lines go: stderr, or a file rotated by size or age and pruned by age or count."""

    type: Literal["stderr", "file"] = "stderr"
    path: str | None = None
    rotation_size: ByteSize | None = None  # start a new file past this size
    rotation_interval: Duration | None = None  # ... or after this long
    retention_age: Duration | None = None  # delete rotated files older than this
    retention_count: int | None = Field(default=None, ge=1)  # ... or keep only this many
    level: Annotated[LogLevel | None, BeforeValidator(_lowercase)] = None  # default: logging.level
    format: LogFormat | None = None  # default: logging.format

    @model_validator(mode="after")
    def _file_options(self) -> "LogSink":
        if self.type == "file" and not self.path:
            raise ValueError("a file sink needs path: /var/log/loadweaver/node.log")
        file_only = [
            self.path,
            self.rotation_size,
            self.rotation_interval,
            self.retention_age,
            self.retention_count,
        ]
        if self.type == "stderr" and any(option is not None for option in file_only):
            raise ValueError("path, rotation_* and retention_* apply only to type: file")
        if self.retention_age is not None and self.retention_count is not None:
            raise ValueError("set retention_age or retention_count, not both")
        return self


class AccessLogConfig(Strict):
    """One line per request, written in batches by a background thread."""

    enabled: bool = False
    format: Literal["json", "clf"] = "json"
    path: str | None = None  # unset: the sinks above
    sample: Fraction = Field(default=1.0, ge=0, le=1)  # the share of requests logged
    always_log_errors: bool = True  # 5xx responses are logged whatever `sample` says
    include_query: bool = False  # queries can carry secrets: only the path unless asked
    rotation_size: ByteSize | None = None
    rotation_interval: Duration | None = None
    retention_age: Duration | None = None
    retention_count: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _file_options(self) -> "AccessLogConfig":
        rotation = [self.rotation_size, self.rotation_interval]
        retention = [self.retention_age, self.retention_count]
        if self.path is None and any(option is not None for option in rotation + retention):
            raise ValueError("rotation_* and retention_* need a path: the sinks rotate their own")
        if self.retention_age is not None and self.retention_count is not None:
            raise ValueError("set retention_age or retention_count, not both")
        return self


class LoggingConfig(Strict):
    level: Annotated[LogLevel, BeforeValidator(_lowercase)] = "info"
    format: LogFormat = "text"
    sinks: list[LogSink] = Field(default_factory=lambda: [LogSink()], min_length=1)
    access_log: AccessLogConfig = AccessLogConfig()


class ClusterConfig(Strict):
    # redis://, rediss:// or redis+sentinel://host:port,host:port/master; unset: one node alone
    redis_url: str | None = None
    name: Name = "default"
    timeout: Duration = 0.05  # each Redis call; past it the call fails and the node carries on
    connect_timeout: Duration = 0.2
    heartbeat_interval: Duration = 1.0
    member_ttl: Duration = 3.0  # a node that has not heartbeaten for this long is gone
    lease_ttl: Duration = 5.0  # leadership lasts this long unless renewed
    anti_entropy_interval: Duration = 1.0  # how often a node checks the config version itself

    @model_validator(mode="after")
    def _consistent_timing(self) -> "ClusterConfig":
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "redis+sentinel://")
        ):
            raise ValueError(
                "cluster.redis_url must start with redis://, rediss:// or redis+sentinel://"
            )
        if self.member_ttl <= self.heartbeat_interval:
            raise ValueError("cluster.member_ttl must be longer than cluster.heartbeat_interval")
        if self.timeout <= 0 or self.lease_ttl < 1:
            raise ValueError("cluster.timeout must be above 0 and cluster.lease_ttl at least 1s")
        return self


class Config(Strict):
    node: NodeConfig = NodeConfig()
    listeners: list[Listener] = []
    pools: dict[Name, Pool] = {}
    routes: list[Route] = []
    rate_limits: dict[Name, RateLimitPolicy] = {}
    admin: AdminConfig = AdminConfig()
    limits: Limits = Limits()
    security: SecurityConfig = SecurityConfig()
    logging: LoggingConfig = LoggingConfig()
    cluster: ClusterConfig = ClusterConfig()
    metrics: MetricsConfig = MetricsConfig()
    request_id: RequestIdConfig = RequestIdConfig()
    traffic_patterns: TrafficPatternsConfig = TrafficPatternsConfig()
    alerts: AlertsConfig = AlertsConfig()

    @model_validator(mode="after")
    def _cross_references(self) -> "Config":
        _check_unique("listeners", [listener.name for listener in self.listeners])
        _check_unique("routes", [route.name for route in self.routes])
        _check_unique("listeners", [listener.bind for listener in self.listeners], what="bind")
        for index, route in enumerate(self.routes):
            _check_pool_exists(f"routes.{index}.pool", route.pool, self.pools)
            if route.rate_limit is not None and route.rate_limit not in self.rate_limits:
                known = ", ".join(sorted(self.rate_limits)) or "none defined"
                raise ValueError(
                    f"routes.{index}.rate_limit: {route.rate_limit!r} is not in rate_limits "
                    f"({known})"
                )
        self._check_alert_rules()
        return self

    def _check_alert_rules(self) -> None:
        for index, rule in enumerate(self.alerts.rules):
            if rule.pool is not None:
                _check_pool_exists(f"alerts.rules.{index}.pool", rule.pool, self.pools)
            if rule.metric in PER_REQUEST_METRICS and not self.metrics.enabled:
                raise ValueError(
                    f"alerts.rules.{index}.metric: {rule.metric} reads the per-request metrics; "
                    "set metrics.enabled: true, or drop the rule"
                )


def _check_pool_exists(field: str, pool: str, pools: Mapping[str, Pool]) -> None:
    if pool not in pools:
        known = ", ".join(sorted(pools)) or "none defined"
        raise ValueError(f"{field}: pool {pool!r} does not exist (pools: {known})")


def _check_unique(section: str, values: list[str], what: str = "name") -> None:
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            raise ValueError(f"{section}.{index}.{what}: {value!r} is used twice")
        seen.add(value)
