"""Heavy hitters: Misra-Gries error bounds (batches, merges, records), accuracy on a skewed stream,
the sliding window on a fake clock, and rejection of malformed records from other nodes."""

import json
import random
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import accumulate
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadweaver.observability.topk import HeavyHitters, SlidingTopK

KEYS = [f"k{index}" for index in range(12)]
Batch = dict[str, int]

# Counts of zero or less are in the mix because add_counts must ignore them.
batches = st.lists(st.dictionaries(st.sampled_from(KEYS), st.integers(-3, 40)), max_size=12)
capacities = st.integers(1, 6)


def summarize(capacity: int, stream: Iterable[Batch]) -> HeavyHitters:
    summary = HeavyHitters(capacity)
    for batch in stream:
        summary.add_counts(batch)
    return summary


def true_counts(*streams: Iterable[Batch]) -> Counter[str]:
    truth: Counter[str] = Counter()
    for stream in streams:
        for batch in stream:
            truth.update({key: count for key, count in batch.items() if count > 0})
    return truth


def assert_bounded(
    summary: HeavyHitters, truth: Mapping[str, int], keys: Iterable[str] = KEYS
) -> None:
    """Every estimate is an undercount by at most `error`, and the total is exact."""
    assert summary.total == sum(truth.values())
    assert len(summary) <= summary.capacity
    for key in keys:
        true = truth.get(key, 0)
        assert true - summary.error <= summary.estimate(key) <= true, key


def rebuilt(summary: HeavyHitters, k: int) -> HeavyHitters:
    return HeavyHitters.from_record(summary.to_record(k), summary.capacity)


# --- exactness and the error bound ---


def test_exact_while_distinct_keys_fit() -> None:
    stream = [{"a": 3, "b": 1}, {"b": 2, "c": 5, "d": 0}, {"a": 1, "e": 4, "c": -2}]
    summary = summarize(5, stream)

    assert summary.error == 0
    assert summary.total == 16
    assert len(summary) == 4  # "d" came with a count of 0
    assert summary.top(10) == [("c", 5), ("a", 4), ("e", 4), ("b", 3)]
    assert summary.top(3) == [("c", 5), ("a", 4), ("e", 4)]
    assert [summary.estimate(key) for key in "abcdez"] == [4, 3, 5, 0, 4, 0]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        HeavyHitters(0)


@given(capacities, batches)
def test_estimates_are_within_the_error_bound(capacity: int, stream: list[Batch]) -> None:
    summary = summarize(capacity, stream)

    assert_bounded(summary, true_counts(stream))
    assert summary.error * (capacity + 1) <= summary.total


# --- merges and records ---


@given(capacities, batches, batches)
def test_merge_keeps_the_bound_on_the_combined_stream(
    capacity: int, first: list[Batch], second: list[Batch]
) -> None:
    merged, other = summarize(capacity, first), summarize(capacity, second)
    other_before = other.to_record(capacity)

    merged = HeavyHitters.merged([merged, other], capacity)

    assert_bounded(merged, true_counts(first, second))
    assert merged.error * (capacity + 1) <= merged.total
    assert other.to_record(capacity) == other_before


@given(capacities, batches, batches)
def test_summaries_rebuilt_from_short_records_keep_the_bound(
    capacity: int, first: list[Batch], second: list[Batch]
) -> None:
    summaries = summarize(capacity, first), summarize(capacity, second)
    for k in range(capacity + 1):
        one, two = (rebuilt(summary, k) for summary in summaries)
        assert_bounded(one, true_counts(first))
        assert one.error * (k + 1) <= one.total
        one = HeavyHitters.merged([one, two], capacity)
        assert_bounded(one, true_counts(first, second))


def test_short_record_folds_the_largest_left_out_count_into_the_error() -> None:
    # After the first batch every key has lost 10; "b" then reads 5 but is truly 15, so a record
    # keeping only "a" must carry an error of 15 (max(error, smallest kept count) would be 10).
    summary = summarize(2, [{"a": 10, "b": 10, "c": 10}, {"a": 5, "b": 5}])
    assert (summary.error, summary.top(2)) == (10, [("a", 5), ("b", 5)])

    record = summary.to_record(1)

    assert record == {"total": 40, "error": 15, "top": [["a", 5]]}
    assert_bounded(HeavyHitters.from_record(record, 2), {"a": 15, "b": 15, "c": 10})


