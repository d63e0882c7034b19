"""Reloads the config when its files change, debounced so an editor's burst of writes is one reload.

The directories are watched rather than the files: editors often save by writing a new file and
renaming it over the old one, which a watch on the old file would miss.
"""

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from loguru import logger
from watchfiles import awatch


async def watch_config_files(
    paths: Sequence[Path], on_change: Callable[[], Awaitable[object]], debounce_ms: int = 300
) -> None:
    """Calls `on_change` after each burst of changes to `paths` (which need not exist yet)."""
    wanted = {path.resolve() for path in paths}
    directories = sorted({path.parent for path in wanted})
    async for changes in awatch(*directories, debounce=debounce_ms, step=50, recursive=False):
        changed = sorted(str(path) for _, path in changes if Path(path).resolve() in wanted)
        if changed:
            logger.info("config file changed ({}): reloading", ", ".join(changed))
            await on_change()
