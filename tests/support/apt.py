"""Debian packages for tests that need a real tool: found on PATH, else installed with apt-get,
else the test is skipped with the reason it could not be installed."""

import functools
import os
import shutil
import subprocess
import time

import pytest

INSTALL_TIMEOUT = 240.0


def which(name: str) -> str | None:
    # Debian installs to /usr/bin, which a trimmed PATH may leave out.
    return shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/local/bin")


def binary_or_skip(name: str, package: str) -> str:
    """The path of `name`; installs `package` first when it is missing, or skips the test."""
    if found := which(name):
        return found
    problem = install(package)
    found = which(name)
    if found is None:
        pytest.skip(f"{name} is not installed and could not be installed: {problem}")
    return found


@functools.cache
def install(package: str) -> str:
    """Installs `package` once per session; returns why it failed (or "" when it worked)."""
    if os.geteuid() != 0:
        return "installing it needs root and this test runs as an ordinary user"
    if shutil.which("apt-get") is None:
        return "this machine has no apt-get"
    deadline = time.monotonic() + INSTALL_TIMEOUT
    install_it = ["install", "--no-install-recommends", package]
    # A stale package index is the usual reason an install fails, so update once and retry.
    problem = run_apt(install_it, deadline)
    if problem:
        problem = run_apt(["update"], deadline) or run_apt(install_it, deadline)
    return problem


def run_apt(arguments: list[str], deadline: float) -> str:
    """Runs apt-get until `deadline`; returns why it failed (or "" when it worked)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return f"apt-get took longer than {INSTALL_TIMEOUT:.0f} s"
    # Another apt-get may hold the dpkg lock; waiting for it beats failing at once.
    command = ["apt-get", "-y", "-q", "-o", f"DPkg::Lock::Timeout={int(remaining)}", *arguments]
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            command, check=False, env=environment, capture_output=True, text=True, timeout=remaining
        )
    except subprocess.TimeoutExpired:
        return f"apt-get {arguments[0]} took longer than {INSTALL_TIMEOUT:.0f} s"
    if done.returncode == 0:
        return ""
    last_lines = " ".join(done.stderr.strip().splitlines()[-2:])
    return f"apt-get {arguments[0]} exited with {done.returncode}: {last_lines}"
