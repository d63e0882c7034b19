"""Alert notifications: a log line each, and a POST to every webhook the rule names.

The body follows Alertmanager's webhook format (version 4), so receivers written for it work
unchanged. Each webhook has its own queue and sender task: a slow receiver delays only its own
notifications, in order, and a failed POST is retried a few times before it is logged as lost.
"""

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
from loguru import logger
from prometheus_client import Counter

from loadweaver.config.observability import AlertRule, AlertWebhook
from loadweaver.observability.alerts import Notification

RETRY_DELAYS = (0.5, 2.0, 5.0)  # after the first failure, the second and the third
QUEUE_LIMIT = 1000  # notifications waiting per webhook; beyond it the newest are counted lost
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "not ended yet"


class Notifier:
    def __init__(self, sent: Counter, external_url: str) -> None:
        self._sent = sent  # loadweaver_alert_notifications_total{webhook,result}
        self._external_url = external_url
        self._webhooks: dict[str, AlertWebhook] = {}
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    def configure(self, webhooks: Sequence[AlertWebhook]) -> None:
        """Starts senders for new webhooks and stops those no longer configured."""
        wanted = {hook.name: hook for hook in webhooks}
        for name in [name for name in self._senders if name not in wanted]:
            self._senders.pop(name).cancel()
            self._queues.pop(name, None)
        for name, hook in wanted.items():
            self._webhooks[name] = hook
            if name not in self._senders:
                self._queues[name] = asyncio.Queue(QUEUE_LIMIT)
                self._senders[name] = asyncio.get_running_loop().create_task(self._send(name))

    def __call__(self, notification: Notification, rule: AlertRule | None) -> None:
        """Logs the change and queues it for the rule's webhooks (all of them by default)."""
        _log(notification)
        names = rule.webhooks if rule is not None and rule.webhooks is not None else self._queues
        for name in names:
            queue = self._queues.get(name)
            if queue is None:
                continue
            try:
                queue.put_nowait(self.body(notification, name))
            except asyncio.QueueFull:
                self._sent.labels(name, "dropped").inc()
                logger.error(
                    "alert webhook {}: {} notifications wait already; one was lost",
                    name,
                    QUEUE_LIMIT,
                )

    def body(self, notification: Notification, receiver: str) -> dict[str, Any]:
        alert = notification.alert
        labels = dict(alert.labels)
        annotations = {"summary": alert.summary, "value": f"{alert.value:.6g}"}
        return {
            "version": "4",
            "groupKey": f"{{}}:{{alertname={json.dumps(alert.rule)}}}",
            "truncatedAlerts": 0,
            "status": notification.status,
            "receiver": receiver,
            "groupLabels": {"alertname": alert.rule},
            "commonLabels": labels,
            "commonAnnotations": annotations,
            "externalURL": self._external_url,
            "alerts": [
                {
                    "status": notification.status,
                    "labels": labels,
                    "annotations": annotations,
                    "startsAt": _iso(alert.fired_at or alert.since),
                    "endsAt": _iso(notification.ended_at) if notification.ended_at else ZERO_TIME,
                    "generatorURL": f"{self._external_url}/api/v1/alerts",
                    "fingerprint": alert.fingerprint,
                }
            ],
        }

    async def _send(self, name: str) -> None:
        queue = self._queues[name]
        while True:
            body = await queue.get()
            try:
                delivered = await self._deliver(self._webhooks[name], body)
            except Exception:  # a bug must not end the sender: later alerts still go out
                logger.exception("alert webhook {}: sending a notification failed", name)
                delivered = False
            finally:
                queue.task_done()
            self._sent.labels(name, "sent" if delivered else "failed").inc()

    async def _deliver(self, hook: AlertWebhook, body: Mapping[str, Any]) -> bool:
        problem = ""
        for delay in (0.0, *RETRY_DELAYS):
            await asyncio.sleep(delay)
            problem = await self._post(hook, body)
            if not problem:
                return True
        logger.error(
            "alert webhook {}: {} notification for {} not delivered after {} tries: {}",
            hook.name,
            body["status"],
            body["groupLabels"]["alertname"],
            len(RETRY_DELAYS) + 1,
            problem,
        )
        return False

    async def _post(self, hook: AlertWebhook, body: Mapping[str, Any]) -> str:
        """ "" when the receiver took it, else why not."""
        session = self._client()
        try:
            async with session.post(
                hook.url,
                json=body,
                headers=hook.headers,
                timeout=aiohttp.ClientTimeout(total=hook.timeout),
            ) as response:
                if response.status < 300:
                    return ""
                return f"{hook.url} answered {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            return f"{hook.url}: {str(error) or type(error).__name__}"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self, patience: float = 2.0) -> None:
        """Gives queued notifications `patience` seconds to go out, then stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(queue.join() for queue in self._queues.values())), patience
            )
        for task in self._senders.values():
            task.cancel()
        for task in self._senders.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._senders.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _log(notification: Notification) -> None:
    alert = notification.alert
    labels = ", ".join(
        f"{name}={value}" for name, value in alert.labels if name not in ("alertname", "severity")
    )
    where = f" [{labels}]" if labels else ""
    if notification.status == "firing":
        logger.warning(
            "ALERT {} firing ({}): {}{}",
            alert.rule,
            dict(alert.labels)["severity"],
            alert.summary,
            where,
        )
    else:
        logger.info("ALERT {} resolved: {}{}", alert.rule, alert.summary, where)


def _iso(wall: float) -> str:
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
