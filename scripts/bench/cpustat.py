#!/usr/bin/env python3
"""CPU use of a process tree and of one CPU between two snapshots (stdlib only, Linux /proc).

    cpustat.py snap PID CPU > before.json     # PID: root of the process tree, CPU: cpu index
    ... run the load ...
    cpustat.py diff before.json PID CPU       # prints: proxy_cpu_pct=97.3 load_cpu_pct=88.1

proxy_cpu_pct: CPU time of PID and its descendants / wall time (100 = one full core).
load_cpu_pct:  busy share of CPU number CPU over the same interval (-1 if "CPU" is -1).
Used by scripts/benchmark.sh to show whether the proxy or the load side was saturated.
"""

from __future__ import annotations

import json
import os
import sys
import time

from proctree import process_tree, stat_fields  # a sibling module: scripts run from this folder


def _proc_ticks(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        fields = stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def _cpu_ticks(cpu: int) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU."""
    if cpu < 0:
        return 0, 0
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(f"cpu{cpu} "):
                vals = [int(v) for v in line.split()[1:]]
                idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
                total = sum(vals[:8])  # exclude guest fields (already in user)
                return total - idle, total
    return 0, 0


def snap(pid: int, cpu: int) -> dict[str, float]:
    busy, total = _cpu_ticks(cpu)
    return {"t": time.monotonic(), "proc": _proc_ticks(pid), "busy": busy, "total": total}


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "snap":
        print(json.dumps(snap(int(argv[1]), int(argv[2]))))
        return 0
    if len(argv) == 4 and argv[0] == "diff":
        with open(argv[1], encoding="ascii") as fh:
            before = json.load(fh)
        after = snap(int(argv[2]), int(argv[3]))
        hz = os.sysconf("SC_CLK_TCK")
        wall = after["t"] - before["t"]
        proxy = 100.0 * (after["proc"] - before["proc"]) / hz / wall if wall > 0 else 0.0
        dt = after["total"] - before["total"]
        load = 100.0 * (after["busy"] - before["busy"]) / dt if dt > 0 else -1.0
        print(f"proxy_cpu_pct={proxy:.1f} load_cpu_pct={load:.1f}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
