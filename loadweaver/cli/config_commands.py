"""`loadweaver config validate FILE` (offline) and `loadweaver config show` (from a node)."""

import argparse
import json
import sys
from pathlib import Path

import yaml

from loadweaver.cli.admin_client import AdminClient
from loadweaver.cli.tables import render_table
from loadweaver.config.loader import ConfigError, load_config


def validate(path: Path) -> int:
    try:
        config = load_config(path)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    backends = sum(len(pool.backends) for pool in config.pools.values())
    print(
        f"{path}: valid: {len(config.listeners)} listener(s), {len(config.pools)} pool(s), "
        f"{backends} backend(s), {len(config.routes)} route(s)"
    )
    return 0


def show(client: AdminClient, args: argparse.Namespace) -> int:
    """The node's effective config as YAML, then where each configured value came from."""
    view = client.get("/config")
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    print(f"# effective config of {client.base_url}, version {view['version']}")
    print(yaml.safe_dump(view["config"], sort_keys=False).rstrip())
    print("\n# where each value came from (values not listed are built-in defaults)")
    rows = [[path, source] for path, source in view["sources"].items()]
    print("\n".join(f"# {line}" for line in render_table(["PATH", "SOURCE"], rows).splitlines()))
    return 0
