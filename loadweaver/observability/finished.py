"""Finished requests read in batches, off each request's own path.

The recorder queues every finished request while a reader wants them (traffic patterns, the
access log). A reader task takes the queue a few times a second and hands it over in chunks,
yielding to the event loop between chunks so formatting thousands of lines never stalls I/O.
"""

import asyncio
from collections.abc import Callable, Sequence

from loguru import logger

from loadweaver.observability.recorder import Finished, RequestRecorder

Consumer = Callable[[Sequence[Finished]], None]
READ_INTERVAL = 0.1
CHUNK = 256  # requests handed over between two yields to the event loop
MAX_PENDING = 200_000  # beyond this many unread requests, the oldest are counted and dropped


class FinishedReader:
    def __init__(self, recorder: RequestRecorder, on_dropped: Callable[[int], None]) -> None:
        self._recorder = recorder
        self._on_dropped = on_dropped
        self._consumers: dict[str, Consumer] = {}

    def set_consumer(self, name: str, consumer: Consumer | None) -> None:
        """Adds, replaces or (with None) removes a reader; the queue runs only while one reads."""
        if consumer is None:
            self._consumers.pop(name, None)
        else:
            self._consumers[name] = consumer
        recorder = self._recorder
        if self._consumers and recorder.finished is None:
            recorder.finished = []
        elif not self._consumers:
            recorder.finished = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(READ_INTERVAL)
            try:
                await self.read()
            except Exception:  # one bad batch must not end the reading
                logger.exception("reading finished requests failed")

    async def read(self) -> None:
        batch = self._recorder.drain()
        if len(batch) > MAX_PENDING:
            self._on_dropped(len(batch) - MAX_PENDING)
            batch = batch[-MAX_PENDING:]
        for start in range(0, len(batch), CHUNK):
            chunk = batch[start : start + CHUNK]
            for consumer in list(self._consumers.values()):
                consumer(chunk)
            if start + CHUNK < len(batch):
                await asyncio.sleep(0)

    def flush(self) -> None:
        """Hands over whatever is queued now, in one go (at shutdown)."""
        batch = self._recorder.drain()
        for consumer in list(self._consumers.values()):
            try:
                consumer(batch)
            except Exception:
                logger.exception("reading finished requests failed")
