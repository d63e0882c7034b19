"""`loadweaver cluster traffic` and `loadweaver cluster alerts`: what the nodes see."""

import argparse
import json
import time

from loadweaver.cli.admin_client import AdminClient
from loadweaver.cli.tables import render_table

DIMENSIONS = (
    ("clients", "CLIENT"),
    ("paths", "PATH"),
    ("user_agents", "USER AGENT"),
    ("status_codes", "STATUS"),
)


def traffic(client: AdminClient, args: argparse.Namespace) -> int:
    query = {"top": str(args.top), "scope": "node" if args.node else "cluster"}
    report = client.get("/traffic", query)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    sampled = (
        f", every {report['sample_step']}th request counted" if report["sample_step"] > 1 else ""
    )
    print(
        f"{report['requests']} requests in the last {report['window_seconds']:.0f}s on "
        f"{', '.join(report['nodes'])}{sampled}"
    )
    for key, heading in DIMENSIONS:
        section = report[key]
        rows = [
            [entry["key"], entry["count"], f"{entry['share'] * 100:.1f}%"]
            for entry in section["top"]
        ]
        print()
        print(render_table([heading, "REQUESTS", "SHARE"], rows) if rows else f"{heading}: none")
        if section["error_bound"]:
            print(f"(counts may be up to {section['error_bound']} low)")
    return 0


def alerts(client: AdminClient, args: argparse.Namespace) -> int:
    report = client.get("/alerts")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    now = time.time()
    rows = [
        [
            alert["state"].upper(),
            alert["rule"],
            _instance(alert["labels"]),
            alert["summary"],
            f"{now - alert['since']:.0f}s",
        ]
        for alert in report["alerts"]
    ]
    print(
        render_table(["STATE", "RULE", "WHERE", "SUMMARY", "FOR"], rows)
        if rows
        else "no alerts pending or firing"
    )
    evaluated = [rule for rule in report["rules"] if rule["evaluated_here"]]
    print(
        f"\n{len(report['rules'])} rule(s); {len(evaluated)} judged by this node"
        + ("" if report["leader"] else "; cluster rules are judged by the leader")
    )
    return 0


def _instance(labels: dict[str, str]) -> str:
    hidden = ("alertname", "severity", "cluster")
    return " ".join(f"{name}={value}" for name, value in labels.items() if name not in hidden)
