"""The access log: one line per request, JSON or Common Log Format, written off the event loop.

Lines are formatted in chunks by the finished-request reader. With a `path`, each chunk is one
message to a loguru file sink of the access log's own, handed over by a background thread
(log_writer.py), which also does the writing and rotating; without a `path`, each line goes
through the ordinary log sinks.
"""

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence

from loguru import logger

from loadweaver.config.models import AccessLogConfig
from loadweaver.observability.access_format import CombinedLines, JsonLines, LineFormat
from loadweaver.observability.log_writer import BackgroundWriter
from loadweaver.observability.logging import ACCESS_FILE_MARKER, retention_of, rotation_of
from loadweaver.observability.recorder import Finished


class AccessLogError(Exception):
    """The access log's file could not be opened."""


class AccessLog:
    def __init__(
        self,
        settings: AccessLogConfig,
        node_id: str,
        loop_clock: Callable[[], float],
        on_dropped: Callable[[int], None] = lambda _: None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._node_id = node_id
        self._loop_clock = loop_clock
        self._wall_clock = wall_clock
        self._sink_id: int | None = None
        self._writer: BackgroundWriter | None = None
        self._draining: BackgroundWriter | None = None  # left by a reload that was cancelled
        self._on_dropped = on_dropped
        self._random = random.Random()
        self._format: LineFormat = JsonLines(node_id, False)
        self._held: list[str] | None = None  # lines written while the sinks are being replaced
        self.settings = settings

    @property
    def settings(self) -> AccessLogConfig:
        return self._settings

    @settings.setter
    def settings(self, settings: AccessLogConfig) -> None:
        self._settings = settings
        kind = JsonLines if settings.format == "json" else CombinedLines
        self._format = kind(self._node_id, settings.include_query)

    def open(self) -> None:
        """(Re)adds the file sink; raises AccessLogError naming the path when it cannot. Lines
        held since `close_without_blocking` are written then, to the log sinks if it fails."""
        self._close_writer_and_sink()
        try:
            self._open_sink()
        finally:
            self._release_held()

    def _open_sink(self) -> None:
        settings = self.settings
        if not settings.enabled or settings.path is None:
            return
        try:
            self._sink_id = logger.add(
                settings.path,
                format="{message}",
                filter=lambda record: record["extra"].get(ACCESS_FILE_MARKER) is True,
                rotation=rotation_of(settings),
                retention=retention_of(settings),
                encoding="utf-8",
                catch=False,  # the writer counts lines it could not write as dropped
            )
        except (OSError, ValueError) as error:
            raise AccessLogError(
                f"logging.access_log.path: cannot open {settings.path}: {error}"
            ) from None
        emit = logger.bind(**{ACCESS_FILE_MARKER: True}).info
        self._writer = BackgroundWriter(emit, self._on_dropped)

    async def close_without_blocking(self) -> None:
        """As `close`, but the writer drains on a worker thread while the loop goes on serving
        (a slow disk can take seconds); lines written meanwhile are held for `open`."""
        if self._held is None:
            self._held = []
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                await asyncio.to_thread(writer.close)
        except asyncio.CancelledError:  # no open() will follow to take the held lines
            self._draining = writer  # still writing on its thread: close() waits for it
            self._release_held()
            raise
        self._close_writer_and_sink()

    def close(self) -> None:
        """Writes what is queued, then removes the file sink."""
        self._close_writer_and_sink()
        self._release_held()

    def _close_writer_and_sink(self) -> None:
        writers = (self._draining, self._writer)
        self._draining = self._writer = None
        for writer in writers:
            if writer is not None:
                writer.close()
        if self._sink_id is not None:
            sink, self._sink_id = self._sink_id, None
            with contextlib.suppress(ValueError):  # already gone: logging was reconfigured
                logger.remove(sink)

    def _release_held(self) -> None:
        held, self._held = self._held, None
        if held:
            self._emit(held)

    def write(self, batch: Sequence[Finished]) -> None:
        settings = self.settings
        offset = self._wall_clock() - self._loop_clock()  # loop-clock instants to wall time
        line = self._format.line
        if settings.sample >= 1.0:
            lines = [line(entry, offset) for entry in batch]
        else:
            lines = [line(entry, offset) for entry in batch if self._sampled(entry)]
        if not lines:
            return
        if self._held is not None:
            self._held.extend(lines)
            return
        self._emit(lines)

    def _emit(self, lines: list[str]) -> None:
        if self._writer is not None:
            self._writer.put("\n".join(lines), len(lines))
        else:
            for text in lines:
                logger.info(text)

    def _sampled(self, entry: Finished) -> bool:
        settings = self.settings
        if settings.always_log_errors and entry[2] >= 500:
            return True
        return self._random.random() < settings.sample
