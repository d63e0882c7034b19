"""Parsing of `host:port` bind addresses and backend URLs, and URLs made fit to show."""

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class BindAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}"


def parse_bind(value: str) -> BindAddress:
    """`127.0.0.1:8080`, `[::1]:8080`, `0.0.0.0:80` or `localhost:8080`."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"bind address {value!r} must be host:port, for example 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bind address {value!r} needs a port from 1 to 65535")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"bind address {value!r} needs an IP address or localhost as its host"
            ) from None
    return BindAddress(host, int(port_text))


def parse_upstream_url(value: str) -> UpstreamAddress:
    """`http://host:port` or `https://host:port`; the port defaults by scheme, no path allowed."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"backend url {value!r} is not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"backend url {value!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"backend url {value!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"backend url {value!r} must not carry a path, query or fragment")
    if parts.username or parts.password:
        raise ValueError(f"backend url {value!r} must not carry credentials")
    default_port = 443 if parts.scheme == "https" else 80
    return UpstreamAddress(parts.scheme, parts.hostname, port or default_port)


def without_password(url: str, mask: str = "***") -> str:
    """`url` with its password, if it has one, replaced by `mask`: for logs and API answers."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}:{mask}@{host}").geturl()
