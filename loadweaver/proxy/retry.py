"""Retries as the data plane applies them: what may be retried, and a budget so retries never
amplify an outage (at most `budget` of a pool's requests in flight are retries, with a floor
so a quiet pool can still retry)."""

from dataclasses import dataclass

from loadweaver.config.models import Retries

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
MIN_CONCURRENT_RETRIES = 3


class RetryBudget:
    """Retries in flight for one pool; it outlives snapshots like the pool's connections."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = 0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    on_connect: bool
    on_reset: bool
    on_timeout: bool
    statuses: frozenset[int]
    budget: float
    per_try_timeout: float  # 0: the pool's response timeout
    counter: RetryBudget

    @classmethod
    def from_config(cls, retries: Retries, counter: RetryBudget) -> "RetryPolicy | None":
        if retries.attempts == 0:
            return None
        on = set(retries.on)
        return cls(
            attempts=retries.attempts,
            on_connect="connect_failure" in on,
            on_reset="reset_before_response" in on,
            on_timeout="timeout" in on,
            statuses=frozenset(int(code) for code in on if code.isdigit()),
            budget=retries.budget,
            per_try_timeout=retries.per_try_timeout,
            counter=counter,
        )

    def allows_another(self, in_flight: int) -> bool:
        allowed = max(MIN_CONCURRENT_RETRIES, int(self.budget * in_flight))
        return self.counter.active < allowed
