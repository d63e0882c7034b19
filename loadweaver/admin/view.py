"""What the admin API needs from a node; Node provides it."""

from pathlib import Path
from typing import Any, Protocol

from loadweaver.cluster.store import ClusterStore
from loadweaver.config.models import Config
from loadweaver.control.editor import ConfigEditor
from loadweaver.control.observing import Observing
from loadweaver.control.snapshot import Snapshot, SnapshotHolder
from loadweaver.observability.live_stats import LiveStats


class NodeView(Protocol):
    config: Config  # the effective config
    config_path: Path | None
    ready: bool
    started_at: float  # wall-clock seconds
    admin_token: str | None
    editor: ConfigEditor
    holder: SnapshotHolder
    stats: LiveStats
    store: ClusterStore
    observing: Observing

    @property
    def version(self) -> int: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def sources(self) -> dict[str, str]: ...

    async def reload_file(self) -> Snapshot: ...

    async def cluster_members(self) -> tuple[list[dict[str, Any]], str | None, bool]:
        """Member records, the leader's id, and whether the store answered."""
        ...
