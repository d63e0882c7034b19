"""Waiting for a condition that a running loop makes true."""

import asyncio
import time
from collections.abc import Callable


async def eventually(
    condition: Callable[[], object], timeout: float = 2.0, message: str = ""
) -> None:
    """Polls `condition()` every 10 ms; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message or "condition not reached in time")
        await asyncio.sleep(0.01)
