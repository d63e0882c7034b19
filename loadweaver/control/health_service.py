"""Runs the active checks where they belong and spreads their verdicts.

One node probes for the whole cluster: the leader. It records each verdict change in the store,
which announces it, and every node applies it through its health manager. A single node probes
for itself, and so does every node while the store is unreachable (no leader can be trusted).
Probes start on the new leader as soon as it wins the lease.
"""

import asyncio
import contextlib
from collections.abc import Callable

from loguru import logger

from loadweaver.cluster.store import ClusterStore, Lease, StoreError
from loadweaver.config.addresses import parse_upstream_url
from loadweaver.control.snapshot import Snapshot, SnapshotHolder
from loadweaver.health.checker import ActiveChecker, Key, Target
from loadweaver.health.manager import HealthManager
from loadweaver.health.verdict import Verdict

DECIDE_INTERVAL = 0.2  # how often a node re-decides whether it should probe


def targets_of(snapshot: Snapshot) -> list[Target]:
    targets = []
    for name, pool in snapshot.config.pools.items():
        if pool.health is None:
            continue
        for backend in pool.backends:
            address = parse_upstream_url(backend.url)
            targets.append(Target(name, backend.name, address, pool.health, pool.tls))
    return targets


class HealthService:
    def __init__(  # noqa: PLR0917 - one call site, in node.py
        self,
        store: ClusterStore,
        manager: HealthManager,
        holder: SnapshotHolder,
        lease: Callable[[], Lease | None],
        node_id: str,
        live_nodes: Callable[[], int],
        single_prober: Callable[[], bool] = lambda: True,
    ) -> None:
        """`single_prober`: on one machine without Redis, whether this process probes (with
        --workers N only the one serving the admin API does; the others read its verdicts)."""
        self._store = store
        self._manager = manager
        self._holder = holder
        self._lease = lease
        self._node_id = node_id
        self._live_nodes = live_nodes
        self._single_prober = single_prober
        self._reports: set[asyncio.Task[None]] = set()
        self._unsaved: set[Key] = set()  # verdicts the store has not got yet
        self._written_for: int = 0  # the lease token under which every verdict was written
        manager.on_ejection = self._report_ejection
        self.checker: ActiveChecker | None = None
        self.verdicts: dict[Key, Verdict] = {}

    @property
    def probing(self) -> bool:
        return self.checker is not None

    def _should_probe(self) -> bool:
        if self._store.kind == "memory":
            return self._single_prober()
        return self._lease() is not None or not self._store.up

    async def run(self) -> None:
        """Starts and stops this node's checker as leadership and the store come and go."""
        try:
            while True:
                await self._decide()
                await asyncio.sleep(DECIDE_INTERVAL)
        finally:
            await self._stop_probing()

    async def _decide(self) -> None:
        wanted = self._should_probe() and bool(targets_of(self._holder.current))
        if wanted and self.checker is None:
            await self._start_probing()
        elif not wanted and self.checker is not None:
            await self._stop_probing()
            await self.sync_from_store()
        if self.checker is not None:
            self.checker.update(targets_of(self._holder.current))
            lease = self._lease()
            if self._store.kind != "memory" and lease is not None:
                await self._write_unsaved(self.checker, lease)
                await self._weigh_ejections(self.checker)

    async def _write_unsaved(self, checker: ActiveChecker, lease: Lease) -> None:
        """A new term writes everything this node knows (it may have probed alone while the
        store was down); otherwise only what an earlier write failed to record."""
        verdicts = checker.verdicts()
        if self._written_for != lease.token:
            self._unsaved |= set(verdicts)
            self._written_for = lease.token
        for key in sorted(self._unsaved):
            verdict = verdicts.get(key)
            try:
                if verdict is not None:
                    await self._store.save_verdict(_field(key), verdict.to_json(), lease)
            except StoreError:
                return  # the next round tries again
            self._unsaved.discard(key)

    async def _weigh_ejections(self, checker: ActiveChecker) -> None:
        """A backend most nodes have ejected counts as failing, though its probes pass."""
        try:
            reports = await self._store.ejection_reports()
        except StoreError:
            return
        live = max(1, self._live_nodes())
        for field, nodes in reports.items():
            if len(nodes) * 2 > live:
                reason = f"ejected by passive detection on {len(nodes)} of {live} nodes"
                checker.observe(_key(field), False, reason)

    def _report_ejection(self, pool: str, backend: str, seconds: float) -> None:
        if self._store.kind == "memory":
            return
        report = self._store.report_ejection(self._node_id, _field((pool, backend)), seconds)
        task = asyncio.get_running_loop().create_task(report)
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)
        task.add_done_callback(_log_failure)

    async def _start_probing(self) -> None:
        checker = ActiveChecker(self._changed, on_probe=self._manager.note_probe)
        known = dict(self.verdicts)
        with contextlib.suppress(StoreError):
            known = _newest(known, await self._load())
        checker.seed(known)  # verdicts survive a change of prober
        self.checker = checker
        checker.update(targets_of(self._holder.current))
        logger.info("this node now runs the active health checks")

    async def _stop_probing(self) -> None:
        checker, self.checker = self.checker, None
        if checker is not None:
            await checker.close()
            logger.info("this node stopped running the active health checks")

    def snapshot_changed(self) -> None:
        if self.checker is not None:
            self.checker.update(targets_of(self._holder.current))
        self._apply()

    def _changed(self, pool: str, backend: str, verdict: Verdict) -> None:
        self.verdicts[(pool, backend)] = verdict
        if not verdict.up and verdict.held_until:
            self._manager.note_flap(pool)
        self._apply()
        task = asyncio.get_running_loop().create_task(self._record(pool, backend, verdict))
        task.add_done_callback(_log_failure)

    async def _record(self, pool: str, backend: str, verdict: Verdict) -> None:
        lease = self._lease()
        if self._store.kind == "memory":
            # One node: no lease to fence with; the store keeps verdicts across restarts.
            await self._store.save_verdict(_field((pool, backend)), verdict.to_json())
            return
        if lease is None:
            self._unsaved.add((pool, backend))  # probing alone: written once a lease is won
            return
        try:
            await self._store.save_verdict(_field((pool, backend)), verdict.to_json(), lease)
        except StoreError:
            self._unsaved.add((pool, backend))  # _decide writes it again while we lead
            raise

    async def follow(self) -> None:
        """Applies the leader's verdicts as they are announced (and once per subscription)."""
        while True:
            try:
                async for _ in self._store.verdict_changes():
                    await self.sync_from_store()
            except StoreError as error:
                logger.debug("verdict feed interrupted: {}", error)
            await asyncio.sleep(0.5)

    async def sync_from_store(self) -> None:
        if self.checker is not None:
            return  # this node's own checks decide
        try:
            stored = await self._load()
        except StoreError:
            return
        self.verdicts = _newest(self.verdicts, stored)
        self._apply()

    async def _load(self) -> dict[Key, Verdict]:
        verdicts = {}
        for field, record in (await self._store.load_verdicts()).items():
            try:
                verdicts[_key(field)] = Verdict.from_json(record)
            except ValueError:
                continue
        return verdicts

    def _apply(self) -> None:
        current = self.checker.verdicts() if self.checker is not None else self.verdicts
        self._manager.apply_verdicts({key: verdict.up for key, verdict in current.items()})


def _log_failure(task: "asyncio.Task[None]") -> None:
    if task.cancelled():
        return
    error = task.exception()
    if isinstance(error, StoreError):
        logger.warning("a health verdict was not recorded in the store: {}", error)
    elif error is not None:
        logger.opt(exception=error).error("recording a health verdict failed")


def _field(key: Key) -> str:
    """How the store names a backend's verdict: `pool/backend`."""
    return f"{key[0]}/{key[1]}"


def _key(field: str) -> Key:
    pool, _, backend = field.partition("/")
    return (pool, backend)


def _newest(own: dict[Key, Verdict], stored: dict[Key, Verdict]) -> dict[Key, Verdict]:
    """Per backend, the verdict that changed last: one this node reached while the store was
    down must not be replaced by an older one the store kept."""
    merged = dict(stored)
    for key, verdict in own.items():
        if key not in merged or verdict.changed_at > merged[key].changed_at:
            merged[key] = verdict
    return merged
