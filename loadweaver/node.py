"""The composition root: builds every component, starts and stops them in order, handles signals."""

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry

from loadweaver import __version__
from loadweaver.admin.auth import AdminTokenError, check_exposure, resolve_token
from loadweaver.admin.server import AdminServer
from loadweaver.balancing.sticky import MemorySessionTable, SessionTable, SharedSessions
from loadweaver.cluster.factory import build_store
from loadweaver.cluster.memory import VERDICTS_FILE_NAME
from loadweaver.cluster.state import DYNAMIC_SECTIONS, StoredConfig
from loadweaver.cluster.store import (
    ClusterStore,
    FencedOutError,
    Lease,
    StoreError,
    VersionConflictError,
)
from loadweaver.config.addresses import parse_bind
from loadweaver.config.loader import (
    ConfigError,
    environment_layer_path,
    load_config_layers,
    sticky_secret_from_environment,
)
from loadweaver.config.models import Config
from loadweaver.config.sources import value_sources, with_owner
from loadweaver.control.cluster_loops import anti_entropy, follow_changes, heartbeat_forever
from loadweaver.control.compiler import CompileResources, compile_snapshot
from loadweaver.control.dynamic import base_data, compose_config, own_dynamic
from loadweaver.control.editor import ConfigEditor, EditState
from loadweaver.control.errors import NodeStartError
from loadweaver.control.health_service import HealthService
from loadweaver.control.leadership import Leadership
from loadweaver.control.limiters import LimiterRegistry
from loadweaver.control.loads import LoadRegistry
from loadweaver.control.observing import Observing
from loadweaver.control.overrides import Composition, compose
from loadweaver.control.ramps import refresh_ramping_pools
from loadweaver.control.shared_sessions import SharedSessionTable
from loadweaver.control.snapshot import Snapshot, SnapshotHolder
from loadweaver.control.watcher import watch_config_files
from loadweaver.health.manager import HealthManager
from loadweaver.observability.access_log import AccessLogError
from loadweaver.observability.live_labels import live_labels
from loadweaver.observability.live_stats import LiveStats
from loadweaver.observability.logging import LoggingSetupError, configure_logging
from loadweaver.observability.metrics import Metrics
from loadweaver.observability.runtime_collector import RuntimeCollector
from loadweaver.observability.worker_metrics import MergedRegistry, write_exposition
from loadweaver.pool.manager import PoolManager
from loadweaver.proxy.listener import ConnectionRegistry, Listener, ListenError, ProxyContext
from loadweaver.proxy.tls import TlsConfigError

__all__ = ["Node", "NodeStartError", "WorkerSlot"]


METRICS_SHARE_INTERVAL = 1.0  # how stale another worker's numbers in /metrics may be


@dataclass(frozen=True)
class WorkerSlot:
    """One of `--workers N`: its index, and where the workers share their metrics."""

    index: int
    directory: Path


async def _cancel_all(tasks: list[asyncio.Task[None]], patience: float = 2.0) -> None:
    """Cancels until they are done: on Python 3.11 asyncio.wait_for (which redis-py uses for
    every command) can swallow a cancellation that lands as its call completes."""
    pending = set(tasks)
    deadline = time.monotonic() + patience
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    if pending:
        logger.warning("{} background task(s) did not stop in time", len(pending))


def _sources_of(config: Config, path: Path | None) -> dict[str, str]:
    """The layers behind `config` when the caller did not say: its file's, if it reads."""
    if path is not None:
        try:
            return load_config_layers(path).sources
        except ConfigError:
            pass  # the config did not come from a readable file: label it as a whole
    label = str(path) if path is not None else "startup config"
    return value_sources([(label, config.model_dump(mode="json", exclude_unset=True))])


