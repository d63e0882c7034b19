#!/usr/bin/env bash
# The project's test command (README and CI): lint, type-check, then the whole test suite.
# Works from a bare checkout: without an environment that has loadweaver, it makes .venv first.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import loadweaver, pytest, mypy, ruff" 2>/dev/null; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install --quiet -e '.[dev]'
    export PATH="$PWD/.venv/bin:$PATH"
fi
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy
python3 -m pytest "$@"
