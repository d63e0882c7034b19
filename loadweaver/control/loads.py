"""Keeps each backend's BackendLoad alive across snapshots, the way PoolManager keeps connections.

A backend is the same backend while its pool, name and address stay the same; its in-flight count
and the time it joined (which drives slow start) then carry over to the next snapshot.
"""

from collections.abc import Callable, Iterable

from loadweaver.balancing.base import BackendLoad
from loadweaver.config.addresses import UpstreamAddress

LoadKey = tuple[str, str, UpstreamAddress]  # pool, backend name, address


class LoadRegistry:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._loads: dict[LoadKey, BackendLoad] = {}

    def get(self, pool: str, backend: str, address: UpstreamAddress) -> BackendLoad:
        key = (pool, backend, address)
        load = self._loads.get(key)
        if load is None:
            load = self._loads[key] = BackendLoad(joined_at=self._clock())
        return load

    def retain_only(self, in_use: Iterable[LoadKey]) -> None:
        keep = set(in_use)
        for key in list(self._loads):
            if key not in keep:
                del self._loads[key]
