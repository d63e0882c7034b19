"""Rate limiting: token buckets per key, on one node or shared by the cluster through the store."""

from loadweaver.traffic.bucket import TokenBucket
from loadweaver.traffic.limiter import (
    ClusterLimiter,
    Decision,
    Limiter,
    LocalLimiter,
    create_limiter,
)

__all__ = [
    "ClusterLimiter",
    "Decision",
    "Limiter",
    "LocalLimiter",
    "TokenBucket",
    "create_limiter",
]
