"""`--workers N`: N forked processes share each listener through SO_REUSEPORT.

The first worker also serves the admin API. The parent only forwards signals and waits.
"""

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable

from loguru import logger

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _stop_with_parent() -> None:
    """Asks Linux to send SIGTERM when the parent dies, even by SIGKILL: no orphaned workers."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_workers(count: int, serve: Callable[[int], int]) -> int:
    """Forks `count` workers that each run `serve(index)`; returns the worst exit status."""
    children: dict[int, int] = {}
    for index in range(count):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _stop_with_parent()
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
