"""Finished requests read in batches, off each request's own path.

The recorder queues requests only while someone reads them: every request for the access log,
and for traffic patterns every k-th one, k chosen from the last second's rate so that about
SAMPLES_PER_SECOND are looked at whatever the load (each counts k times). A reader task takes
the queues ten times a second and hands them over in chunks, yielding to the event loop between
chunks so that formatting thousands of lines never stalls I/O.
"""

import asyncio
import math
from collections.abc import Callable, Sequence

from loguru import logger

from loadweaver.observability.recorder import Finished, RequestRecorder

Consumer = Callable[[Sequence[Finished]], None]
WeightedConsumer = Callable[[Sequence[Finished], int], None]  # entries, and what each counts for
READ_INTERVAL = 0.1
CHUNK = 256  # requests handed over between two yields to the event loop
MAX_PENDING = 200_000  # beyond this many unread requests, the oldest are counted and dropped
SAMPLES_PER_SECOND = 1000


class FinishedReader:
    def __init__(
        self,
        recorder: RequestRecorder,
        on_dropped: Callable[[int], None],
        clock: Callable[[], float],
    ) -> None:
        self._recorder = recorder
        self._on_dropped = on_dropped
        self._clock = clock
        self._every: Consumer | None = None
        self._sampled: WeightedConsumer | None = None
        self._rate_mark = (clock(), recorder.responses)

    def read_every(self, consumer: Consumer | None) -> None:
        """Hands every finished request to `consumer` (None: nobody, and none are queued)."""
        self._every = consumer
        if consumer is None:
            self._recorder.logged = None
        elif self._recorder.logged is None:  # a reload re-setting the reader keeps what waits
            self._recorder.logged = []

    def read_sampled(self, consumer: WeightedConsumer | None) -> None:
        """Hands a sample of finished requests to `consumer`, each with its weight."""
        self._sampled = consumer
        if consumer is None:
            self._recorder.sampled = None
        elif self._recorder.sampled is None:
            self._recorder.sampled = []

    async def run(self) -> None:
        while True:
            await asyncio.sleep(READ_INTERVAL)
            try:
                await self.read()
            except Exception:  # one bad batch must not end the reading
                logger.exception("reading finished requests failed")

    async def read(self) -> None:
        sampled, weight = self._recorder.drain_sampled(self._next_step())
        if self._sampled is not None and sampled:
            try:
                self._sampled(sampled, weight)
            except Exception:  # a sample lost; the access log's batch must still be written
                logger.exception("counting traffic patterns failed")
        batch = self._bounded(self._recorder.drain_logged())
        every = self._every
        if every is None:
            return
        for start in range(0, len(batch), CHUNK):
            self._hand_over(every, batch[start : start + CHUNK])
            if start + CHUNK < len(batch):
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:  # stopping: the rest is handed over at once
                    self._hand_over(every, batch[start + CHUNK :])
                    raise

    def _hand_over(self, every: Consumer, chunk: Sequence[Finished]) -> None:
        """One chunk to the consumer; if it fails, only that chunk is lost, and counted."""
        try:
            every(chunk)
        except Exception:
            logger.exception("writing {} access log lines failed", len(chunk))
            self._on_dropped(len(chunk))

    def _next_step(self) -> int:
        """Every how many requests one is sampled, from the rate since the last second."""
        recorder = self._recorder
        then, responses = self._rate_mark
        now = self._clock()
        if now - then < 1.0:
            return recorder.sample_step
        self._rate_mark = (now, recorder.responses)
        rate = (recorder.responses - responses) / (now - then)
        return max(1, math.ceil(rate / SAMPLES_PER_SECOND))

    def _bounded(self, batch: list[Finished]) -> list[Finished]:
        if len(batch) <= MAX_PENDING:
            return batch
        self._on_dropped(len(batch) - MAX_PENDING)
        return batch[-MAX_PENDING:]

    def flush(self) -> None:
        """Hands over whatever is queued now, in one go (at shutdown)."""
        try:
            sampled, weight = self._recorder.drain_sampled(self._recorder.sample_step)
            if self._sampled is not None and sampled:
                self._sampled(sampled, weight)
            logged = self._recorder.drain_logged()
            if self._every is not None and logged:
                self._every(logged)
        except Exception:
            logger.exception("reading finished requests failed")
