"""The rise/fall state machine of active health checks, flap damping and stored verdicts."""

import json
from typing import Any

import pytest

from loadweaver.config.models import HealthCheck
from loadweaver.health.verdict import HealthState, Verdict

START = 1_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def health(**fields: Any) -> HealthCheck:
    return HealthCheck(**{"rise": 2, "fall": 3, **fields})


def record_many(state: HealthState, ok: bool, count: int) -> list[Verdict | None]:
    reason = "ok" if ok else "status 503"
    return [state.record(ok, reason, 1.5) for _ in range(count)]


def flap(state: HealthState, clock: FakeClock, times: int) -> None:
    """Changes the state `times` times, one second apart (rise and fall are 1)."""
    for _ in range(times):
        clock.advance(1)
        assert state.record(not state.up, "flip", None) is not None


# ---- rise and fall ----


def test_a_new_backend_is_up_and_not_checked_yet(clock: FakeClock) -> None:
    verdict = HealthState(health(), clock=clock).verdict
    assert verdict == Verdict(up=True, reason="not checked yet", changed_at=START)


def test_an_up_backend_goes_down_on_the_fall_th_consecutive_failure(clock: FakeClock) -> None:
    state = HealthState(health(fall=3), clock=clock)
    assert record_many(state, False, 2) == [None, None]
    assert state.up
    clock.advance(5)
    changed = state.record(False, "status 503", 2.0)
    assert changed is not None
    assert not changed.up
    assert changed.reason == "status 503"
    assert changed.failures == 3
    assert changed.changed_at == START + 5
    assert changed.latency_ms == 2.0
    assert state.verdict == changed


def test_a_success_between_failures_starts_the_count_again(clock: FakeClock) -> None:
    state = HealthState(health(fall=3), clock=clock)
    record_many(state, False, 2)
    state.record(True, "ok", 1.0)
    assert record_many(state, False, 2) == [None, None]
    assert state.up
    assert state.verdict.failures == 2


def test_a_down_backend_comes_up_after_rise_successes(clock: FakeClock) -> None:
    state = HealthState(health(rise=2), up=False, clock=clock)
    assert state.record(True, "ok", 1.0) is None
    assert not state.up
    changed = state.record(True, "ok", 1.0)
    assert changed is not None
    assert changed.up
    assert changed.successes == 2
    assert changed.reason == "ok"


def test_further_results_in_the_same_direction_report_no_change(clock: FakeClock) -> None:
    state = HealthState(health(fall=1), clock=clock)
    assert state.record(False, "connection refused", None) is not None
    assert record_many(state, False, 3) == [None, None, None]
    assert state.verdict.failures == 4
    assert state.verdict.reason == "status 503"


def test_transitioning_while_results_go_against_the_state(clock: FakeClock) -> None:
    state = HealthState(health(rise=2, fall=3), clock=clock)
    assert not state.transitioning
    state.record(False, "status 500", 1.0)
    assert state.transitioning  # up, but failing
    state.record(True, "ok", 1.0)
    assert not state.transitioning
    record_many(state, False, 3)
    assert not state.up
    assert not state.transitioning  # down and failing: settled
    state.record(True, "ok", 1.0)
    assert state.transitioning  # down, but succeeding
    state.record(True, "ok", 1.0)
    assert state.up
    assert not state.transitioning


# ---- flap damping ----


def test_a_fall_that_reaches_the_flap_limit_holds_the_backend_down(clock: FakeClock) -> None:
    state = HealthState(
        health(rise=1, fall=1, flap_limit=3, flap_window=60, flap_hold=30), clock=clock
    )
    flap(state, clock, 2)  # down, up
    assert not state.flapping
    clock.advance(1)
    changed = state.record(False, "status 503", 1.0)  # the third change
    assert changed is not None
    assert changed.held_until == clock.now + 30
    assert changed.flaps == 3
    assert state.flapping
    assert state.held


def test_successes_during_the_hold_do_not_bring_the_backend_up(clock: FakeClock) -> None:
    state = HealthState(health(rise=2, fall=1, flap_limit=3, flap_hold=30), clock=clock)
    state.record(False, "a", None)
    record_many(state, True, 2)
    state.record(False, "b", None)  # third change: held until START + 30
    for _ in range(5):
        clock.advance(5)
        assert state.record(True, "ok", 1.0) is None
    assert not state.up
    assert not state.transitioning  # no point probing fast while held
    assert state.verdict.reason == "ok, but held down for flapping"
    assert state.verdict.successes == 5


