#!/usr/bin/env python3
"""Measure a server's memory while it holds N idle HTTP/1.1 keep-alive client connections.

Stdlib only. Opens N TCP connections to HOST:PORT, sends one
``GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n`` on each and reads the full response, so every
connection is an established, idle keep-alive connection. VmRSS of PID (and, summed,
of all its descendant processes, e.g. nginx workers) is read from /proc before and
after, printed, then the connections are held for a moment and closed.

Every loop is bounded in count and time: connection setup stops at --deadline, each
connect/request has --op-timeout, and the hold is --hold seconds.

Example:
    idle_rss.py --port 8080 --pid 1234 -n 10000 --json out.json --label proxy=loadweaver
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import sys
from typing import Any

from proctree import process_tree  # a sibling module: scripts run from this folder

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


# --------------------------------------------------------------------------- /proc helpers
def _vm_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return 0  # kernel thread / zombie: no VmRSS line


def sample_rss(pid: int) -> dict[str, Any]:
    """RSS (KiB) of PID itself and of PID plus all descendants."""
    own = _vm_rss_kib(pid)
    if own is None:
        raise ProcessLookupError(f"process {pid} is gone")
    total = 0
    pids = process_tree(pid)
    for p in pids:
        total += _vm_rss_kib(p) or 0
    return {"pid_kib": own, "tree_kib": total, "tree_pids": len(pids)}


# --------------------------------------------------------------------------- HTTP client
class Stats:
    def __init__(self) -> None:
        self.connected = 0
        self.ok = 0  # got a complete 2xx/3xx response that allows keep-alive
        self.non_2xx = 0
        self.server_closes = 0  # response said "Connection: close" or had no framing
        self.failed = 0
        self.errors: dict[str, int] = {}

    def fail(self, exc: BaseException) -> None:
        self.failed += 1
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response. Returns (status, keep_alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    keep_alive = "close" not in headers.get("connection", "").lower()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        for _ in range(100_000):  # bounded
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # trailers until the empty line
                for _ in range(1_000):
                    if await reader.readuntil(b"\r\n") == b"\r\n":
                        break
                break
            await reader.readexactly(size + 2)
    elif "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif status >= 200 and status not in (204, 304):
        keep_alive = False  # body delimited by close: not a keep-alive connection
    return status, keep_alive


async def _open_one(
    i: int,
    args: argparse.Namespace,
    *,
    sources: list[str],
    sem: asyncio.Semaphore,
    deadline: float,
    stats: Stats,
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> None:
    async with sem:
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            stats.fail(TimeoutError("deadline"))
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        writer: asyncio.StreamWriter | None = None
        try:
            sock.setblocking(False)
            if sources:
                # Spread over several loopback source addresses; NO_PORT lets the kernel
                # pick the port at connect() time per (src, dst) 4-tuple.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((sources[i % len(sources)], 0))
            timeout = min(args.op_timeout, max(0.1, deadline - loop.time()))
            await asyncio.wait_for(loop.sock_connect(sock, (args.host, args.port)), timeout)
            reader, writer = await asyncio.open_connection(sock=sock)
            stats.connected += 1
            writer.write(args.request)
            status, keep_alive = await asyncio.wait_for(_read_response(reader), args.op_timeout)
            if not 200 <= status < 400:
                stats.non_2xx += 1
            if not keep_alive:
                stats.server_closes += 1
                writer.close()
                return
            if 200 <= status < 400:
                stats.ok += 1
            conns.append((reader, writer))
            writer = None  # keep it open
        except (
            TimeoutError,
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            IndexError,
        ) as exc:
            stats.fail(exc)
            if writer is None:
                sock.close()
        finally:
            if writer is not None:
                writer.close()


def _fmt_kib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    sources = [f"127.0.0.{1 + k}" for k in range(args.sources)] if args.sources > 1 else []
    before = sample_rss(args.pid)
    print(
        f"idle_rss: pid {args.pid}: VmRSS before = {_fmt_kib(before['pid_kib'])}"
        + (
            f" (process tree of {before['tree_pids']}: {_fmt_kib(before['tree_kib'])})"
            if before["tree_pids"] > 1
            else ""
        ),
        flush=True,
    )

    stats = Stats()
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    sem = asyncio.Semaphore(args.concurrency)
    t0 = loop.time()
    deadline = t0 + args.deadline
    tasks = [
        asyncio.ensure_future(
            _open_one(
                i, args, sources=sources, sem=sem, deadline=deadline, stats=stats, conns=conns
            )
        )
        for i in range(args.connections)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), args.deadline + args.op_timeout + 5)
    except TimeoutError:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print("idle_rss: connection setup hit the overall deadline", file=sys.stderr)
    setup_s = loop.time() - t0
    print(
        f"idle_rss: {len(conns)}/{args.connections} idle keep-alive connections in "
        f"{setup_s:.1f}s (failed {stats.failed}"
        + (f" {stats.errors}" if stats.errors else "")
        + f", non-2xx/3xx {stats.non_2xx}, closed by server {stats.server_closes})",
        flush=True,
    )

    await asyncio.sleep(args.settle)
    after = sample_rss(args.pid)
    peak = dict(after)
    hold_end = loop.time() + args.hold
    while loop.time() < hold_end:  # bounded by --hold
        await asyncio.sleep(min(0.5, max(0.0, hold_end - loop.time())))
        with contextlib.suppress(ProcessLookupError):
            s = sample_rss(args.pid)
            peak = {k: max(peak[k], s[k]) for k in peak}
    still_open = sum(1 for r, _ in conns if not r.at_eof())

    delta = after["pid_kib"] - before["pid_kib"]
    tree_delta = after["tree_kib"] - before["tree_kib"]
    per_conn = delta / len(conns) if conns else 0.0
    tree_per_conn = tree_delta / len(conns) if conns else 0.0
    print(
        f"idle_rss: pid {args.pid}: VmRSS after  = {_fmt_kib(after['pid_kib'])} "
        f"(delta {_fmt_kib(delta)}, {per_conn:.2f} KiB/conn)",
        flush=True,
    )
    if after["tree_pids"] > 1:
        print(
            f"idle_rss: process tree ({after['tree_pids']} pids): "
            f"{_fmt_kib(before['tree_kib'])} -> {_fmt_kib(after['tree_kib'])} "
            f"(delta {_fmt_kib(tree_delta)}, {tree_per_conn:.2f} KiB/conn)",
            flush=True,
        )
    print(
        f"idle_rss: still open after {args.hold:.0f}s hold: {still_open}/{len(conns)}", flush=True
    )

    for _, w in conns:
        w.close()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True), 10
        )

    return {
        "pid": args.pid,
        "requested": args.connections,
        "established": len(conns),
        "failed": stats.failed,
        "failure_kinds": stats.errors,
        "non2xx3xx": stats.non_2xx,
        "closed_by_server": stats.server_closes,
        "still_open_after_hold": still_open,
        "setup_s": round(setup_s, 3),
        "rss_before_kib": before["pid_kib"],
        "rss_after_kib": after["pid_kib"],
        "rss_peak_kib": peak["pid_kib"],
        "rss_delta_kib": delta,
        "kib_per_conn": round(per_conn, 3),
        "tree_pids": after["tree_pids"],
        "tree_rss_before_kib": before["tree_kib"],
        "tree_rss_after_kib": after["tree_kib"],
        "tree_rss_delta_kib": tree_delta,
        "tree_kib_per_conn": round(tree_per_conn, 3),
    }


def _raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        print(
            f"idle_rss: warning: RLIMIT_NOFILE is {soft}, need about {needed} for "
            "this many connections; raise `ulimit -n`",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="RSS of a server holding N idle HTTP keep-alive connections"
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="server PID to measure")
    ap.add_argument("-n", "--connections", type=int, default=10_000)
    ap.add_argument(
        "--sources",
        type=int,
        default=0,
        help="spread over this many source addresses 127.0.0.1..N "
        "(default: 1 per 20000 connections)",
    )
    ap.add_argument(
        "--concurrency", type=int, default=100, help="connections being set up at the same time"
    )
    ap.add_argument(
        "--op-timeout", type=float, default=10.0, help="timeout for each connect and each request"
    )
    ap.add_argument(
        "--deadline",
        type=float,
        default=120.0,
        help="stop opening new connections after this many seconds",
    )
    ap.add_argument(
        "--settle", type=float, default=1.0, help="seconds to wait after setup before sampling RSS"
    )
    ap.add_argument(
        "--hold",
        type=float,
        default=3.0,
        help="seconds to hold the idle connections after sampling",
    )
    ap.add_argument("--path", default="/")
    ap.add_argument("--host-header", default="x")
    ap.add_argument("--json", metavar="FILE", help="also write the result as JSON here")
    ap.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra field for the JSON result",
    )
    args = ap.parse_args(argv)

    if not 1 <= args.connections <= 200_000:
        ap.error("--connections must be 1..200000")
    if args.sources <= 0:
        args.sources = max(1, -(-args.connections // 20_000))
    if args.sources > 250:
        ap.error("--sources must be <= 250")
    args.request = f"GET {args.path} HTTP/1.1\r\nHost: {args.host_header}\r\n\r\n".encode("latin-1")
    _raise_nofile(args.connections + 64)

    try:
        result = asyncio.run(run(args))
    except ProcessLookupError as exc:
        print(f"idle_rss: {exc}", file=sys.stderr)
        return 1
    for label in args.label:
        key, _, value = label.partition("=")
        result[key] = value
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, sort_keys=True)
            fh.write("\n")
    return 0 if result["established"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
