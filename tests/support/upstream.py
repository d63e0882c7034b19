"""Upstream misbehaviour helpers: a loopback port whose connects hang, and metric reads."""

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from loadweaver.node import Node


@contextmanager
def blackhole_port(fill: int = 3) -> Iterator[int]:
    """A loopback port that never completes a TCP handshake.

    A socket listens with backlog 0 and never accepts; a few non-blocking connects fill its
    accept queue, so Linux drops later SYNs and a connect hangs until the caller times out.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(fill):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.02)  # let the handshakes that fit complete
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def metric(node: Node, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of the node's samples called `name` whose labels include `labels`; 0 if none."""
    wanted = (labels or {}).items()
    return sum(
        sample.value
        for family in node.metrics.registry.collect()
        for sample in family.samples
        if sample.name == name and wanted <= sample.labels.items()
    )


def local_reply_count(node: Node, status: int, reason: str) -> float:
    """How many local replies with this status and reason the node has sent."""
    return metric(node, "loadweaver_local_replies_total", {"status": str(status), "reason": reason})
