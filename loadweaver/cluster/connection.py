"""Turns `cluster.redis_url` into a redis-py asyncio client.

Accepted: `redis://`, `rediss://` (TLS) and `redis+sentinel://host:port,host:port/mastername[/db]`.
The password comes from the URL or, when the URL has none, LOADWEAVER_REDIS_PASSWORD.
"""

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

PASSWORD_VARIABLE = "LOADWEAVER_REDIS_PASSWORD"


class RedisUrlError(ValueError):
    pass


@dataclass(frozen=True)
class Timeouts:
    command: float  # each call; a slow store must not slow requests
    connect: float


def connect(url: str, timeouts: Timeouts) -> Redis:
    """A client; it connects lazily, so this never blocks or fails on an unreachable server."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else os.environ.get(PASSWORD_VARIABLE)
    options: dict[str, Any] = {
        "socket_timeout": timeouts.command or None,
        "socket_connect_timeout": timeouts.connect,
        "password": password,
    }
    if parts.scheme in ("redis", "rediss"):
        client: Redis = Redis.from_url(url, **options)
        return client
    if parts.scheme == "redis+sentinel":
        return _sentinel_master(parts.netloc.rpartition("@")[2], parts.path, options)
    raise RedisUrlError(
        f"cluster.redis_url {url!r}: use redis://, rediss:// or "
        "redis+sentinel://host:port,host:port/mastername"
    )


def _sentinel_master(hosts: str, path: str, options: dict[str, Any]) -> Redis:
    segments = [segment for segment in path.split("/") if segment]
    if not segments:
        raise RedisUrlError("a redis+sentinel:// URL needs the master name: .../mymaster")
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise RedisUrlError(f"sentinel address {host!r} must be host:port")
        sentinels.append((name.strip("[]"), int(port)))
    database = int(segments[1]) if len(segments) > 1 and segments[1].isdigit() else 0
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        sentinels,
        socket_timeout=options["socket_timeout"],
        sentinel_kwargs={"socket_timeout": options["socket_timeout"]},
    )
    master: Redis = sentinel.master_for(segments[0], db=database, **options)
    return master
