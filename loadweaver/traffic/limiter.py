"""Rate limiters: per request and per key, decide at once whether the policy admits it.

`admit()` runs on the hot path, inside asyncio Protocol callbacks: it is synchronous, never
awaits or blocks and costs O(1) in the usual case. Whatever talks to a store happens in
background tasks that `admit()` only schedules.

* LocalLimiter: one token bucket per key on this node (`scope: node`, or a one-node cluster).
* ClusterLimiter: one bucket per key shared by the cluster (`scope: cluster`), kept by the store
  (an atomic Lua script timed by Redis TIME). Each node leases small batches of tokens from it
  and spends them locally; lease.py explains the sizing, pacing, capacity and credit.
"""

import asyncio
import contextlib
import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from loguru import logger

from loadweaver.cluster.store import ClusterStore, Grant, StoreError
from loadweaver.config.models import RateLimitPolicy
from loadweaver.traffic.bucket import TokenBucket
from loadweaver.traffic.lease import LeasePlan

Clock = Callable[[], float]

MAX_KEYS = 100_000  # per limiter; beyond it the least recently used key is forgotten
IDLE_AFTER = 5.0  # seconds without a request before a key's state is dropped
DENY_RETRY_AFTER = 1.0  # what `on_store_error: deny` tells clients
PROBE_INTERVAL = 0.5  # seconds between attempts to reach a store that failed
STORE_CALL_TIMEOUT = 1.0  # a backstop: the store's own timeouts should fire well before
CLOSE_TIMEOUT = 2.0  # for close() to let calls finish and give tokens back
MAX_CALLS_IN_FLIGHT = 32  # so a flood of new keys cannot open a connection per key
MIN_DEMAND_WINDOW = 0.02  # seconds: a shorter window would make one request look like a flood


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int  # the policy's rate, rounded (at least 1)
    remaining: int  # tokens left for the key, as far as this node knows
    reset: float  # seconds until the key's bucket is full again
    retry_after: float  # seconds until a token is expected; 0 when allowed


class Limiter(Protocol):
    def admit(self, key: str) -> Decision:
        """Decides one request now; never awaits, blocks or raises."""
        ...

    async def close(self) -> None:
        """Stops background work and gives unused leased tokens back."""
        ...


def limit_header(policy: RateLimitPolicy) -> int:
    # A rate below 0.5 would round to 0, which reads as "nothing allowed".
    return max(1, round(policy.rate))


def create_limiter(
    name: str,
    policy: RateLimitPolicy,
    store: ClusterStore,
    live_nodes: Callable[[], int],
    loop: asyncio.AbstractEventLoop,
) -> Limiter:
    """A LocalLimiter for `scope: node` and for a memory store (a single node has nobody to
    share with), else a ClusterLimiter."""
    if policy.scope == "node" or store.kind == "memory":
        return LocalLimiter(policy)
    return ClusterLimiter(policy, name, store, live_nodes, loop)


# ---------------------------------------------------------------- one node


@dataclass(slots=True)
class _LocalKey:
    bucket: TokenBucket
    last_used: float


class LocalLimiter:
    """A token bucket per key. Keys whose bucket is full and unused for `idle_after` seconds are
    dropped (losslessly: a new bucket starts full), and at most `max_keys` are kept."""

    store_calls = 0  # never calls a store; here so every limiter can be measured alike

    def __init__(
        self,
        policy: RateLimitPolicy,
        clock: Clock = time.monotonic,
        *,
        max_keys: int = MAX_KEYS,
        idle_after: float = IDLE_AFTER,
    ) -> None:
        self.policy = policy
        self.limit = limit_header(policy)
        self._clock = clock
        self._max_keys = max_keys
        self._idle_after = idle_after
        self._keys: OrderedDict[str, _LocalKey] = OrderedDict()  # least recently used first
        self.admitted = 0
        self.denied = 0

    def __len__(self) -> int:
        return len(self._keys)

    def admit(self, key: str) -> Decision:
        now = self._clock()
        bucket = self._use(key, now).bucket
        allowed = bucket.take()
        if allowed:
            self.admitted += 1
        else:
            self.denied += 1
        self._expire_oldest(now)
        return Decision(
            allowed=allowed,
            limit=self.limit,
            remaining=int(bucket.tokens),
            reset=bucket.seconds_until_full(),
            retry_after=0.0 if allowed else bucket.seconds_until_token(),
        )

    def _use(self, key: str, now: float) -> _LocalKey:
        entry = self._keys.get(key)
        if entry is not None:
            self._keys.move_to_end(key)
            entry.last_used = now
            return entry
        if len(self._keys) >= self._max_keys:
            self._keys.popitem(last=False)
        policy = self.policy
        entry = _LocalKey(TokenBucket(policy.per_second, policy.burst, self._clock), now)
        self._keys[key] = entry
        return entry

    def _is_idle(self, entry: _LocalKey, now: float) -> bool:
        return now - entry.last_used >= self._idle_after and entry.bucket.is_full

    def _expire_oldest(self, now: float, at_most: int = 2) -> None:
        # A little expiry on every request keeps memory bounded without a background task.
        for _ in range(at_most):
            oldest = next(iter(self._keys.items()), None)
            if oldest is None or not self._is_idle(oldest[1], now):
                return
            del self._keys[oldest[0]]

    def expire_idle(self) -> int:
        """Drops every idle key now; returns how many."""
        now = self._clock()
        idle = [key for key, entry in self._keys.items() if self._is_idle(entry, now)]
        for key in idle:
            del self._keys[key]
        return len(idle)

    async def close(self) -> None:
        """Nothing runs in the background and nothing is leased."""


