"""Where health meets the data plane: passive detectors per pool, active verdicts applied to the
backends of the current snapshot, and the panic threshold, all through the backends' `healthy`.
"""

import asyncio
from collections.abc import Callable, Mapping

from loadweaver.balancing.base import Backend
from loadweaver.config.models import PassiveHealth
from loadweaver.control.snapshot import SnapshotHolder
from loadweaver.health.passive import PassiveDetector
from loadweaver.health.pools import PanicLog, refresh_pool
from loadweaver.observability.metrics import Metrics


class HealthManager:
    def __init__(self, loop: asyncio.AbstractEventLoop, metrics: Metrics) -> None:
        self._loop = loop
        self._metrics = metrics
        self._panic = PanicLog()
        self._detectors: dict[str, PassiveDetector] = {}
        self.holder: SnapshotHolder | None = None  # set once the first snapshot exists
        self.verdicts: dict[tuple[str, str], bool] = {}  # (pool, backend) -> up, from checks
        # Told of each passive ejection, so the cluster's prober can weigh it (set by the node).
        self.on_ejection: Callable[[str, str, float], None] = _ignore

    def detector(self, pool: str, settings: PassiveHealth) -> PassiveDetector:
        """The pool's detector; it outlives snapshots so ejections carry over."""
        detector = self._detectors.get(pool)
        if detector is None:
            detector = self._detectors[pool] = PassiveDetector(
                pool,
                settings,
                self._loop,
                lambda: self._backends(pool),
                self.refresh,
                self._ejected,
            )
        detector.settings = settings
        return detector

    def retain_only(self, pools: set[str]) -> None:
        for name in [name for name in self._detectors if name not in pools]:
            del self._detectors[name]

    def apply_verdicts(self, verdicts: Mapping[tuple[str, str], bool]) -> None:
        """Active verdicts, from this node's checks or the leader's."""
        self.verdicts = dict(verdicts)
        self.refresh_all()

    def refresh_all(self) -> None:
        if self.holder is None:
            return
        for name in self.holder.current.pools:
            self.refresh(name)

    def refresh(self, pool: str) -> None:
        if self.holder is None:
            return
        snapshot = self.holder.current
        runtime = snapshot.pools.get(pool)
        config = snapshot.config.pools.get(pool)
        if runtime is None or config is None:
            return
        was_routable = {backend.name: backend.load.routable for backend in runtime.backends}
        checked = config.health is not None  # without checks, no old verdict may hold it down
        for backend in runtime.backends:
            self._apply_verdict(pool, backend, checked)
        panic = refresh_pool(runtime.backends, config.panic_threshold)
        self._panic.note(pool, panic)
        self._metrics.pool_panic.labels(pool).set(1 if panic else 0)
        recovered = False
        for backend in runtime.backends:
            load = backend.load
            if load.routable != was_routable[backend.name]:
                self._metrics.backend_flaps.labels(pool, backend.name).inc()
            if load.routable and not was_routable[backend.name]:
                load.joined_at = self._loop.time()  # a recovered backend ramps up again
                recovered = True
            self._metrics.backend_healthy.labels(pool, backend.name).set(1 if load.routable else 0)
        if recovered:
            runtime.strategy.on_hosts_changed(runtime.backends)

    def _apply_verdict(self, pool: str, backend: Backend, checked: bool) -> None:
        load = backend.load
        up = self.verdicts.get((pool, backend.name), True) if checked else True
        if up and not load.verdict_up and load.ejected:
            # Its checks pass again: the active verdict ends a passive ejection (as Envoy does),
            # so a restarted backend does not sit out the rest of its back-off.
            load.ejected, load.ejections = False, 0
        load.verdict_up = up

    def _backends(self, pool: str) -> tuple[Backend, ...]:
        if self.holder is None:
            return ()
        runtime = self.holder.current.pools.get(pool)
        return runtime.backends if runtime is not None else ()

    def _ejected(self, pool: str, backend: str, seconds: float) -> None:
        self._metrics.ejections.labels(pool).inc()
        self.on_ejection(pool, backend, seconds)

    def note_probe(self, pool: str, ok: bool) -> None:
        self._metrics.health_checks.labels(pool, "success" if ok else "failure").inc()

    def note_flap(self, pool: str) -> None:
        self._metrics.health_flaps.labels(pool).inc()


def _ignore(pool: str, backend: str, seconds: float) -> None:
    """No one to tell: a node without a cluster prober."""
