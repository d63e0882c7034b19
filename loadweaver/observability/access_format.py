"""Access log lines: JSON, or NCSA combined format with what it lacks as key=value.

A line costs about as much as the request it describes, so each format is one function with one
f-string: names from the config (listener, route, pool, backend) and what llhttp validated (the
method, numbers) go in as they are; what a client chose (host, path, user agent, request id, a
forwarded address) is escaped by the json module's C encoder.
"""

import re
import time
from json.encoder import encode_basestring_ascii as json_string
from typing import TYPE_CHECKING

from loadweaver.observability.recorder import Finished
from loadweaver.observability.request_fields import (
    MAX_FIELD,
    client_address,
    path_and_query,
)
from loadweaver.proxy.headers import header_value

if TYPE_CHECKING:
    from loadweaver.proxy.client import ClientConnection

ADDRESS = re.compile(r"[0-9A-Za-z.:_\[\]-]{1,100}")
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


JSON_LINE = (
    '{"ts":"%s.%06dZ","node":%s,"listener":"%s","client":%s,"method":"%s","host":%s,"path":%s,'
    '%s"status":%d,"bytes_in":%d,"bytes_out":%d,"duration_ms":%s,"upstream_connect_ms":%s,'
    '"upstream_response_ms":%s,"route":%s,"pool":%s,"backend":%s,"retries":%d,'
    '"request_id":%s,"user_agent":%s,"error":%s,"tls":%s}'
)
JSON_UNPARSED = (
    '{"ts":"%s.%06dZ","node":%s,"listener":"%s","client":%s,"method":null,"host":null,'
    '"path":null,"status":%d,"bytes_in":0,"bytes_out":%d,"error":"%s"}'
)


class JsonLines(LineFormat):
    def line(self, entry: Finished, offset: float) -> str:
        # One template and no helper calls: at tens of thousands of lines a second, each
        # function call saved is a visible share of the line's cost.
        client, exchange, status, ended, reason, sent = entry
        wall = ended + offset
        second = self._stamp(wall, "%Y-%m-%dT%H:%M:%S")
        micros = int(wall % 1 * 1_000_000)
        client_ip = (
            json_string(client_address(client, exchange))
            if client.trusted
            else f'"{client.client_ip}"'
        )
        listener = client.listener.name
        if exchange is None:
            values = (second, micros, self._node, listener, client_ip, status, sent, reason)
            return JSON_UNPARSED % values
        route, served_by, headers = exchange.route, exchange.served_by, exchange.headers
        started, connected, answered = exchange.started, exchange.connected_at, exchange.response_at
        target = exchange.target
        path, query = path_and_query(exchange)
        host, request_id = exchange.host, exchange.request_id
        agent = header_value(headers, (), b"user-agent")
        fields = headers + exchange.special
        head = sum(map(len, map(b"".join, fields))) + 4 * len(fields) + len(target)
        return JSON_LINE % (
            second,
            micros,
            self._node,
            listener,
            client_ip,
            exchange.method.decode("latin-1"),
            json_string(host[:MAX_FIELD].decode("latin-1")) if host is not None else "null",
            json_string(path[:MAX_FIELD].decode("latin-1")),
            f'"query":{json_string(query.decode("latin-1"))},' if self._include_query else "",
            status,
            head + len(exchange.method) + HTTP_VERSION_AND_CRLF + 3 + exchange.body_received,
            sent or exchange.bytes_out,
            "%.3f" % ((ended - started) * 1000) if started else "null",
            "%.3f" % ((connected - started) * 1000) if connected else "null",
            "%.3f" % ((answered - connected) * 1000) if answered else "null",
            f'"{route.name}"' if route is not None else "null",
            f'"{route.pool}"' if route is not None else "null",
            f'"{served_by.name}"' if served_by is not None else "null",
            exchange.tries + exchange.retried,
            json_string(request_id.decode("latin-1")) if request_id else "null",
            json_string(agent[:MAX_FIELD].decode("latin-1")) if agent is not None else "null",
            f'"{reason}"' if reason else "null",
            _tls(client),
        )


class CombinedLines(LineFormat):
    def line(self, entry: Finished, offset: float) -> str:
        client, exchange, status, ended, reason, sent = entry
        when = self._stamp(ended + offset, "%d/%b/%Y:%H:%M:%S +0000")
        address = _clf_address(client_address(client, exchange))
        if exchange is None:
            return f'{address} - - [{when}] "-" {status} {sent} "-" "-" error={reason}'
        path, query = path_and_query(exchange)
        target = path + b"?" + query if query and self._include_query else path
        version = "HTTP/1.1" if exchange.http11 else "HTTP/1.0"
        method = exchange.method.decode("latin-1")
        route = exchange.route.name if exchange.route is not None else "-"
        backend = exchange.served_by.name if exchange.served_by is not None else "-"
        referer = header_value(exchange.headers, (), b"referer") or b"-"
        agent = header_value(exchange.headers, (), b"user-agent") or b"-"
        return (
            f'{address} - - [{when}] "{method} {_quoted(target)} {version}" {status} '
            f'{sent or exchange.bytes_out} "{_quoted(referer)}" "{_quoted(agent)}" '
            f"rt={_seconds(ended, exchange.started)} route={route} backend={backend} "
            f"rid={_quoted(exchange.request_id or b'-')}"
        )


def _quoted(value: bytes) -> str:
    """Inside CLF's double quotes: quotes, backslashes and control characters escaped."""
    text = value[:MAX_FIELD].decode("latin-1")
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return json_string(text)[1:-1]


def _tls(client: "ClientConnection") -> str:
    version = client.tls_version
    return f'"{version}"' if version is not None else "null"


def _seconds(ended: float, started: float) -> str:
    """A request's time, or `-` for one answered before its turn came (a local reply)."""
    return f"{max(ended - started, 0.0):.6f}" if started else "-"


def _clf_address(address: str) -> str:
    """A forwarded address is what a proxy's client wrote: anything beyond an address's own
    characters is quoted and escaped, so it cannot forge the line's other fields."""
    if ADDRESS.fullmatch(address):
        return address
    return json_string(address[:MAX_FIELD])
