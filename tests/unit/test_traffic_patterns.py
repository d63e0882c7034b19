"""Traffic patterns fed with finished requests: counting, sampling under load, cluster merges."""

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest

from loadweaver.config.observability import TrafficPatternsConfig
from loadweaver.observability.finished import SAMPLES_PER_SECOND, FinishedReader
from loadweaver.observability.recorder import Finished, RequestRecorder
from loadweaver.observability.request_tally import RequestTally
from loadweaver.observability.traffic import TrafficPatterns, merge_records, view


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def finished(client_ip: str, path: bytes, status: int = 200) -> Finished:
    client = SimpleNamespace(client_ip=client_ip, trusted=False)
    exchange = SimpleNamespace(target=path, headers=[(b"User-Agent", b"ua")], special=[])
    return cast(Finished, (client, exchange, status, 0.0, "", 0))


def test_every_request_is_counted_below_the_sampling_rate() -> None:
    clock = Clock()
    patterns = TrafficPatterns(TrafficPatternsConfig(), clock)
    patterns.add([finished("10.0.0.1", b"/a?x=1")] * 30 + [finished("10.0.0.2", b"/b", 503)] * 5)
    document = view(patterns.summaries(), patterns.covered_seconds(), top=5)
    assert document["requests"] == 35
    assert [entry["key"] for entry in document["paths"]["top"]] == ["/a", "/b"]
    assert [entry["key"] for entry in document["status_codes"]["top"]] == ["200", "503"]


async def test_under_load_every_kth_request_is_queued_and_counts_k_times() -> None:
    clock = Clock()
    recorder = RequestRecorder(RequestTally([1.0]))
    recorder.set_metrics(False)
    reader = FinishedReader(recorder, lambda _: None, clock)
    patterns = TrafficPatterns(TrafficPatternsConfig(), clock)
    batches: list[tuple[int, int]] = []

    def read(batch: Sequence[Finished], weight: int) -> None:
        batches.append((len(batch), weight))
        patterns.add(batch, weight)

    reader.read_sampled(read)
    busy = 3 * SAMPLES_PER_SECOND
    hot, cold = finished("10.0.0.1", b"/hot"), finished("10.0.0.2", b"/cold")
    for entry in [hot] * busy:  # a busy second, all of it looked at...
        recorder.record(*entry[:4])
    clock.now += 1.0
    await reader.read()
    for index in range(busy):  # ...sets the next one's step to 3
        recorder.record(*(hot if index % 4 else cold)[:4])
    await reader.read()
    assert batches == [(busy, 1), (SAMPLES_PER_SECOND, 3)]
    clients = dict(patterns.summaries()["clients"].top(2))
    assert clients["10.0.0.1"] == pytest.approx(busy + busy * 3 / 4, abs=6)
    assert clients["10.0.0.2"] == pytest.approx(busy / 4, abs=6)
    assert patterns.step == 3


def test_records_from_nodes_merge_and_a_malformed_one_is_skipped() -> None:
    clock = Clock()
    one, two = (TrafficPatterns(TrafficPatternsConfig(), clock) for _ in range(2))
    one.add([finished("10.0.0.1", b"/")] * 10)
    two.add([finished("10.0.0.1", b"/")] * 5 + [finished("10.0.0.9", b"/x")] * 7)
    broken: dict[str, Any] = {"window": 60, "step": 1, "clients": {"top": "nope"}}
    merged, window, step = merge_records([one.to_record(), two.to_record(), broken], 256)
    assert dict(merged["clients"].top(5)) == {"10.0.0.1": 15, "10.0.0.9": 7}
    assert merged["status_codes"].total == 22
    assert (window, step) == (one.covered_seconds(), 1)
