"""A route's rate limit as the data plane applies it: which limiter, keyed by what."""

from collections.abc import Sequence
from dataclasses import dataclass

from loadweaver.proxy.headers import header_value
from loadweaver.traffic.limiter import Limiter

MISSING_KEY = "<none>"  # requests without the keying header share one bucket


@dataclass(frozen=True, slots=True)
class RouteLimit:
    policy: str  # the policy's name, a metric label
    limiter: Limiter
    key: str  # client_ip, route or header
    header: bytes = b""  # the keying header, lower-cased, for key: header
    route: str = ""

    def key_of(
        self,
        client_ip: str,
        headers: Sequence[tuple[bytes, bytes]],
        special: Sequence[tuple[bytes, bytes]] = (),
    ) -> str:
        """`special`: the headers the proxy re-renders (Host, X-Forwarded-For...), lower-cased."""
        if self.key == "client_ip":
            return client_ip
        if self.key == "route":
            return self.route
        value = header_value(headers, special, self.header)
        return (
            (value.decode("latin-1").strip() or MISSING_KEY) if value is not None else MISSING_KEY
        )
