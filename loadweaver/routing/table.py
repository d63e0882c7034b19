"""Route lookup by host, path, method and headers, compiled once per snapshot."""

from collections.abc import Sequence
from dataclasses import dataclass

from loadweaver.routing.rate_limit import RouteLimit

Headers = Sequence[tuple[bytes, bytes]]
Entry = tuple[str, bool, "CompiledRoute"]


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    pool: str
    host: str
    path_prefix: str
    methods: frozenset[str]
    headers: tuple[tuple[bytes, bytes], ...]
    priority: int
    order: int
    limit: RouteLimit | None = None

    @property
    def plain(self) -> bool:
        """Matches on host and path prefix alone."""
        return not self.methods and not self.headers

    def accepts(self, path: str, method: str, headers: Headers, special: Headers = ()) -> bool:
        """`special` holds the headers the proxy re-renders (Host, Upgrade...), lower-cased."""
        if not path.startswith(self.path_prefix):
            return False
        if self.methods and method not in self.methods:
            return False
        return all(
            _has_header(headers, name, value) or _has_header(special, name, value)
            for name, value in self.headers
        )

    @property
    def sort_key(self) -> tuple[int, int, int]:
        return (-self.priority, -len(self.path_prefix), self.order)


def _has_header(headers: Headers, name: bytes, value: bytes) -> bool:
    return any(key.lower() == name and found == value for key, found in headers)


class RouteTable:
    """Groups routes by host so a lookup touches only the routes that could match."""

    def __init__(self, routes: Sequence[CompiledRoute]) -> None:
        # Each entry is (path_prefix, plain, route) so the lookup loop needs no attribute access.
        ordered = [(r.path_prefix, r.plain, r) for r in sorted(routes, key=lambda r: r.sort_key)]
        self._catch_all = tuple(entry for entry in ordered if entry[2].host == "*")
        wildcards: dict[str, list[Entry]] = {}
        exact: dict[str, list[Entry]] = {}
        for entry in ordered:
            host = entry[2].host
            if host.startswith("*."):
                wildcards.setdefault(host[1:], []).append(entry)
            elif host != "*":
                exact.setdefault(host, []).append(entry)
        self._exact: dict[str, tuple[Entry, ...]] = {
            host: tuple(group) for host, group in exact.items()
        }
        self._wildcards = sorted(
            ((suffix, tuple(group)) for suffix, group in wildcards.items()),
            key=lambda item: -len(item[0]),
        )
        self._only_catch_all = not self._exact and not self._wildcards

    def match(
        self, host: str, path: str, method: str, headers: Headers, special: Headers = ()
    ) -> CompiledRoute | None:
        """The most specific route for a request; `host` is lower-case without a port."""
        if self._only_catch_all:
            for prefix, plain, route in self._catch_all:
                if path.startswith(prefix) and (
                    plain or route.accepts(path, method, headers, special)
                ):
                    return route
            return None
        group = self._exact.get(host)
        if group and (found := _first_accepting(group, path, method, headers, special)):
            return found
        for suffix, group in self._wildcards:
            if host.endswith(suffix) and len(host) > len(suffix):
                found = _first_accepting(group, path, method, headers, special)
                if found:
                    return found
        return _first_accepting(self._catch_all, path, method, headers, special)


def _first_accepting(
    group: Sequence[Entry], path: str, method: str, headers: Headers, special: Headers
) -> CompiledRoute | None:
    for prefix, plain, route in group:
        if path.startswith(prefix) and (plain or route.accepts(path, method, headers, special)):
            return route
    return None
