"""Alert instances: pending while a rule's condition holds, firing once it has held `for` long
enough, resolved when it stops. Each change is told once, so receivers see no duplicates."""

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from loadweaver.config.observability import AlertRule
from loadweaver.observability.alert_rules import Reading, holds

Labels = tuple[tuple[str, str], ...]  # sorted


@dataclass(frozen=True)
class Alert:
    rule: str
    labels: Labels  # alertname, severity, scope labels and the instance's own
    state: Literal["pending", "firing"]
    since: float  # wall time the condition began to hold
    value: float
    summary: str
    fired_at: float = 0.0
    sent_at: float = 0.0  # last notification, for repeat_interval

    @property
    def fingerprint(self) -> str:
        text = "\0".join(f"{name}={value}" for name, value in self.labels)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_record(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "labels": dict(self.labels),
            "since": self.since,
            "fired_at": self.fired_at,
            "value": self.value,
            "summary": self.summary,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Alert":
        """A firing alert another node published; raises ValueError on a malformed record."""
        try:
            labels = tuple(sorted((str(k), str(v)) for k, v in dict(record["labels"]).items()))
            return cls(
                rule=str(record["rule"]),
                labels=labels,
                state="firing",
                since=float(record["since"]),
                value=float(record["value"]),
                summary=str(record["summary"]),
                fired_at=float(record["fired_at"]),
                sent_at=float(record["fired_at"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not an alert record: {error}") from None


@dataclass(frozen=True)
class Notification:
    status: Literal["firing", "resolved"]
    alert: Alert
    ended_at: float = 0.0  # for resolved ones


Notify = Callable[[Notification, AlertRule | None], None]


@dataclass
class AlertBook:
    """The instances of a set of rules, and what changes in them are told."""

    notify: Notify
    base_labels: Mapping[str, str] = field(default_factory=dict)  # node or cluster
    alerts: dict[Labels, Alert] = field(default_factory=dict)

    def update(
        self,
        rule: AlertRule,
        readings: Sequence[Reading],
        now: float,
        repeat_interval: float = 0.0,
    ) -> None:
        """Applies one evaluation of `rule`; instances it no longer reads are resolved."""
        seen: set[Labels] = set()
        for reading in readings:
            labels = self._labels(rule, reading)
            seen.add(labels)
            if holds(rule, reading.value):
                self._holding(rule, labels, reading.value, now, repeat_interval)
            else:
                self._clear(labels, now, rule)
        for labels in [key for key, alert in self.alerts.items() if alert.rule == rule.name]:
            if labels not in seen:
                self._clear(labels, now, rule)

    def _holding(
        self, rule: AlertRule, labels: Labels, value: float, now: float, repeat: float
    ) -> None:
        alert = self.alerts.get(labels)
        if alert is None:
            alert = Alert(rule.name, labels, "pending", now, value, describe(rule, value))
        alert = replace(alert, value=value, summary=describe(rule, value))
        if alert.state == "pending" and now - alert.since >= rule.for_:
            alert = replace(alert, state="firing", fired_at=now, sent_at=now)
            self.notify(Notification("firing", alert), rule)
        elif alert.state == "firing" and repeat and now - alert.sent_at >= repeat:
            alert = replace(alert, sent_at=now)
            self.notify(Notification("firing", alert), rule)
        self.alerts[labels] = alert

    def _clear(self, labels: Labels, now: float, rule: AlertRule | None) -> None:
        alert = self.alerts.pop(labels, None)
        if alert is not None and alert.state == "firing":
            self.notify(Notification("resolved", alert, ended_at=now), rule)

    def _labels(self, rule: AlertRule, reading: Reading) -> Labels:
        labels = {
            **self.base_labels,
            **dict(reading.labels),
            "alertname": rule.name,
            "severity": rule.severity,
        }
        return tuple(sorted(labels.items()))

    def retain_rules(self, rules: Iterable[AlertRule], now: float) -> None:
        """Rules removed from the config resolve their firing alerts."""
        names = {rule.name for rule in rules}
        for labels, alert in list(self.alerts.items()):
            if alert.rule not in names:
                self._clear(labels, now, None)

    def seed(self, firing: Iterable[Alert]) -> None:
        """Firing alerts handed over from a previous evaluator; not told again."""
        for alert in firing:
            self.alerts.setdefault(alert.labels, alert)

    def forget(self) -> None:
        """Stops tracking without telling anyone: another evaluator takes over."""
        self.alerts.clear()

    def firing(self) -> list[Alert]:
        return [alert for alert in self.alerts.values() if alert.state == "firing"]


def describe(rule: AlertRule, value: float) -> str:
    if rule.summary:
        return rule.summary
    if rule.above is None and rule.below is None:
        return rule.metric.replace("_", " ")
    scope = f" in pool {rule.pool}" if rule.pool else ""
    return f"{rule.metric}{scope} is {_shown(rule, value)}: {condition_of(rule)}"


def condition_of(rule: AlertRule) -> str:
    """The rule's condition in words, such as `above 5.00% over 60s for 60s`."""
    if rule.above is None and rule.below is None:
        held = f" for {rule.for_:g}s" if rule.for_ else ""
        return f"while it holds{held}"
    threshold = rule.above if rule.above is not None else rule.below
    direction = "above" if rule.above is not None else "below"
    held = f" for {rule.for_:g}s" if rule.for_ else ""
    return f"{direction} {_shown(rule, threshold or 0.0)} over {rule.window:g}s{held}"


def _shown(rule: AlertRule, value: float) -> str:
    if rule.metric == "error_ratio":
        return f"{value * 100:.2f}%"
    if rule.metric.startswith("latency_"):
        return f"{value * 1000:.1f}ms"
    return f"{value:.4g}"
