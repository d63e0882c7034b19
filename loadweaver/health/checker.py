"""Active health checking: one probe loop per backend, a shared concurrency cap, verdicts out.

Each loop is an asyncio task. It waits `interval` (or `fast_interval` while a backend is between
states) with ±`jitter`, counted from the start of the previous probe so the rate holds however
long probes take; the first probe comes after a random part of the interval, so a node starting
with many backends does not probe them all at once.
"""

import asyncio
import random
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from loguru import logger

from loadweaver.config.addresses import UpstreamAddress
from loadweaver.config.models import HealthCheck, UpstreamTls
from loadweaver.health.probe import ProbeResult, probe_http, probe_tcp
from loadweaver.health.verdict import Clock, HealthState, Verdict
from loadweaver.proxy.tls import TlsConfigError, upstream_context

Key = tuple[str, str]  # (pool, backend)
OnChange = Callable[[str, str, Verdict], None]


@dataclass(frozen=True)
class Target:
    """One backend to probe; equal targets keep their loop across `update` calls."""

    pool: str
    backend: str
    address: UpstreamAddress
    check: HealthCheck
    tls: UpstreamTls = field(default_factory=UpstreamTls)

    @property
    def key(self) -> Key:
        return (self.pool, self.backend)

    @property
    def label(self) -> str:
        return f"{self.pool}/{self.backend}"


class ActiveChecker:
    """Probes targets and keeps their verdicts; `on_change` hears of every change of up/down.

    `update`, `seed` and `close` must be called inside the running event loop.
    """

    def __init__(
        self,
        on_change: OnChange,
        max_concurrent: int = 64,
        clock: Clock = time.time,
        on_probe: Callable[[str, bool], None] | None = None,
    ) -> None:
        """`on_probe(pool, ok)` hears of every probe's result (for metrics)."""
        self._on_change = on_change
        self._on_probe = on_probe
        self._max_concurrent = max_concurrent
        self._clock = clock
        self._semaphore = asyncio.Semaphore(max_concurrent)
        self._targets: dict[Key, Target] = {}
        self._states: dict[Key, HealthState] = {}
        self._loops: dict[Key, asyncio.Task[None]] = {}
        self._seeds: dict[Key, Verdict] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ssl_contexts: dict[UpstreamTls, ssl.SSLContext] = {}
        self._closed = False
        self.probes_sent = 0

    def seed(self, verdicts: Mapping[Key, Verdict]) -> None:
        """Starting verdicts (from the store); a target already known resumes from its seed."""
        for key, verdict in verdicts.items():
            state = self._states.get(key)
            if state is None:
                self._seeds[key] = verdict  # taken when the target first appears
            else:
                self._states[key] = HealthState.from_verdict(state.check, verdict, self._clock)

    def update(self, targets: Sequence[Target]) -> None:
        """Probes exactly `targets` from now on: new ones start, gone ones stop, changed ones
        restart with their state kept."""
        if self._closed:
            raise RuntimeError("the health checker is closed")
        wanted = {target.key: target for target in targets}
        for key in [key for key in self._targets if key not in wanted]:
            self._stop(key)
            del self._targets[key], self._states[key]
        for key, target in wanted.items():
            if self._targets.get(key) == target:
                continue
            self._stop(key)
            state = self._states.get(key)
            if state is None:
                self._states[key] = self._initial_state(target)
            else:
                state.check = target.check
            self._targets[key] = target
            self._loops[key] = asyncio.create_task(
                self._run(target), name=f"health check {target.label}"
            )

    def verdicts(self) -> dict[Key, Verdict]:
        return {key: state.verdict for key, state in self._states.items()}

    async def close(self) -> None:
        self._closed = True
        loops = list(self._loops.values())
        for key in list(self._loops):
            self._stop(key)
        await asyncio.gather(*loops, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _initial_state(self, target: Target) -> HealthState:
        seed = self._seeds.pop(target.key, None)
        if seed is None:
            return HealthState(target.check, clock=self._clock)
        return HealthState.from_verdict(target.check, seed, self._clock)

    def _stop(self, key: Key) -> None:
        loop = self._loops.pop(key, None)
        if loop is not None:
            loop.cancel()

    async def _run(self, target: Target) -> None:
        next_start = time.monotonic() + random.uniform(0, target.check.interval)
        while True:
            await asyncio.sleep(max(0.0, next_start - time.monotonic()))
            started = time.monotonic()
            try:
                result = await self._probe(target)
                if self._on_probe is not None:
                    self._on_probe(target.pool, result.ok)
                self._record(target, result)
            except Exception:
                logger.exception("health check of {} failed", target.label)
            next_start = started + self._delay(target)

    def _delay(self, target: Target) -> float:
        state = self._states.get(target.key)
        check = target.check
        base = check.fast_interval if state and state.transitioning else check.interval
        return base * random.uniform(1 - check.jitter, 1 + check.jitter)

    async def _probe(self, target: Target) -> ProbeResult:
        async with self._semaphore:
            self.probes_sent += 1
            if target.check.type == "tcp":
                return await probe_tcp(target.check, target.address)
            try:
                context = self._ssl_context(target.tls) if target.address.tls else None
            except TlsConfigError as error:
                return ProbeResult(False, str(error), 0.0)
            return await probe_http(
                target.check,
                target.address,
                self._client_session(),
                context,
                server_name=target.tls.server_name,
            )

    def observe(self, key: Key, ok: bool, reason: str) -> None:
        """A result from elsewhere than a probe, such as other nodes' passive ejections; it
        counts towards rise and fall like a probe's."""
        target = self._targets.get(key)
        if target is not None:
            self._record(target, ProbeResult(ok, reason, 0.0))

    def _record(self, target: Target, result: ProbeResult) -> None:
        state = self._states.get(target.key)
        if state is None:  # removed while its probe ran
            return
        changed = state.record(result.ok, result.reason, result.latency_ms)
        if changed is None:
            return
        _log_change(target, changed)
        try:
            self._on_change(target.pool, target.backend, changed)
        except Exception:
            logger.exception("handling the health change of {} failed", target.label)

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # force_close: every probe opens its own connection, as HAProxy's do, so a backend
            # that stopped accepting connections cannot pass on an old kept-alive one.
            connector = aiohttp.TCPConnector(limit=self._max_concurrent, force_close=True)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),  # each probe has its own deadline
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _ssl_context(self, tls: UpstreamTls) -> ssl.SSLContext:
        context = self._ssl_contexts.get(tls)
        if context is None:
            context = self._ssl_contexts[tls] = upstream_context(tls)
        return context


def _log_change(target: Target, verdict: Verdict) -> None:
    if verdict.up:
        logger.info("backend {} is UP again", target.label)
        return
    held = ""
    if verdict.held_until:
        held = f"; flapping, held down for {verdict.held_until - verdict.changed_at:g}s"
    logger.warning(
        "backend {} is DOWN: {} ({} failures){}",
        target.label,
        verdict.reason,
        verdict.failures,
        held,
    )
