"""The single-node store: everything in memory; the config record persisted to a state file.

The file is replaced atomically (write a temporary file, fsync, rename), so a crash mid-write
leaves either the old record or the new one, never a torn one. Sessions, buckets, members and the
lease live only in memory: on one node they need not outlive the process.
"""

import asyncio
import fcntl
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from loadweaver.cluster.state import StoredConfig
from loadweaver.cluster.store import FencedOutError, Grant, Lease, StoreError, VersionConflictError

STATE_FILE_NAME = "loadweaver-state.json"
VERDICTS_FILE_NAME = "loadweaver-health.json"


class MemoryStore:
    kind = "memory"
    up = True  # in this process: never unreachable

    def __init__(
        self, state_dir: str | Path | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = Path(state_dir) / STATE_FILE_NAME if state_dir is not None else None
        self._clock = clock
        self._state = StoredConfig()
        self._subscribers: list[asyncio.Queue[int]] = []
        self._members: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lease: tuple[Lease, float] | None = None
        self._fence = 0
        self._sessions: dict[tuple[str, str], tuple[str, float]] = {}
        self._buckets: dict[str, tuple[float, float, float]] = {}  # tokens, at, expires
        self._verdicts: dict[str, dict[str, Any]] = {}
        self._ejections: dict[tuple[str, str], float] = {}  # (key, node) -> expiry
        self._verdict_subscribers: list[asyncio.Queue[None]] = []

    @property
    def description(self) -> str:
        if self.path is None:
            return "memory (not persisted: set node.state_dir to keep API changes)"
        return f"memory (state file {self.path})"

    @property
    def watch_path(self) -> Path | None:
        return self.path

    # ---- the dynamic config ----

    async def load(self) -> StoredConfig:
        if self.path is not None:
            self._state = await asyncio.to_thread(_read, self.path)
        return self._state

    async def save(
        self,
        state: StoredConfig,
        expected_version: int,
        fence: Lease | None = None,
        min_version: int = 0,
    ) -> int:
        if fence is not None and not self._holds(fence):
            raise FencedOutError(f"lease {fence.token} of {fence.node_id} is no longer current")
        if self.path is None:
            new = _next_record(self._state, state, expected_version, min_version)
        else:
            new = await asyncio.to_thread(
                _save_file, self.path, state, expected_version, min_version
            )
        self._state = new
        for queue in self._subscribers:
            queue.put_nowait(new.version)
        return new.version

    async def changes(self) -> AsyncIterator[int]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        self._subscribers.append(queue)
        try:
            yield self._state.version
            while True:
                yield await queue.get()
        finally:
            self._subscribers.remove(queue)

    # ---- membership and leadership ----

    async def heartbeat(self, node_id: str, record: dict[str, Any], ttl: float) -> None:
        self._members[node_id] = (self._clock() + ttl, dict(record))

    async def leave(self, node_id: str) -> None:
        self._members.pop(node_id, None)

    async def members(self) -> list[dict[str, Any]]:
        now = self._clock()
        for node_id in [key for key, (expires, _) in self._members.items() if expires <= now]:
            del self._members[node_id]
        return [record for _, record in self._members.values()]

    async def acquire_lease(self, node_id: str, ttl: float) -> Lease | None:
        if await self.current_lease() is not None:
            return None
        self._fence += 1
        lease = Lease(node_id, self._fence)
        self._lease = (lease, self._clock() + ttl)
        return lease

    async def renew_lease(self, lease: Lease, ttl: float) -> bool:
        if not self._holds(lease):
            return False
        self._lease = (lease, self._clock() + ttl)
        return True

    async def release_lease(self, lease: Lease) -> None:
        if self._holds(lease):
            self._lease = None

    async def current_lease(self) -> Lease | None:
        if self._lease is None or self._lease[1] <= self._clock():
            self._lease = None
            return None
        return self._lease[0]

    def _holds(self, lease: Lease) -> bool:
        return (
            self._lease is not None and self._lease[0] == lease and self._lease[1] > self._clock()
        )

    # ---- health verdicts ----

    async def save_verdict(
        self, key: str, verdict: dict[str, Any], fence: Lease | None = None
    ) -> None:
        if fence is not None and not self._holds(fence):
            raise FencedOutError(f"lease {fence.token} of {fence.node_id} is no longer current")
        self._verdicts[key] = dict(verdict)
        if self.path is not None:
            verdicts_file = self.path.with_name(VERDICTS_FILE_NAME)
            await asyncio.to_thread(_write_json, verdicts_file, self._verdicts)
        for queue in self._verdict_subscribers:
            queue.put_nowait(None)

    async def load_verdicts(self) -> dict[str, dict[str, Any]]:
        if self.path is not None:  # another worker of this node may have written it
            self._verdicts = await asyncio.to_thread(
                _read_verdicts, self.path.with_name(VERDICTS_FILE_NAME)
            )
        return dict(self._verdicts)

    async def verdict_changes(self) -> AsyncIterator[None]:
        queue: asyncio.Queue[None] = asyncio.Queue()
        self._verdict_subscribers.append(queue)
        try:
            yield None
            while True:
                await queue.get()
                yield None
        finally:
            self._verdict_subscribers.remove(queue)

    async def report_ejection(self, node_id: str, key: str, ttl: float) -> None:
        self._ejections[(key, node_id)] = self._clock() + ttl

    async def ejection_reports(self) -> dict[str, set[str]]:
        now = self._clock()
        for item in [item for item, expiry in self._ejections.items() if expiry <= now]:
            del self._ejections[item]
        reports: dict[str, set[str]] = {}
        for key, node_id in self._ejections:
            reports.setdefault(key, set()).add(node_id)
        return reports

    # ---- sticky sessions ----

    async def session_get(self, pool: str, key: str, ttl: float) -> str | None:
        entry = self._sessions.get((pool, key))
        now = self._clock()
        if entry is None or entry[1] <= now:
            self._sessions.pop((pool, key), None)
            return None
        self._sessions[(pool, key)] = (entry[0], now + ttl)
        return entry[0]

    async def session_set(self, pool: str, key: str, backend: str, ttl: float) -> None:
        self._sessions[(pool, key)] = (backend, self._clock() + ttl)

    # ---- rate limits ----

    async def take_tokens(
        self, bucket: str, rate: float, capacity: float, want: int, idle_ttl: float
    ) -> Grant:
        now = self._clock()
        tokens, at, expires = self._buckets.get(bucket, (capacity, now, now + idle_ttl))
        if expires <= now:
            tokens, at = capacity, now
        tokens = min(capacity, tokens + (now - at) * rate)
        granted = max(-int(capacity), min(want, int(tokens)))
        tokens = min(capacity, tokens - granted)
        self._buckets[bucket] = (tokens, now, now + idle_ttl)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
        return Grant(max(granted, 0), tokens, wait)

    async def close(self) -> None:
        self._subscribers.clear()


def _next_record(
    current: StoredConfig, state: StoredConfig, expected_version: int, min_version: int
) -> StoredConfig:
    if expected_version != current.version:
        raise VersionConflictError(expected_version, current.version)
    return replace(state, version=max(expected_version + 1, min_version))


def _save_file(
    path: Path, state: StoredConfig, expected_version: int, min_version: int
) -> StoredConfig:
    """Compare-and-set against the file itself, under a lock: processes sharing a state dir
    (workers of one node) cannot overwrite each other's change."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise StoreError(f"cannot write the state file {path}: {error.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        new = _next_record(_read(path), state, expected_version, min_version)
        _write(path, new)
        return new
    finally:
        os.close(lock)  # closing releases the lock


def _read(path: Path) -> StoredConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return StoredConfig()
    except OSError as error:
        raise StoreError(f"cannot read the state file {path}: {error.strerror}") from None
    try:
        return StoredConfig.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise StoreError(
            f"the state file {path} is damaged ({error!r}); move it away to start from "
            "the config file alone"
        ) from None


def _read_verdicts(path: Path) -> dict[str, dict[str, Any]]:
    """Verdicts from an earlier run; a missing or damaged file only means probing afresh."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(key): value for key, value in data.items() if isinstance(value, dict)}


def _write(path: Path, state: StoredConfig) -> None:
    _write_json(path, state.to_json())


def _write_json(path: Path, value: Any) -> None:
    """Atomically: a temporary file, fsync, rename, fsync of the directory."""
    text = json.dumps(value, indent=2, sort_keys=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)
    except OSError as error:
        raise StoreError(f"cannot write the state file {path}: {error.strerror}") from None


def _fsync_directory(directory: Path) -> None:
    """Makes the rename itself durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
