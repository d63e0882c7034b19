"""The process tree under a pid, read from /proc: the proxy may fork workers or helpers."""

from __future__ import annotations

import os

MAX_PROCESSES = 10_000


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        # field 4 (ppid) comes after the ")" that closes the command name
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 2:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree: list[int] = []
    todo = [root]
    while todo and len(tree) < MAX_PROCESSES:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree
