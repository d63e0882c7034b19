"""The access log: one line per request, JSON or Common Log Format, written off the event loop.

Lines are formatted in chunks by the finished-request reader and handed to loguru as one message
per chunk. With a `path`, a sink of its own (enqueue=True) writes them from a background thread
and rotates the file; without one, each line goes through the ordinary log sinks.
"""

import contextlib
import random
import time
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii as json_string
from typing import TYPE_CHECKING

from loguru import logger

from loadweaver.config.models import AccessLogConfig
from loadweaver.observability.logging import ACCESS_FILE_MARKER, retention_of, rotation_of
from loadweaver.observability.recorder import Finished
from loadweaver.observability.request_fields import (
    bytes_in,
    client_address,
    clip,
    header_value,
    host_of,
    path_and_query,
    tls_version,
)

if TYPE_CHECKING:
    from loadweaver.proxy.exchange import Exchange


class AccessLogError(Exception):
    """The access log's file could not be opened."""


class AccessLog:
    def __init__(
        self,
        settings: AccessLogConfig,
        node_id: str,
        loop_clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._node = json_string(node_id)
        self._loop_clock = loop_clock
        self._wall_clock = wall_clock
        self._sink_id: int | None = None
        self._second = -1
        self._second_text = ""
        self.settings = settings
        self._random = random.Random()

    def open(self) -> None:
        """(Re)adds the file sink; raises AccessLogError naming the path when it cannot."""
        self.close()
        settings = self.settings
        if not settings.enabled or settings.path is None:
            return
        try:
            self._sink_id = logger.add(
                settings.path,
                format="{message}",
                filter=lambda record: record["extra"].get(ACCESS_FILE_MARKER) is True,
                enqueue=True,  # a background thread writes and rotates: the loop never waits
                rotation=rotation_of(settings),
                retention=retention_of(settings),
                encoding="utf-8",
                catch=True,
            )
        except (OSError, ValueError) as error:
            raise AccessLogError(
                f"logging.access_log.path: cannot open {settings.path}: {error}"
            ) from None

    def close(self) -> None:
        """Removes the file sink; loguru writes what is queued before its thread ends."""
        if self._sink_id is not None:
            sink, self._sink_id = self._sink_id, None
            with contextlib.suppress(ValueError):  # already gone: logging was reconfigured
                logger.remove(sink)

    def write(self, batch: Sequence[Finished]) -> None:
        settings = self.settings
        format_line = self._json if settings.format == "json" else self._clf
        lines = [format_line(entry) for entry in batch if self._sampled(entry)]
        if not lines:
            return
        if self._sink_id is not None:
            logger.bind(**{ACCESS_FILE_MARKER: True}).info("\n".join(lines))
        else:
            for line in lines:
                logger.info(line)

    def _sampled(self, entry: Finished) -> bool:
        settings = self.settings
        if settings.sample >= 1.0 or (settings.always_log_errors and entry[2] >= 500):
            return True
        return self._random.random() < settings.sample

    def _timestamp(self, ended: float) -> tuple[float, str]:
        """Wall time of a loop-clock instant, and its second formatted once per second."""
        wall = self._wall_clock() - (self._loop_clock() - ended)
        second = int(wall)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return wall, self._second_text

    def _json(self, entry: Finished) -> str:
        client, exchange, status, ended, reason, sent = entry
        wall, second = self._timestamp(ended)
        address = json_string(client_address(client, exchange))
        fields = [
            f'{{"ts":"{second}.{int(wall % 1 * 1000000):06d}Z","node":{self._node}',
            f'"listener":"{client.listener.name}","client":{address}',
        ]
        if exchange is None:
            fields.append(f'"method":null,"host":null,"path":null,"status":{status}')
            fields.append(f'"bytes_in":0,"bytes_out":{sent},"error":"{reason}"')
            return ",".join(fields) + "}"
        path, query = path_and_query(exchange)
        fields.append(f'"method":"{exchange.method.decode("latin-1")}"')
        fields.append(f'"host":{json_string(clip(host_of(exchange)))}')
        fields.append(f'"path":{json_string(clip(path))}')
        if self.settings.include_query:
            fields.append(f'"query":{json_string(query)}')
        fields += _exchange_fields(exchange, status, ended, reason, sent)
        fields.append(f'"tls":{_json_or_null(tls_version(client))}')
        return ",".join(fields) + "}"

    def _clf(self, entry: Finished) -> str:
        """NCSA combined format, then the fields it lacks as key=value."""
        client, exchange, status, ended, reason, sent = entry
        wall, _ = self._timestamp(ended)
        when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(wall))
        address = client_address(client, exchange)
        if exchange is None:
            return f'{address} - - [{when}] "-" {status} {sent} "-" "-" error={reason}'
        path, query = path_and_query(exchange)
        target = f"{path}?{query}" if query and self.settings.include_query else path
        version = "HTTP/1.1" if exchange.http11 else "HTTP/1.0"
        request = _clf_quoted(f"{exchange.method.decode('latin-1')} {clip(target)} {version}")
        referer = _clf_quoted(header_value(exchange, b"referer") or "-")
        agent = _clf_quoted(clip(header_value(exchange, b"user-agent") or "-"))
        route = exchange.route.name if exchange.route is not None else "-"
        backend = exchange.served_by.name if exchange.served_by is not None else "-"
        return (
            f'{address} - - [{when}] "{request}" {status} {sent or exchange.bytes_out} '
            f'"{referer}" "{agent}" rt={_seconds(ended - exchange.started)} route={route} '
            f"backend={backend} rid={exchange.request_id.decode('latin-1') or '-'}"
        )


def _exchange_fields(
    exchange: "Exchange", status: int, ended: float, reason: str, sent: int
) -> list[str]:
    started = exchange.started
    route = exchange.route
    served_by = exchange.served_by
    agent = header_value(exchange, b"user-agent")
    connected, answered = exchange.connected_at, exchange.response_at
    request_id = exchange.request_id.decode("latin-1") or None
    return [
        f'"status":{status},"bytes_in":{bytes_in(exchange)}',
        f'"bytes_out":{sent or exchange.bytes_out}',
        f'"duration_ms":{_milliseconds(ended - started if started else None)}',
        f'"upstream_connect_ms":{_milliseconds(connected - started if connected else None)}',
        f'"upstream_response_ms":{_milliseconds(answered - connected if answered else None)}',
        f'"route":{_json_or_null(route.name if route else None)}',
        f'"pool":{_json_or_null(route.pool if route else None)}',
        f'"backend":{_json_or_null(served_by.name if served_by else None)}',
        f'"retries":{exchange.tries + exchange.retried}',
        f'"request_id":{_json_or_null(request_id)}',
        f'"user_agent":{_json_or_null(clip(agent) if agent is not None else None)}',
        f'"error":{_json_or_null(reason or None)}',
    ]


def _json_or_null(value: str | None) -> str:
    return "null" if value is None else json_string(value)


def _milliseconds(seconds: float | None) -> str:
    return "null" if seconds is None else f"{max(seconds, 0.0) * 1000:.3f}"


def _seconds(seconds: float) -> str:
    return f"{max(seconds, 0.0):.6f}"


def _clf_quoted(text: str) -> str:
    """Inside CLF's double quotes: quotes and backslashes escaped, control characters hex."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return json_string(text)[1:-1]