def test_records_survive_json_and_msgpack() -> None:
    summary = summarize(4, [{"a": 9, "b": 7, "c": 5, "d": 3, "e": 1}])
    record = summary.to_record(3)

    for decoded in (json.loads(json.dumps(record)), msgpack.unpackb(msgpack.packb(record))):
        assert decoded == record
        assert HeavyHitters.from_record(decoded, 4).to_record(3) == record


def test_record_with_more_keys_than_capacity_is_pruned() -> None:
    truth = {"a": 9, "b": 7, "c": 5, "d": 3, "e": 1}
    record = summarize(8, [truth]).to_record(8)

    narrow = HeavyHitters.from_record(record, 2)

    assert len(narrow) <= 2
    assert_bounded(narrow, truth)


VALID: dict[str, Any] = {"total": 10, "error": 1, "top": [["a", 5], ["b", 3]]}


@pytest.mark.parametrize(
    "record",
    [
        pytest.param([["a", 5]], id="not a mapping"),
        pytest.param({"error": 1, "top": []}, id="missing total"),
        pytest.param({"total": 10, "top": []}, id="missing error"),
        pytest.param({"total": 10, "error": 1}, id="missing top"),
        pytest.param({**VALID, "total": -1}, id="negative total"),
        pytest.param({**VALID, "error": -1}, id="negative error"),
        pytest.param({**VALID, "total": 10.0}, id="float total"),
        pytest.param({**VALID, "error": True}, id="bool error"),
        pytest.param({**VALID, "top": {"a": 5}}, id="top not a list"),
        pytest.param({**VALID, "top": [["a", -5]]}, id="negative count"),
        pytest.param({**VALID, "top": [["a", 0]]}, id="zero count"),
        pytest.param({**VALID, "top": [["a", "5"]]}, id="string count"),
        pytest.param({**VALID, "top": [[7, 5]]}, id="integer key"),
        pytest.param({**VALID, "top": [[b"a", 5]]}, id="bytes key"),
        pytest.param({**VALID, "top": [["a"]]}, id="entry not a pair"),
        pytest.param({**VALID, "top": ["ab"]}, id="entry a string"),
        pytest.param({**VALID, "top": [["a", 5], ["a", 3]]}, id="repeated key"),
        pytest.param({**VALID, "top": [["a", 8], ["b", 3]]}, id="counts above total"),
    ],
)
def test_malformed_records_are_rejected(record: Any) -> None:
    HeavyHitters.from_record(VALID, 4)  # the base of the cases is itself accepted

    with pytest.raises(ValueError, match="record"):
        HeavyHitters.from_record(record, 4)


# --- accuracy on a skewed stream ---

DISTINCT_KEYS = 100_000
ITEMS = 1_000_000
BATCH_SIZE = 30_000


@pytest.fixture(scope="module")
def zipf_batches() -> list[Counter[str]]:
    """A Zipf(1.1) stream over 100,000 keys, as the per-second Counters the hot path would fold."""
    rng = random.Random(20240601)
    keys = [f"client-{rank}" for rank in range(DISTINCT_KEYS)]
    cumulative = list(accumulate((rank + 1) ** -1.1 for rank in range(DISTINCT_KEYS)))
    items = rng.choices(keys, cum_weights=cumulative, k=ITEMS)
    return [Counter(items[start : start + BATCH_SIZE]) for start in range(0, ITEMS, BATCH_SIZE)]


