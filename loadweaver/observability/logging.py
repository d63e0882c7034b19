"""loguru setup: level and text/JSON format from config, with stdlib logging routed into it."""

import logging
import sys

from loguru import logger

from loadweaver.config.models import LoggingConfig

TEXT_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[node]} | {message}"


class _InterceptHandler(logging.Handler):
    """Sends aiohttp's and asyncio's log records to loguru, keeping their level."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info).log(level, "{}: {}", record.name, record.getMessage())


def configure_logging(settings: LoggingConfig, node_id: str) -> None:
    logger.remove()
    logger.configure(extra={"node": node_id})
    level = settings.level.upper()
    if settings.format == "json":
        logger.add(sys.stderr, level=level, serialize=True)
    else:
        logger.add(sys.stderr, level=level, format=TEXT_FORMAT)
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
