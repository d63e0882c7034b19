"""Upstream keep-alive connection pools, one per backend, kept across snapshot swaps."""

from loadweaver.pool.connection import UpstreamConnection, UpstreamHandler
from loadweaver.pool.manager import PoolManager
from loadweaver.pool.pool import PoolSettings, UpstreamConnectError, UpstreamPool

__all__ = [
    "PoolManager",
    "PoolSettings",
    "UpstreamConnectError",
    "UpstreamConnection",
    "UpstreamHandler",
    "UpstreamPool",
]
