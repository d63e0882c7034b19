"""Reloads the config when its files change, debounced so an editor's burst of writes is one reload.

The directories are watched rather than the files: editors often save by writing a new file and
renaming it over the old one, which a watch on the old file would miss. A change event whose files
still hold the same bytes (a touch, a save without edits) reloads nothing.
"""

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from loguru import logger
from watchfiles import awatch

QUIET_MS = 250  # reload once the files have been quiet this long
MAX_WAIT_MS = 2000  # ... or after this long, however busy


async def watch_config_files(
    paths: Sequence[Path], on_change: Callable[[], Awaitable[object]]
) -> None:
    """Calls `on_change` after each burst of changes to `paths` (which need not exist yet)."""
    wanted = {path.resolve() for path in paths}
    directories = sorted({path.parent for path in wanted})
    seen = _digest(wanted)
    async for changes in awatch(*directories, debounce=MAX_WAIT_MS, step=QUIET_MS, recursive=False):
        if not any(Path(path).resolve() in wanted for _, path in changes):
            continue
        current = _digest(wanted)
        if current == seen:
            continue
        seen = current
        logger.info("config file changed: reloading")
        await on_change()


def _digest(paths: set[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"\0missing\0")
        digest.update(str(path).encode())
    return digest.hexdigest()
