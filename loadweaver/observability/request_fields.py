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
    if target == b"*":  # OPTIONS * asks about the server itself
        return "*", ""
    if not target.startswith(b"/"):
        # Absolute form (http://host/path?q) or `*`: the origin-form part is what was asked.
        after_scheme = target.split(b"//", 1)[-1]
        slash = after_scheme.find(b"/")
        target = after_scheme[slash:] if slash != -1 else b"/"
    path, _, query = target.partition(b"?")
    return path.decode("latin-1"), query.decode("latin-1")


def request_header(headers: list[tuple[bytes, bytes]], lowered: bytes) -> bytes | None:
    """The first value of a header passed on as it came (not Host or the forwarding headers,
    which the proxy keeps apart); the length test spares most names a lower()."""
    size = len(lowered)
    for name, value in headers:
        if len(name) == size and name.lower() == lowered:
            return value
    return None


def tls_version(client: "ClientConnection") -> str | None:
    if not client.tls or client.transport is None:
        return None
    ssl_object = client.transport.get_extra_info("ssl_object")
    return ssl_object.version() if ssl_object is not None else None


def clip(text: str) -> str:
    return text if len(text) <= MAX_FIELD else text[:MAX_FIELD]
