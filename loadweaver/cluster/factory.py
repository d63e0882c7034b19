"""Chooses the store from `cluster.redis_url`: Redis when set, else memory."""

from loadweaver.cluster.connection import Timeouts
from loadweaver.cluster.memory import MemoryStore
from loadweaver.cluster.redis_store import RedisStore
from loadweaver.cluster.store import ClusterStore
from loadweaver.config.models import Config
from loadweaver.observability.metrics import Metrics


def build_store(config: Config, metrics: Metrics) -> ClusterStore:
    cluster = config.cluster
    if cluster.redis_url is None:
        return MemoryStore(config.node.state_dir)
    return RedisStore(
        cluster.redis_url,
        cluster.name,
        Timeouts(command=cluster.timeout, connect=cluster.connect_timeout),
        on_availability=lambda up: metrics.cluster_store_up.set(1 if up else 0),
    )
