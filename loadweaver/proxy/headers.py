"""Header rewriting between client and backend: hop-by-hop removal and forwarding headers."""

from collections.abc import Iterable, Sequence
from functools import lru_cache
from http import HTTPStatus

Header = tuple[bytes, bytes]

# RFC 9110 section 7.6.1; Proxy-Connection is a widespread non-standard alias.
HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade")
)
FORWARDING = frozenset(
    (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded")
)
# Request headers the proxy re-renders itself rather than copying.
REQUEST_SPECIAL = HOP_BY_HOP | FORWARDING | {b"host", b"content-length"}
# Response headers the proxy re-renders; the request id header joins both sets when it is on.
RESPONSE_SPECIAL = HOP_BY_HOP | {b"content-length"}
# A client may name these in Connection, but dropping them would change the request's meaning.
NEVER_DROPPED = frozenset((b"host", b"content-length"))


PLAIN_CONNECTION = frozenset(
    (b"keep-alive", b"close", b"Keep-Alive", b"Close", b"upgrade", b"Upgrade")
)


def names_extra_headers(values: Sequence[bytes]) -> bool:
    """Whether Connection headers name anything beyond keep-alive, close or upgrade."""
    for value in values:
        if value not in PLAIN_CONNECTION and connection_tokens((value,)) - PLAIN_CONNECTION:
            return True
    return False


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """The header names listed in Connection headers, lower-case; `close`, `upgrade` included."""
    tokens = set()
    for value in values:
        for raw in value.split(b","):
            token = raw.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens - NEVER_DROPPED)


def forwarded_element(client_ip: str, proto: bytes, host: bytes) -> bytes:
    """One RFC 7239 element; IPv6 addresses and hosts are quoted as the grammar requires."""
    node = f'"[{client_ip}]"' if ":" in client_ip else client_ip
    quoted_host = host.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'for=%s;proto=%s;host="%s"' % (node.encode(), proto, quoted_host)


def header_value(
    headers: Sequence[Header], special: Sequence[Header], lowered: bytes
) -> bytes | None:
    """A request header's first value, wherever the parser put it: among the headers passed on
    as they came, or the ones the proxy re-renders (Host, forwarding, request id), which are
    kept lower-cased."""
    for name, value in headers:
        if name.lower() == lowered:
            return value
    for name, value in special:
        if name == lowered:
            return value
    return None


def render_headers(headers: Sequence[Header]) -> bytes:
    """`Name: value` lines, each ending in CRLF; map and join keep the loop in C."""
    if not headers:
        return b""
    return b"\r\n".join(map(b": ".join, headers)) + b"\r\n"


def joined(values: Sequence[bytes]) -> bytes:
    return b", ".join(values)


def render_forwarding(chain: bytes, proto: bytes, host: bytes, forwarded: bytes) -> bytes:
    return (
        b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\nForwarded: %s\r\n"
        % (chain, proto, host, forwarded)
    )


@lru_cache(maxsize=128)
def status_line(status: int) -> bytes:
    """`HTTP/1.1 200 OK` with the standard reason phrase (as HTTP/2 gateways do: no reason)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode())
