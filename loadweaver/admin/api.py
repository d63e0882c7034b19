"""The `/api/v1` resources: pools, backends, routes, config, stats and cluster status."""

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web

from loadweaver.admin.endpoints import ApiError, Call, Endpoint
from loadweaver.admin.schemas import (
    AlertRuleView,
    AlertsDocument,
    AlertView,
    BackendList,
    BackendPatch,
    BackendView,
    ClusterNode,
    ClusterStatus,
    ConfigView,
    DynamicConfig,
    NewBackend,
    PoolDetail,
    PoolList,
    PoolSummary,
    ReloadResult,
    RouteList,
    StatsDocument,
    TrafficDocument,
    ValidationResult,
)
from loadweaver.admin.view import NodeView
from loadweaver.config.loader import ConfigError
from loadweaver.config.models import Backend as BackendConfig
from loadweaver.config.sources import DEFAULT
from loadweaver.control.editor import EditError
from loadweaver.control.errors import NodeStartError
from loadweaver.control.redaction import redact_config
from loadweaver.observability.alerts import condition_of

T = TypeVar("T")
PREFIX = "/api/v1"
STREAM_INTERVAL = 1.0


class AdminApi:
    def __init__(self, view: NodeView, closing: asyncio.Event) -> None:
        self._view = view
        self._closing = closing  # set when the admin server stops: ends the live streams

    def endpoints(self) -> list[Endpoint]:
        pool, backend = f"{PREFIX}/pools/{{pool}}", f"{PREFIX}/pools/{{pool}}/backends/{{name}}"
        return [
            Endpoint("GET", f"{PREFIX}/pools", self._list_pools, "List pools", PoolList),
            Endpoint("GET", pool, self._get_pool, "Get a pool", PoolDetail, errors=(404,)),
            Endpoint(
                "GET",
                f"{PREFIX}/backends",
                self._list_all_backends,
                "List the backends of every pool",
                BackendList,
                query=("name", "pool"),
            ),
            Endpoint(
                "GET", f"{pool}/backends", self._list_backends, "List backends", BackendList,
                errors=(404,),
            ),
            Endpoint(
                "POST", f"{pool}/backends", self._add_backend, "Add a backend", BackendView,
                body=NewBackend, status=201, errors=(400, 404, 409, 412, 422, 503),
                conditional=True,
            ),
            Endpoint(
                "GET", backend, self._get_backend, "Get a backend", BackendView, errors=(404,)
            ),
            Endpoint(
                "PATCH", backend, self._patch_backend, "Change a backend", BackendView,
                body=BackendPatch, errors=(400, 404, 412, 422, 503), conditional=True,
            ),
            Endpoint(
                "DELETE", backend, self._delete_backend, "Remove a backend", None, status=204,
                errors=(404, 412, 422, 503), conditional=True,
            ),
            Endpoint(
                "POST", f"{backend}/drain", self._drain_backend,
                "Drain a backend: no new requests; reports the in-flight count", BackendView,
                errors=(404, 412, 422, 503), conditional=True,
            ),
            Endpoint("GET", f"{PREFIX}/routes", self._list_routes, "List routes", RouteList),
            Endpoint(
                "GET", f"{PREFIX}/config", self._get_config,
                "The effective config, its version and where each value came from", ConfigView,
            ),
            Endpoint(
                "PUT", f"{PREFIX}/config", self._put_config,
                "Replace the dynamic config: every pool and route", ConfigView,
                body=DynamicConfig, errors=(400, 412, 422, 503), conditional=True,
            ),
            Endpoint(
                "POST", f"{PREFIX}/config/validate", self._validate_config,
                "Validate a dynamic config without applying it", ValidationResult,
                body=DynamicConfig, errors=(400, 422),
            ),
            Endpoint(
                "POST", f"{PREFIX}/config/reload", self._reload_config,
                "Re-read the config file", ReloadResult, errors=(409, 422),
            ),
            Endpoint("GET", f"{PREFIX}/stats", self._stats, "Live stats", StatsDocument),
            Endpoint(
                "GET", f"{PREFIX}/stats/stream", self._stats_stream,
                "Live stats as Server-Sent Events, once a second", None,
                media_type="text/event-stream",
            ),
            Endpoint(
                "GET", f"{PREFIX}/cluster/status", self._cluster_status,
                "The nodes, the leader and the config version", ClusterStatus,
            ),
            Endpoint(
                "GET", f"{PREFIX}/traffic", self._traffic,
                "Top clients, paths, user agents and status codes over the sliding window, "
                "merged over the cluster's nodes unless scope=node", TrafficDocument,
                errors=(400, 409), query=("top", "scope"),
            ),
            Endpoint(
                "GET", f"{PREFIX}/alerts", self._alerts,
                "The alert rules and the alerts pending or firing", AlertsDocument,
            ),
        ]  # fmt: skip

    # ---- pools, backends, routes ----

    async def _list_pools(self, call: Call) -> PoolList:
        snapshot = self._view.holder.current
        return PoolList(
            pools=[
                PoolSummary(
                    name=name,
                    algorithm=pool.algorithm,
                    sticky=pool.sticky is not None,
                    backends=len(pool.backends),
                    available=sum(backend.available for backend in snapshot.pools[name].backends),
                    source=self._source(f"pools.{name}"),
                )
                for name, pool in self._view.config.pools.items()
            ]
        )

    async def _get_pool(self, call: Call) -> PoolDetail:
        name = self._pool_name(call)
        pool = self._view.config.pools[name]
        settings = redact_config({"pools": {name: pool.model_dump(mode="json")}})["pools"][name]
        settings.pop("backends", None)
        return PoolDetail(
            name=name,
            source=self._source(f"pools.{name}"),
            settings=settings,
            backends=self._backend_views(name),
        )

    async def _list_all_backends(self, call: Call) -> BackendList:
        name = call.request.query.get("name")
        pool = call.request.query.get("pool")
        views = [
            view
            for pool_name in self._view.config.pools
            if pool is None or pool_name == pool
            for view in self._backend_views(pool_name)
            if name is None or view.name == name
        ]
        return BackendList(backends=views)

    async def _list_backends(self, call: Call) -> BackendList:
        return BackendList(backends=self._backend_views(self._pool_name(call)))

    async def _add_backend(self, call: Call) -> BackendView:
        pool = call.param("pool")
        backend: NewBackend = call.body
        data = backend.model_dump(mode="json", exclude_unset=True)
        await _edited(self._view.editor.add_backend(pool, data, call.if_match))
        return self._backend_view(pool, backend.name)

    async def _get_backend(self, call: Call) -> BackendView:
        return self._backend_view(self._pool_name(call), call.param("name"))

    async def _patch_backend(self, call: Call) -> BackendView:
        pool, name = call.param("pool"), call.param("name")
        patch: BackendPatch = call.body
        changes = patch.model_dump(mode="json", exclude_unset=True)
        await _edited(self._view.editor.update_backend(pool, name, call.if_match, **changes))
        return self._backend_view(pool, name)

    async def _delete_backend(self, call: Call) -> web.Response:
        pool, name = call.param("pool"), call.param("name")
        await _edited(self._view.editor.remove_backend(pool, name, call.if_match))
        return web.Response(status=204)

    async def _drain_backend(self, call: Call) -> BackendView:
        pool, name = call.param("pool"), call.param("name")
        await _edited(self._view.editor.drain(pool, name, call.if_match))
        return self._backend_view(pool, name)

    async def _list_routes(self, call: Call) -> RouteList:
        return RouteList(routes=list(self._view.config.routes))

    # ---- config ----

    async def _get_config(self, call: Call) -> ConfigView:
        return self._config_view()

    async def _put_config(self, call: Call) -> ConfigView:
        pools, routes, limits = _dynamic_data(call.body)
        await _edited(self._view.editor.replace_dynamic(pools, routes, limits, call.if_match))
        return self._config_view()

    async def _validate_config(self, call: Call) -> ValidationResult:
        pools, routes, limits = _dynamic_data(call.body)
        try:
            config = self._view.editor.preview_dynamic(pools, routes, limits)
        except EditError as error:
            raise ApiError(error.status, error.message, error.problems) from None
        backends = sum(len(pool.backends) for pool in config.pools.values())
        return ValidationResult(
            valid=True,
            version=self._view.version,
            summary=f"valid: {len(config.pools)} pool(s), {backends} backend(s), "
            f"{len(config.routes)} route(s)",
        )

    async def _reload_config(self, call: Call) -> ReloadResult:
        if self._view.config_path is None:
            raise ApiError(409, "the node runs without a config file: nothing to reload")
        try:
            snapshot = await self._view.reload_file()
        except ConfigError as error:
            message = f"{error.source}: the config was not reloaded"
            raise ApiError(422, message, error.problems) from None
        except NodeStartError as error:
            raise ApiError(422, f"the config was not reloaded: {error}") from None
        return ReloadResult(reloaded=True, version=snapshot.version)

    # ---- stats and cluster ----

    async def _stats(self, call: Call) -> StatsDocument:
        return self.stats_document()

    def stats_document(self) -> StatsDocument:
        view = self._view
        return StatsDocument.model_validate(
            {
                "node": {
                    "id": view.config.node.id,
                    "config_version": view.version,
                    "uptime_seconds": round(time.time() - view.started_at, 3),
                    "leader": view.is_leader,
                },
                "time": time.time(),
                **view.stats.report(),
            }
        )

    async def _stats_stream(self, call: Call) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                "ETag": f'"{self._view.version}"',
            }
        )
        await response.prepare(call.request)
        try:
            while not self._closing.is_set():
                document = json.dumps(self.stats_document().model_dump(mode="json"))
                await response.write(f"event: stats\ndata: {document}\n\n".encode())
                await _wait(self._closing, STREAM_INTERVAL)
        except ConnectionResetError:
            pass  # the viewer went away
        return response

    async def _cluster_status(self, call: Call) -> ClusterStatus:
        view = self._view
        members, leader, store_up = await view.cluster_members()
        now = time.time()
        nodes = [
            ClusterNode(
                id=str(member["id"]),
                admin=str(member.get("admin", "")),
                listen=[str(bind) for bind in member.get("listen", [])],
                version=str(member.get("version", "")),
                ready=bool(member.get("ready", False)),
                leader=member["id"] == leader,
                config_version=int(member.get("config_version", 0)),
                uptime_seconds=round(now - float(member.get("started_at", now)), 3),
            )
            for member in sorted(members, key=lambda member: str(member["id"]))
        ]
        return ClusterStatus(
            nodes=nodes,
            leader=leader,
            config_version=view.version,
            store=view.store.description,
            store_up=store_up,
        )

    # ---- traffic and alerts ----

    async def _traffic(self, call: Call) -> TrafficDocument:
        query = call.request.query
        top = _int_query(query.get("top", "10"), "top", 1, 100)
        scope = query.get("scope", "cluster")
        if scope not in ("node", "cluster"):
            raise ApiError(400, f"scope must be node or cluster, not {scope!r}")
        document = await self._view.observing.traffic_document(top, cluster=scope == "cluster")
        if document is None:
            raise ApiError(409, "traffic patterns are off: set traffic_patterns.enabled: true")
        return TrafficDocument.model_validate(document)

    async def _alerts(self, call: Call) -> AlertsDocument:
        view = self._view
        leader = view.is_leader
        rules = [
            AlertRuleView(
                name=rule.name,
                metric=rule.metric,
                scope=rule.effective_scope,
                severity=rule.severity,
                condition=condition_of(rule),
                evaluated_here=rule.effective_scope == "node" or leader,
            )
            for rule in view.config.alerts.rules
        ]
        alerts = [
            AlertView(
                rule=alert.rule,
                state=alert.state,
                labels=dict(alert.labels),
                value=alert.value,
                summary=alert.summary,
                since=alert.since,
                fired_at=alert.fired_at or None,
            )
            for alert in view.observing.alerts.active()
        ]
        return AlertsDocument(leader=leader, rules=rules, alerts=alerts)

    # ---- views ----

    def _pool_name(self, call: Call) -> str:
        name = call.param("pool")
        if name not in self._view.config.pools:
            known = ", ".join(sorted(self._view.config.pools)) or "none"
            raise ApiError(404, f"no pool named {name!r} (pools: {known})")
        return name

    def _source(self, path: str) -> str:
        """Where `path` came from: its own entry, an enclosing one, or one inside it."""
        sources = self._view.sources
        parts = path.split(".")
        for end in range(len(parts), 0, -1):
            enclosing = ".".join(parts[:end])
            if enclosing in sources:
                return sources[enclosing]
        prefix = f"{path}."
        return next((source for key, source in sources.items() if key.startswith(prefix)), DEFAULT)

    def _backend_views(self, pool: str) -> list[BackendView]:
        return [self._view_of(pool, backend) for backend in self._view.config.pools[pool].backends]

    def _backend_view(self, pool: str, name: str) -> BackendView:
        if pool not in self._view.config.pools:
            raise ApiError(404, f"no pool named {pool!r}")
        for backend in self._view.config.pools[pool].backends:
            if backend.name == name:
                return self._view_of(pool, backend)
        raise ApiError(404, f"pool {pool!r} has no backend named {name!r}")

    def _view_of(self, pool: str, backend: BackendConfig) -> BackendView:
        runtime = self._view.holder.current.pools.get(pool)
        live = (
            next((b for b in runtime.backends if b.name == backend.name), None) if runtime else None
        )
        return BackendView(
            pool=pool,
            name=backend.name,
            url=backend.url,
            weight=backend.weight,
            backup=backend.backup,
            max_connections=backend.max_connections,
            slow_start=backend.slow_start,
            state=backend.state,
            healthy=live.load.healthy if live else True,
            in_flight=live.load.in_flight if live else 0,
            source=self._source(f"pools.{pool}.backends"),
        )

    def _config_view(self) -> ConfigView:
        view = self._view
        return ConfigView(
            version=view.version,
            config=redact_config(view.config.model_dump(mode="json")),
            sources=view.sources,
        )


def _dynamic_data(
    body: DynamicConfig,
) -> tuple[dict[str, Any], list[Any], dict[str, Any] | None]:
    pools = {
        name: pool.model_dump(mode="json", exclude_unset=True) for name, pool in body.pools.items()
    }
    routes = [route.model_dump(mode="json", exclude_unset=True) for route in body.routes]
    if body.rate_limits is None:
        return pools, routes, None  # absent: the rate limits stay as they are
    limits = {
        name: policy.model_dump(mode="json", exclude_unset=True)
        for name, policy in body.rate_limits.items()
    }
    return pools, routes, limits


def _int_query(text: str, name: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}, not {text!r}")
    return int(text)


async def _edited(change: Awaitable[T]) -> T:
    try:
        return await change
    except EditError as error:
        raise ApiError(error.status, error.message, error.problems) from None


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