# ---------------------------------------------------------------- the cluster


@dataclass(slots=True, eq=False)
class _Lease:
    """This node's share of one key's cluster bucket."""

    stock: int  # leased tokens not yet spent; below 0, a debt taken on credit
    shared: float  # tokens the shared bucket held at the last grant
    shared_at: float  # when `shared` was reported
    last_used: float
    sampled_at: float  # start of the window `requests` counts
    requests: int = 0
    demand: float = 0.0  # requests per second, smoothed; 0 until the first sample
    low_water: int = 0  # refill once the stock is down to this (sized with the batch)
    next_call_at: float = 0.0  # the shared bucket was dry: no call before this
    token_at: float = 0.0  # when the shared bucket expected its next token
    refill: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    dropped: bool = False


class ClusterLimiter:
    """Spends tokens leased from the cluster bucket `{name}:{key}`; see lease.py for the plan.

    When the store fails, decisions follow `policy.on_store_error` until a probe (one every
    PROBE_INTERVAL, carried by a request) gets an answer again.
    """

    def __init__(
        self,
        policy: RateLimitPolicy,
        name: str,
        store: ClusterStore,
        live_nodes: Callable[[], int],
        loop: asyncio.AbstractEventLoop,
        *,
        clock: Clock = time.monotonic,
        max_keys: int = MAX_KEYS,
        idle_after: float = IDLE_AFTER,
    ) -> None:
        self.policy = policy
        self.name = name
        self.limit = limit_header(policy)
        self.plan = LeasePlan.for_policy(policy)
        self._store = store
        self._live_nodes = live_nodes
        self._loop = loop
        self._clock = clock
        self._max_keys = max_keys
        self._idle_after = idle_after
        self._leases: OrderedDict[str, _Lease] = OrderedDict()  # least recently used first
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._call_slots = asyncio.Semaphore(MAX_CALLS_IN_FLIGHT)
        self._fallback: LocalLimiter | None = None  # while the store is down; after close()
        self._next_probe_at = 0.0
        self._closed = False
        self.store_calls = 0
        self.admitted = 0
        self.denied = 0

    def __len__(self) -> int:
        return len(self._leases)

    @property
    def leasing(self) -> bool:
        """Whether decisions spend leased tokens: False while the store is down, and after
        close()."""
        return self._fallback is None

    # ---- the hot path

    def admit(self, key: str) -> Decision:
        now = self._clock()
        lease = self._use(key, now)
        lease.requests += 1
        if self._fallback is not None:  # the store is down, or this limiter closed
            decision = self._admit_without_store(key, lease, now)
        else:
            allowed = self._spend(lease, now)
            self._refill_if_low(key, lease, now)
            decision = self._decide(allowed, lease, now)
        if decision.allowed:
            self.admitted += 1
        else:
            self.denied += 1
        return decision

    def _use(self, key: str, now: float) -> _Lease:
        lease = self._leases.get(key)
        if lease is not None:
            self._leases.move_to_end(key)
            lease.last_used = now
            return lease
        self._start_sweeper()
        if len(self._leases) >= self._max_keys:
            self._drop(*next(iter(self._leases.items())))
        # Until a grant says otherwise, assume the shared bucket is full, as a new key's is.
        capacity = float(self.plan.capacity)
        lease = _Lease(stock=0, shared=capacity, shared_at=now, last_used=now, sampled_at=now)
        self._leases[key] = lease
        return lease

    def _shared_estimate(self, lease: _Lease, now: float) -> float:
        # Refilled since the last report; other nodes' takes are unknown, hence "estimate".
        refilled = lease.shared + (now - lease.shared_at) * self.plan.rate
        return min(float(self.plan.capacity), refilled)

    def _spend(self, lease: _Lease, now: float) -> bool:
        if lease.stock >= 1:
            lease.stock -= 1
            return True
        # Credit: borrow a token the shared bucket likely still holds after the debt so far;
        # the next refill repays it.
        debt = -lease.stock
        if debt < self.plan.credit and self._shared_estimate(lease, now) - debt >= 1:
            lease.stock -= 1
            return True
        return False

    def _decide(self, allowed: bool, lease: _Lease, now: float) -> Decision:
        plan = self.plan
        tokens = lease.stock + self._shared_estimate(lease, now)  # a debt counts against
        remaining, retry_after = max(0, min(plan.capacity, int(tokens))), 0.0
        if not allowed:
            remaining = 0
            retry_after = max(lease.next_call_at - now, lease.token_at - now, 1.0 / plan.rate)
        return Decision(
            allowed=allowed,
            limit=self.limit,
            remaining=remaining,
            reset=max(0.0, (plan.capacity - tokens) / plan.rate),
            retry_after=retry_after,
        )

    def _refill_if_low(self, key: str, lease: _Lease, now: float) -> None:
        if lease.refill is not None or self._closed:
            return
        if lease.stock > lease.low_water:
            return
        if now >= lease.next_call_at:
            self._start_refill(key, lease)  # also when a timer is set: it may run late
        elif lease.timer is None:  # the shared bucket was dry: ask once it has had time to fill
            delay = lease.next_call_at - now
            lease.timer = self._loop.call_later(delay, self._start_refill, key, lease)

    def _admit_without_store(self, key: str, lease: _Lease, now: float) -> Decision:
        self._probe(key, lease, now)
        mode = self.policy.on_store_error
        if mode == "allow":
            return Decision(True, self.limit, self.plan.burst, 0.0, 0.0)
        if mode == "deny":
            return Decision(False, self.limit, 0, DENY_RETRY_AFTER, DENY_RETRY_AFTER)
        assert self._fallback is not None
        return dataclasses.replace(self._fallback.admit(key), limit=self.limit)

    def _probe(self, key: str, lease: _Lease, now: float) -> None:
        if now < self._next_probe_at or lease.refill is not None or self._closed:
            return
        self._next_probe_at = now + PROBE_INTERVAL
        self._start_refill(key, lease)

    # ---- background: leases

    def _start_refill(self, key: str, lease: _Lease) -> None:
        if lease.timer is not None:
            lease.timer.cancel()
            lease.timer = None
        if lease.refill is None and not lease.dropped and not self._closed:
            lease.refill = self._spawn(self._refill(key, lease))

    async def _refill(self, key: str, lease: _Lease) -> None:
        try:
            want = self._want(lease)
            grant = await self._take(key, want)
        except Exception as error:  # any failure: the fallback decides
            self._store_failed(error)
        else:
            self._store_answered()
            self._apply(lease, want, grant)
        finally:
            lease.refill = None
        if lease.dropped:  # expired or evicted while the call was out: return what came
            self._settle_later(key, lease)

    def _want(self, lease: _Lease) -> int:
        now = self._clock()
        sample = lease.requests / max(now - lease.sampled_at, MIN_DEMAND_WINDOW)
        lease.demand = sample if lease.demand == 0 else (lease.demand + sample) / 2
        lease.requests, lease.sampled_at = 0, now
        batch = self.plan.batch(lease.demand)
        lease.low_water = self.plan.low_water(batch)
        # The batch plus any debt; a probe during an outage may ask for nothing.
        return max(0, batch - lease.stock)

    def _apply(self, lease: _Lease, want: int, grant: Grant) -> None:
        now = self._clock()
        lease.stock += grant.granted
        lease.shared, lease.shared_at = grant.available, now
        lease.token_at = now + grant.wait
        if grant.granted < want:  # the key is at its limit cluster-wide
            lease.next_call_at = now + max(grant.wait, self.plan.dry_pause)

    async def _take(self, key: str, want: int) -> Grant:
        plan = self.plan
        async with self._call_slots:
            self.store_calls += 1
            try:
                async with asyncio.timeout(STORE_CALL_TIMEOUT):
                    return await self._store.take_tokens(
                        f"{self.name}:{key}", plan.rate, plan.capacity, want, plan.idle_ttl
                    )
            except TimeoutError:
                raise StoreError(
                    f"the cluster store did not answer within {STORE_CALL_TIMEOUT}s"
                ) from None

    # ---- background: the store's health

    def _store_failed(self, error: Exception) -> None:
        if not isinstance(error, StoreError):
            logger.opt(exception=error).error("rate limit {}: leasing tokens failed", self.name)
        self._next_probe_at = self._clock() + PROBE_INTERVAL
        if self._fallback is None:
            self._fallback = self._local_share()
            logger.warning(
                "rate limit {}: cannot lease tokens ({}); deciding by on_store_error={}",
                self.name,
                error,
                self.policy.on_store_error,
            )

    def _store_answered(self) -> None:
        if self._fallback is not None:
            self._fallback = None
            logger.warning("rate limit {}: the cluster store answers again", self.name)

    def _local_share(self) -> LocalLimiter:
        """This node's share of the policy: rate and burst divided by the live nodes."""
        try:
            nodes = max(1, int(self._live_nodes()))
        except Exception:  # a failing member count must not fail requests
            logger.exception("rate limit {}: counting live nodes failed; assuming 1", self.name)
            nodes = 1
        policy = self.policy
        share = policy.model_copy(
            update={"rate": policy.rate / nodes, "burst": max(1, math.ceil(policy.burst / nodes))}
        )
        return LocalLimiter(share, self._clock, max_keys=self._max_keys)

    # ---- background: idle keys

    def _start_sweeper(self) -> None:
        if self._sweeper is None and not self._closed:
            self._sweeper = self._spawn(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self._idle_after / 2))
            try:
                self.expire_idle()
            except Exception:  # the next sweep may succeed; requests go on
                logger.exception("rate limit {}: expiring idle keys failed", self.name)

    def expire_idle(self) -> int:
        """Drops keys unused for `idle_after` and gives their stock back; returns how many."""
        now = self._clock()
        dropped = 0
        while self._leases:
            key, lease = next(iter(self._leases.items()))
            # Keys are in order of use, so the first recent one ends the scan; a key whose
            # refill is still out waits for the next sweep.
            if now - lease.last_used < self._idle_after or lease.refill is not None:
                break
            self._drop(key, lease)
            dropped += 1
        if self._fallback is not None:
            self._fallback.expire_idle()
        return dropped

    def _drop(self, key: str, lease: _Lease) -> None:
        del self._leases[key]
        lease.dropped = True
        if lease.timer is not None:
            lease.timer.cancel()
            lease.timer = None
        if lease.refill is None:
            self._settle_later(key, lease)

    def _settle_later(self, key: str, lease: _Lease) -> None:
        if lease.stock != 0 and not self._closed and self._fallback is None:
            self._spawn(self._settle(key, lease))

    async def _settle(self, key: str, lease: _Lease) -> None:
        """Gives unused tokens back (want < 0), or repays a debt (want > 0)."""
        want, lease.stock = -lease.stock, 0
        try:
            await self._take(key, want)
        except Exception as error:  # tokens lost; the bucket refills anyway
            self._store_failed(error)

    # ---- tasks and shutdown

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> "asyncio.Task[None]":
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: "asyncio.Task[None]") -> None:
        self._tasks.discard(task)
        # The coroutines catch their own errors; this is the net under them.
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.opt(exception=error).error("rate limit {}: background task failed", self.name)

    async def wait_for_store_calls(self) -> None:
        """Returns once no refill or give-back is in flight (the idle sweeper does not count)."""
        while calls := [task for task in self._tasks if task is not self._sweeper]:
            await asyncio.wait(calls)

    async def close(self) -> None:
        """Stops the background work and gives leased tokens back. Requests still admitted
        afterwards are decided as without the store (by `on_store_error`)."""
        if self._closed:
            return
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for lease in self._leases.values():
            if lease.timer is not None:
                lease.timer.cancel()
        await self._finish_tasks()
        leases, self._leases = list(self._leases.items()), OrderedDict()
        if self._fallback is None:
            await self._settle_all([(key, lease) for key, lease in leases if lease.stock != 0])
            self._fallback = self._local_share()

    async def _finish_tasks(self) -> None:
        """Lets calls in flight land (their tokens are given back next), then cancels the rest."""
        tasks = list(self._tasks)
        if not tasks:
            return
        calls = [task for task in tasks if task is not self._sweeper]
        if calls:
            await asyncio.wait(calls, timeout=CLOSE_TIMEOUT)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _settle_all(self, leases: list[tuple[str, _Lease]]) -> None:
        if not leases:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.gather(*(self._settle(key, lease) for key, lease in leases))
