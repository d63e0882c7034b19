"""The interface every cluster store implements: MemoryStore (one node) and RedisStore.

A store keeps what nodes share: the versioned dynamic config, the member list, the leader lease,
sticky sessions and rate-limit buckets. Every method raises StoreError when the store cannot be
reached; callers keep serving from what they have.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from loadweaver.cluster.state import StoredConfig


class StoreError(Exception):
    """The store could not be read or written; the message says which and why."""


class VersionConflictError(StoreError):
    """A compare-and-set found another version: someone else wrote first."""

    def __init__(self, expected: int, found: int) -> None:
        super().__init__(f"the cluster config is at version {found}, not {expected}")
        self.expected = expected
        self.found = found


class FencedOutError(StoreError):
    """A leader-only write carried a fencing token that is no longer the leader's."""


@dataclass(frozen=True)
class Lease:
    """A leadership term: the holder and its fencing token (higher terms have higher tokens)."""

    node_id: str
    token: int


@dataclass(frozen=True)
class Grant:
    """Tokens taken from a shared bucket."""

    granted: int
    available: float  # tokens left in the shared bucket after this take
    wait: float  # seconds until the bucket holds one more token (0 if it has one)


class ClusterStore(Protocol):
    @property
    def kind(self) -> str:
        """`memory` or `redis`."""
        ...

    @property
    def description(self) -> str:
        """What `cluster status` shows, such as `redis redis://10.0.0.5:6379/0`."""
        ...

    @property
    def up(self) -> bool:
        """False while the store is unreachable (its circuit breaker is open)."""
        ...

    @property
    def watch_path(self) -> Path | None:
        """A file whose changes mean another process changed the record; None: no such file."""
        ...

    # ---- the dynamic config ----

    async def load(self) -> StoredConfig:
        """The stored record, or an empty one."""
        ...

    async def save(
        self,
        state: StoredConfig,
        expected_version: int,
        fence: Lease | None = None,
        min_version: int = 0,
    ) -> int:
        """Writes `state` if the record is still at `expected_version`; returns the new version,
        one above the old or `min_version`, whichever is higher (a leader re-seeding a store that
        lost its data must not go back to versions the nodes have seen).

        Raises VersionConflictError, or FencedOutError when `fence` is not the current lease.
        Other nodes hear of the change through `changes()`.
        """
        ...

    def changes(self) -> AsyncIterator[int]:
        """The current version once subscribed, then versions announced by writers as they
        arrive; best effort (pub/sub may drop some)."""
        ...

    # ---- membership and leadership ----

    async def heartbeat(self, node_id: str, record: dict[str, Any], ttl: float) -> None: ...

    async def leave(self, node_id: str) -> None: ...

    async def members(self) -> list[dict[str, Any]]:
        """The records of nodes whose heartbeat has not expired."""
        ...

    async def acquire_lease(self, node_id: str, ttl: float) -> Lease | None:
        """Leadership if nobody holds it; None otherwise."""
        ...

    async def renew_lease(self, lease: Lease, ttl: float) -> bool:
        """Extends `lease` if it is still the current one."""
        ...

    async def release_lease(self, lease: Lease) -> None: ...

    async def current_lease(self) -> Lease | None: ...

    # ---- health verdicts ----

    async def save_verdict(
        self, key: str, verdict: dict[str, Any], fence: Lease | None = None
    ) -> None:
        """Records the leader's verdict for `key` (`pool/backend`) and announces it; raises
        FencedOutError when `fence` is no longer the current lease."""
        ...

    async def load_verdicts(self) -> dict[str, dict[str, Any]]: ...

    def verdict_changes(self) -> AsyncIterator[None]:
        """A signal once subscribed, then one per verdict announced; best effort."""
        ...

    async def report_ejection(self, node_id: str, key: str, ttl: float) -> None:
        """This node passively ejected backend `key` (`pool/backend`) for `ttl` seconds."""
        ...

    async def ejection_reports(self) -> dict[str, set[str]]:
        """Backend key -> the nodes whose ejection of it has not expired."""
        ...

    # ---- sticky sessions ----

    async def session_get(self, pool: str, key: str, ttl: float) -> str | None:
        """The backend a session is pinned to, sliding its expiry by `ttl`."""
        ...

    async def session_set(self, pool: str, key: str, backend: str, ttl: float) -> None: ...

    # ---- rate limits ----

    async def take_tokens(
        self, bucket: str, rate: float, capacity: float, want: int, idle_ttl: float
    ) -> Grant:
        """Takes up to `want` tokens (a negative `want` returns unused ones) from a shared bucket
        refilled at `rate` per second up to `capacity`, timed by the store's own clock."""
        ...

    async def close(self) -> None: ...