def test_after_the_hold_rise_successes_are_needed_as_usual(clock: FakeClock) -> None:
    state = HealthState(health(rise=2, fall=1, flap_limit=3, flap_hold=30), clock=clock)
    state.record(False, "a", None)
    record_many(state, True, 2)
    state.record(False, "b", None)
    record_many(state, True, 4)  # inside the hold: do not count
    clock.advance(30)
    assert not state.held
    assert state.verdict.held_until == 0.0
    assert state.record(True, "ok", 1.0) is None
    assert state.transitioning
    changed = state.record(True, "ok", 1.0)
    assert changed is not None
    assert changed.up


def test_changes_older_than_the_flap_window_do_not_count(clock: FakeClock) -> None:
    state = HealthState(
        health(rise=1, fall=1, flap_limit=3, flap_window=10, flap_hold=30), clock=clock
    )
    for _ in range(6):
        clock.advance(6)  # at most two changes inside any 10 s
        changed = state.record(not state.up, "flip", None)
        assert changed is not None
        assert changed.held_until == 0.0
        assert changed.flaps <= 2
    assert not state.flapping


def test_the_flap_count_decays_once_the_window_passes(clock: FakeClock) -> None:
    state = HealthState(health(rise=1, fall=1, flap_limit=4, flap_window=60), clock=clock)
    flap(state, clock, 4)
    assert state.flapping
    assert state.verdict.flaps == 4
    clock.advance(61)
    assert not state.flapping
    assert state.verdict.flaps == 0


# ---- stored verdicts ----


def test_a_state_seeded_from_a_stored_verdict_continues_its_counts(clock: FakeClock) -> None:
    stored = Verdict(
        up=False, reason="status 503", changed_at=START - 100, successes=1, latency_ms=3.0
    )
    state = HealthState.from_verdict(health(rise=2), stored, clock)
    assert state.verdict == stored
    assert state.transitioning
    changed = state.record(True, "ok", 1.0)
    assert changed is not None
    assert changed.up


def test_a_seeded_hold_keeps_the_backend_down_until_it_ends(clock: FakeClock) -> None:
    stored = Verdict(
        up=False, reason="status 503", changed_at=START - 5, flaps=4, held_until=START + 20
    )
    state = HealthState.from_verdict(health(rise=1, flap_limit=4), stored, clock)
    assert state.held
    assert state.flapping
    assert state.record(True, "ok", 1.0) is None
    clock.advance(20)
    assert state.record(True, "ok", 1.0) is not None


def test_a_seeded_flap_count_still_damps_the_next_fall(clock: FakeClock) -> None:
    stored = Verdict(up=True, reason="ok", changed_at=START - 1, flaps=3)
    state = HealthState.from_verdict(health(fall=1, flap_limit=4, flap_hold=30), stored, clock)
    changed = state.record(False, "connection refused", None)
    assert changed is not None
    assert changed.held_until == START + 30


def test_a_verdict_survives_a_json_round_trip() -> None:
    verdict = Verdict(
        up=False,
        reason="timed out after 1s",
        changed_at=START,
        successes=0,
        failures=4,
        latency_ms=1000.2,
        flaps=2,
        held_until=START + 30,
    )
    data = json.loads(json.dumps(verdict.to_json()))
    assert Verdict.from_json(data) == verdict
    assert Verdict.from_json(Verdict(True, "ok", START).to_json()).latency_ms is None


def test_a_stored_verdict_without_the_optional_fields_takes_their_defaults() -> None:
    verdict = Verdict.from_json({"up": True, "reason": "ok", "changed_at": 5})
    assert verdict == Verdict(up=True, reason="ok", changed_at=5.0)


@pytest.mark.parametrize(
    "broken",
    [
        {"reason": "ok", "changed_at": 1.0},
        {"up": "yes", "reason": "ok", "changed_at": 1.0},
        {"up": True, "reason": "ok", "changed_at": True},
        {"up": True, "reason": "ok", "changed_at": 1.0, "failures": -1},
        {"up": True, "reason": "ok", "changed_at": 1.0, "latency_ms": "fast"},
    ],
)
def test_a_malformed_stored_verdict_is_rejected(broken: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="verdict field"):
        Verdict.from_json(broken)


# ---- expected statuses ----


@pytest.mark.parametrize(
    ("expect_status", "status", "accepted"),
    [
        ("200-399,418", 200, True),
        ("200-399,418", 399, True),
        ("200-399,418", 418, True),
        ("200-399,418", 199, False),
        ("200-399,418", 400, False),
        ("200-399,418", 417, False),
        ("200-399,418", 503, False),
        (" 204 , 500 - 502 ", 501, True),
        (" 204 , 500 - 502 ", 200, False),
        ("200", 200, True),
    ],
)
def test_expect_status_accepts_listed_statuses_and_ranges(
    expect_status: str, status: int, accepted: bool
) -> None:
    assert HealthCheck(expect_status=expect_status).accepts(status) is accepted
