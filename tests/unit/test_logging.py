"""Logging setup: level and format from config, and stdlib records routed into loguru."""

import json
import logging
import sys
from collections.abc import Iterator

import pytest
from loguru import logger

from loadweaver.config.models import LoggingConfig
from loadweaver.observability.logging import configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    yield
    logger.remove()
    logger.add(sys.stderr)
    logging.basicConfig(handlers=[], force=True)


def test_json_format_writes_one_object_per_line_with_the_node_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(LoggingConfig(level="info", format="json"), "node-a")
    logger.info("listener {} ready", "web")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)["record"]
    assert record["message"] == "listener web ready"
    assert record["level"]["name"] == "INFO"
    assert record["extra"]["node"] == "node-a"


def test_text_format_names_level_and_node(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingConfig(level="info", format="text"), "node-b")
    logger.warning("backend down")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "WARNING" in line
    assert "node-b" in line
    assert line.endswith("backend down")


def test_level_filters_lower_records(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingConfig(level="warning"), "node-c")
    logger.info("hidden")
    logger.error("shown")
    output = capsys.readouterr().err
    assert "hidden" not in output
    assert "shown" in output


def test_stdlib_records_are_routed_into_loguru(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingConfig(level="info", format="json"), "node-d")
    logging.getLogger("aiohttp.server").error("handler failed")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)["record"]
    assert record["message"] == "aiohttp.server: handler failed"
    assert record["level"]["name"] == "ERROR"
