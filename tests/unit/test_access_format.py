"""Access log lines from what a client controls: nothing it writes can forge another field."""

import json
from types import SimpleNamespace
from typing import Any, cast

from loadweaver.observability.access_format import CombinedLines, JsonLines
from loadweaver.observability.recorder import Finished
from loadweaver.security.trusted import TrustedProxies

FORGED = b'1.2.3.4" 200 0 "-" "evil'


def entry(forwarded_for: bytes, **exchange: Any) -> Finished:
    client = SimpleNamespace(
        client_ip="10.0.0.1",
        trusted=True,
        trusted_proxies=TrustedProxies(["10.0.0.0/8"]),
        tls=False,
        tls_version=None,
        transport=None,
        listener=SimpleNamespace(name="web"),
    )
    fields: dict[str, Any] = {
        "special": [(b"x-forwarded-for", forwarded_for)],
        "target": b'/a"b\\c',
        "method": b"GET",
        "http11": True,
        "route": None,
        "served_by": None,
        "headers": [(b"User-Agent", b'ua"\n\x00')],
        "started": 0.0,
        "bytes_out": 10,
        "request_id": b'id"1',
        "host": b'h"x',
        "connected_at": 0.0,
        "response_at": 0.0,
        "tries": 0,
        "retried": False,
        "body_received": 0,
        **exchange,
    }
    return cast(Finished, (client, SimpleNamespace(**fields), 404, 5.0, "no_route", 10))


def test_a_json_line_stays_one_object_with_the_clients_text_as_values() -> None:
    line = JsonLines("n", include_query=False).line(entry(FORGED), 1.7e9)
    parsed = json.loads(line)
    assert parsed["client"] == FORGED.decode()
    assert (parsed["path"], parsed["host"], parsed["request_id"]) == ('/a"b\\c', 'h"x', 'id"1')
    assert parsed["user_agent"] == 'ua"\n\x00'
    assert parsed["duration_ms"] is None  # answered before its turn: no duration


def test_a_combined_line_quotes_a_forged_address_and_has_no_duration_for_a_local_reply() -> None:
    line = CombinedLines("n", include_query=False).line(entry(FORGED), 1.7e9)
    assert line.startswith('"1.2.3.4\\" 200 0 \\"-\\" \\"evil" - - [')
    assert '"GET /a\\"b\\\\c HTTP/1.1" 404 10' in line
    assert "rt=- " in line
    plain = CombinedLines("n", include_query=False).line(entry(b"203.0.113.9"), 1.7e9)
    assert plain.startswith("203.0.113.9 - - [")
