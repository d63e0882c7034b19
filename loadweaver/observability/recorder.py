"""What each finished request leaves behind, at the cost of a few integer bumps and appends.

Counters and durations go to the request tally (read at scrape time). When traffic patterns or
the access log are on, the request itself is queued for them: they read it in batches, off the
request's own path.
"""

from typing import TYPE_CHECKING

from loadweaver.observability.request_tally import STATUS_CLASSES, RequestTally, RowKey, TallyRow

if TYPE_CHECKING:
    from loadweaver.proxy.client import ClientConnection
    from loadweaver.proxy.exchange import Exchange

# client, exchange (None when the request could not be parsed), status, loop time it ended,
# the local reply's reason ("" when the backend answered), bytes sent for a local reply
Finished = tuple["ClientConnection", "Exchange | None", int, float, str, int]


class RequestRecorder:
    __slots__ = (
        "_countdown",
        "by_class",
        "logged",
        "received",
        "rows",
        "sample_step",
        "sampled",
        "tally",
    )

    def __init__(self, tally: RequestTally) -> None:
        self.tally = tally
        self.received = 0  # request heads parsed
        self.by_class = [0] * STATUS_CLASSES  # responses by status // 100
        self.rows: dict[RowKey, TallyRow] | None = tally.rows  # None: metrics off
        self.logged: list[Finished] | None = None  # every request, while the access log is on
        self.sampled: list[Finished] | None = None  # every `sample_step`-th, for traffic patterns
        self.sample_step = 1
        self._countdown = 1

    def record(  # noqa: PLR0917 - one positional call per request, on the hot path
        self,
        client: "ClientConnection",
        exchange: "Exchange | None",
        status: int,
        now: float,
        reason: str = "",
        sent: int = 0,
    ) -> None:
        status_class = status // 100
        self.by_class[status_class] += 1
        if self.rows is not None:
            route = None if exchange is None else exchange.route
            if exchange is None or route is None:
                row = self.tally.row((client.listener.name, "", "", ""))
            else:
                served_by = exchange.served_by
                key = (
                    client.listener.name,
                    route.name,
                    route.pool,
                    served_by.name if served_by is not None else "",
                )
                row = self.rows.get(key) or self.tally.row(key)
                if exchange.started:
                    row.durations.append(now - exchange.started)
            row.counts[status_class] += 1
        logged = self.logged
        if logged is not None:
            logged.append((client, exchange, status, now, reason, sent))
        sampled = self.sampled
        if sampled is not None:
            self._countdown -= 1
            if self._countdown <= 0:
                self._countdown = self.sample_step
                sampled.append((client, exchange, status, now, reason, sent))

    def set_metrics(self, enabled: bool) -> None:
        self.rows = self.tally.rows if enabled else None

    def drain_logged(self) -> list[Finished]:
        """Every request finished since the last call (while the access log is on)."""
        logged = self.logged
        if not logged:
            return []
        self.logged = []
        return logged

    def drain_sampled(self, next_step: int) -> tuple[list[Finished], int]:
        """The sampled requests since the last call and the step they were taken at; from now
        on every `next_step`-th request is taken."""
        sampled, step = self.sampled, self.sample_step
        self.sample_step = max(1, next_step)
        if not sampled:
            return [], step
        self.sampled = []
        return sampled, step

    @property
    def responses(self) -> int:
        return sum(self.by_class)