# The 2% target for all of the top 10 is not met at capacity 256 on this stream (about 3.4%: the
# 10th key holds ~1% of the stream and error ends near 364); it takes about 512 counters.
@pytest.mark.parametrize(("capacity", "max_relative_error"), [(256, 0.04), (512, 0.02)])
def test_zipf_stream_top_10_is_found_and_close(
    zipf_batches: list[Counter[str]], capacity: int, max_relative_error: float
) -> None:
    summary, truth, fold_seconds = HeavyHitters(capacity), Counter[str](), 0.0
    for batch in zipf_batches:
        truth.update(batch)
        started = time.perf_counter()
        summary.add_counts(batch)
        fold_seconds += time.perf_counter() - started

    reported = summary.top(10)
    precision = len({key for key, _ in reported} & {key for key, _ in truth.most_common(10)}) / 10
    worst = max((truth[key] - estimate) / truth[key] for key, estimate in reported)
    print(
        f"\ncapacity {capacity}: precision@10 {precision:.2f}, "
        f"max relative error of top-10 {worst:.2%}, "
        f"error bound {summary.error} = {summary.error / summary.total:.4%} of total, "
        f"{fold_seconds / len(zipf_batches) * 1000:.2f} ms per fold of {BATCH_SIZE} items"
    )
    assert precision == 1.0
    assert worst < max_relative_error
    assert_bounded(summary, truth, truth.keys())


# --- the sliding window ---


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


START = 1000.0


def sliding(clock: FakeClock) -> SlidingTopK:
    """A 10 s window of five 2 s slots."""
    return SlidingTopK(window=10.0, slots=5, capacity=8, clock=clock)


def add_at(window: SlidingTopK, clock: FakeClock, offset: float, counts: Batch) -> None:
    clock.now = START + offset
    window.add_counts(counts)


def live_counts(window: SlidingTopK, clock: FakeClock, offset: float) -> dict[str, int]:
    clock.now = START + offset
    return dict(window.summary().top(100))


def test_counts_age_out_after_the_window() -> None:
    clock = FakeClock(START)
    window = sliding(clock)
    add_at(window, clock, 0.0, {"a": 5})
    add_at(window, clock, 1.9, {"a": 1})  # the same slot

    assert live_counts(window, clock, 9.99) == {"a": 6}
    assert live_counts(window, clock, 10.0) == {}
    assert window.summary().total == 0


def test_slots_rotate_out_one_at_a_time() -> None:
    clock = FakeClock(START)
    window = sliding(clock)
    add_at(window, clock, 0.0, {"a": 3})
    add_at(window, clock, 2.5, {"b": 2})
    add_at(window, clock, 4.5, {"c": 1, "a": 1})

    assert live_counts(window, clock, 9.9) == {"a": 4, "b": 2, "c": 1}
    assert live_counts(window, clock, 10.5) == {"a": 1, "b": 2, "c": 1}
    assert live_counts(window, clock, 12.0) == {"a": 1, "c": 1}
    add_at(window, clock, 13.0, {"d": 7})  # reuses the first slot's place
    assert live_counts(window, clock, 13.5) == {"a": 1, "c": 1, "d": 7}
    assert live_counts(window, clock, 14.0) == {"d": 7}


@pytest.mark.parametrize(
    ("offset", "covered"), [(0.0, 0.0), (3.0, 3.0), (9.5, 9.5), (10.0, 8.0), (11.5, 9.5), (25, 9)]
)
def test_coverage_grows_to_the_window_after_start(offset: float, covered: float) -> None:
    clock = FakeClock(START)
    window = sliding(clock)
    clock.now = START + offset

    assert window.covered_seconds() == pytest.approx(covered)


def test_idle_spells_leave_an_empty_summary_without_walking_skipped_slots() -> None:
    clock = FakeClock(START)
    window = sliding(clock)
    for second in range(10):
        add_at(window, clock, second, {f"key-{second}": 1})

    # A walk over every skipped slot would take hours for this jump.
    clock.now = START + 1e9 * 10.0
    started = time.perf_counter()
    idle_summary = window.summary()
    elapsed = time.perf_counter() - started

    assert (len(idle_summary), idle_summary.total, idle_summary.error) == (0, 0, 0)
    assert elapsed < 0.5
    assert window.covered_seconds() == pytest.approx(8.0, abs=0.01)
    window.add_counts({"back": 2})
    assert dict(window.summary().top(100)) == {"back": 2}


def test_sliding_window_rejects_bad_shapes() -> None:
    for window, slots, capacity in [(0.0, 5, 8), (10.0, 0, 8), (10.0, 5, 0)]:
        with pytest.raises(ValueError, match="window"):
            SlidingTopK(window, slots, capacity, FakeClock(START))
