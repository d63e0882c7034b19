#!/usr/bin/env bash
# Fuzz the admin API with schemathesis against the node's own OpenAPI document.
#
# Installs schemathesis and the project into a separate venv (.venv-fuzz, reused when present) so
# its dependencies never touch the dev venv, starts a real `loadweaver node start` on free loopback
# ports with a random admin token, runs schemathesis with every check, then prints a summary.
# The node is always stopped on exit (also on failure or Ctrl-C).
#
# Two schemathesis passes share the node: first every operation but PUT /api/v1/config (so the
# pool `app` and its backends `a` and `b` exist while the others are fuzzed), then PUT alone,
# which usually replaces every pool. GET /api/v1/stats/stream never ends, so it is checked with
# a bounded curl instead, and a few If-Match values schemathesis cannot send are probed by hand.
#
# Exit status: 1 when a response was a 5xx, the node logged a traceback, the SSE check or an
# If-Match probe failed, or a pass did not finish; else 0. Other check failures (schema
# conformance, status codes, ...) are listed in the summary; STRICT=1 makes them fail the run.
#
# Usage: scripts/fuzz_api.sh            (from anywhere; it cd's to the repo root)
#
# Environment (defaults in brackets):
#   MAX_EXAMPLES=100    schemathesis --max-examples: test cases per operation and phase
#   PHASES=examples,coverage,fuzzing,stateful   schemathesis --phases
#   MODE=all            schemathesis --mode: positive, negative or all
#   MAX_TIME=           schemathesis --max-time per pass: fuzzing and stateful repeat until spent
#   FUZZ_TIMEOUT=240    hard limit in seconds on both passes together (a pass is stopped past it)
#   SEED=               schemathesis --seed (unset: random; schemathesis prints the one it used)
#   WORKERS=1           schemathesis --workers
#   STRICT=0            1 = also exit 1 on check failures that are not 5xx
#   KEEP_WORKDIR=0      1 = keep the temp dir (config, node log, schemathesis reports)
#   FUZZ_VENV=.venv-fuzz                 the venv for schemathesis (relative: to the repo root)
#   PYTHON=python3      interpreter that creates the venv and runs scripts/bench/free_ports.py
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -/{/^set -/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    exit 0
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

MAX_EXAMPLES="${MAX_EXAMPLES:-100}"
PHASES="${PHASES:-examples,coverage,fuzzing,stateful}"
MODE="${MODE:-all}"
MAX_TIME="${MAX_TIME:-}"
FUZZ_TIMEOUT="${FUZZ_TIMEOUT:-240}"
SEED="${SEED:-}"
WORKERS="${WORKERS:-1}"
STRICT="${STRICT:-0}"
KEEP_WORKDIR="${KEEP_WORKDIR:-0}"
FUZZ_VENV="${FUZZ_VENV:-.venv-fuzz}"
[[ "$FUZZ_VENV" == /* ]] || FUZZ_VENV="$REPO_ROOT/$FUZZ_VENV"
PYTHON="${PYTHON:-python3}"
READY_TIMEOUT=30   # seconds for the node to answer /readyz
STOP_TIMEOUT=10    # seconds for a process to exit after SIGTERM before SIGKILL
STREAM_PATH=/api/v1/stats/stream
PUT_CONFIG=put_config  # the operationId of PUT /api/v1/config

log() { printf '[fuzz] %s\n' "$*" >&2; }
die() { printf '[fuzz] ERROR: %s\n' "$*" >&2; exit 1; }

for var in MAX_EXAMPLES FUZZ_TIMEOUT WORKERS; do
    [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive integer (got '${!var}')"
done
[[ -z "$MAX_TIME" || "$MAX_TIME" =~ ^[1-9][0-9]*$ ]] || die "MAX_TIME must be a positive integer"
[[ -z "$SEED" || "$SEED" =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer"
[[ "$MODE" =~ ^(positive|negative|all)$ ]] || die "MODE must be positive, negative or all"
command -v curl >/dev/null || die "curl is required"
command -v timeout >/dev/null || die "timeout (coreutils) is required"

# ------------------------------------------------------------------ the fuzzing venv
ensure_venv() {
    local stamp="$FUZZ_VENV/.loadweaver-pyproject.sha256" want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [[ ! -x "$FUZZ_VENV/bin/python" ]]; then
        log "creating $FUZZ_VENV"
        "$PYTHON" -m venv "$FUZZ_VENV"
    fi
    if [[ ! -x "$FUZZ_VENV/bin/schemathesis" ]]; then
        log "installing schemathesis into $FUZZ_VENV"
        pip_quietly schemathesis
    fi
    # Editable, so package edits need no reinstall; only a changed pyproject.toml does.
    if [[ ! -x "$FUZZ_VENV/bin/loadweaver" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
        log "installing loadweaver (editable) into $FUZZ_VENV"
        pip_quietly -e .
        printf '%s\n' "$want" >"$stamp"
    fi
}

pip_quietly() {  # pip install ARGS... into the fuzzing venv; its (chatty) output only on failure
    local output
    output="$(mktemp)"
    if ! "$FUZZ_VENV/bin/pip" install --quiet "$@" >"$output" 2>&1; then
        cat "$output" >&2
        rm -f "$output"
        die "pip install $* failed"
    fi
    rm -f "$output"
}
ensure_venv
ST="$FUZZ_VENV/bin/schemathesis"
log "$("$ST" --version)"

# ------------------------------------------------------------------ workdir, ports, config
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/loadweaver-fuzz.XXXXXX")"
NODE_PID=""
ST_PID=""

stop_pid() {  # stop_pid PID: SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL
    local pid="$1" waited=0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((waited < STOP_TIMEOUT * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "process $pid did not stop in ${STOP_TIMEOUT}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$ST_PID" ]]; then stop_pid "$ST_PID"; fi
    if [[ -n "$NODE_PID" ]]; then stop_pid "$NODE_PID"; fi
    if [[ "$KEEP_WORKDIR" == "1" ]]; then
        log "kept $WORKDIR"
    else
        rm -rf "$WORKDIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -r LISTEN_PORT ADMIN_PORT CLOSED_A CLOSED_B < <("$PYTHON" scripts/bench/free_ports.py 4)
ADMIN="http://127.0.0.1:$ADMIN_PORT"
mkdir -p "$WORKDIR/state" "$WORKDIR/report"
CONFIG="$WORKDIR/loadweaver.yaml"
NODE_LOG="$WORKDIR/node.log"

# The backends' ports were free a moment ago and nothing binds them: connections are refused.
cat >"$CONFIG" <<EOF
node:
  id: fuzz
  state_dir: "$WORKDIR/state"
  shutdown_grace: 1s
listeners:
  - name: web
    bind: "127.0.0.1:$LISTEN_PORT"
pools:
  app:
    algorithm: round_robin
    backends:
      - {name: a, url: "http://127.0.0.1:$CLOSED_A"}
      - {name: b, url: "http://127.0.0.1:$CLOSED_B"}
routes:
  - {name: default, match: {host: "*", path_prefix: /}, pool: app}
admin:
  bind: "127.0.0.1:$ADMIN_PORT"
logging:
  level: info
EOF

LOADWEAVER_ADMIN_TOKEN="$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))')"
export LOADWEAVER_ADMIN_TOKEN
AUTH="Authorization: Bearer $LOADWEAVER_ADMIN_TOKEN"

# ------------------------------------------------------------------ the node
# Started from the workdir so a .env in the repo (tokens, sticky secret) plays no part.
(cd "$WORKDIR" && exec "$FUZZ_VENV/bin/loadweaver" node start --config "$CONFIG") \
    >"$NODE_LOG" 2>&1 &
NODE_PID=$!
log "node pid $NODE_PID, admin $ADMIN, log $NODE_LOG"

deadline=$((SECONDS + READY_TIMEOUT))
until curl -fsS -o /dev/null --max-time 1 "$ADMIN/readyz" 2>/dev/null; do
    if ! kill -0 "$NODE_PID" 2>/dev/null; then
        cat "$NODE_LOG" >&2
        die "the node exited before it was ready"
    fi
    if ((SECONDS >= deadline)); then
        cat "$NODE_LOG" >&2
        die "no 200 from /readyz in ${READY_TIMEOUT}s"
    fi
    sleep 0.2
done
log "node ready"

SCHEMA="$WORKDIR/openapi.json"
curl -fsS --max-time 5 -H "$AUTH" -o "$SCHEMA" "$ADMIN/api/v1/openapi.json" ||
    die "cannot fetch the OpenAPI document with the token"
unauth_status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$ADMIN/api/v1/openapi.json")"
[[ "$unauth_status" == "401" ]] ||
    die "the OpenAPI document answered $unauth_status without a token, not 401"

# ------------------------------------------------------------------ the SSE stream, bounded
# A plain HTTP client never sees the end of this stream, so schemathesis would hang on it.
# curl exits 28 when --max-time ends it; what matters is what arrived before.
stream_failures=0
curl -sS -N --max-time 2.5 -H "$AUTH" -D "$WORKDIR/stream.headers" -o "$WORKDIR/stream.txt" \
    "$ADMIN$STREAM_PATH" 2>/dev/null || true
if ! grep -qi '^content-type: text/event-stream' "$WORKDIR/stream.headers" ||
    ! grep -q '^event: stats' "$WORKDIR/stream.txt"; then
    log "FAIL: $STREAM_PATH did not stream 'event: stats' as text/event-stream"
    stream_failures=1
fi

# ------------------------------------------------------------------ hand-written probes
# Inputs schemathesis cannot produce: it encodes header values as Latin-1, so a UTF-8 If-Match
# such as "²" (a character str.isdigit() accepts but int() refuses) never reaches the server.
# The pool does not exist, so no probe changes anything; any answer below 500 is fine here.
probe_failures=0
probe() {  # probe METHOD PATH IF_MATCH [BODY]
    local method="$1" path="$2" if_match="$3" body="${4:-}" status
    local args=(-s -o /dev/null -w '%{http_code}' --max-time 5 -X "$method" -H "$AUTH"
        -H "If-Match: $if_match")
    if [[ -n "$body" ]]; then args+=(-H 'Content-Type: application/json' -d "$body"); fi
    status="$(curl "${args[@]}" "$ADMIN$path" || true)"
    if [[ ! "$status" =~ ^[1-4][0-9][0-9]$ ]]; then
        local repro="curl -X $method -H 'Authorization: Bearer \$TOKEN' -H 'If-Match: $if_match'"
        if [[ -n "$body" ]]; then repro+=" -H 'Content-Type: application/json' -d '$body'"; fi
        log "FAIL: $method $path with If-Match: $if_match answered ${status:-nothing}"
        log "  reproduce: $repro $ADMIN$path"
        probe_failures=$((probe_failures + 1))
    fi
}
probe_backend=/api/v1/pools/no-such-pool/backends
probe DELETE "$probe_backend/x" '²'
probe DELETE "$probe_backend/x" 'W/"³"'
probe POST "$probe_backend/x/drain" '²'
probe PATCH "$probe_backend/x" '²' '{"weight": 1}'
probe POST "$probe_backend" '²' '{"name": "x", "url": "http://127.0.0.1:1"}'

# ------------------------------------------------------------------ schemathesis
# Random path parameters almost never name a pool or backend that exists, so nearly every
# request would stop at 404 (the schema has no examples or links to learn them from). Half of
# the time, use names that exist; a new backend is named `a` or `b` half of the time too, so a
# deleted one can come back.
ST_CONFIG="$WORKDIR/schemathesis.toml"
cat >"$ST_CONFIG" <<TOML
[dictionaries.pools]
values = ["app"]

[dictionaries.backends]
values = ["a", "b"]

[dictionaries.urls]
values = ["http://127.0.0.1:$CLOSED_A", "http://127.0.0.1:$CLOSED_B"]

[parameters]
"path.pool" = { dictionary = "pools", probability = 0.5 }
"path.name" = { dictionary = "backends", probability = 0.5 }
"query.pool" = { dictionary = "pools", probability = 0.5 }
"query.name" = { dictionary = "backends", probability = 0.5 }
"body.name" = { dictionary = "backends", probability = 0.5 }
"body.url" = { dictionary = "urls", probability = 0.5 }
TOML

common_args=(
    -H "$AUTH"
    --checks all
    --continue-on-failure
    --max-examples "$MAX_EXAMPLES"
    --phases "$PHASES"
    --mode "$MODE"
    --workers "$WORKERS"
    --exclude-path "$STREAM_PATH"
    --request-timeout 10
    --generation-database none
    --no-color
)
if [[ -n "$MAX_TIME" ]]; then common_args+=(--max-time "$MAX_TIME"); fi
if [[ -n "$SEED" ]]; then common_args+=(--seed "$SEED"); fi

FUZZ_DEADLINE=$((SECONDS + FUZZ_TIMEOUT))
pass_statuses=()

# run_pass NAME ARGS...: one schemathesis run; its NDJSON events go to report/NAME.ndjson.
# Schemathesis 4 sends -H headers when it loads the schema too, so the URL can be the location.
run_pass() {
    local name="$1" budget status=0
    shift
    budget=$((FUZZ_DEADLINE - SECONDS))
    ((budget >= 1)) || budget=1
    local args=(
        --config-file "$ST_CONFIG"
        run "$ADMIN/api/v1/openapi.json"
        "${common_args[@]}"
        --report "ndjson,junit"
        --report-ndjson-path "$WORKDIR/report/$name.ndjson"
        --report-junit-path "$WORKDIR/report/$name.junit.xml"
        "$@"
    )
    printf '\n[fuzz] pass %s (at most %ss): %s' "$name" "$budget" "$ST" >&2
    printf ' %q' "${args[@]}" | sed "s/$LOADWEAVER_ADMIN_TOKEN/\$TOKEN/g" >&2
    printf '\n\n' >&2
    # From the workdir: schemathesis keeps a cache (.schemathesis/) in its working directory.
    (cd "$WORKDIR" && exec timeout --signal=INT --kill-after=10 "$budget" "$ST" "${args[@]}") &
    ST_PID=$!
    wait "$ST_PID" || status=$?
    ST_PID=""
    if ((status == 124)); then log "pass $name was stopped at the FUZZ_TIMEOUT limit"; fi
    log "pass $name: schemathesis exited with status $status"
    pass_statuses+=("$name=$status")
}

run_pass edits --exclude-operation-id "$PUT_CONFIG"
run_pass replace --include-operation-id "$PUT_CONFIG"

# ------------------------------------------------------------------ summary
summary_status=0
"$FUZZ_VENV/bin/python" - "$WORKDIR/report" "$SCHEMA" "$NODE_LOG" "$stream_failures" \
    "$probe_failures" "$STRICT" "${pass_statuses[@]}" <<'PY' || summary_status=$?
"""Summarise the schemathesis NDJSON events and the node log; exit 1 on what must not happen."""

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

report_dir, schema_path, node_log, stream_failures, probe_failures, strict, *pass_statuses = (
    sys.argv[1:]
)
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
DIAGNOSE_LINE = re.compile(r"^\s*[│└]")  # loguru's variable annotations inside a traceback


def published_operations() -> list[str]:
    schema = json.loads(Path(schema_path).read_text())
    return sorted(
        f"{method.upper()} {path}"
        for path, item in schema.get("paths", {}).items()
        for method in item
        if method in HTTP_METHODS
    )


def events() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(Path(report_dir).glob("*.ndjson")):
        for line in path.read_text().splitlines():
            if line.strip():
                ((kind, body),) = json.loads(line).items()
                found.append((kind, body))
    return found


def tracebacks() -> Counter[str]:
    """Each kind of traceback (last frame and exception) -> how often; without loguru's extras."""
    lines = [line for line in Path(node_log).read_text(errors="replace").splitlines()
             if not DIAGNOSE_LINE.match(line)]
    found: Counter[str] = Counter()
    for index, line in enumerate(lines):
        if line.startswith("Traceback"):
            end = index + 1
            while end < len(lines) and not re.match(r"^\d{4}-\d\d-\d\d ", lines[end]):
                end += 1
            body = [text for text in lines[index:end] if text.strip()]
            frames = [text.strip() for text in body if text.lstrip().startswith(("File", "> File"))]
            # The exception line and what follows it (aiohttp puts the detail on the next lines).
            start = next((i for i, text in enumerate(body)
                          if i and re.match(r"^[A-Za-z_][\w.]*(:|$)", text)
                          and not text.startswith("File")), len(body))
            exception = [text.strip() for text in body[start:start + 4]]
            found["\n      ".join([*frames[-1:], *exception])] += 1
    return found


operations: set[str] = set()
cases: set[str] = set()
stateful_scenarios = 0
requests = 0
statuses: Counter[int] = Counter()
server_errors: Counter[str] = Counter()
failures: dict[tuple[str, str], set[str]] = defaultdict(set)  # (code title, operation) -> cases
errors: list[str] = []

all_events = events()
for kind, body in all_events:
    if kind == "ScenarioFinished":
        recorder = body.get("recorder") or {}
        label = recorder.get("label", "?")
        if body.get("phase") == "stateful":
            stateful_scenarios += 1
        for case_id in recorder.get("cases") or {}:
            cases.add(case_id)
            if label != "Stateful tests":  # a stateful step's operation is fuzzed on its own too
                operations.add(label)
        for interaction in (recorder.get("interactions") or {}).values():
            response = interaction.get("response")
            if response is None:
                continue
            requests += 1
            status = int(response.get("status_code", 0))
            statuses[status] += 1
            if status >= 500:
                request = interaction.get("request") or {}
                server_errors[f"{request.get('method')} {request.get('uri')} -> {status}"] += 1
        for case_id, checks in (recorder.get("checks") or {}).items():
            for check in checks:
                if check.get("status") != "failure":
                    continue
                failure = (check.get("failure_info") or {}).get("failure") or {}
                title = f"{failure.get('code', '')} {failure.get('title') or check.get('name')}"
                failures[(title.strip(), failure.get("operation") or label)].add(case_id)
    elif kind == "NonFatalError":
        info = body.get("info") or {}
        errors.append(f"{body.get('label')}: {info.get('title')}: {info.get('message')}")
    elif kind == "FatalError":
        errors.append(f"fatal: {body.get('exception') or body}")

published = published_operations()
found_tracebacks = tracebacks()
print()
print("==== admin API fuzz summary ====")
print(f"schemathesis passes (exit status):   {', '.join(pass_statuses)}")
print(f"operations in the OpenAPI document:  {len(published)}")
print(f"operations fuzzed:                   {len([op for op in published if op in operations])}")
for operation in published:
    if operation not in operations:
        print(f"  not fuzzed: {operation}")
print(f"stateful scenarios:                  {stateful_scenarios}")
print(f"test cases:                          {len(cases)}")
print(f"requests with a response:            {requests}")
print("status codes:                        "
      + ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items())))
print(f"server errors (5xx):                 {sum(server_errors.values())}")
for line, count in server_errors.most_common(20):
    print(f"  {count} x {line}")
print(f"node log tracebacks:                 {sum(found_tracebacks.values())}")
for text, count in found_tracebacks.most_common(10):
    print(f"  {count} x {text}")
print(f"SSE stream check failures:           {stream_failures}")
print(f"If-Match probe failures (>= 500):    {probe_failures}")
other = {key: ids for key, ids in failures.items() if not key[0].startswith(("ST101", "ST102"))}
print(f"other check failures:                {len(other)} (check, operation) pairs")
for (title, operation), ids in sorted(other.items()):
    print(f"  {title} @ {operation}: {len(ids)} case(s), e.g. {sorted(ids)[0]}")
print(f"schemathesis errors:                 {len(errors)}")
for error in errors[:10]:
    print(f"  {error}")

unfinished = [item for item in pass_statuses if item.split("=")[1] not in ("0", "1")]
bad = sum(server_errors.values()) + sum(found_tracebacks.values()) + len(unfinished)
bad += int(stream_failures) + int(probe_failures)
if not all_events:
    print("no schemathesis events were recorded: the run did not happen")
    bad += 1
if unfinished:
    print(f"passes that did not finish normally: {', '.join(unfinished)}")
if strict == "1":
    bad += len(other) + len(errors)
sys.exit(1 if bad else 0)
PY

if ((summary_status != 0)); then
    log "FAILED (details above; KEEP_WORKDIR=1 keeps the node log and reports)"
    exit 1
fi
log "passed: no server errors, no tracebacks"
