"""Series of things the config no longer names are dropped; everything else is kept."""

from loadweaver.config.loader import build_config
from loadweaver.observability.live_labels import live_labels
from loadweaver.observability.metrics import Metrics
from loadweaver.observability.request_tally import RequestTally

CONFIG = build_config(
    {
        "listeners": [{"name": "web", "bind": "127.0.0.1:8080"}],
        "pools": {
            "app": {"backends": [{"name": "b0", "url": "http://127.0.0.1:1"}]},
            "api": {"backends": [{"name": "a0", "url": "http://127.0.0.1:2"}]},
        },
        "routes": [{"name": "main", "pool": "app"}, {"name": "v1", "pool": "api"}],
        "rate_limits": {"per-ip": {"rate": 10}},
    },
    "test",
)
LIVE = live_labels(CONFIG)


def test_tally_rows_need_a_live_listener_route_pool_and_backend() -> None:
    kept = [
        ("web", "", "", ""),  # a local reply before routing
        ("web", "main", "app", ""),  # routed, never reached a backend
        ("web", "main", "app", "b0"),
        ("web", "main", "app", "other"),  # the tally's overflow row
    ]
    dropped = [
        ("gone", "", "", ""),
        ("web", "old", "app", "b0"),
        ("web", "main", "api", "a0"),  # the route now sends elsewhere
        ("web", "main", "app", "b9"),
    ]
    assert [LIVE.keeps_row(key) for key in kept] == [True] * len(kept)
    assert [LIVE.keeps_row(key) for key in dropped] == [False] * len(dropped)


def test_the_tally_drops_stale_rows_now_and_when_a_straggler_makes_one_again() -> None:
    tally = RequestTally((0.1, 1.0))
    rows = tally.rows  # the recorder holds this very dict
    tally.row(("web", "main", "app", "b0")).durations.append(0.05)
    tally.row(("web", "main", "app", "b9")).counts[2] += 1

    tally.retain_only(LIVE.keeps_row)
    assert list(rows) == [("web", "main", "app", "b0")]
    assert rows[("web", "main", "app", "b0")].buckets == [1, 0, 0]

    tally.row(("web", "main", "app", "b9")).counts[5] += 1  # a request in flight at removal
    tally.fold()
    assert list(rows) == [("web", "main", "app", "b0")]


def test_labelled_series_of_removed_pools_backends_and_policies_go() -> None:
    metrics = Metrics()
    metrics.upstream_error("app", "b0", "connect")
    metrics.upstream_error("app", "b9", "reset")
    metrics.upstream_connect.labels("app", "b9").observe(0.01)
    metrics.health_checks.labels("gone", "success").inc()
    metrics.health_checks.labels("app", "failure").inc()
    metrics.rate_limited.labels("old-policy").inc()
    metrics.rate_limited.labels("per-ip").inc()

    metrics.retain_only(LIVE)
    left = {
        tuple(sorted(sample.labels.items()))
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name.startswith("loadweaver_")
        and sample.name.endswith("_total")
        and sample.labels
    }
    responses = {(("code", f"{status_class}xx"),) for status_class in range(1, 6)}
    assert left - responses == {
        (("backend", "b0"), ("kind", "connect"), ("pool", "app")),
        (("pool", "app"), ("result", "failure")),
        (("policy", "per-ip"),),
    }
    assert "b9" not in str(list(metrics.registry.collect()))


def test_sweeping_before_any_config_keeps_everything() -> None:
    metrics = Metrics()
    metrics.upstream_error("app", "b9", "reset")
    metrics.sweep()
    assert "b9" in str(list(metrics.registry.collect()))
