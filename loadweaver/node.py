"""The composition root: builds every component, starts and stops them in order, handles signals."""

import asyncio
import gc
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from loguru import logger

from loadweaver.admin.auth import AdminTokenError, check_exposure, resolve_token
from loadweaver.admin.server import AdminServer
from loadweaver.cluster.memory import MemoryConfigStore
from loadweaver.cluster.state import StoredConfig
from loadweaver.cluster.store import ConfigStore, StoreError
from loadweaver.config.addresses import parse_bind
from loadweaver.config.loader import (
    ConfigError,
    environment_layer_path,
    load_config_layers,
    sticky_secret_from_environment,
    validate_config,
)
from loadweaver.config.models import Config
from loadweaver.config.sources import value_sources
from loadweaver.control.compiler import CompileResources, compile_snapshot
from loadweaver.control.editor import ConfigEditor, EditState
from loadweaver.control.errors import NodeStartError
from loadweaver.control.loads import LoadRegistry
from loadweaver.control.overrides import Composition, compose
from loadweaver.control.ramps import refresh_ramping_pools
from loadweaver.control.snapshot import Snapshot, SnapshotHolder
from loadweaver.control.watcher import watch_config_files
from loadweaver.observability.live_stats import LiveStats
from loadweaver.observability.logging import LoggingSetupError, configure_logging
from loadweaver.observability.metrics import Metrics
from loadweaver.pool.manager import PoolManager
from loadweaver.proxy.listener import ConnectionRegistry, Listener, ListenError, ProxyContext
from loadweaver.proxy.tls import TlsConfigError

