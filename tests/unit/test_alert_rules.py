"""Alert rules: what each metric reads from observations, and how instances fire and resolve."""

from typing import Any

import pytest

from loadweaver.config.loader import ConfigError, build_config
from loadweaver.config.observability import AlertRule
from loadweaver.observability.alert_rules import Reading, histogram_quantile, read
from loadweaver.observability.alerts import Alert, AlertBook, Notification
from loadweaver.observability.observation import Observation, PoolNumbers

BOUNDS = (0.01, 0.1, 1.0)


def rule(**fields: Any) -> AlertRule:
    return AlertRule.model_validate({"name": "r", **fields})


def at(
    time: float,
    ok: int = 0,
    errors: int = 0,
    buckets: tuple[int, ...] = (0, 0, 0, 0),
    pool: str = "app",
    **rest: Any,
) -> Observation:
    responses = (0, 0, ok, 0, 0, errors, 0, 0, 0, 0)
    return Observation(time, BOUNDS, {pool: PoolNumbers(responses, buckets)}, **rest)


def value_of(readings: list[Reading]) -> float:
    (reading,) = readings
    return reading.value


def test_error_ratio_is_taken_over_the_window_and_summed_over_nodes() -> None:
    history_a = [at(0, ok=100), at(30, ok=150, errors=10), at(60, ok=190, errors=10)]
    history_b = [at(0, ok=0), at(60, ok=40, errors=30)]
    ratio = rule(metric="error_ratio", above="5%", window="60s")
    readings = read(ratio, {"a": history_a, "b": history_b}, history_a[-1])
    # a: 90 ok + 10 errors; b: 40 ok + 30 errors -> 40 / 170
    assert value_of(readings) == pytest.approx(40 / 170)
    # Only the last 30 s: a has 40 ok and no errors.
    recent = rule(metric="error_ratio", above="5%", window="30s")
    assert value_of(read(recent, {"a": history_a}, history_a[-1])) == 0.0


def test_a_node_restart_counts_from_zero_like_prometheus() -> None:
    history = [at(0, ok=1000), at(10, ok=1100), at(20, ok=30)]  # restarted between 10 and 20
    rate = rule(metric="request_rate", above=1, window="20s")
    assert value_of(read(rate, {"a": history}, history[-1])) == pytest.approx(130 / 20)


def test_no_samples_or_no_traffic_reads_nothing() -> None:
    ratio = rule(metric="error_ratio", above=0.1)
    only = at(0, ok=5)
    assert read(ratio, {"a": [only]}, only) == []
    quiet = [at(0, ok=5), at(10, ok=5)]
    assert read(ratio, {"a": quiet}, quiet[-1]) == []


def test_latency_quantiles_interpolate_within_buckets() -> None:
    assert histogram_quantile(0.5, BOUNDS, [0, 10, 0, 0]) == pytest.approx(0.055)
    assert histogram_quantile(0.99, BOUNDS, [0, 0, 0, 5]) == 1.0  # past every bound
    assert histogram_quantile(0.5, BOUNDS, [0, 0, 0, 0]) is None
    history = [at(0), at(10, buckets=(90, 0, 10, 0))]
    p99 = rule(metric="latency_p99", above="500ms", window="10s")
    value = value_of(read(p99, {"a": history}, history[-1]))
    assert 0.1 < value <= 1.0


def test_states_come_from_the_judges_own_view() -> None:
    own = at(0, backends_down=(("app", "b1"), ("api", "x")), panic_pools=("api",), store_up=False)
    down = read(rule(metric="backend_down"), {}, own)
    assert [dict(reading.labels) for reading in down] == [
        {"pool": "app", "backend": "b1"},
        {"pool": "api", "backend": "x"},
    ]
    assert len(read(rule(metric="backend_down", pool="api"), {}, own)) == 1
    assert value_of(read(rule(metric="store_down"), {}, own)) == 1.0
    assert [dict(r.labels) for r in read(rule(metric="pool_panic"), {}, own)] == [{"pool": "api"}]


def test_pool_filter_and_rates_of_limits_and_upstream_errors() -> None:
    first = Observation(0, BOUNDS, {"app": PoolNumbers(), "api": PoolNumbers()}, rate_limited=0)
    second = Observation(
        10,
        BOUNDS,
        {"app": PoolNumbers(upstream_errors=20), "api": PoolNumbers(upstream_errors=5)},
        rate_limited=50,
    )
    history = {"a": [first, second]}
    limited = rule(metric="rate_limited_rate", above=1, window="10s")
    assert value_of(read(limited, history, second)) == 5.0
    upstream = rule(metric="upstream_error_rate", above=1, window="10s", pool="api")
    assert value_of(read(upstream, history, second)) == 0.5


class Told:
    def __init__(self) -> None:
        self.notes: list[Notification] = []

    def __call__(self, notification: Notification, rule: AlertRule | None) -> None:
        self.notes.append(notification)

    @property
    def statuses(self) -> list[str]:
        return [note.status for note in self.notes]


