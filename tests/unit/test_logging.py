"""Logging setup: level and format from config, and stdlib records routed into loguru."""

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger
from pydantic import ValidationError

from loadweaver.config.models import LoggingConfig
from loadweaver.observability.logging import LoggingSetupError, configure_logging


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


def sinks(*items: dict[str, object]) -> LoggingConfig:
    return LoggingConfig.model_validate({"level": "info", "sinks": list(items)})


def test_a_file_sink_gets_json_lines_with_its_own_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.log"
    configure_logging(
        sinks({"type": "stderr"}, {"type": "file", "path": str(path), "format": "json"}), "n"
    )
    logger.info("to both")
    logger.complete()
    assert "to both" in capsys.readouterr().err
    record = json.loads(path.read_text().splitlines()[-1])["record"]
    assert record["message"] == "to both"


def test_a_file_sink_rotates_by_size_and_keeps_only_the_retained_count(tmp_path: Path) -> None:
    path = tmp_path / "node.log"
    sink = {"type": "file", "path": str(path), "rotation_size": "1KiB", "retention_count": 2}
    configure_logging(sinks(sink), "n")
    for index in range(200):
        logger.info("line {} {}", index, "x" * 40)
    logger.remove()  # closes the file, applying retention to what rotated
    files = sorted(tmp_path.iterdir())
    assert path in files
    assert 2 <= len(files) <= 3, files  # the live file and at most two rotated ones
    assert all(file.stat().st_size < 4096 for file in files)


def test_a_sink_that_cannot_be_opened_is_an_error_naming_the_section(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(LoggingSetupError, match=r"logging\.sinks"):
        configure_logging(sinks({"type": "file", "path": str(blocker / "node.log")}), "n")


@pytest.mark.parametrize(
    ("sink", "message"),
    [
        ({"type": "file"}, "needs path"),
        ({"type": "stderr", "path": "/tmp/x.log"}, "only to type: file"),
        (
            {"type": "file", "path": "/tmp/x", "retention_age": "1h", "retention_count": 2},
            "not both",
        ),
        ({"type": "syslog"}, "type"),
    ],
)
def test_sink_options_are_checked_with_a_reason(sink: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        sinks(sink)
