"""`--workers N`: N forked processes share each listener through SO_REUSEPORT.

The first worker also serves the admin API. The parent only forwards signals and waits.
"""

import contextlib
import os
import signal
import sys
from collections.abc import Callable

from loguru import logger


def run_workers(count: int, serve: Callable[[int], int]) -> int:
    """Forks `count` workers that each run `serve(index)`; returns the worst exit status."""
    children: dict[int, int] = {}
    for index in range(count):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = serve(index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    worst = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, -1)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            logger.error("worker {} exited with status {}", index, code)
            worst = worst or (code if code > 0 else 1)
    return worst
