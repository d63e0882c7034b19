"""The admin API's request and response bodies. The OpenAPI document is generated from these."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loadweaver.config.base import Name
from loadweaver.config.models import Backend, Pool, RateLimitPolicy, Route
from loadweaver.config.units import Duration

BackendState = Literal["active", "draining", "maintenance"]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorDetail(Body):
    status: int
    message: str
    problems: list[str] = []


class ErrorBody(Body):
    error: ErrorDetail


_UNSENT: Any = None  # a default no client value can equal in type: read with exclude_unset


class BackendPatch(Body):
    """The fields of a backend that may change in place: at least one, none of them null.

    The defaults are None only to tell "not sent" apart; they are never validated, so a null
    that a client sends is refused like any other wrong type.
    """

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    weight: int = Field(default=_UNSENT, ge=0, le=256)
    state: BackendState = Field(default=_UNSENT)
    backup: bool = Field(default=_UNSENT)
    max_connections: int = Field(default=_UNSENT, ge=0)
    slow_start: Duration = Field(default=_UNSENT)

    @model_validator(mode="after")
    def _something_to_change(self) -> "BackendPatch":
        if not self.model_fields_set:
            raise ValueError(
                "nothing to change: send one or more of weight, state, backup, "
                "max_connections, slow_start"
            )
        return self


class NewBackend(Backend):
    """A backend as in YAML: name and url, and optionally weight, backup and the rest."""


class BackendView(Body):
    pool: str
    name: str
    url: str
    weight: int
    backup: bool
    max_connections: int
    slow_start: float
    state: BackendState
    healthy: bool
    in_flight: int
    source: str  # "api" or the config file that defined it


class BackendList(Body):
    backends: list[BackendView]


class PoolSummary(Body):
    name: str
    algorithm: str
    sticky: bool
    backends: int
    available: int
    source: str


class PoolList(Body):
    pools: list[PoolSummary]


class PoolDetail(Body):
    name: str
    source: str
    settings: dict[str, Any]  # the pool as configured, without its backends; secrets redacted
    backends: list[BackendView]


class RouteList(Body):
    routes: list[Route]


class DynamicConfig(Body):
    """The part of the config the API may replace: every pool and every route."""

    pools: dict[Name, Pool] = Field(json_schema_extra={"additionalProperties": False})
    routes: list[Route]
    # Absent: the rate limits stay as they are.
    rate_limits: dict[Name, RateLimitPolicy] | None = Field(
        default=None, json_schema_extra={"additionalProperties": False}
    )


class ConfigView(Body):
    version: int
    config: dict[str, Any]  # the effective config, every key present; secrets redacted
    sources: dict[str, str]  # dotted path -> where it came from; absent paths are defaults


class ValidationResult(Body):
    valid: bool
    version: int  # the version the config would replace
    summary: str


class ReloadResult(Body):
    reloaded: bool
    version: int


class ClusterNode(Body):
    id: str
    admin: str
    listen: list[str]
    version: str  # the loadweaver release
    ready: bool
    leader: bool
    config_version: int  # the cluster config version this node has applied
    uptime_seconds: float


class ClusterStatus(Body):
    nodes: list[ClusterNode]
    leader: str | None  # None while no node holds the lease (or the store is down)
    config_version: int  # the version the answering node has applied
    store: str
    store_up: bool


class Latency(Body):
    p50: float | None
    p95: float | None
    p99: float | None


class BackendStatsView(Body):
    name: str
    url: str
    weight: int
    state: BackendState
    backup: bool
    healthy: bool
    in_flight: int
    requests: int
    errors: int
    requests_per_second: float
    error_rate: float
    latency_ms: Latency


class PoolStatsView(Body):
    name: str
    algorithm: str
    backends: list[BackendStatsView]


class Totals(Body):
    requests: int
    requests_per_second: float
    errors: int
    error_rate: float
    client_connections: int


class StatsNode(Body):
    id: str
    config_version: int
    uptime_seconds: float
    leader: bool


class StatsDocument(Body):
    node: StatsNode
    time: float
    totals: Totals
    pools: list[PoolStatsView]


class TrafficEntry(Body):
    key: str
    count: int  # estimated: at most `error_bound` below the true count
    share: float  # of the requests in the window


class TrafficDimension(Body):
    error_bound: int
    top: list[TrafficEntry]


class TrafficDocument(Body):
    scope: Literal["node", "cluster"]
    nodes: list[str]  # whose traffic is counted
    window_seconds: float
    requests: int
    sample_step: int  # 1: every request counted; k: every k-th, counted k times (heavy load)
    clients: TrafficDimension
    paths: TrafficDimension
    user_agents: TrafficDimension
    status_codes: TrafficDimension


class AlertView(Body):
    rule: str
    state: Literal["pending", "firing"]
    labels: dict[str, str]
    value: float
    summary: str
    since: float  # wall-clock seconds the condition began to hold
    fired_at: float | None


class AlertRuleView(Body):
    name: str
    metric: str
    scope: Literal["node", "cluster"]
    severity: str
    condition: str
    evaluated_here: bool  # node rules always; cluster rules on the leader


class AlertsDocument(Body):
    leader: bool
    rules: list[AlertRuleView]
    alerts: list[AlertView]
