"""The node's observability beyond /metrics: the access log, traffic patterns and alerts.

One object builds them from the config, re-applies the config on every reload, runs their
background tasks, and says what the node shares about them in its heartbeat.
"""

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from loguru import logger

from loadweaver.cluster.store import ClusterStore, StoreError
from loadweaver.config.models import Config
from loadweaver.control.alerting import AlertsCollector, AlertService
from loadweaver.control.snapshot import SnapshotHolder
from loadweaver.observability.access_log import AccessLog, AccessLogError
from loadweaver.observability.finished import FinishedReader
from loadweaver.observability.metrics import Metrics
from loadweaver.observability.observer import NodeObserver
from loadweaver.observability.runtime_collector import ListenerStats
from loadweaver.observability.traffic import TrafficPatterns, merge_records, view
from loadweaver.observability.webhooks import Notifier


class Observing:
    def __init__(  # noqa: PLR0917 - one call site, in node.py
        self,
        config: Config,
        metrics: Metrics,
        holder: SnapshotHolder,
        listeners: Mapping[str, ListenerStats],
        store: ClusterStore,
        is_leader: Callable[[], bool],
        loop: asyncio.AbstractEventLoop,
        wall_clock: Callable[[], float],
    ) -> None:
        self._config = config
        self._store = store
        self._loop = loop
        self.reader = FinishedReader(metrics.recorder, metrics.access_log_dropped.inc, loop.time)
        self.access_log = AccessLog(
            config.logging.access_log, config.node.id, loop.time, metrics.access_log_dropped.inc
        )
        self.traffic: TrafficPatterns | None = None
        observer = NodeObserver(metrics, holder, listeners, lambda: store.up, wall_clock)
        notifier = Notifier(metrics.alert_notifications, f"http://{config.admin.bind}")
        self.alerts = AlertService(
            config.alerts,
            config.node.id,
            config.cluster.name,
            observer,
            store,
            is_leader,
            notifier,
        )
        metrics.registry.register(AlertsCollector(self.alerts))

    def start(self) -> list["asyncio.Task[None]"]:
        """Opens the access log (raising AccessLogError) and starts the background tasks."""
        self._apply_traffic(self._config)
        self.access_log.open()
        self._apply_access_log(self._config)
        return [
            self._loop.create_task(self.reader.run()),
            self._loop.create_task(self.alerts.run()),
        ]

    def apply(self, config: Config, logging_reconfigured: bool) -> None:
        """A new config; `logging_reconfigured`: the log sinks were replaced, the access log's
        own file with them."""
        previous, self._config = self._config, config
        if previous.traffic_patterns != config.traffic_patterns:
            self._apply_traffic(config)
        access = config.logging.access_log
        if logging_reconfigured or previous.logging.access_log != access:
            self.access_log.settings = access
            try:
                self.access_log.open()
            except AccessLogError as error:
                logger.error("{}; access lines go to the log sinks until it can", error)
        self._apply_access_log(config)
        self.alerts.configure(config.alerts)

    def _apply_traffic(self, config: Config) -> None:
        settings = config.traffic_patterns
        self.traffic = TrafficPatterns(settings, self._loop.time) if settings.enabled else None
        self.reader.read_sampled(self.traffic.add if self.traffic else None)

    def _apply_access_log(self, config: Config) -> None:
        enabled = config.logging.access_log.enabled
        self.reader.read_every(self.access_log.write if enabled else None)

    def published(self) -> dict[str, Any]:
        shared = self.alerts.published()
        if self.traffic is not None:
            shared["traffic"] = self.traffic.to_record()
        return shared

    async def traffic_document(self, top: int, cluster: bool) -> dict[str, Any] | None:
        """The traffic view of this node, or merged over the cluster's nodes; None when off."""
        traffic = self.traffic
        if traffic is None:
            return None
        capacity = self._config.traffic_patterns.capacity
        if not cluster or self._store.kind == "memory":
            document = view(traffic.summaries(), traffic.covered_seconds(), top, traffic.step)
            return {"scope": "node", "nodes": [self._config.node.id], **document}
        records = [traffic.to_record()]
        nodes = [self._config.node.id]
        try:
            for member in await self._store.members():
                if member.get("id") != self._config.node.id and "traffic" in member:
                    records.append(member["traffic"])
                    nodes.append(str(member.get("id")))
        except StoreError:
            pass  # this node's own view is still worth showing; `nodes` says whose it is
        merged, window, step = merge_records(records, capacity)
        return {"scope": "cluster", "nodes": sorted(nodes), **view(merged, window, top, step)}

    async def stop(self) -> None:
        self.reader.flush()
        self.access_log.close()
        await self.alerts.close()
