"""A consumer that fails on some requests loses only its chunk, counted; never the batch."""

from collections.abc import Sequence
from types import SimpleNamespace
from typing import cast

from loadweaver.observability.finished import CHUNK, FinishedReader
from loadweaver.observability.recorder import Finished, RequestRecorder
from loadweaver.observability.request_tally import RequestTally


def finished(status: int) -> Finished:
    return cast(Finished, (SimpleNamespace(), SimpleNamespace(), status, 0.0, "", 0))


async def test_a_failing_chunk_is_counted_dropped_and_the_rest_is_written() -> None:
    recorder = RequestRecorder(RequestTally([1.0]))
    recorder.set_metrics(False)
    dropped: list[int] = []
    reader = FinishedReader(recorder, dropped.append, lambda: 0.0)
    written: list[int] = []

    def write(chunk: Sequence[Finished]) -> None:
        if any(entry[2] == 405 for entry in chunk):
            raise ValueError("a line this formatter cannot make")
        written.extend(entry[2] for entry in chunk)

    def count_patterns(batch: Sequence[Finished], weight: int) -> None:
        raise ValueError("a sample this counter cannot read")

    reader.read_every(write)
    reader.read_sampled(count_patterns)
    statuses = [200] * CHUNK + [405] + [200] * (CHUNK - 1) + [204] * 10
    for status in statuses:
        recorder.record(*finished(status)[:4])
    await reader.read()

    assert written == [200] * CHUNK + [204] * 10
    assert dropped == [CHUNK]
