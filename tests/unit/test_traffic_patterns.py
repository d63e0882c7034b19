"""Traffic patterns fed with finished requests: counting, sampling under load, cluster merges."""

from types import SimpleNamespace
from typing import Any, cast

from loadweaver.config.observability import TrafficPatternsConfig
from loadweaver.observability.recorder import Finished
from loadweaver.observability.traffic import (
    LOOKED_AT_PER_SECOND,
    TrafficPatterns,
    merge_records,
    view,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def finished(client_ip: str, path: bytes, status: int = 200) -> Finished:
    client = SimpleNamespace(client_ip=client_ip, trusted=False)
    exchange = SimpleNamespace(target=path, headers=[(b"User-Agent", b"ua")], special=[])
    return cast(Finished, (client, exchange, status, 0.0, "", 0))


def feed(patterns: TrafficPatterns, entries: list[Finished], chunk: int = 256) -> None:
    for start in range(0, len(entries), chunk):
        patterns.add(entries[start : start + chunk])


def test_every_request_is_counted_below_the_sampling_rate() -> None:
    clock = Clock()
    patterns = TrafficPatterns(TrafficPatternsConfig(), clock)
    feed(patterns, [finished("10.0.0.1", b"/a?x=1")] * 30 + [finished("10.0.0.2", b"/b", 503)] * 5)
    document = view(patterns.summaries(), patterns.covered_seconds(), top=5)
    assert document["requests"] == 35
    assert [entry["key"] for entry in document["paths"]["top"]] == ["/a", "/b"]
    assert [entry["key"] for entry in document["status_codes"]["top"]] == ["200", "503"]


def test_under_load_every_kth_request_is_counted_k_times() -> None:
    clock = Clock()
    patterns = TrafficPatterns(TrafficPatternsConfig(), clock)
    heavy = 3 * LOOKED_AT_PER_SECOND
    feed(patterns, [finished("10.0.0.1", b"/")] * heavy)  # one busy second...
    clock.now += 1.0
    entries = [finished("10.0.0.1", b"/hot")] * (heavy * 3 // 4)
    entries += [finished("10.0.0.2", b"/cold")] * (heavy // 4)
    feed(patterns, entries)  # ...makes the next one sampled
    assert patterns.step == 3
    clients = dict(patterns.summaries()["clients"].top(2))
    assert abs(clients["10.0.0.1"] - (heavy + heavy * 3 // 4)) <= 3 * patterns.step
    assert abs(clients["10.0.0.2"] - heavy // 4) <= 3 * patterns.step


def test_records_from_nodes_merge_and_a_malformed_one_is_skipped() -> None:
    clock = Clock()
    one, two = (TrafficPatterns(TrafficPatternsConfig(), clock) for _ in range(2))
    feed(one, [finished("10.0.0.1", b"/")] * 10)
    feed(two, [finished("10.0.0.1", b"/")] * 5 + [finished("10.0.0.9", b"/x")] * 7)
    broken: dict[str, Any] = {"window": 60, "step": 1, "clients": {"top": "nope"}}
    merged, window, step = merge_records([one.to_record(), two.to_record(), broken], 256)
    assert dict(merged["clients"].top(5)) == {"10.0.0.1": 15, "10.0.0.9": 7}
    assert merged["status_codes"].total == 22
    assert (window, step) == (one.covered_seconds(), 1)
