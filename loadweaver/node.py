"""The composition root: builds every component, starts and stops them in order, handles signals."""

import asyncio
import gc
import os
import signal
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from loadweaver.admin.server import AdminServer
from loadweaver.config.addresses import parse_bind
from loadweaver.config.loader import ConfigError, load_config, sticky_secret_from_environment
from loadweaver.config.models import Config
from loadweaver.control.compiler import CompileResources, compile_snapshot
from loadweaver.control.editor import BackendEditor
from loadweaver.control.errors import NodeStartError
from loadweaver.control.loads import LoadRegistry
from loadweaver.control.ramps import refresh_ramping_pools
from loadweaver.control.snapshot import Snapshot, SnapshotHolder
from loadweaver.observability.metrics import Metrics
from loadweaver.pool.manager import PoolManager
from loadweaver.proxy.listener import ConnectionRegistry, Listener, ListenError, ProxyContext
from loadweaver.proxy.tls import TlsConfigError

__all__ = ["Node", "NodeStartError"]


class Node:
    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        reuse_port: bool = False,
        serve_admin: bool = True,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.reuse_port = reuse_port
        self.serve_admin = serve_admin and config.admin.enabled
        self.metrics = Metrics()
        self.ready = False
        self.listeners: dict[str, Listener] = {}
        self._version = 0
        self._apply_lock = asyncio.Lock()
        self._random_sticky_key = True

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
        self._warn_about_sticky_secrets(self.config)
        self.holder = SnapshotHolder(self._compile(self.config))
        self.editor = BackendEditor(lambda: self.config, self._apply_locked, self._apply_lock)
        self.connections = ConnectionRegistry(loop, self.holder)
        self.context = ProxyContext(loop, self.holder, self.metrics, self.connections)
        self.admin = AdminServer(
            parse_bind(self.config.admin.bind), self.metrics.registry, lambda: self.ready
        )
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
        self._ramps = loop.create_task(refresh_ramping_pools(self.holder, loop.time))
        # Objects from startup live as long as the process: exclude them from every later
        # full collection, whose pauses would otherwise show up in tail latency.
        gc.collect()
        gc.freeze()
        self.ready = True
        logger.info("node {} ready (config version {})", self.config.node.id, self._version)

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
        self._version += 1
        try:
            return compile_snapshot(config, self._version, self.resources)
        except TlsConfigError as error:
            raise NodeStartError(str(error)) from None

    async def reload(self) -> bool:
        """Re-reads the config file; an invalid one keeps the running config. True on success."""
        if self.config_path is None:
            logger.warning("reload requested, but the node runs without a config file")
            return False
        try:
            snapshot = await self.apply(load_config(self.config_path))
        except (ConfigError, NodeStartError) as error:
            self.metrics.config_reloads.labels("failure").inc()
            logger.error("config reload failed, keeping the running config:\n{}", error)
            return False
        self.metrics.config_reloads.labels("success").inc()
        logger.info("config reloaded (version {})", snapshot.version)
        return True

    async def apply(self, config: Config) -> Snapshot:
        """Compiles `config` and swaps it in; raises NodeStartError, leaving the old one running.

        Requests in flight keep the snapshot they started with. Pools and backends that did
        not change keep their pooled connections and load; removed ones close when idle.
        Changes are serialised: one that waits for listeners cannot interleave with another.
        """
        async with self._apply_lock:
            return await self._apply_locked(config)

    async def _apply_locked(self, config: Config) -> Snapshot:
        self._warn_about_sticky_secrets(config)
        snapshot = self._compile(config)
        self.config = config
        self.holder.swap(snapshot)
        await self._sync_listeners()
        backends = [backend for pool in snapshot.pools.values() for backend in pool.backends]
        self.pools.retain_only(backend.connections for backend in backends)
        self.resources.loads.retain_only(
            (backend.pool_name, backend.name, backend.address) for backend in backends
        )
        return snapshot

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
        if hasattr(self, "_ramps"):
            self._ramps.cancel()
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
        await stop_requested.wait()
        logger.info("stopping: draining connections")
        await self.stop()
        logger.info("node {} stopped", self.config.node.id)
        for signum in handlers:
            loop.remove_signal_handler(signum)
