"""What the access log and traffic patterns show of a finished request, read off its objects."""

from typing import TYPE_CHECKING

from loadweaver.proxy.exchange import origin_form

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


def path_and_query(exchange: "Exchange") -> tuple[bytes, bytes]:
    """The target's path and query, as the request line asked them of the backend."""
    path, _, query = origin_form(exchange.target).partition(b"?")
    return path, query


def clip(text: str) -> str:
    return text if len(text) <= MAX_FIELD else text[:MAX_FIELD]
