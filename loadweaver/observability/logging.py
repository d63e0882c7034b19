"""loguru setup from config: level, text/JSON format and sinks, with stdlib logging routed in."""

import logging
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp.http_exceptions import HttpProcessingError
from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

from loadweaver.config.models import LoggingConfig, LogSink

TEXT_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[node]} | {message}"
# Records bound with this marker belong to the access log's own file, never to these sinks.
ACCESS_FILE_MARKER = "access_log_file"


def _not_for_access_file(record: "Record") -> bool:
    return ACCESS_FILE_MARKER not in record["extra"]


class _InterceptHandler(logging.Handler):
    """Sends aiohttp's and asyncio's log records to loguru, keeping their level."""

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            # A client's malformed request to the admin API: worth a line, not a traceback.
            logger.debug("{}: {}: {}", record.name, record.getMessage(), error)
            return
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info).log(level, "{}: {}", record.name, record.getMessage())


class LoggingSetupError(Exception):
    """A sink could not be opened, such as a log file in a directory that does not exist."""


def configure_logging(settings: LoggingConfig, node_id: str) -> None:
    """Replaces every sink; raises LoggingSetupError, leaving stderr logging in place."""
    logger.remove()
    logger.configure(extra={"node": node_id})
    try:
        for sink in settings.sinks:
            _add_sink(sink, settings)
    except (OSError, ValueError) as error:
        logger.remove()
        logger.add(
            sys.stderr,
            level=settings.level.upper(),
            format=TEXT_FORMAT,
            diagnose=False,
            filter=_not_for_access_file,
        )
        raise LoggingSetupError(f"logging.sinks: cannot open a log sink: {error}") from None
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)


def _add_sink(sink: LogSink, settings: LoggingConfig) -> None:
    level = (sink.level or settings.level).upper()
    serialize = (sink.format or settings.format) == "json"
    format_options: dict[str, Any] = {"serialize": True} if serialize else {"format": TEXT_FORMAT}
    # diagnose=False: tracebacks must not print local variables, which can hold secrets.
    format_options["diagnose"] = False
    format_options["filter"] = _not_for_access_file
    if sink.type == "stderr":
        logger.add(sys.stderr, level=level, **format_options)
        return
    assert sink.path is not None  # the model requires a path for file sinks
    logger.add(
        sink.path,
        level=level,
        rotation=rotation_of(sink),
        retention=retention_of(sink),
        enqueue=False,
        encoding="utf-8",
        **format_options,
    )


class RotatedFile(Protocol):
    """A file sink's rotation and retention settings (a log sink's or the access log's)."""

    @property
    def rotation_size(self) -> int | None: ...
    @property
    def rotation_interval(self) -> float | None: ...
    @property
    def retention_age(self) -> float | None: ...
    @property
    def retention_count(self) -> int | None: ...


def rotation_of(sink: RotatedFile) -> int | timedelta | None:
    if sink.rotation_size is not None:
        return sink.rotation_size
    if sink.rotation_interval is not None:
        return timedelta(seconds=sink.rotation_interval)
    return None


def retention_of(sink: RotatedFile) -> int | timedelta | None:
    if sink.retention_count is not None:
        return sink.retention_count
    if sink.retention_age is not None:
        return timedelta(seconds=sink.retention_age)
    return None
