"""The interface every config store implements: the in-memory one now, Redis in a cluster."""

from pathlib import Path
from typing import Protocol

from loadweaver.cluster.state import StoredConfig


class StoreError(Exception):
    """The store could not be read or written; the message says which and why."""


class ConfigStore(Protocol):
    @property
    def description(self) -> str:
        """What `cluster status` shows, such as `memory (state file /var/lib/x/state.json)`."""
        ...

    @property
    def kind(self) -> str:
        """`memory` or `redis`."""
        ...

    @property
    def watch_path(self) -> Path | None:
        """A file whose changes mean another process changed the record; None: no such file."""
        ...

    async def load(self) -> StoredConfig:
        """The stored record, or an empty one; raises StoreError when it cannot be read."""
        ...

    async def save(self, state: StoredConfig) -> None:
        """Replaces the record atomically; raises StoreError and keeps the old one on failure."""
        ...
