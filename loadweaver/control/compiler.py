"""Turns a validated Config into a Snapshot, reusing connection pools that did not change."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from loadweaver.balancing.base import Backend
from loadweaver.balancing.registry import create_strategy
from loadweaver.balancing.sticky import (
    MemorySessionTable,
    SessionTable,
    SharedSessions,
    StickyPolicy,
)
from loadweaver.config.addresses import parse_bind, parse_upstream_url
from loadweaver.config.models import Config, Listener, Pool, Route, StickyConfig
from loadweaver.config.observability import RequestIdConfig
from loadweaver.control.limiters import LimiterRegistry
from loadweaver.control.loads import LoadRegistry
from loadweaver.control.snapshot import ListenerSpec, PoolRuntime, RequestLimits, Snapshot
from loadweaver.observability.request_ids import RequestIdPolicy
from loadweaver.pool.manager import PoolManager
from loadweaver.pool.pool import PoolSettings
from loadweaver.proxy.headers import REQUEST_SPECIAL, RESPONSE_SPECIAL
from loadweaver.proxy.retry import RetryBudget, RetryPolicy
from loadweaver.proxy.tls import load_certificate_set, upstream_context
from loadweaver.routing.rate_limit import RouteLimit
from loadweaver.routing.table import CompiledRoute, RouteTable
from loadweaver.security.trusted import TrustedProxies

if TYPE_CHECKING:
    from loadweaver.health.manager import HealthManager


@dataclass
class CompileResources:
    """What outlives a snapshot: connections, backend loads, session tables, the sticky key."""

    pools: PoolManager
    loads: LoadRegistry
    fallback_secret: bytes  # signs sticky cookies when a pool has no secret of its own
    limiters: LimiterRegistry
    # Makes a pool's header-session table; the default keeps sessions in this process only.
    session_tables: Callable[[str, float], SessionTable | SharedSessions] = lambda _, ttl: (
        MemorySessionTable(ttl)
    )
    sessions: dict[str, SessionTable | SharedSessions] = field(default_factory=dict)
    health: "HealthManager | None" = None  # None: no passive detection (tests, benchmarks)
    retry_budgets: dict[str, RetryBudget] = field(default_factory=dict)


def compile_snapshot(config: Config, version: int, resources: CompileResources) -> Snapshot:
    """Raises TlsConfigError when a certificate or CA file cannot be loaded."""
    runtimes = {name: _compile_pool(name, pool, resources) for name, pool in config.pools.items()}
    limits = config.limits
    return Snapshot(
        version=version,
        config=config,
        routes=RouteTable(
            [
                _compile_route(index, route, _route_limit(route, config, resources))
                for index, route in enumerate(config.routes)
            ]
        ),
        pools=runtimes,
        limits=RequestLimits(
            max_body_bytes=limits.max_request_body_bytes,
            max_header_bytes=limits.max_header_bytes,
            max_url_bytes=limits.max_url_bytes,
            max_headers=limits.max_headers,
        ),
        trusted_proxies=TrustedProxies(config.security.trusted_proxies),
        listeners={listener.name: _compile_listener(listener) for listener in config.listeners},
        sweep_interval=_sweep_interval(config),
        **_request_id_fields(config.request_id),
    )


def _request_id_fields(settings: RequestIdConfig) -> dict[str, Any]:
    if not settings.enabled:
        return {}
    lowered = settings.header.lower().encode("latin-1")
    return {
        "request_id": RequestIdPolicy.of(settings.header, settings.response),
        "request_special": REQUEST_SPECIAL | {lowered},
        "response_special": RESPONSE_SPECIAL | {lowered},
    }


def _sweep_interval(config: Config) -> float:
    """A quarter of the shortest timeout, so deadlines fire at most 25% late; within 10-500 ms."""
    timeouts = [
        value
        for listener in config.listeners
        for value in (
            listener.timeouts.request_header,
            listener.timeouts.idle,
            listener.timeouts.tunnel_idle,
        )
    ]
    timeouts += [
        value
        for pool in config.pools.values()
        for value in (pool.timeouts.response, pool.timeouts.total)
    ]
    positive = [value for value in timeouts if value > 0]
    return min(max(min(positive, default=2.0) / 4, 0.01), 0.5)


def _compile_pool(name: str, pool: Pool, resources: CompileResources) -> PoolRuntime:
    ssl_context = None
    backends = []
    for backend in pool.backends:
        address = parse_upstream_url(backend.url)
        if address.tls and ssl_context is None:
            ssl_context = upstream_context(pool.tls)
        settings = PoolSettings(
            connect_timeout=pool.timeouts.connect,
            max_connections=pool.connection_pool.max_connections,
            max_idle=pool.connection_pool.max_idle,
            idle_timeout=pool.connection_pool.idle_timeout,
            max_requests=pool.connection_pool.max_requests,
            ssl_context=ssl_context if address.tls else None,
            server_hostname=(pool.tls.server_name or address.host) if address.tls else None,
        )
        backends.append(
            Backend(
                name=backend.name,
                pool_name=name,
                address=address,
                weight=backend.weight,
                connections=resources.pools.get(name, backend.name, address, settings),
                load=resources.loads.get(name, backend.name, address),
                backup=backend.backup,
                max_connections=backend.max_connections,
                slow_start=backend.slow_start,
                state=backend.state,
            )
        )
    sticky = _sticky_policy(name, pool.sticky, resources) if pool.sticky else None
    sessions = _session_table(name, pool.sticky, resources) if pool.sticky else None
    if sticky is not None and sticky.header and _is_shared(sessions):
        sticky.shared = sessions
    strategy = create_strategy(pool.algorithm, backends, sticky, sessions)
    health = resources.health
    budget = resources.retry_budgets.setdefault(name, RetryBudget())
    return PoolRuntime(
        name=name,
        strategy=strategy,
        backends=tuple(backends),
        response_timeout=pool.timeouts.response,
        total_timeout=pool.timeouts.total,
        sticky=sticky,
        load_aware=strategy.load_aware,
        passive=health.detector(name, pool.passive) if health is not None else None,
        failures_include_5xx=pool.passive.on_5xx,
        retry=RetryPolicy.from_config(pool.retries, budget),
        replay_limit=pool.retries.max_buffered_body,
        try_timeout=pool.retries.per_try_timeout or pool.timeouts.response,
        max_pending=pool.circuit_breaker.max_pending,
        max_in_flight=pool.circuit_breaker.max_in_flight,
    )


def _sticky_policy(pool: str, sticky: StickyConfig, resources: CompileResources) -> StickyPolicy:
    secret = sticky.secret.encode() if sticky.secret else resources.fallback_secret
    return StickyPolicy(pool, sticky.ttl, secret, cookie=sticky.cookie, header=sticky.header)


def _session_table(
    pool: str, sticky: StickyConfig, resources: CompileResources
) -> SessionTable | SharedSessions:
    """Header sessions outlive snapshots: a reload must not re-pin every session."""
    table = resources.sessions.get(pool)
    if table is None:
        table = resources.sessions[pool] = resources.session_tables(pool, sticky.ttl)
    table.ttl = sticky.ttl  # a changed ttl applies to the sessions kept
    return table


def _is_shared(table: object) -> TypeGuard[SharedSessions]:
    return hasattr(table, "fetch")


def _route_limit(route: Route, config: Config, resources: CompileResources) -> RouteLimit | None:
    if route.rate_limit is None:
        return None
    policy = config.rate_limits[route.rate_limit]
    kind, _, header = policy.key.partition(":")
    return RouteLimit(
        policy=route.rate_limit,
        limiter=resources.limiters.get(route.rate_limit, policy),
        key=kind,
        header=header.lower().encode("latin-1"),
        route=route.name,
    )


def _compile_route(order: int, route: Route, limit: RouteLimit | None) -> CompiledRoute:
    match = route.match
    return CompiledRoute(
        name=route.name,
        pool=route.pool,
        host=match.host,
        path_prefix=match.path_prefix,
        methods=frozenset(match.methods),
        headers=tuple(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in match.headers.items()
        ),
        priority=route.priority,
        order=order,
        limit=limit,
    )


def _compile_listener(listener: Listener) -> ListenerSpec:
    tls = listener.tls
    return ListenerSpec(
        name=listener.name,
        bind=parse_bind(listener.bind),
        request_header_timeout=listener.timeouts.request_header,
        idle_timeout=listener.timeouts.idle,
        tunnel_idle_timeout=listener.timeouts.tunnel_idle,
        certificates=load_certificate_set(tls) if tls else None,
        min_tls_version=tls.min_version if tls else "1.2",
    )
