"""Access log lines: JSON, or NCSA combined format with what it lacks as key=value.

A line costs about as much as the request it describes, so each format is one function with one
f-string: names from the config (listener, route, pool, backend) and what llhttp validated (the
method, numbers) go in as they are; what a client chose (host, path, user agent, request id, a
forwarded address) is escaped by the json module's C encoder.
"""

import time
from json.encoder import encode_basestring_ascii as json_string
from typing import TYPE_CHECKING

from loadweaver.observability.recorder import Finished
from loadweaver.observability.request_fields import (
    MAX_FIELD,
    client_address,
    path_and_query,
    request_header,
    tls_version,
)

if TYPE_CHECKING:
    from loadweaver.proxy.client import ClientConnection
    from loadweaver.proxy.exchange import Exchange

HTTP_VERSION_AND_CRLF = 11  # " HTTP/1.1\r\n" after the method and target


class LineFormat:
    """Turns finished requests into lines; `offset` turns the loop clock into wall time."""

    def __init__(self, node_id: str, include_query: bool) -> None:
        self._node = json_string(node_id)
        self._include_query = include_query
        self._second = -1
        self._second_text = ""

    def _stamp(self, wall: float, pattern: str) -> str:
        second = int(wall)
        if second != self._second:  # most lines of a batch share their second
            self._second = second
            self._second_text = time.strftime(pattern, time.gmtime(second))
        return self._second_text

    def line(self, entry: Finished, offset: float) -> str:
        raise NotImplementedError


class JsonLines(LineFormat):
    def line(self, entry: Finished, offset: float) -> str:
        client, exchange, status, ended, reason, sent = entry
        wall = ended + offset
        stamp = f"{self._stamp(wall, '%Y-%m-%dT%H:%M:%S')}.{int(wall % 1 * 1_000_000):06d}Z"
        head = (
            f'{{"ts":"{stamp}","node":{self._node},"listener":"{client.listener.name}",'
            f'"client":{_address(client, exchange)},'
        )
        if exchange is None:
            return (
                f'{head}"method":null,"host":null,"path":null,"status":{status},'
                f'"bytes_in":0,"bytes_out":{sent},"error":"{reason}"}}'
            )
        route, served_by = exchange.route, exchange.served_by
        started, connected, answered = exchange.started, exchange.connected_at, exchange.response_at
        path, query = _target(exchange)
        agent = request_header(exchange.headers, b"user-agent")
        return (
            f'{head}"method":"{exchange.method.decode("latin-1")}",'
            f'"host":{_text(exchange.host)},"path":{_text(path)},'
            + (f'"query":{_text(query)},' if self._include_query else "")
            + f'"status":{status},"bytes_in":{_bytes_in(exchange)},'
            f'"bytes_out":{sent or exchange.bytes_out},'
            f'"duration_ms":{_ms(ended - started) if started else "null"},'
            f'"upstream_connect_ms":{_ms(connected - started) if connected else "null"},'
            f'"upstream_response_ms":{_ms(answered - connected) if answered else "null"},'
            f'"route":{_name(route.name if route else None)},'
            f'"pool":{_name(route.pool if route else None)},'
            f'"backend":{_name(served_by.name if served_by else None)},'
            f'"retries":{exchange.tries + exchange.retried},'
            f'"request_id":{_text(exchange.request_id or None)},'
            f'"user_agent":{_text(agent)},"error":{_name(reason or None)},'
            f'"tls":{_name(tls_version(client) if client.tls else None)}}}'
        )


class CombinedLines(LineFormat):
    def line(self, entry: Finished, offset: float) -> str:
        client, exchange, status, ended, reason, sent = entry
        when = self._stamp(ended + offset, "%d/%b/%Y:%H:%M:%S +0000")
        address = client_address(client, exchange)
        if exchange is None:
            return f'{address} - - [{when}] "-" {status} {sent} "-" "-" error={reason}'
        path, query = _target(exchange)
        target = path + b"?" + query if query and self._include_query else path
        version = "HTTP/1.1" if exchange.http11 else "HTTP/1.0"
        method = exchange.method.decode("latin-1")
        route = exchange.route.name if exchange.route is not None else "-"
        backend = exchange.served_by.name if exchange.served_by is not None else "-"
        referer = request_header(exchange.headers, b"referer") or b"-"
        agent = request_header(exchange.headers, b"user-agent") or b"-"
        return (
            f'{address} - - [{when}] "{method} {_quoted(target)} {version}" {status} '
            f'{sent or exchange.bytes_out} "{_quoted(referer)}" "{_quoted(agent)}" '
            f"rt={max(ended - exchange.started, 0.0):.6f} route={route} backend={backend} "
            f"rid={_quoted(exchange.request_id or b'-')}"
        )


def _address(client: "ClientConnection", exchange: "Exchange | None") -> str:
    """The client as JSON: an address the node saw needs no escaping; a forwarded one may."""
    if not client.trusted:
        return f'"{client.client_ip}"'
    return json_string(client_address(client, exchange))


def _target(exchange: "Exchange") -> tuple[bytes, bytes]:
    target = exchange.target
    if target.startswith(b"/"):
        path, _, query = target.partition(b"?")
        return path, query
    path_text, query_text = path_and_query(exchange)
    return path_text.encode("latin-1"), query_text.encode("latin-1")


def _bytes_in(exchange: "Exchange") -> int:
    """The request as it arrived: its line, headers (name, ": ", value, CRLF), CRLF, body."""
    fields = exchange.headers + exchange.special
    head = sum(map(len, map(b"".join, fields))) + 4 * len(fields)
    line = len(exchange.method) + 1 + len(exchange.target) + HTTP_VERSION_AND_CRLF
    return line + head + 2 + exchange.body_received


def _text(value: bytes | str | None) -> str:
    if value is None:
        return "null"
    if isinstance(value, bytes):
        value = value[:MAX_FIELD].decode("latin-1")
    return json_string(value[:MAX_FIELD])


def _name(value: str | None) -> str:
    """A name from the config, or a fixed vocabulary word: nothing to escape."""
    return "null" if value is None else f'"{value}"'


def _ms(seconds: float) -> str:
    return f"{max(seconds, 0.0) * 1000:.3f}"


def _quoted(value: bytes) -> str:
    """Inside CLF's double quotes: quotes, backslashes and control characters escaped."""
    text = value[:MAX_FIELD].decode("latin-1")
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return json_string(text)[1:-1]
