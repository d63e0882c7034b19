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
    __slots__ = ("by_class", "finished", "received", "rows", "tally")

    def __init__(self, tally: RequestTally) -> None:
        self.tally = tally
        self.received = 0  # request heads parsed
        self.by_class = [0] * STATUS_CLASSES  # responses by status // 100
        self.rows: dict[RowKey, TallyRow] | None = tally.rows  # None: metrics off
        self.finished: list[Finished] | None = None  # set while a batch reader wants requests

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
        finished = self.finished
        if finished is not None:
            finished.append((client, exchange, status, now, reason, sent))

    def set_metrics(self, enabled: bool) -> None:
        self.rows = self.tally.rows if enabled else None

    def drain(self) -> list[Finished]:
        """The requests finished since the last call."""
        finished = self.finished
        if not finished:
            return []
        self.finished = []
        return finished
