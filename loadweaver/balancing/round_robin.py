"""Plain round robin over the backends with a non-zero weight."""

from collections.abc import Collection, Sequence

from loadweaver.balancing.base import Backend, NoBackend, PickContext

NO_BACKENDS = NoBackend("no backends configured")
NONE_AVAILABLE = NoBackend("no available backend")


class RoundRobin:
    def __init__(self, backends: Sequence[Backend]) -> None:
        self._ring: tuple[Backend, ...] = ()
        self._configured = 0
        self._next = 0
        self.on_hosts_changed(backends)

    def pick(self, ctx: PickContext, avoid: Collection[Backend] = ()) -> Backend | NoBackend:
        ring = self._ring
        if not ring:
            return NONE_AVAILABLE if self._configured else NO_BACKENDS
        for _ in range(len(ring)):
            backend = ring[self._next % len(ring)]
            self._next += 1
            if backend not in avoid:
                return backend
        return NONE_AVAILABLE

    def on_hosts_changed(self, backends: Sequence[Backend]) -> None:
        self._configured = len(backends)
        self._ring = tuple(backend for backend in backends if backend.weight > 0)

    def on_acquire(self, backend: Backend) -> None:
        pass

    def on_release(self, backend: Backend) -> None:
        pass
