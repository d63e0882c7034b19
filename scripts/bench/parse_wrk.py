#!/usr/bin/env python3
"""Parse the output of one wrk run into a single JSON object (stdlib only).

Prefers the exact ``WRKJSON {...}`` line printed by ``wrk_report.lua``; falls back to
parsing wrk's human-readable ``--latency`` output.

Usage: parse_wrk.py WRK_OUTPUT_FILE [--label KEY=VALUE ...]
Prints one JSON line with: requests, duration_s, rps, p50_ms, p90_ms, p99_ms, p999_ms,
errors (connect/read/write/timeout/non2xx3xx) and any --label fields.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

_TIME_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _time_to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unparseable wrk time {text!r}")
    return float(m.group(1)) * _TIME_UNITS_US[m.group(2)] / 1e3


def _from_json_line(text: str) -> dict[str, Any] | None:
    for line in text.splitlines():
        if line.startswith("WRKJSON "):
            raw = json.loads(line[len("WRKJSON ") :])
            duration_s = raw["duration_us"] / 1e6
            return {
                "requests": raw["requests"],
                "duration_s": duration_s,
                "rps": raw["requests"] / duration_s if duration_s > 0 else 0.0,
                "p50_ms": raw["p50_us"] / 1e3,
                "p90_ms": raw["p90_us"] / 1e3,
                "p99_ms": raw["p99_us"] / 1e3,
                "p999_ms": raw["p999_us"] / 1e3,
                "mean_ms": raw["lat_mean_us"] / 1e3,
                "max_ms": raw["lat_max_us"] / 1e3,
                "errors": {
                    "connect": raw["connect"],
                    "read": raw["read"],
                    "write": raw["write"],
                    "timeout": raw["timeout"],
                    "non2xx3xx": raw["status"],
                },
            }
    return None


def _from_text(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text, re.M)
    if not m:
        raise ValueError("no 'N requests in T' line in wrk output")
    out["requests"] = int(m.group(1))
    out["duration_s"] = _time_to_ms(m.group(2) + m.group(3)) / 1e3
    m = re.search(r"^Requests/sec:\s*([\d.]+)", text, re.M)
    if not m:
        raise ValueError("no 'Requests/sec:' line in wrk output")
    out["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s*{pct}(?:\.0+)?%\s+(\S+)", text, re.M)
        out[key] = _time_to_ms(m.group(1)) if m else None
    out["p999_ms"] = None
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx3xx": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        for key, val in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True):
            errors[key] = int(val)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors["non2xx3xx"] = int(m.group(1))
    out["errors"] = errors
    return out


def parse(text: str) -> dict[str, Any]:
    return _from_json_line(text) or _from_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--summary", action="store_true", help="also print a one-line human summary to stderr"
    )
    args = ap.parse_args(argv)
    with open(args.file, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    try:
        result = parse(text)
    except ValueError as exc:
        print(f"parse_wrk: {args.file}: {exc}", file=sys.stderr)
        return 1
    for label in args.label:
        key, _, value = label.partition("=")
        try:
            result[key] = int(value)
        except ValueError:
            try:
                result[key] = float(value)
            except ValueError:
                result[key] = value
    print(json.dumps(result, sort_keys=True))
    if args.summary:
        errors = sum(result["errors"].values())
        p50 = "n/a" if result["p50_ms"] is None else f"{result['p50_ms']:.2f} ms"
        p99 = "n/a" if result["p99_ms"] is None else f"{result['p99_ms']:.2f} ms"
        cpu = ""
        if "proxy_cpu_pct" in result:
            cpu = f", proxy CPU {result['proxy_cpu_pct']:.0f}%"
            if result.get("load_cpu_pct", -1) >= 0:
                cpu += f", load CPU {result['load_cpu_pct']:.0f}%"
        print(
            f"{result['rps']:,.0f} req/s, p50 {p50}, p99 {p99}, errors {errors}{cpu}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
