"""Alert rules evaluated on a timer: node rules by every node on its own numbers, cluster rules
by the leader on every node's numbers, which each node shares in its heartbeat.

The leader publishes its firing cluster alerts in its heartbeat too. Every follower keeps the
last copy it saw, so whichever node leads next carries them on: it resolves them when they
clear instead of leaving receivers with alerts that never end, and does not fire them twice.
"""

import asyncio
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from loguru import logger
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from loadweaver.cluster.store import ClusterStore, StoreError
from loadweaver.config.observability import AlertRule, AlertsConfig
from loadweaver.observability.alert_rules import History, read
from loadweaver.observability.alerts import Alert, AlertBook
from loadweaver.observability.observation import Observation
from loadweaver.observability.observer import NodeObserver
from loadweaver.observability.webhooks import Notifier

MIN_HISTORY = 120.0  # seconds of observations kept even when no rule looks that far back


class AlertService:
    def __init__(  # noqa: PLR0917 - one call site, in node.py
        self,
        settings: AlertsConfig,
        node_id: str,
        cluster: str,
        observer: NodeObserver,
        store: ClusterStore,
        is_leader: Callable[[], bool],
        notifier: Notifier,
    ) -> None:
        self.settings = settings
        self._node_id = node_id
        self._observer = observer
        self._store = store
        self._is_leader = is_leader
        self._notifier = notifier
        self._node_book = AlertBook(notifier, {"node": node_id, "cluster": cluster})
        self._cluster_book = AlertBook(notifier, {"cluster": cluster})
        self._histories: dict[str, deque[Observation]] = {node_id: deque()}
        self._handed_over: list[Alert] = []  # the leader's firing alerts, as last published
        self._was_leading = False
        self.latest: Observation | None = None

    def configure(self, settings: AlertsConfig) -> None:
        """A reloaded config: removed rules resolve what they fired; webhooks follow."""
        self.settings = settings
        self._notifier.configure(settings.webhooks)
        if self.latest is not None:
            self._retain(self.latest.time)

    def _retain(self, now: float) -> None:
        """Each book resolves what rules it no longer judges fired: removed ones, and ones
        whose scope moved to the other book."""
        node_rules, cluster_rules = self._rules()
        self._node_book.retain_rules(node_rules, now)
        self._cluster_book.retain_rules(cluster_rules, now)

    async def run(self) -> None:
        self._notifier.configure(self.settings.webhooks)
        # A baseline before any request: counters only count once they have risen since it.
        self._remember(self._node_id, self._observer.observe())
        while True:
            await asyncio.sleep(self.settings.interval)
            try:
                await self.evaluate()
            except Exception:  # one failed round must not end alerting
                logger.exception("evaluating alert rules failed")

    async def evaluate(self) -> None:
        own = self._observer.observe()
        self.latest = own
        self._remember(self._node_id, own)
        node_rules, cluster_rules = self._rules()
        for rule in node_rules:
            readings = read(rule, {self._node_id: self._histories[self._node_id]}, own)
            self._node_book.update(rule, readings, own.time, self.settings.repeat_interval)
        members = await self._members()
        leading = self._is_leader()
        if leading and not self._was_leading:
            self._cluster_book.seed(self._handed_over)
            self._retain(own.time)  # handed over for a rule this node does not have: resolved
        elif not leading and self._was_leading:
            self._cluster_book.forget()  # the next leader carries them on
        self._was_leading = leading
        if members is None:
            return  # the store is unreachable: no leader either; the node rules went on
        # Followers keep every node's history too, so a new leader can judge at once.
        self._gather(members)
        if leading:
            self._evaluate_cluster(cluster_rules, own)
        else:
            self._note_handover(members)

    def _rules(self) -> tuple[list[AlertRule], list[AlertRule]]:
        rules = self.settings.rules
        node = [rule for rule in rules if rule.effective_scope == "node"]
        return node, [rule for rule in rules if rule.effective_scope == "cluster"]

    def _gather(self, members: list[Mapping[str, Any]]) -> None:
        present = {self._node_id}
        for member in members:
            node = str(member.get("id", ""))
            if node and node != self._node_id and isinstance(member.get("observation"), dict):
                try:
                    self._remember(node, Observation.from_record(member["observation"]))
                except ValueError as error:
                    logger.debug("node {} shared an unreadable observation: {}", node, error)
                    continue
                present.add(node)
        for node in [node for node in self._histories if node not in present]:
            del self._histories[node]

    def _evaluate_cluster(self, rules: list[AlertRule], own: Observation) -> None:
        histories: dict[str, History] = dict(self._histories)
        for rule in rules:
            readings = read(rule, histories, own)
            self._cluster_book.update(rule, readings, own.time, self.settings.repeat_interval)

    def _note_handover(self, members: list[Mapping[str, Any]]) -> None:
        for member in members:
            if member.get("leader") and isinstance(member.get("alerts"), list):
                handed: list[Alert] = []
                for record in member["alerts"]:
                    try:
                        handed.append(Alert.from_record(record))
                    except ValueError as error:
                        logger.debug("the leader shared an unreadable alert: {}", error)
                self._handed_over = handed
                return

    async def _members(self) -> list[Mapping[str, Any]] | None:
        if self._store.kind == "memory":
            return []
        try:
            return list(await self._store.members())
        except StoreError:
            return None

    def _remember(self, node: str, observation: Observation) -> None:
        history = self._histories.setdefault(node, deque())
        if history and observation.time <= history[-1].time:
            return  # the same heartbeat read twice
        history.append(observation)
        keep = max([MIN_HISTORY, *(rule.window for rule in self.settings.rules)]) * 1.5
        while len(history) > 2 and history[1].time < observation.time - keep:
            history.popleft()

    def published(self) -> dict[str, Any]:
        """What this node adds to its heartbeat: its numbers, and as leader its firing alerts."""
        shared: dict[str, Any] = {}
        if self.latest is not None:
            shared["observation"] = self.latest.to_record()
        if self._was_leading:
            shared["alerts"] = [alert.to_record() for alert in self._cluster_book.firing()]
        return shared

    @property
    def handed_over(self) -> list[Alert]:
        """The leader's firing cluster alerts as this node last read them."""
        return list(self._handed_over)

    def active(self) -> list[Alert]:
        """Pending and firing alerts this node tracks, node rules first."""
        return [*self._node_book.alerts.values(), *self._cluster_book.alerts.values()]

    async def close(self) -> None:
        await self._notifier.close()


class AlertsCollector(Collector):
    """`loadweaver_alerts_firing{alertname,severity}`, read from the service at scrape time."""

    def __init__(self, service: AlertService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "loadweaver_alerts_firing",
            "Alerts this node has firing, by rule and severity.",
            labels=["alertname", "severity"],
        )
        counts: dict[tuple[str, str], int] = {}
        for alert in self._service.active():
            if alert.state == "firing":
                key = (alert.rule, dict(alert.labels).get("severity", ""))
                counts[key] = counts.get(key, 0) + 1
        for (rule, severity), count in sorted(counts.items()):
            family.add_metric([rule, severity], count)
        yield family
