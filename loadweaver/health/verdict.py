"""The verdict on one backend and the rise/fall state machine that reaches it.

HAProxy semantics: a backend that is up goes down after `fall` consecutive failed probes; one
that is down comes back after `rise` consecutive successes. On top of that, flap damping: when
the state changed `flap_limit` times within `flap_window`, the next fall holds the backend down
for `flap_hold`, and only successes after the hold count towards its rise.
"""

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TypeVar

from loadweaver.config.models import HealthCheck

Clock = Callable[[], float]
JsonValue = bool | int | float | str | None

NOT_CHECKED = "not checked yet"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the active checks say about one backend right now."""

    up: bool
    reason: str  # the last probe's outcome, such as "ok" or "status 503"
    changed_at: float  # wall clock of the last change of `up`
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    latency_ms: float | None = None  # of the last probe
    flaps: int = 0  # changes of `up` within the flap window
    held_until: float = 0.0  # wall clock; 0 when not held down for flapping

    def to_json(self) -> dict[str, JsonValue]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> "Verdict":
        """Raises ValueError when a field is missing or of the wrong type."""
        return cls(
            up=_field(data, "up", bool),
            reason=_field(data, "reason", str),
            changed_at=_number(data, "changed_at"),
            successes=_count(data, "successes"),
            failures=_count(data, "failures"),
            latency_ms=None if data.get("latency_ms") is None else _number(data, "latency_ms"),
            flaps=_count(data, "flaps"),
            held_until=_number(data, "held_until", 0.0),
        )


def _field(data: Mapping[str, object], name: str, kind: type[T]) -> T:
    value = data.get(name)
    if not isinstance(value, kind):
        raise ValueError(f"verdict field {name!r} must be a {kind.__name__}, not {value!r}")
    return value


def _number(data: Mapping[str, object], name: str, default: float | None = None) -> float:
    value = data.get(name, default)
    # bool is an int subclass, but True is no timestamp.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"verdict field {name!r} must be a number, not {value!r}")
    return float(value)


def _count(data: Mapping[str, object], name: str) -> int:
    value = data.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"verdict field {name!r} must be a count, not {value!r}")
    return value


class HealthState:
    """The rise/fall state machine of one backend; feed it every probe result with `record`."""

    def __init__(self, check: HealthCheck, up: bool = True, clock: Clock = time.time) -> None:
        self.check = check  # may be replaced while running: the counts carry over
        self._clock = clock
        self._up = up
        self._reason = NOT_CHECKED
        self._changed_at = clock()
        self._successes = 0
        self._failures = 0
        self._rise_progress = 0  # successes since the hold ended: only these count to rise
        self._latency_ms: float | None = None
        self._changes: deque[float] = deque()  # when `up` changed, within the flap window
        self._held_until = 0.0

    @classmethod
    def from_verdict(
        cls, check: HealthCheck, verdict: Verdict, clock: Clock = time.time
    ) -> "HealthState":
        """Resumes from a stored verdict, so a restart keeps states, counts and holds."""
        state = cls(check, verdict.up, clock)
        state._reason = verdict.reason
        state._changed_at = verdict.changed_at
        state._successes = verdict.successes
        state._failures = verdict.failures
        state._latency_ms = verdict.latency_ms
        state._held_until = verdict.held_until
        state._rise_progress = 0 if state.held else verdict.successes
        # Only the count survives storage: dating every change at the last one keeps the
        # damping at least as strict as it was.
        state._changes.extend([verdict.changed_at] * verdict.flaps)
        return state

    @property
    def up(self) -> bool:
        return self._up

    @property
    def held(self) -> bool:
        """Held down for flapping: successes do not bring the backend up yet."""
        return self._clock() < self._held_until

    @property
    def flapping(self) -> bool:
        """The state changed at least `flap_limit` times within the flap window."""
        return self._recent_changes(self._clock()) >= self.check.flap_limit

    @property
    def transitioning(self) -> bool:
        """Results against the current state are coming in: time to probe faster."""
        if self._up:
            return self._failures > 0
        return self._rise_progress > 0

    @property
    def verdict(self) -> Verdict:
        now = self._clock()
        return Verdict(
            up=self._up,
            reason=self._reason,
            changed_at=self._changed_at,
            successes=self._successes,
            failures=self._failures,
            latency_ms=self._latency_ms,
            flaps=self._recent_changes(now),
            held_until=self._held_until if now < self._held_until else 0.0,
        )

    def record(self, ok: bool, reason: str, latency_ms: float | None) -> Verdict | None:
        """Counts one probe result; returns the new verdict when `up` changed, else None."""
        now = self._clock()
        self._latency_ms = latency_ms
        self._reason = reason
        if ok:
            self._successes += 1
            self._failures = 0
            held = now < self._held_until
            self._rise_progress = 0 if held else self._rise_progress + 1
            if held:
                self._reason = f"{reason}, but held down for flapping"
        else:
            self._failures += 1
            self._successes = 0
            self._rise_progress = 0
        if self._up and self._failures >= self.check.fall:
            self._change(now, up=False)
            return self.verdict
        if not self._up and self._rise_progress >= self.check.rise:
            self._change(now, up=True)
            return self.verdict
        return None

    def _change(self, now: float, up: bool) -> None:
        self._up = up
        self._changed_at = now
        self._changes.append(now)
        if not up and self._recent_changes(now) >= self.check.flap_limit:
            self._held_until = now + self.check.flap_hold
            self._rise_progress = 0

    def _recent_changes(self, now: float) -> int:
        while self._changes and self._changes[0] <= now - self.check.flap_window:
            self._changes.popleft()
        return len(self._changes)
