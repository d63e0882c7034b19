"""`loadweaver cluster ...`: backends and status, through any node's admin API."""

import argparse
import json
import sys
import time
from typing import Any
from urllib.parse import quote

from loadweaver.cli.admin_client import AdminClient, RejectedError
from loadweaver.cli.tables import render_table

DRAIN_POLL_SECONDS = 0.25


class UsageError(Exception):
    """The command needs more or different input; exit code 2."""


def backends_add(client: AdminClient, args: argparse.Namespace) -> int:
    backend: dict[str, Any] = {"name": args.name, "url": args.url}
    if args.weight is not None:
        backend["weight"] = args.weight
    if args.backup:
        backend["backup"] = True
    if args.max_connections is not None:
        backend["max_connections"] = args.max_connections
    added = client.request("POST", f"/pools/{_quoted(args.pool)}/backends", backend)
    print(f"added {added['pool']}/{added['name']} ({added['url']}, weight {added['weight']})")
    return 0


def backends_list(client: AdminClient, args: argparse.Namespace) -> int:
    query = {"pool": args.pool} if args.pool else None
    if args.pool:
        client.get(f"/pools/{_quoted(args.pool)}")  # an unknown pool is an error, not an empty list
    backends = client.get("/backends", query)["backends"]
    if args.json:
        print(json.dumps(backends, indent=2))
        return 0
    if not backends:
        print("no backends")
        return 0
    headers = ["POOL", "NAME", "URL", "WEIGHT", "STATE", "HEALTH", "IN-FLIGHT", "BACKUP", "SOURCE"]
    rows = [
        [
            b["pool"],
            b["name"],
            b["url"],
            b["weight"],
            b["state"],
            "healthy" if b["healthy"] else "unhealthy",
            b["in_flight"],
            "yes" if b["backup"] else "no",
            b["source"],
        ]
        for b in backends
    ]
    print(render_table(headers, rows))
    return 0


def backends_remove(client: AdminClient, args: argparse.Namespace) -> int:
    pool = _pool_of(client, args.name, args.pool)
    client.request("DELETE", _backend_path(pool, args.name))
    print(f"removed {pool}/{args.name}; requests in flight on it finish")
    return 0


def backends_set_weight(client: AdminClient, args: argparse.Namespace) -> int:
    pool = _pool_of(client, args.name, args.pool)
    backend = client.request("PATCH", _backend_path(pool, args.name), {"weight": args.weight})
    print(f"{pool}/{args.name}: weight {backend['weight']}")
    return 0


def backends_drain(client: AdminClient, args: argparse.Namespace) -> int:
    pool = _pool_of(client, args.name, args.pool)
    path = _backend_path(pool, args.name)
    backend = client.request("POST", f"{path}/drain")
    deadline = time.monotonic() + args.timeout
    progress = _Progress(f"draining {pool}/{args.name}")
    while backend["in_flight"] > 0:
        progress.show(f"{backend['in_flight']} request(s) in flight")
        if time.monotonic() >= deadline:
            progress.done(f"still {backend['in_flight']} in flight after {args.timeout:g} s")
            print(
                f"{pool}/{args.name} stays draining; run drain again to keep waiting",
                file=sys.stderr,
            )
            return 1
        time.sleep(DRAIN_POLL_SECONDS)
        backend = client.get(path)
    progress.done("0 in flight: drained")
    return 0


def status(client: AdminClient, args: argparse.Namespace) -> int:
    report = client.get("/cluster/status")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    store = report["store"] + ("" if report["store_up"] else "  (DOWN)")
    print(
        f"leader: {report['leader'] or 'none'}   config version: {report['config_version']}   "
        f"store: {store}"
    )
    newest = max([node["config_version"] for node in report["nodes"]], default=0)
    rows = [
        [
            node["id"],
            ", ".join(node["listen"]),
            node["admin"],
            "yes" if node["ready"] else "no",
            "yes" if node["leader"] else "",
            node["config_version"]
            if node["config_version"] == newest
            else f"{node['config_version']} (behind)",
            f"{node['uptime_seconds']:.0f}s",
        ]
        for node in report["nodes"]
    ]
    headers = ["NODE", "LISTEN", "ADMIN", "READY", "LEADER", "CONFIG VERSION", "UPTIME"]
    print(render_table(headers, rows))
    return 0


class _Progress:
    """One line rewritten in place on a terminal; one line per change otherwise."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._last = ""
        self._tty = sys.stderr.isatty()

    def show(self, text: str) -> None:
        if text == self._last:
            return
        self._last = text
        line = f"{self._label}: {text}"
        print(
            f"\r{line}\033[K" if self._tty else line, end="" if self._tty else "\n", file=sys.stderr
        )

    def done(self, text: str) -> None:
        if self._tty and self._last:
            print(file=sys.stderr)
        print(f"{self._label}: {text}", file=sys.stderr)


def _pool_of(client: AdminClient, name: str, pool: str | None) -> str:
    """The pool holding backend `name`: `pool` when given, else the only pool that has one."""
    if pool is not None:
        return pool
    found: list[str] = sorted(
        {b["pool"] for b in client.get("/backends", {"name": name})["backends"]}
    )
    if not found:
        raise RejectedError(404, f"no pool has a backend named {name!r}", [])
    if len(found) > 1:
        raise UsageError(f"backend {name!r} is in pools {', '.join(found)}: choose one with --pool")
    return found[0]


def _backend_path(pool: str, name: str) -> str:
    return f"/pools/{_quoted(pool)}/backends/{_quoted(name)}"


def _quoted(segment: str) -> str:
    return quote(segment, safe="")
