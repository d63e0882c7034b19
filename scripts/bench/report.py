#!/usr/bin/env python3
"""Summarise scripts/benchmark.sh results into a text table and a markdown file.

Usage: report.py --results results.jsonl [--idle idle.jsonl] [--meta KEY=VALUE ...]
                 [--baseline haproxy] [--second-baseline loadweaver]
                 [--order haproxy,nginx,loadweaver] --out FILE.md

results.jsonl: one JSON object per wrk run (from parse_wrk.py) with "proxy" and "round".
idle.jsonl:    one JSON object per idle_rss.py run with "proxy".
Per proxy, req/s, p50 and p99 are the medians over rounds; errors are summed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

ERROR_KEYS = ("connect", "read", "write", "timeout", "non2xx3xx")


def _load_jsonl(path: str | None) -> list[dict[str, Any]]:
    if not path:
        return []
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for raw in fh:
                line = raw.strip()
                if line:
                    rows.append(json.loads(line))
    except FileNotFoundError:
        return []
    return rows


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}%"


def _errors_cell(err: dict[str, int]) -> str:
    total = sum(err.values())
    if total == 0:
        return "0"
    parts = [f"{k} {err[k]}" for k in ERROR_KEYS if err.get(k)]
    return f"{total} ({', '.join(parts)})"


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> tuple[str, str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    text = "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])
    md_sep = ["---:" if i in right else ":---" for i in range(len(headers))]
    md = "\n".join(
        ["| " + " | ".join(headers) + " |", "| " + " | ".join(md_sep) + " |"]
        + ["| " + " | ".join(r) + " |" for r in rows]
    )
    return text, md


def throughput_table(
    results: list[dict[str, Any]], order: list[str], baseline: str, second: str | None = None
) -> tuple[str, str]:
    """`second`: when variants of it ran (names starting with it), a column compares each
    variant's req/s and p99 with it."""
    by_proxy: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_proxy.setdefault(r["proxy"], []).append(r)
    proxies = [p for p in order if p in by_proxy] + sorted(set(by_proxy) - set(order))
    summary: dict[str, dict[str, Any]] = {}
    for p in proxies:
        runs = by_proxy[p]
        err = {k: sum(int(r["errors"].get(k, 0)) for r in runs) for k in ERROR_KEYS}
        summary[p] = {
            "rps": _median([r["rps"] for r in runs]),
            "p50": _median([r.get("p50_ms") for r in runs]),
            "p99": _median([r.get("p99_ms") for r in runs]),
            "rps_min": min(r["rps"] for r in runs),
            "rps_max": max(r["rps"] for r in runs),
            "proxy_cpu": _median([r.get("proxy_cpu_pct") for r in runs]),
            "load_cpu": _median(
                [r.get("load_cpu_pct") for r in runs if r.get("load_cpu_pct", -1) >= 0]
            ),
            "rounds": len(runs),
            "errors": err,
        }
    if baseline not in summary and proxies:
        baseline = proxies[0]
    base = summary.get(baseline, {})
    multi = any(s["rounds"] > 1 for s in summary.values())
    headers = [
        "proxy",
        "req/s",
        "p50 ms",
        "p99 ms",
        f"req/s vs {baseline}",
        f"p99 vs {baseline}",
        "proxy CPU",
        "load CPU",
        "errors",
    ]
    reference: dict[str, Any] | None = None  # `second`'s row, when variants of it ran
    if second in summary and any(p.startswith(second) and p != second for p in proxies):
        reference = summary[second]
        headers[6:6] = [f"req/s vs {second}", f"p99 vs {second}"]
    if multi:
        headers.insert(2, "req/s min-max")
    rows = []
    for p in proxies:
        s = summary[p]
        row = [
            p,
            f"{s['rps']:,.0f}",
            _ms(s["p50"]),
            _ms(s["p99"]),
            _ratio(s["rps"], base.get("rps")),
            _ratio(s["p99"], base.get("p99")),
            _pct(s["proxy_cpu"]),
            _pct(s["load_cpu"]),
            _errors_cell(s["errors"]),
        ]
        if reference is not None:
            mine = p.startswith(str(second))
            row[6:6] = [
                _ratio(s["rps"], reference.get("rps")) if mine else "",
                _ratio(s["p99"], reference.get("p99")) if mine else "",
            ]
        if multi:
            row.insert(2, f"{s['rps_min']:,.0f}-{s['rps_max']:,.0f}")
        rows.append(row)
    right = set(range(1, len(headers) - 1))
    return _table(headers, rows, right)


