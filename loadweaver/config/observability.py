"""The schema of the observability sections: metrics, request ids, traffic patterns and alerts.

Field names are part of the promised interface: extend them, never rename them.
"""

import itertools
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from loadweaver.config.base import STRICT, Name
from loadweaver.config.units import Duration, parse_duration, parse_fraction


class Strict(BaseModel):
    model_config = STRICT


RESERVED_HEADERS = frozenset(
    (
        "connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
        "host", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
        "forwarded", "set-cookie", "cookie",
    )
)  # fmt: skip
HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"  # an RFC 9110 token
# Prometheus' own defaults, which suit request latencies from a millisecond to ten seconds.
DEFAULT_DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]


class MetricsConfig(Strict):
    """What `/metrics` exposes beyond the gauges read at scrape time."""

    # false: no per-request series (requests by route, pool and backend, request durations)
    enabled: bool = True
    duration_buckets: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: list(DEFAULT_DURATION_BUCKETS), min_length=1, max_length=40
    )

    @field_validator("duration_buckets", mode="before")
    @classmethod
    def _durations(cls, value: object) -> object:
        if isinstance(value, list):
            return [parse_duration(bound) for bound in value]
        return value

    @field_validator("duration_buckets")
    @classmethod
    def _increasing(cls, bounds: list[float]) -> list[float]:
        if any(later <= earlier for earlier, later in itertools.pairwise(bounds)):
            raise ValueError("duration_buckets must be strictly increasing, such as [0.1, 0.5, 1]")
        return bounds


class RequestIdConfig(Strict):
    """A request id that follows each request to the backend, the response and the access log."""

    enabled: bool = True
    header: str = Field(default="X-Request-ID", pattern=HEADER_NAME)
    response: bool = True  # echo it in the response too, unless the backend sent its own

    @field_validator("header")
    @classmethod
    def _not_a_framing_header(cls, value: str) -> str:
        if value.lower() in RESERVED_HEADERS:
            raise ValueError(f"{value} is a header the proxy manages itself; use X-Request-ID")
        return value


MAX_TRAFFIC_KEYS = 20_000


class TrafficPatternsConfig(Strict):
    """Top clients, paths, user agents and status codes over a sliding window."""

    enabled: bool = True
    window: Duration = 60.0
    slots: int = Field(default=6, ge=1, le=60)  # the window ages out one slot at a time
    capacity: int = Field(default=256, ge=16, le=10_000)  # keys kept per dimension and slot

    @field_validator("window")
    @classmethod
    def _long_enough(cls, value: float) -> float:
        if value < 1:
            raise ValueError("traffic_patterns.window must be at least 1s")
        return value

    @model_validator(mode="after")
    def _bounded_work(self) -> "TrafficPatternsConfig":
        # Every heartbeat and every view merges slots x capacity keys per dimension on the
        # event loop: past this, one merge takes long enough to be felt by requests.
        if self.slots * self.capacity > MAX_TRAFFIC_KEYS:
            raise ValueError(
                f"traffic_patterns.slots x capacity is {self.slots * self.capacity}; keep it at "
                f"most {MAX_TRAFFIC_KEYS}, e.g. slots: 6 and capacity: 256"
            )
        return self


AlertMetric = Literal[
    "error_ratio",
    "request_rate",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "rate_limited_rate",
    "upstream_error_rate",
    "connections_active",
    "config_reload_failures",
    "backend_down",
    "pool_panic",
    "store_down",
]
# What a threshold is measured in, per metric: a state has none (it fires while it holds).
RATIO_METRICS = frozenset({"error_ratio"})
LATENCY_METRICS = frozenset({"latency_p50", "latency_p95", "latency_p99"})
STATE_METRICS = frozenset({"backend_down", "pool_panic", "store_down"})
# Read from the per-request series, which `metrics.enabled: false` turns off.
PER_REQUEST_METRICS = frozenset({"error_ratio", "request_rate"}) | LATENCY_METRICS
# Only a node itself knows whether it reaches the store: no leader is elected without it.
NODE_ONLY_METRICS = frozenset({"store_down"})


