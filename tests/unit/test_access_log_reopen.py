"""Lines held while the access log's sink is replaced are written, even if the reload stops."""

import asyncio
import json
import threading
from pathlib import Path

from loguru import logger

from loadweaver.config.models import AccessLogConfig
from loadweaver.observability.access_log import AccessLog
from tests.unit.test_access_format import entry


async def test_lines_held_by_a_cancelled_reload_go_to_the_log_sinks(tmp_path: Path) -> None:
    settings = AccessLogConfig(enabled=True, path=str(tmp_path / "access.log"))
    access_log = AccessLog(settings, "n", lambda: 0.0)
    access_log.open()
    writer = access_log._writer
    assert writer is not None
    disk_free = threading.Event()
    write_to_disk = writer._emit

    def stuck_disk(text: str) -> None:
        disk_free.wait(5.0)
        write_to_disk(text)

    writer._emit = stuck_disk
    access_log.write([entry(b"10.0.0.1", target=b"/queued")])
    seen: list[str] = []
    sink = logger.add(lambda message: seen.append(message.record["message"]), format="{message}")
    try:
        reload = asyncio.create_task(access_log.close_without_blocking())
        await asyncio.sleep(0.05)
        access_log.write([entry(b"10.0.0.1", target=b"/held")])
        reload.cancel()
        await asyncio.gather(reload, return_exceptions=True)
        assert [json.loads(message)["path"] for message in seen] == ["/held"]
    finally:
        disk_free.set()
        access_log.close()
        logger.remove(sink)
    assert json.loads((tmp_path / "access.log").read_text())["path"] == "/queued"
