"""The `loadweaver` command: run a node, manage a running cluster, check config files.

Exit codes: 0 success; 1 rejected (an invalid config, a refused change, a node that cannot
start); 2 usage error; 3 the admin API could not be reached.
"""

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from loadweaver.cli import cluster_commands, config_commands, observation_commands
from loadweaver.cli.admin_client import (
    DEFAULT_ADMIN_URL,
    AdminClient,
    RejectedError,
    UnreachableError,
)
from loadweaver.cli.cluster_commands import UsageError

EXIT_REJECTED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
ADMIN_URL_VARIABLE = "LOADWEAVER_ADMIN_URL"
ADMIN_TOKEN_VARIABLE = "LOADWEAVER_ADMIN_TOKEN"

Command = Callable[[AdminClient, argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loadweaver", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_node_commands(commands)
    _add_cluster_commands(commands)
    _add_config_commands(commands)
    return parser


def _connection_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--admin",
        metavar="URL",
        default=os.environ.get(ADMIN_URL_VARIABLE, DEFAULT_ADMIN_URL),
        help=f"a node's admin API (default: ${ADMIN_URL_VARIABLE} or {DEFAULT_ADMIN_URL})",
    )
    options.add_argument(
        "--token",
        default=os.environ.get(ADMIN_TOKEN_VARIABLE),
        help=f"the admin token (default: ${ADMIN_TOKEN_VARIABLE})",
    )
    return options


def _add_node_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    node = commands.add_parser("node", help="run a proxy node").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    start = node.add_parser("start", help="start a node in the foreground")
    start.add_argument("--config", type=Path, help="YAML config file (default: a demo config)")
    start.add_argument("--redis", metavar="URL", help="cluster store URL (cluster.redis_url)")
    start.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")


def _add_cluster_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    connection = _connection_options()
    cluster = commands.add_parser("cluster", help="manage running nodes through their admin API")
    groups = cluster.add_subparsers(dest="group", required=True, metavar="GROUP")
    status = groups.add_parser("status", parents=[connection], help="nodes, leader, version")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(run=cluster_commands.status)

    traffic = groups.add_parser(
        "traffic", parents=[connection], help="top clients, paths, user agents, status codes"
    )
    traffic.add_argument("--top", type=int, default=10, help="entries per list (default 10)")
    traffic.add_argument("--node", action="store_true", help="this node only, not merged")
    traffic.add_argument("--json", action="store_true", help="print the raw JSON")
    traffic.set_defaults(run=observation_commands.traffic)
    alerts = groups.add_parser("alerts", parents=[connection], help="alerts pending or firing")
    alerts.add_argument("--json", action="store_true", help="print the raw JSON")
    alerts.set_defaults(run=observation_commands.alerts)

    backends = groups.add_parser("backends", help="list and change backends").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    add = backends.add_parser("add", parents=[connection], help="add a backend to a pool")
    add.add_argument("name")
    add.add_argument("--url", required=True, help="http://host:port or https://host:port")
    add.add_argument("--pool", required=True)
    add.add_argument("--weight", type=int)
    add.add_argument("--backup", action="store_true", help="only used when no primary is up")
    add.add_argument("--max-connections", type=int, dest="max_connections")
    add.set_defaults(run=cluster_commands.backends_add)

    listing = backends.add_parser("list", parents=[connection], help="list backends")
    listing.add_argument("--pool")
    listing.add_argument("--json", action="store_true", help="print the raw JSON")
    listing.set_defaults(run=cluster_commands.backends_list)

    for action, helptext, run in (
        ("remove", "remove a backend; requests in flight finish", cluster_commands.backends_remove),
        ("drain", "stop new requests and wait for in-flight ones", cluster_commands.backends_drain),
    ):
        command = backends.add_parser(action, parents=[connection], help=helptext)
        command.add_argument("name")
        command.add_argument("--pool", help="needed when several pools have a backend so named")
        command.set_defaults(run=run)
        if action == "drain":
            command.add_argument(
                "--timeout", type=float, default=60.0, help="seconds to wait (default 60)"
            )

    weight = backends.add_parser("set-weight", parents=[connection], help="change a weight")
    weight.add_argument("name")
    weight.add_argument("weight", type=int)
    weight.add_argument("--pool", help="needed when several pools have a backend so named")
    weight.set_defaults(run=cluster_commands.backends_set_weight)


def _add_config_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    config = commands.add_parser("config", help="check config files, show a node's config")
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    validate = actions.add_parser("validate", help="check a config file and explain any problem")
    validate.add_argument("file", type=Path)
    show = actions.add_parser(
        "show", parents=[_connection_options()], help="a node's effective config and its sources"
    )
    show.add_argument("--json", action="store_true", help="print the raw JSON")
    show.set_defaults(run=config_commands.show)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "node":
        # Only here: importing the node (uvloop, the data plane) would slow every admin command.
        from loadweaver.cli import node_commands  # noqa: PLC0415

        return node_commands.start(args.config, args.redis, args.workers)
    if args.command == "config" and args.action == "validate":
        return config_commands.validate(args.file)
    return _run_remote(args.run, args)


def _run_remote(run: Command, args: argparse.Namespace) -> int:
    client = AdminClient(args.admin, args.token)
    try:
        return run(client, args)
    except RejectedError as error:
        print(error, file=sys.stderr)
        return EXIT_REJECTED
    except UnreachableError as error:
        print(error, file=sys.stderr)
        return EXIT_UNREACHABLE
    except UsageError as error:
        print(f"loadweaver: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_REJECTED
    except BrokenPipeError:
        # The reader (`| head`) left early: not an error, but stdout must not be flushed again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
