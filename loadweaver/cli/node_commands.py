"""`loadweaver node start`: one node in the foreground, or several worker processes."""

import sys
import tempfile
from pathlib import Path

import uvloop
from loguru import logger

from loadweaver.config.loader import ConfigError, LoadedConfig, build_config, load_config_layers
from loadweaver.config.loader import load_default_config as default_config
from loadweaver.config.sources import value_sources
from loadweaver.node import Node, NodeStartError, WorkerSlot
from loadweaver.observability.logging import LoggingSetupError, configure_logging
from loadweaver.proxy.listener import ListenError
from loadweaver.workers import run_workers


def start(path: Path | None, redis_url: str | None, workers: int) -> int:
    if workers < 1:
        print("--workers must be 1 or more", file=sys.stderr)
        return 2
    try:
        loaded = _load(path, redis_url)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    config = loaded.config
    try:
        configure_logging(config.logging, config.node.id)
    except LoggingSetupError as error:
        logger.error("{}", error)
        return 1
    if workers == 1:
        return _serve(loaded, path, reuse_port=False, serve_admin=True)
    if not config.node.state_dir:
        logger.warning(
            "--workers {} without node.state_dir: API changes reach only the worker that serves "
            "the admin API; set node.state_dir so every worker follows them",
            workers,
        )
    # Workers share their metrics through files here; the first serves them all at /metrics.
    with tempfile.TemporaryDirectory(prefix="loadweaver-metrics-") as directory:
        return run_workers(
            workers,
            lambda index: _serve(
                _as_worker(loaded, index),
                path,
                reuse_port=True,
                serve_admin=index == 0,
                worker=WorkerSlot(index, Path(directory)),
            ),
        )


def _as_worker(loaded: LoadedConfig, index: int) -> LoadedConfig:
    """Each worker is a member of the cluster in its own right, so it needs its own id."""
    config = loaded.config
    node = config.node.model_copy(update={"id": f"{config.node.id}-w{index}"})
    return LoadedConfig(config.model_copy(update={"node": node}), loaded.sources)


def _load(path: Path | None, redis_url: str | None) -> LoadedConfig:
    if path is not None:
        loaded = load_config_layers(path)
    else:
        config = default_config()
        dumped = config.model_dump(mode="json", exclude_unset=True)
        loaded = LoadedConfig(config, value_sources([("built-in demo config", dumped)]))
    if not redis_url:
        return loaded
    data = loaded.config.model_dump(mode="json", exclude_unset=True)
    data.setdefault("cluster", {})["redis_url"] = redis_url
    sources = {**loaded.sources, "cluster.redis_url": "--redis"}
    return LoadedConfig(build_config(data, "--redis"), dict(sorted(sources.items())))


def _serve(
    loaded: LoadedConfig,
    path: Path | None,
    reuse_port: bool,
    serve_admin: bool,
    worker: WorkerSlot | None = None,
) -> int:
    node = Node(
        loaded.config,
        path,
        reuse_port=reuse_port,
        serve_admin=serve_admin,
        sources=loaded.sources,
        worker=worker,
    )
    try:
        uvloop.run(node.run())
    except (NodeStartError, ListenError) as error:
        logger.error("{}", error)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