class Node:
    def __init__(  # noqa: PLR0917 - tests and the CLI pass the first few by position
        self,
        config: Config,
        config_path: Path | None = None,
        reuse_port: bool = False,
        serve_admin: bool = True,
        sources: dict[str, str] | None = None,
        store: ClusterStore | None = None,
        worker: WorkerSlot | None = None,
    ) -> None:
        """`config` is what the file (and environment) say; the cluster's config is layered in."""
        self.file_config = config
        self.config = config  # the effective config
        self.file_sources = sources if sources is not None else _sources_of(config, config_path)
        self.config_path = config_path
        self.reuse_port = reuse_port
        self.serve_admin = serve_admin and config.admin.enabled
        self.worker = worker
        self.metrics = Metrics(config.node.id, config.cluster.name)
        self.metrics.configure(config.metrics)
        self.store: ClusterStore = store or build_store(config, self.metrics)
        self.metrics.node[2] = self.store.kind
        self.stored = StoredConfig()  # the cluster config record this node has applied
        self.composition = compose({}, self.stored)
        self.ready = False
        self.started_at = time.time()
        self.admin_token: str | None = None
        self.listeners: dict[str, Listener] = {}
        self.leadership = Leadership(
            self.store,
            config.node.id,
            config.cluster.lease_ttl,
            self._became_leader,
            self._lost_leadership,
        )
        self._snapshots = 0
        self.live_nodes = 1  # nodes heartbeating in the cluster, as last counted
        self._unappliable = 0  # a cluster config version this node could not apply
        self._apply_lock = asyncio.Lock()
        self._random_sticky_key = True
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.pools = PoolManager(loop, self.metrics.upstream_connect.labels)
        self.health = HealthManager(loop, self.metrics)
        try:
            node_secret = sticky_secret_from_environment()
        except ConfigError as error:
            raise NodeStartError(str(error)) from None
        self._random_sticky_key = node_secret is None
        self.resources = CompileResources(
            pools=self.pools,
            loads=LoadRegistry(loop.time),
            fallback_secret=node_secret.encode() if node_secret else os.urandom(32),
            limiters=LimiterRegistry(self.store, lambda: self.live_nodes, loop),
            session_tables=self._session_table_factory(loop),
            health=self.health,
        )
        self.admin_token = self._admin_token(self.file_config)
        await self._load_stored()
        self._warn_about_sticky_secrets(self.config)
        self.holder = SnapshotHolder(self._compile(self.config))
        self.health.holder = self.holder
        self.health.refresh_all()
        self.health_checks = HealthService(
            self.store,
            self.health,
            self.holder,
            lambda: self.leadership.lease,
            self.config.node.id,
            lambda: self.live_nodes,
            # Workers share verdicts through the state dir; without one each probes for itself.
            lambda: self.serve_admin or self.store.watch_path is None,
        )
        await self.health_checks.sync_from_store()  # no traffic to a backend known to be down
        self.editor = ConfigEditor(
            self._edit_state, self._commit_locked, self.sync_from_store, self._apply_lock
        )
        self.connections = ConnectionRegistry(loop, self.holder)
        self.context = ProxyContext(loop, self.holder, self.metrics, self.connections)
        self.metrics.registry.register(
            RuntimeCollector(self.holder, self.context.listener_stats, loop.time)
        )
        self.stats = LiveStats(self.holder, self.metrics, loop.time, lambda: len(self.connections))
        self.observing = Observing(
            self.config,
            self.metrics,
            self.holder,
            self.context.listener_stats,
            self.store,
            lambda: self.is_leader,
            loop,
            time.time,
        )
        self.admin = AdminServer(parse_bind(self.config.admin.bind), self._exposed_registry(), self)
        try:
            self._tasks += self._start_observing()
            for spec in self.holder.current.listeners.values():
                listener = Listener(self.context, spec, self.reuse_port)
                await listener.start()
                self.listeners[spec.name] = listener
            if self.serve_admin:
                await self._start_admin()
        except (NodeStartError, ListenError):
            await self.stop(grace=0)  # release whatever did bind before re-raising
            raise
        self.connections.start()
        self._tasks.append(loop.create_task(refresh_ramping_pools(self.holder, loop.time)))
        if self.worker is not None and not self.serve_admin:
            self._tasks.append(loop.create_task(self._share_metrics(self.worker)))
        self._tasks.append(loop.create_task(self.stats.run()))
        self._tasks.append(loop.create_task(self.health_checks.run()))
        self._start_cluster_tasks()
        # Objects from startup live as long as the process: exclude them from every later
        # full collection, whose pauses would otherwise show up in tail latency.
        gc.collect()
        gc.freeze()
        self.ready = True
        logger.info("node {} ready (config version {})", self.config.node.id, self.version)

    def _start_observing(self) -> list[asyncio.Task[None]]:
        try:
            return self.observing.start()
        except AccessLogError as error:
            raise NodeStartError(str(error)) from None

    def _exposed_registry(self) -> CollectorRegistry:
        """What /metrics serves: with --workers, every worker's numbers."""
        if self.worker is None:
            return self.metrics.registry
        return MergedRegistry(self.metrics.registry, self.worker.directory, self.worker.index)

    async def _share_metrics(self, worker: WorkerSlot) -> None:
        """A worker without the admin listener hands its numbers to the one with it."""
        while True:
            try:
                write_exposition(self.metrics.registry, worker.directory, worker.index)
            except OSError as error:
                logger.warning("cannot share this worker's metrics: {}", error)
            await asyncio.sleep(METRICS_SHARE_INTERVAL)

    def _session_table_factory(
        self, loop: asyncio.AbstractEventLoop
    ) -> Callable[[str, float], SessionTable | SharedSessions]:
        """Header sessions live in the cluster store when there is one to share."""
        if self.store.kind == "memory":
            return lambda _, ttl: MemorySessionTable(ttl)
        return lambda pool, ttl: SharedSessionTable(self.store, pool, ttl, loop)

    @property
    def version(self) -> int:
        """The cluster config version this node has applied."""
        return self.stored.version

    @property
    def is_leader(self) -> bool:
        if self.store.kind == "memory":
            return self.serve_admin  # one node: the process that takes API changes leads
        return self.leadership.lease is not None

    @property
    def sources(self) -> dict[str, str]:
        """Which layer each configured value of the effective config came from."""
        sources = self.file_sources
        if self.stored.base is not None and self.stored.base != own_dynamic(self.file_config):
            for part in DYNAMIC_SECTIONS:
                sources = with_owner(sources, part, "cluster (the leader's file)")
        return self.composition.sources(sources)

    # ---- the cluster config ----

    async def _load_stored(self) -> None:
        """The cluster's config from the store, layered over the file config."""
        try:
            stored = await self.store.load()
            if self.is_leader:
                stored = await self._published(self.file_config, stored, None)
        except StoreError as error:
            if self.store.kind == "memory":
                raise NodeStartError(str(error)) from None
            logger.warning("{}; starting from the config file until it answers", error)
            stored = StoredConfig()
        try:
            self.config, self.composition = compose_config(self.file_config, stored)
        except ConfigError as error:
            raise NodeStartError(
                f"{error}\nthe changes kept in {self.store.description} no longer fit the "
                "config file; fix the file, or remove those changes to start from the file alone"
            ) from None
        self._adopt(self.composition.stored, stored.version)
        self._log_reclaimed(self.composition)

    def _adopt(self, stored: StoredConfig, version: int) -> None:
        self.stored = replace(stored, version=version)
        self.metrics.config_version.set(version)

    async def _published(
        self, file_config: Config, stored: StoredConfig, fence: Lease | None
    ) -> StoredConfig:
        """Writes this node's file layer as the cluster's, if it differs: a leader's job."""
        base = own_dynamic(file_config)
        if stored.base == base:
            return stored
        candidate = replace(stored, base=base)
        pruned = compose(base_data(file_config, candidate), candidate).stored
        version = await self.store.save(pruned, stored.version, fence)
        logger.info("published this node's pools and routes as cluster version {}", version)
        return replace(pruned, version=version)

    async def sync_from_store(self) -> bool:
        """Applies the store's config if it is newer than this node's; True if it applied one."""
        try:
            stored = await self.store.load()
        except StoreError:
            return False
        async with self._apply_lock:
            if stored.version <= self.stored.version:
                return False
            try:
                await self._swap_locked(self.file_config, stored, self.file_sources)
            except (ConfigError, NodeStartError) as error:
                if stored.version != self._unappliable:  # once per version, not every check
                    self._unappliable = stored.version
                    logger.error(
                        "cannot apply cluster config version {}: {}", stored.version, error
                    )
                return False
        logger.info("applied cluster config version {}", stored.version)
        return True

    async def _check_cluster(self) -> None:
        """Anti-entropy: catch up with the store; as leader, repair what the store lost."""
        await self.sync_from_store()
        with contextlib.suppress(StoreError):
            self.live_nodes = max(1, len(await self.store.members()))
            self.metrics.cluster_nodes.set(self.live_nodes)
        lease = self.leadership.lease
        if lease is None:
            return
        if self.stored.base != own_dynamic(self.file_config):
            await self._publish_as_leader(lease)
        await self._reseed_if_lost(lease)

    async def _reseed_if_lost(self, lease: Lease) -> None:
        """A store restarted without its data holds an older version than the nodes: the leader
        writes its record back, above every version the nodes have seen."""
        try:
            found = await self.store.load()
            if found.version >= self.version:
                return
            async with self._apply_lock:
                version = await self.store.save(
                    self.stored, found.version, lease, min_version=self.version + 1
                )
                self._adopt(self.stored, version)
        except StoreError as error:
            logger.debug("re-seeding the cluster store failed: {}", error)
            return
        logger.warning("the cluster store had lost the config: re-seeded it as version {}", version)

    async def _publish_as_leader(self, lease: Lease) -> None:
        async with self._apply_lock:
            try:
                stored = await self._published(self.file_config, self.stored, lease)
                await self._swap_locked(self.file_config, stored, self.file_sources)
            except FencedOutError:
                logger.warning("no longer the leader: the file layer was not published")
            except VersionConflictError:
                pass  # the next check reads the newer version and tries again
            except (StoreError, ConfigError, NodeStartError) as error:
                logger.error("cannot publish this node's file layer: {}", error)

    async def _became_leader(self, lease: Lease) -> None:
        self.metrics.cluster_leader.set(1)
        await self.sync_from_store()
        await self._publish_as_leader(lease)
        await self._reseed_if_lost(lease)

    def _lost_leadership(self) -> None:
        self.metrics.cluster_leader.set(0)

    def _start_cluster_tasks(self) -> None:
        if self.store.kind == "memory":
            self.metrics.cluster_leader.set(1 if self.is_leader else 0)
            return
        loop = asyncio.get_running_loop()
        cluster = self.config.cluster
        self._tasks += [
            loop.create_task(self.leadership.run()),
            loop.create_task(
                heartbeat_forever(
                    self.store,
                    self.config.node.id,
                    self.member_record,
                    cluster.heartbeat_interval,
                    cluster.member_ttl,
                )
            ),
            loop.create_task(
                follow_changes(self.store, lambda: self.version, self.sync_from_store)
            ),
            loop.create_task(anti_entropy(self._check_cluster, cluster.anti_entropy_interval)),
            loop.create_task(self.health_checks.follow()),
            loop.create_task(
                anti_entropy(self.health_checks.sync_from_store, cluster.anti_entropy_interval)
            ),
        ]

    async def cluster_members(self) -> tuple[list[dict[str, Any]], str | None, bool]:
        """Member records, the leader's id, and whether the store answered."""
        if self.store.kind == "memory":
            return [self.member_record()], self.config.node.id if self.is_leader else None, True
        try:
            members = await self.store.members()
            lease = await self.store.current_lease()
        except StoreError:
            return [self.member_record()], None, False
        own = self.member_record()
        members = [own] + [member for member in members if member.get("id") != own["id"]]
        return members, lease.node_id if lease else None, True

    def member_record(self) -> dict[str, Any]:
        """What this node heartbeats: who it is, where, and how far it has converged."""
        config = self.config
        return {
            "id": config.node.id,
            "listen": [listener.bind for listener in config.listeners],
            "admin": f"http://{config.admin.bind}",
            "version": __version__,
            "config_version": self.version,
            "started_at": self.started_at,
            "ready": self.ready,
            "leader": self.is_leader,
            **(self.observing.published() if hasattr(self, "observing") else {}),
            "load": {
                "connections": len(self.connections) if hasattr(self, "connections") else 0,
                "in_flight": sum(
                    backend.load.in_flight
                    for pool in self.holder.current.pools.values()
                    for backend in pool.backends
                )
                if hasattr(self, "holder")
                else 0,
            },
        }

    # ---- applying changes ----

    def _admin_token(self, config: Config) -> str | None:
        try:
            token = resolve_token(config.admin)
            if self.serve_admin:
                check_exposure(config.admin, token)
        except AdminTokenError as error:
            raise NodeStartError(str(error)) from None
        return token

    async def _start_admin(self) -> None:
        try:
            await self.admin.start()
        except OSError as error:
            raise NodeStartError(
                f"cannot listen on {self.config.admin.bind} for the admin API: "
                f"{error.strerror or error}"
            ) from None
        logger.info("admin API on http://{}", self.config.admin.bind)

    def _compile(self, config: Config) -> Snapshot:
        try:
            snapshot = compile_snapshot(config, self._snapshots + 1, self.resources)
        except TlsConfigError as error:
            raise NodeStartError(str(error)) from None
        self._snapshots = snapshot.version
        return snapshot

    def start_watching(self) -> None:
        """Reloads whenever the config file, or its LOADWEAVER_ENV layer, changes.

        A worker without the admin API also follows the state file, where the admin worker
        records API changes: that is how `--workers N` processes share them on one machine.
        """
        loop = asyncio.get_running_loop()
        if self.config_path is not None:
            paths = [self.config_path]
            layer = environment_layer_path(self.config_path, os.environ)
            if layer is not None:
                paths.append(layer)
            self._tasks.append(loop.create_task(watch_config_files(paths, self.reload)))
        state_file = self.store.watch_path
        if not self.serve_admin and state_file is not None:
            # The admin worker may not have created the directory yet: a watch needs it.
            state_file.parent.mkdir(parents=True, exist_ok=True)
            verdicts_file = state_file.with_name(VERDICTS_FILE_NAME)
            self._tasks += [
                loop.create_task(watch_config_files([state_file], self.sync_from_store)),
                loop.create_task(
                    watch_config_files([verdicts_file], self.health_checks.sync_from_store)
                ),
                # A watch can miss a write made while it was being set up: read now and then.
                loop.create_task(anti_entropy(self._follow_state_dir, 1.0)),
            ]

    async def _follow_state_dir(self) -> None:
        await self.sync_from_store()
        await self.health_checks.sync_from_store()

    async def reload(self) -> bool:
        """Re-reads the config file; an invalid one keeps the running config. True on success."""
        try:
            await self.reload_file()
        except (ConfigError, NodeStartError):
            return False
        return True

    async def reload_file(self) -> Snapshot:
        """As reload, but raises ConfigError or NodeStartError saying why it failed."""
        try:
            if self.config_path is None:
                raise NodeStartError("the node runs without a config file: nothing to reload")
            loaded = load_config_layers(self.config_path)
            snapshot = await self.apply(loaded.config, loaded.sources)
        except (ConfigError, NodeStartError) as error:
            self.metrics.config_reloads.labels("failure").inc()
            self.metrics.config_reload_failures.inc()
            logger.error("config reload failed, keeping the running config:\n{}", error)
            raise
        self.metrics.config_reloads.labels("success").inc()
        logger.info("config reloaded (config version {})", self.version)
        return snapshot

    async def apply(self, config: Config, sources: dict[str, str] | None = None) -> Snapshot:
        """Applies `config` as the node's new file config; the leader also publishes its pools.

        Raises ConfigError or NodeStartError, leaving the old config running. Requests in flight
        keep the snapshot they started with. Pools and backends that did not change keep their
        pooled connections and load; removed ones close when idle. Changes are serialised: one
        that waits for listeners cannot interleave with another.
        """
        async with self._apply_lock:
            compose_config(config, self.stored)  # refuse a broken file before publishing it
            stored = self.stored
            if self.is_leader:
                try:
                    stored = await self._published(config, stored, self.leadership.lease)
                except StoreError as error:
                    if self.store.kind == "memory":
                        raise NodeStartError(str(error)) from None
                    logger.warning("{}; the leader will publish the file layer later", error)
            return await self._swap_locked(config, stored, sources)

    def _edit_state(self) -> EditState:
        return EditState(
            self.config, base_data(self.file_config, self.stored), self.stored, self.version
        )

    async def _commit_locked(self, stored: StoredConfig, expected_version: int) -> Snapshot:
        """An API change: validated, written to the store (compare-and-set), then applied."""
        config_data = base_data(self.file_config, stored)
        pruned = compose(config_data, stored).stored
        compose_config(self.file_config, pruned)  # raises ConfigError before anything is written
        version = await self.store.save(pruned, expected_version)
        return await self._swap_locked(
            self.file_config, replace(pruned, version=version), self.file_sources
        )

    async def _swap_locked(
        self, file_config: Config, stored: StoredConfig, sources: dict[str, str] | None
    ) -> Snapshot:
        config, composition = compose_config(file_config, stored)
        token = self._admin_token(file_config)
        self._warn_about_sticky_secrets(config)
        snapshot = self._compile(config)
        logging_reconfigured = await self._note_restart_only_changes(config)
        self.metrics.configure(config.metrics)
        self.observing.apply(config, logging_reconfigured)
        self.file_config, self.config, self.composition = file_config, config, composition
        self.file_sources = sources if sources is not None else _sources_of(file_config, None)
        self.admin_token = token
        self._adopt(composition.stored, stored.version)
        self.holder.swap(snapshot)
        await self._sync_listeners()
        backends = [backend for pool in snapshot.pools.values() for backend in pool.backends]
        self.pools.retain_only(backend.connections for backend in backends)
        self.resources.limiters.retain_only(config.rate_limits)
        self.health.retain_only(set(config.pools))
        self.health_checks.snapshot_changed()
        self.resources.loads.retain_only(
            (backend.pool_name, backend.name, backend.address) for backend in backends
        )
        self.metrics.retain_only(live_labels(config))
        self._log_reclaimed(composition)
        return snapshot

    async def _note_restart_only_changes(self, config: Config) -> bool:
        """Applies what needs more than a snapshot swap; True when the log sinks were replaced."""
        if config.admin.bind != self.config.admin.bind:
            logger.warning(
                "admin.bind changed to {}; the admin API moves there at the next restart",
                config.admin.bind,
            )
        if config.logging == self.config.logging:
            return False
        # Replacing the sinks removes the access log's own: write out what it holds first.
        await self.observing.access_log.close_without_blocking()
        try:
            configure_logging(config.logging, config.node.id)
        except LoggingSetupError as error:
            logger.error("{}", error)
        return True

    def _log_reclaimed(self, composition: Composition) -> None:
        for part in composition.reclaimed:
            logger.warning(
                "{} changed in the config file: the file's version replaces the API's changes",
                part,
            )

    def _warn_about_sticky_secrets(self, config: Config) -> None:
        if not self._random_sticky_key:
            return
        for name, pool in config.pools.items():
            if pool.sticky is not None and pool.sticky.cookie and not pool.sticky.secret:
                logger.warning(
                    "pool {}: sticky cookies are signed with a random per-process key; set "
                    "pools.{}.sticky.secret or LOADWEAVER_STICKY_SECRET so they survive "
                    "restarts and work on every node",
                    name,
                    name,
                )

    async def _sync_listeners(self) -> None:
        specs = self.holder.current.listeners
        for name in list(self.listeners):
            spec = specs.get(name)
            listener = self.listeners[name]
            if spec is None or spec.bind != listener.spec.bind:
                listener.stop_accepting()
                del self.listeners[name]
            else:
                listener.update(spec)
        for name, spec in specs.items():
            if name not in self.listeners:
                listener = Listener(self.context, spec, self.reuse_port)
                try:
                    await listener.start()
                except (ListenError, OSError) as error:  # reported; the rest keeps serving
                    logger.error("{}", error)
                    continue
                self.listeners[name] = listener

    async def stop(self, grace: float | None = None) -> None:
        """Stops accepting, lets in-flight requests finish within `grace`, then closes the rest."""
        grace = self.config.node.shutdown_grace if grace is None else grace
        self.ready = False
        for listener in self.listeners.values():
            listener.stop_accepting()
        if hasattr(self, "connections"):
            left = await self.connections.drain(grace)
            if left:
                logger.warning("closed {} connection(s) still busy after the grace period", left)
        await _cancel_all(self._tasks)
        self._tasks = []
        if hasattr(self, "observing"):
            await self.observing.stop()
        await self.leadership.release()
        if self.store.kind != "memory":
            with contextlib.suppress(StoreError):
                await self.store.leave(self.config.node.id)
        await self.store.close()
        if hasattr(self, "pools"):
            self.pools.close_all()
        if hasattr(self, "resources"):
            await self.resources.limiters.close_all()
        if self.serve_admin and hasattr(self, "admin"):
            await self.admin.stop()

    async def run(self) -> None:
        """Starts, then serves until SIGTERM or SIGINT; SIGHUP reloads the config file."""
        loop = asyncio.get_running_loop()
        await self.start()
        stop_requested = asyncio.Event()
        reloads: set[asyncio.Task[bool]] = set()

        def request_reload() -> None:
            task = loop.create_task(self.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        handlers: dict[signal.Signals, Callable[[], None]] = {
            signal.SIGTERM: stop_requested.set,
            signal.SIGINT: stop_requested.set,
            signal.SIGHUP: request_reload,
        }
        for signum, handler in handlers.items():
            loop.add_signal_handler(signum, handler)
        if self.config.node.watch_config:
            self.start_watching()
        await stop_requested.wait()
        logger.info("stopping: draining connections")
        await self.stop()
        logger.info("node {} stopped", self.config.node.id)
        for signum in handlers:
            loop.remove_signal_handler(signum)
