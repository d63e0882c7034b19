"""Runs the real `loadweaver` console script as a child process, without blocking the loop.

The child gets an explicit environment: the test process's own, minus every `LOADWEAVER_`
variable (a test that sets one for an in-process node must not leak it into the CLI), plus
whatever the test passes. It runs in a given working directory, so no stray `.env` is read.
"""

import asyncio
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

LOADWEAVER = Path(sys.executable).with_name("loadweaver")
CLI_TIMEOUT = 20.0
VARIABLE_PREFIX = "LOADWEAVER_"


@dataclass(frozen=True)
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        """Everything a failed assertion needs to explain itself."""
        return (
            f"loadweaver {' '.join(self.args)} -> exit {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )


def cli_environment(variables: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without LOADWEAVER_ variables, plus `variables`."""
    inherited = {
        name: value for name, value in os.environ.items() if not name.startswith(VARIABLE_PREFIX)
    }
    return {**inherited, **(variables or {})}


async def start_cli(
    *args: str, cwd: Path, variables: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """`loadweaver ARGS` running, its stdout and stderr piped to the test."""
    return await asyncio.create_subprocess_exec(
        str(LOADWEAVER),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_environment(variables),
        cwd=cwd,
    )


async def finish_cli(
    process: asyncio.subprocess.Process, args: tuple[str, ...], timeout: float = CLI_TIMEOUT
) -> CliResult:
    """Waits for `process` to exit (killing it after `timeout`) and collects its output."""
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(
            f"loadweaver {' '.join(args)} did not exit within {timeout} s"
        ) from None
    assert process.returncode is not None
    return CliResult(args, process.returncode, stdout.decode(), stderr.decode())


async def run_cli(
    *args: str,
    cwd: Path,
    variables: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT,
) -> CliResult:
    """`loadweaver ARGS` run to completion, bounded by `timeout`."""
    process = await start_cli(*args, cwd=cwd, variables=variables)
    return await finish_cli(process, args, timeout)


async def read_stderr_until(
    process: asyncio.subprocess.Process, text: str, timeout: float = 5.0
) -> str:
    """Reads `process`'s stderr line by line until a line contains `text`; returns what it read.

    The rest of stderr stays unread, for `finish_cli` to collect.
    """
    assert process.stderr is not None
    seen: list[str] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while not seen or text not in seen[-1]:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            line = await asyncio.wait_for(process.stderr.readline(), max(remaining, 0.0))
        except TimeoutError:
            line = b""
        if not line:
            raise AssertionError(f"stderr never showed {text!r}; it showed:\n{''.join(seen)}")
        seen.append(line.decode())
    return "".join(seen)
