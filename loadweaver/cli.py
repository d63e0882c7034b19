"""The `loadweaver` command: `node start` and `config validate`.

`cluster ...` arrives with the admin API.

Exit codes: 0 success, 1 rejected (invalid config, cannot start), 2 usage error.
"""

import argparse
import sys
from pathlib import Path

import uvloop
from loguru import logger

from loadweaver.config.loader import ConfigError, build_config, load_config, load_default_config
from loadweaver.config.models import Config
from loadweaver.node import Node, NodeStartError
from loadweaver.observability.logging import configure_logging
from loadweaver.proxy.listener import ListenError
from loadweaver.workers import run_workers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loadweaver", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    node = commands.add_parser("node", help="run a proxy node").add_subparsers(
        dest="action", required=True
    )
    start = node.add_parser("start", help="start a node in the foreground")
    start.add_argument("--config", type=Path, help="YAML config file (default: a demo config)")
    start.add_argument("--redis", metavar="URL", help="cluster store URL (cluster.redis_url)")
    start.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")

    config = commands.add_parser("config", help="work with config files").add_subparsers(
        dest="action", required=True
    )
    validate = config.add_parser("validate", help="check a config file and explain any problem")
    validate.add_argument("file", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config":
        return validate_command(args.file)
    return start_command(args.config, args.redis, args.workers)


def validate_command(path: Path) -> int:
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


def start_command(path: Path | None, redis_url: str | None, workers: int) -> int:
    if workers < 1:
        print("--workers must be 1 or more", file=sys.stderr)
        return 2
    try:
        config = load_config(path) if path else load_default_config()
        if redis_url:
            data = config.model_dump()
            data["cluster"]["redis_url"] = redis_url
            config = build_config(data, "--redis")
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    configure_logging(config.logging, config.node.id)
    if config.cluster.redis_url:
        logger.warning("the Redis cluster store is not available yet; this node runs on its own")
    if workers == 1:
        return _serve(config, path, reuse_port=False, serve_admin=True)
    return run_workers(
        workers, lambda index: _serve(config, path, reuse_port=True, serve_admin=index == 0)
    )


def _serve(config: Config, path: Path | None, reuse_port: bool, serve_admin: bool) -> int:
    node = Node(config, path, reuse_port=reuse_port, serve_admin=serve_admin)
    try:
        uvloop.run(node.run())
    except (NodeStartError, ListenError) as error:
        logger.error("{}", error)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
