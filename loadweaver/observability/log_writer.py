"""A thread of its own that hands text to loguru, so the event loop only queues it.

loguru's own `enqueue=True` pickles every message through a pipe, which for batches of access
lines cost as much as formatting them; an in-process queue passes a reference. The file sink
keeps doing the writing, rotation and retention, from this thread.
"""

import queue
import threading
from collections.abc import Callable

QUEUE_LIMIT = 1000  # chunks waiting (about 256 lines each); beyond it new ones are dropped


class BackgroundWriter:
    def __init__(self, emit: Callable[[str], None], on_dropped: Callable[[int], None]) -> None:
        self._emit = emit
        self._on_dropped = on_dropped
        self._queue: queue.SimpleQueue[tuple[str, int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="loadweaver-access-log", daemon=True)
        self._thread.start()

    def put(self, text: str, lines: int) -> None:
        """Queues `text` (`lines` lines); counts them dropped when the writer is far behind."""
        if self._queue.qsize() >= QUEUE_LIMIT:
            self._on_dropped(lines)
            return
        self._queue.put((text, lines))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            text, lines = item
            try:
                self._emit(text)
            except Exception:  # the sink failing (a full disk) must not end the writer
                self._on_dropped(lines)

    def close(self, patience: float = 5.0) -> None:
        """Writes what is queued (for up to `patience` seconds), then stops the thread."""
        self._queue.put(None)
        self._thread.join(patience)