def test_an_alert_fires_after_for_and_resolves_once() -> None:
    told = Told()
    book = AlertBook(told, {"cluster": "c"})
    ratio = rule(metric="error_ratio", above=0.1, **{"for": "20s"})
    bad, good = [Reading((), 0.5)], [Reading((), 0.0)]
    book.update(ratio, bad, now=0)
    book.update(ratio, bad, now=10)
    assert told.statuses == []
    assert [alert.state for alert in book.alerts.values()] == ["pending"]
    book.update(ratio, bad, now=20)
    book.update(ratio, bad, now=30)
    assert told.statuses == ["firing"]
    book.update(ratio, good, now=40)
    book.update(ratio, good, now=50)
    assert told.statuses == ["firing", "resolved"]
    assert told.notes[1].ended_at == 40
    assert dict(told.notes[0].alert.labels) == {
        "alertname": "r",
        "cluster": "c",
        "severity": "warning",
    }


def test_a_pending_alert_that_clears_tells_nobody() -> None:
    told = Told()
    book = AlertBook(told)
    ratio = rule(metric="error_ratio", above=0.1, **{"for": "1m"})
    book.update(ratio, [Reading((), 0.5)], now=0)
    book.update(ratio, [], now=10)  # no traffic any more
    assert told.notes == []
    assert book.alerts == {}


def test_instances_are_separate_and_a_vanished_one_resolves() -> None:
    told = Told()
    book = AlertBook(told)
    down = rule(metric="backend_down")
    one = Reading((("pool", "app"), ("backend", "b1")), 1.0)
    two = Reading((("pool", "app"), ("backend", "b2")), 1.0)
    book.update(down, [one, two], now=0)
    assert told.statuses == ["firing", "firing"]
    book.update(down, [two], now=5)
    assert told.statuses == ["firing", "firing", "resolved"]
    assert dict(told.notes[-1].alert.labels)["backend"] == "b1"


def test_repeat_interval_sends_again_while_firing() -> None:
    told = Told()
    book = AlertBook(told)
    down = rule(metric="store_down")
    for now in (0, 30, 60, 90, 120):
        book.update(down, [Reading((), 1.0)], now=now, repeat_interval=60)
    assert told.statuses == ["firing", "firing", "firing"]


def test_handed_over_alerts_are_not_fired_twice_but_do_resolve() -> None:
    told = Told()
    book = AlertBook(told)
    down = rule(metric="store_down")
    labels = (("alertname", "r"), ("severity", "warning"))
    handed = Alert("r", labels, "firing", since=0, value=1.0, summary="x", fired_at=0)
    book.seed([Alert.from_record(handed.to_record())])
    book.update(down, [Reading((), 1.0)], now=10)
    assert told.notes == []
    book.update(down, [Reading((), 0.0)], now=20)
    assert told.statuses == ["resolved"]


def test_removing_a_rule_resolves_what_it_fired() -> None:
    told = Told()
    book = AlertBook(told)
    book.update(rule(metric="store_down"), [Reading((), 1.0)], now=0)
    book.retain_rules([], now=5)
    assert told.statuses == ["firing", "resolved"]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"metric": "error_ratio"}, "needs exactly one of above: or below:"),
        ({"metric": "backend_down", "above": 1}, "takes no above or below"),
        ({"metric": "store_down", "scope": "cluster"}, "can only be scope: node"),
        ({"metric": "latency_p99", "above": "fast"}, "invalid duration"),
        ({"metric": "errors", "above": 1}, "Input should be 'error_ratio'"),
        ({"metric": "error_ratio", "above": 0.1, "webhooks": ["nope"]}, "not in alerts.webhooks"),
    ],
)
def test_bad_rules_are_refused_with_their_field_path(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({"alerts": {"rules": [{"name": "r", **fields}]}}, "alerts.yaml")
    assert problem in str(caught.value)
    assert "alerts.rules.0" in str(caught.value)


@pytest.mark.parametrize(
    ("sections", "problem"),
    [
        (
            {
                "alerts": {
                    "rules": [{"name": "r", "metric": "request_rate", "below": 1, "pool": "x"}]
                }
            },
            "alerts.rules.0.pool: pool 'x' does not exist (pools: app)",
        ),
        (
            {
                "metrics": {"enabled": False},
                "alerts": {"rules": [{"name": "r", "metric": "latency_p99", "above": "1s"}]},
            },
            "alerts.rules.0.metric: latency_p99 reads the per-request metrics",
        ),
    ],
)
def test_rules_must_fit_the_rest_of_the_config(sections: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({"pools": {"app": {}}, **sections}, "alerts.yaml")
    assert problem in str(caught.value)


def test_thresholds_take_the_metrics_own_units() -> None:
    assert rule(metric="error_ratio", above="5%").above == pytest.approx(0.05)
    assert rule(metric="latency_p99", above="250ms").above == pytest.approx(0.25)
    assert rule(metric="request_rate", below=10).below == 10
    assert rule(metric="store_down").effective_scope == "node"
    assert rule(metric="error_ratio", above=1).effective_scope == "cluster"


def test_a_webhook_header_aiohttp_could_not_send_is_refused() -> None:
    hook = {"name": "ops", "url": "http://hooks.test/", "headers": {"Authorization": "Bearer x\n"}}
    with pytest.raises(ConfigError) as caught:
        build_config({"alerts": {"webhooks": [hook]}}, "alerts.yaml")
    assert "alerts.webhooks.0.headers: the value of header Authorization" in str(caught.value)
