"""What the access log and traffic patterns show of a finished request, read off its objects."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loadweaver.proxy.client import ClientConnection
    from loadweaver.proxy.exchange import Exchange

MAX_FIELD = 200  # characters kept of a path, host or user agent: enough to tell them apart


def client_address(client: "ClientConnection", exchange: "Exchange | None") -> str:
    """The real client: behind trusted proxies, the address their X-Forwarded-For vouches for."""
    if exchange is None or not client.trusted:
        return client.client_ip
    forwarded_for = [value for name, value in exchange.special if name == b"x-forwarded-for"]
    if not forwarded_for:
        return client.client_ip
    return client.trusted_proxies.real_client(client.client_ip, forwarded_for)


def path_and_query(exchange: "Exchange") -> tuple[str, str]:
    target = exchange.target
    if not target.startswith(b"/"):
        # Absolute form (http://host/path?q) or `*`: the origin-form part is what was asked.
        after_scheme = target.split(b"//", 1)[-1]
        slash = after_scheme.find(b"/")
        target = after_scheme[slash:] if slash != -1 else b"/"
    path, _, query = target.partition(b"?")
    return path.decode("latin-1"), query.decode("latin-1")


def header_value(exchange: "Exchange", lowered: bytes) -> str | None:
    """The first value of a request header, from the headers passed on or those re-rendered."""
    for name, value in exchange.headers:
        if name.lower() == lowered:
            return value.decode("latin-1")
    for name, value in exchange.special:
        if name == lowered:
            return value.decode("latin-1")
    return None


def host_of(exchange: "Exchange") -> str:
    return exchange.host.decode("latin-1") if exchange.host is not None else ""


def bytes_in(exchange: "Exchange") -> int:
    """The request's size as it arrived: request line, headers and body (chunk framing aside)."""
    head = len(exchange.method) + len(exchange.target) + 12  # spaces, "HTTP/1.1", CRLF
    for headers in (exchange.headers, exchange.special):
        for name, value in headers:
            head += len(name) + len(value) + 4
    return head + 2 + exchange.body_received


def tls_version(client: "ClientConnection") -> str | None:
    if not client.tls or client.transport is None:
        return None
    ssl_object = client.transport.get_extra_info("ssl_object")
    return ssl_object.version() if ssl_object is not None else None


def clip(text: str) -> str:
    return text if len(text) <= MAX_FIELD else text[:MAX_FIELD]