def idle_table(idle: list[dict[str, Any]], order: list[str]) -> tuple[str, str]:
    idle = sorted(idle, key=lambda r: order.index(r["proxy"]) if r["proxy"] in order else 99)
    headers = [
        "proxy",
        "idle conns",
        "RSS before MiB",
        "RSS after MiB",
        "delta MiB",
        "KiB/conn",
        "still open",
        "failed",
    ]
    rows = []
    for r in idle:
        # Report the whole process tree (nginx master+worker; loadweaver children if any).
        multi = r.get("tree_pids", 1) > 1
        b = r["tree_rss_before_kib"] if multi else r["rss_before_kib"]
        a = r["tree_rss_after_kib"] if multi else r["rss_after_kib"]
        per = r["tree_kib_per_conn"] if multi else r["kib_per_conn"]
        name = r["proxy"] + (f" ({r['tree_pids']} procs)" if multi else "")
        rows.append(
            [
                name,
                f"{r['established']}/{r['requested']}",
                f"{b / 1024:.1f}",
                f"{a / 1024:.1f}",
                f"{(a - b) / 1024:.1f}",
                f"{per:.2f}",
                str(r["still_open_after_hold"]),
                str(r["failed"] + r.get("non2xx3xx", 0) + r.get("closed_by_server", 0)),
            ]
        )
    return _table(headers, rows, set(range(1, len(headers))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--idle")
    ap.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a line for the markdown header (repeatable, kept in order)",
    )
    ap.add_argument("--baseline", default="haproxy")
    ap.add_argument("--second-baseline", default=None, help="compare its variants with it too")
    ap.add_argument("--order", default="haproxy,nginx,loadweaver")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    order = [p for p in args.order.split(",") if p]
    results = _load_jsonl(args.results)
    idle = _load_jsonl(args.idle)
    meta = dict(kv.partition("=")[::2] for kv in args.meta)
    if not results:
        print("report.py: no wrk results to report", file=sys.stderr)
        return 1

    text, md = throughput_table(results, order, args.baseline, args.second_baseline)
    print(text)
    idle_text = idle_md = ""
    if idle:
        idle_text, idle_md = idle_table(idle, order)
        print()
        print("Idle keep-alive connections (RSS):")
        print(idle_text)

    lines = ["# loadweaver benchmark", ""]
    if meta:
        for key, value in meta.items():
            lines.append(f"- **{key}**: {value}")
        lines.append("")
    lines += ["## Throughput and latency", "", md, ""]
    lines.append(
        "req/s, p50 and p99 are medians over rounds; errors are wrk socket errors "
        "(connect/read/write/timeout) plus non-2xx/3xx responses, summed over rounds. "
        '"proxy CPU" is the CPU time of the proxy\'s process tree per wall second '
        '(100% = one core); "load CPU" is how busy the CPU running wrk and the '
        "backends was. A load CPU near 100% with proxy CPU well below 100% means the "
        "load side, not the proxy, was the limit for that row. With --second-baseline, "
        'the "vs" columns of that name compare each of its variants (names starting with '
        "it) with it."
    )
    if idle_md:
        lines += [
            "",
            "## Memory with idle keep-alive connections",
            "",
            idle_md,
            "",
            "RSS is VmRSS from /proc (summed over the process tree where it has "
            'several processes, e.g. nginx master + worker); "failed" counts '
            "connections that failed, got a non-2xx/3xx response or were closed "
            "by the server.",
        ]
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
