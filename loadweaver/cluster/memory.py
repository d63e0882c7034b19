"""The single-node store: kept in memory, persisted to a state file when `node.state_dir` is set.

The file is replaced atomically (write a temporary file, fsync, rename), so a crash mid-write
leaves either the old record or the new one, never a torn one.
"""

import asyncio
import json
import os
import tempfile
from pathlib import Path

from loadweaver.cluster.state import StoredConfig
from loadweaver.cluster.store import StoreError

STATE_FILE_NAME = "loadweaver-state.json"


class MemoryConfigStore:
    kind = "memory"

    def __init__(self, state_dir: str | Path | None = None) -> None:
        self.path = Path(state_dir) / STATE_FILE_NAME if state_dir is not None else None
        self._state = StoredConfig()

    @property
    def description(self) -> str:
        if self.path is None:
            return "memory (not persisted: set node.state_dir to keep API changes)"
        return f"memory (state file {self.path})"

    @property
    def watch_path(self) -> Path | None:
        return self.path

    async def load(self) -> StoredConfig:
        if self.path is not None:
            self._state = await asyncio.to_thread(self._read, self.path)
        return self._state

    async def save(self, state: StoredConfig) -> None:
        if self.path is not None:
            await asyncio.to_thread(self._write, self.path, state)
        self._state = state

    @staticmethod
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

    @staticmethod
    def _write(path: Path, state: StoredConfig) -> None:
        text = json.dumps(state.to_json(), indent=2, sort_keys=True)
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