__all__ = ["Node", "NodeStartError"]


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
        store: ConfigStore | None = None,
    ) -> None:
        """`config` is what the file (and environment) say; API changes are layered over it."""
        self.file_config = config
        self.config = config  # the effective config: the file's with the API's changes
        self.file_sources = sources if sources is not None else _sources_of(config, config_path)
        self.config_path = config_path
        self.reuse_port = reuse_port
        self.serve_admin = serve_admin and config.admin.enabled
        self.store: ConfigStore = store or MemoryConfigStore(config.node.state_dir)
        self.stored = StoredConfig()
        self.composition = compose({}, self.stored)
        self.metrics = Metrics()
        self.ready = False
        self.started_at = time.time()
        self.admin_token: str | None = None
        self.listeners: dict[str, Listener] = {}
        self._version = 0
        self._apply_lock = asyncio.Lock()
        self._random_sticky_key = True
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.pools = PoolManager(loop)
        try:
            node_secret = sticky_secret_from_environment()
        except ConfigError as error:
            raise NodeStartError(str(error)) from None
        self._random_sticky_key = node_secret is None
        self.resources = CompileResources(
            pools=self.pools,
            loads=LoadRegistry(loop.time),
            fallback_secret=node_secret.encode() if node_secret else os.urandom(32),
        )
        self.admin_token = self._admin_token(self.file_config)
        await self._load_stored()
        self._warn_about_sticky_secrets(self.config)
        self.holder = SnapshotHolder(self._compile(self.config))
        await self._save_stored(self.holder.current.version, starting=True)
        self.editor = ConfigEditor(self._edit_state, self._apply_stored_locked, self._apply_lock)
        self.connections = ConnectionRegistry(loop, self.holder)
        self.context = ProxyContext(loop, self.holder, self.metrics, self.connections)
        self.stats = LiveStats(self.holder, self.metrics, loop.time, lambda: len(self.connections))
        self.admin = AdminServer(parse_bind(self.config.admin.bind), self.metrics.registry, self)
        try:
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
        self._tasks.append(loop.create_task(self.stats.run()))
        # Objects from startup live as long as the process: exclude them from every later
        # full collection, whose pauses would otherwise show up in tail latency.
        gc.collect()
        gc.freeze()
        self.ready = True
        logger.info("node {} ready (config version {})", self.config.node.id, self.version)

    @property
    def version(self) -> int:
        return self.holder.current.version if hasattr(self, "holder") else self._version

    @property
    def sources(self) -> dict[str, str]:
        """Which layer each configured value of the effective config came from."""
        return self.composition.sources(self.file_sources)

    async def _load_stored(self) -> None:
        """The API's changes from the store, layered over the file config."""
        try:
            stored = await self.store.load()
            self.config, self.composition = self._compose(self.file_config, stored)
        except StoreError as error:
            raise NodeStartError(str(error)) from None
        except ConfigError as error:
            raise NodeStartError(
                f"{error}\nthe changes kept in {self.store.description} no longer fit the "
                "config file; fix the file, or remove those changes to start from the file alone"
            ) from None
        self._version = stored.version
        self.stored = self.composition.stored
        self._log_reclaimed(self.composition)

    def _compose(self, file_config: Config, stored: StoredConfig) -> tuple[Config, Composition]:
        """The effective config; raises ConfigError when the API's changes no longer fit."""
        composition = compose(file_config.model_dump(mode="json", exclude_unset=True), stored)
        if not composition.api_pools and not composition.api_routes:
            return file_config, composition
        return validate_config(composition.data, "file config with API changes"), composition

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
            snapshot = compile_snapshot(config, self._version + 1, self.resources)
        except TlsConfigError as error:
            raise NodeStartError(str(error)) from None
        self._version = snapshot.version
        return snapshot

    def start_watching(self) -> None:
        """Reloads whenever the config file, or its LOADWEAVER_ENV layer, changes.

        A worker without the admin API also follows the store's file, where the admin worker
        records API changes: that is how `--workers N` processes share them.
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
            self._tasks.append(
                loop.create_task(watch_config_files([state_file], self.follow_store))
            )

    async def follow_store(self) -> None:
        """Applies the API changes another process recorded in the store."""
        async with self._apply_lock:
            try:
                stored = await self.store.load()
                if stored.pools == self.stored.pools and stored.routes == self.stored.routes:
                    return
                await self._apply_locked(self.file_config, stored, self.file_sources)
            except (StoreError, ConfigError, NodeStartError) as error:
                logger.error("cannot apply the API changes recorded in the store: {}", error)
                return
        logger.info("applied API changes from {}", self.store.description)

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
            async with self._apply_lock:
                snapshot = await self._apply_locked(loaded.config, self.stored, loaded.sources)
        except (ConfigError, NodeStartError) as error:
            self.metrics.config_reloads.labels("failure").inc()
            self.metrics.config_reload_failures.inc()
            logger.error("config reload failed, keeping the running config:\n{}", error)
            raise
        self.metrics.config_reloads.labels("success").inc()
        logger.info("config reloaded (version {})", snapshot.version)
        return snapshot

    async def apply(self, config: Config, sources: dict[str, str] | None = None) -> Snapshot:
        """Compiles `config` as the new file config and swaps it in, API changes layered over.

        Raises ConfigError or NodeStartError, leaving the old config running. Requests in flight
        keep the snapshot they started with. Pools and backends that did not change keep their
        pooled connections and load; removed ones close when idle. Changes are serialised: one
        that waits for listeners cannot interleave with another.
        """
        async with self._apply_lock:
            return await self._apply_locked(config, self.stored, sources)

    def _edit_state(self) -> EditState:
        return EditState(self.config, self.file_config, self.stored, self.version)

    async def _apply_stored_locked(self, stored: StoredConfig) -> Snapshot:
        return await self._apply_locked(self.file_config, stored, self.file_sources)

    async def _apply_locked(
        self, file_config: Config, stored: StoredConfig, sources: dict[str, str] | None
    ) -> Snapshot:
        config, composition = self._compose(file_config, stored)
        token = self._admin_token(file_config)
        self._warn_about_sticky_secrets(config)
        snapshot = self._compile(config)
        self._note_restart_only_changes(config)
        self.file_config, self.config, self.composition = file_config, config, composition
        self.file_sources = sources if sources is not None else _sources_of(config, None)
        self.admin_token = token
        self.holder.swap(snapshot)
        await self._sync_listeners()
        backends = [backend for pool in snapshot.pools.values() for backend in pool.backends]
        self.pools.retain_only(backend.connections for backend in backends)
        self.resources.loads.retain_only(
            (backend.pool_name, backend.name, backend.address) for backend in backends
        )
        self._log_reclaimed(composition)
        await self._save_stored(snapshot.version)
        return snapshot

    async def _save_stored(self, version: int, starting: bool = False) -> None:
        """Persists the overrides and version; raises StoreError once the change is live.

        Only the process serving the admin API writes: with --workers N the others follow it.
        """
        self.stored = replace(self.composition.stored, version=version)
        if not self.serve_admin:
            return
        try:
            await self.store.save(self.stored)
        except StoreError as error:
            if starting:
                raise NodeStartError(str(error)) from None
            logger.error("{}", error)
            raise

    def _note_restart_only_changes(self, config: Config) -> None:
        if config.admin.bind != self.config.admin.bind:
            logger.warning(
                "admin.bind changed to {}; the admin API moves there at the next restart",
                config.admin.bind,
            )
        if config.logging != self.config.logging:
            try:
                configure_logging(config.logging, config.node.id)
            except LoggingSetupError as error:
                logger.error("{}", error)

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
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        if hasattr(self, "pools"):
            self.pools.close_all()
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