class AlertWebhook(Strict):
    name: Name
    url: str
    headers: dict[str, str] = {}
    timeout: Duration = 5.0

    @field_validator("headers")
    @classmethod
    def _sendable_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not re.fullmatch(HEADER_NAME, name):
                raise ValueError(f"{name!r} is not a header name")
            if any(ord(character) < 32 or ord(character) == 127 for character in value):
                raise ValueError(f"the value of header {name} has a control character")
        return headers

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("a webhook url looks like http://host:port/path or https://...")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ValueError(f"the port of {value!r} is not a number from 0 to 65535") from None
        return value


class AlertRule(BaseModel):
    """A condition over the node's (or the cluster's) numbers that must hold `for` a while."""

    # `for` is a Python keyword: the field is `for_` and YAML says `for`.
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True
    )

    name: Name
    metric: AlertMetric
    above: float | None = None
    below: float | None = None
    window: Duration = 60.0  # rates, ratios and percentiles are taken over this much time
    for_: Duration = Field(default=0.0, alias="for")  # how long it must hold before it fires
    pool: str | None = None  # only this pool's numbers; unset: every pool together
    scope: Literal["node", "cluster"] | None = None  # unset: cluster, but node for store_down
    severity: Literal["info", "warning", "critical"] = "warning"
    webhooks: list[Name] | None = None  # unset: every webhook
    summary: str | None = Field(default=None, max_length=500)

    @field_validator("above", "below", mode="before")
    @classmethod
    def _threshold(cls, value: object, info: ValidationInfo) -> object:
        metric = info.data.get("metric")
        if metric in LATENCY_METRICS and value is not None:
            return parse_duration(value)
        if metric in RATIO_METRICS:
            return parse_fraction(value)
        return value

    @model_validator(mode="after")
    def _one_condition(self) -> "AlertRule":
        thresholds = [value for value in (self.above, self.below) if value is not None]
        if self.metric in STATE_METRICS:
            if thresholds:
                raise ValueError(f"{self.metric} fires while it holds: it takes no above or below")
        elif len(thresholds) != 1:
            raise ValueError(f"{self.metric} needs exactly one of above: or below:")
        if self.metric in NODE_ONLY_METRICS and self.scope == "cluster":
            raise ValueError(
                f"{self.metric} can only be scope: node; without the store no leader is elected"
            )
        if self.window < 1:
            raise ValueError("window must be at least 1s")
        return self

    @property
    def effective_scope(self) -> Literal["node", "cluster"]:
        if self.scope is not None:
            return self.scope
        return "node" if self.metric in NODE_ONLY_METRICS else "cluster"


class AlertsConfig(Strict):
    interval: Duration = 5.0  # how often rules are evaluated
    repeat_interval: Duration = 0.0  # re-send a firing alert this often; 0: once
    webhooks: list[AlertWebhook] = []
    rules: list[AlertRule] = []

    @model_validator(mode="after")
    def _references(self) -> "AlertsConfig":
        if self.interval < 0.05:
            raise ValueError("alerts.interval must be at least 50ms")
        hooks = [hook.name for hook in self.webhooks]
        _unique("alerts.webhooks", hooks)
        _unique("alerts.rules", [rule.name for rule in self.rules])
        for index, rule in enumerate(self.rules):
            for hook in rule.webhooks or ():
                if hook not in hooks:
                    known = ", ".join(hooks) or "none defined"
                    raise ValueError(
                        f"alerts.rules.{index}.webhooks: {hook!r} is not in alerts.webhooks "
                        f"({known})"
                    )
        return self


def _unique(section: str, names: list[str]) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise ValueError(f"{section}.{index}.name: {name!r} is used twice")
        seen.add(name)
