#!/usr/bin/env bash
# Side-by-side HTTP/1.1 proxy benchmark: HAProxy vs nginx vs loadweaver.
#
# Starts two nginx backends (1 worker each) and the proxies in front of them (HAProxy
# nbthread 1, nginx worker_processes 1, loadweaver and any loadweaver variants named in
# $PROXIES: -bare, -nometrics, -accesslog), all on free loopback
# ports, pins the proxy under test to one CPU and wrk + backends to another, runs wrk
# against each proxy in turn and prints one table (also written as markdown to $OUT).
# Then measures each proxy's RSS while it holds $IDLE_CONNS idle keep-alive connections.
# Everything it starts is stopped on exit (also on failure or Ctrl-C).
#
# Usage: scripts/benchmark.sh            (from anywhere; it cd's to the repo root)
#
# Environment (defaults in brackets):
#   DURATION=10         seconds per measured wrk run
#   CONNECTIONS=64      wrk -c
#   THREADS=1           wrk -t
#   WARMUP=2            seconds of wrk warm-up per proxy (0 = none)
#   ROUNDS=1            measured rounds; proxy order is rotated each round, medians reported
#   COOLDOWN=1          seconds of pause between wrk runs
#   URL_PATH=/          path requested ("/" = small fixed body, "/1k" = 1 KiB static file)
#   WRK_TIMEOUT=2s      wrk --timeout
#   PROXIES="haproxy nginx loadweaver"   which proxies to run (order = table order); loadweaver
#                       variants run side by side with it, each its own process:
#                         loadweaver-bare       per-request observability off: metrics, request
#                                               ids and traffic patterns
#                         loadweaver-nometrics  only the per-request metrics off
#                         loadweaver-accesslog  the defaults plus a JSON access log to a file
#                       e.g. PROXIES="haproxy loadweaver loadweaver-bare loadweaver-accesslog"
#   SKIP_LOADWEAVER=0   1 = leave loadweaver out (only HAProxy and nginx)
#   LOADWEAVER=.venv/bin/loadweaver      loadweaver executable (relative to repo root)
#   LW_START_TIMEOUT=15 seconds to wait for loadweaver to serve 2xx
#   PIN=1               0 = no CPU pinning
#   PROXY_CPU=0         CPU for the proxy processes
#   LOAD_CPU=1          CPU for wrk, the backends and idle_rss.py
#   IDLE_CONNS=10000    idle keep-alive connections for the RSS measurement (0 = skip)
#   IDLE_RSS_FOR=all    "all", "none" or a list of proxies, e.g. "loadweaver"
#   IDLE_HOLD=3         seconds to hold the idle connections
#   OUT=${TMPDIR:-/tmp}/loadweaver-bench-results.md   markdown output (not in the repo)
#   KEEP_WORKDIR=0      1 = keep the temp dir with configs, logs and raw wrk output
#   PYTHON=python3      interpreter for the stdlib-only helpers in scripts/bench/
set -Eeuo pipefail
trap 'printf "[bench] ERROR: command failed (exit %s) at line %s: %s\n" "$?" "$LINENO" "$BASH_COMMAND" >&2' ERR

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -/{/^set -/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" || true
    exit 0
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
BENCH_DIR="$REPO_ROOT/scripts/bench"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-1}"
WARMUP="${WARMUP:-2}"
ROUNDS="${ROUNDS:-1}"
COOLDOWN="${COOLDOWN:-1}"
URL_PATH="${URL_PATH:-/}"
WRK_TIMEOUT="${WRK_TIMEOUT:-2s}"
SKIP_LOADWEAVER="${SKIP_LOADWEAVER:-0}"
LOADWEAVER="${LOADWEAVER:-.venv/bin/loadweaver}"
LW_START_TIMEOUT="${LW_START_TIMEOUT:-15}"
PIN="${PIN:-1}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
IDLE_CONNS="${IDLE_CONNS:-10000}"
IDLE_RSS_FOR="${IDLE_RSS_FOR:-all}"
IDLE_HOLD="${IDLE_HOLD:-3}"
OUT="${OUT:-${TMPDIR:-/tmp}/loadweaver-bench-results.md}"
KEEP_WORKDIR="${KEEP_WORKDIR:-0}"
if [[ "$SKIP_LOADWEAVER" == "1" ]]; then
    PROXIES="${PROXIES:-haproxy nginx}"
else
    PROXIES="${PROXIES:-haproxy nginx loadweaver}"
fi

log()  { printf '[bench] %s\n' "$*" >&2; }
warn() { printf '[bench] WARNING: %s\n' "$*" >&2; }
die()  { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ validate settings
for var in DURATION CONNECTIONS THREADS WARMUP ROUNDS COOLDOWN LW_START_TIMEOUT \
           IDLE_CONNS IDLE_HOLD PROXY_CPU LOAD_CPU; do
    [[ "${!var}" =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer (got '${!var}')"
done
(( DURATION >= 1 && CONNECTIONS >= 1 && THREADS >= 1 && ROUNDS >= 1 )) \
    || die "DURATION, CONNECTIONS, THREADS and ROUNDS must be >= 1"
(( CONNECTIONS >= THREADS )) || die "CONNECTIONS must be >= THREADS (wrk requirement)"
(( ROUNDS <= 50 )) || die "ROUNDS must be <= 50"
(( IDLE_CONNS <= 200000 )) || die "IDLE_CONNS must be <= 200000"
[[ "$URL_PATH" == /* ]] || die "URL_PATH must start with '/'"
for p in $PROXIES; do
    case "$p" in
        haproxy|nginx|loadweaver|loadweaver-bare|loadweaver-nometrics|loadweaver-accesslog) ;;
        *) die "unknown proxy '$p' in PROXIES (haproxy, nginx, loadweaver, loadweaver-bare, loadweaver-nometrics, loadweaver-accesslog)";;
    esac
done
[[ -n "${PROXIES// /}" ]] || die "PROXIES is empty"

# ------------------------------------------------------------------ tools
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if command -v python3 >/dev/null 2>&1; then PYTHON=python3
    elif [[ -x .venv/bin/python ]]; then PYTHON="$REPO_ROOT/.venv/bin/python"
    else die "python3 not found (needed for the helpers in scripts/bench/)"; fi
fi

missing=()
for tool in haproxy nginx wrk curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if (( ${#missing[@]} )); then
    if [[ "$(id -u)" == "0" ]]; then
        log "installing missing tools: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y "${missing[@]}" \
            || { apt-get update && apt-get install -y "${missing[@]}"; } \
            || die "apt-get install -y ${missing[*]} failed"
        for tool in "${missing[@]}"; do
            command -v "$tool" >/dev/null 2>&1 || die "$tool still not found after install"
        done
    else
        printf '[bench] ERROR: missing tools: %s\n' "${missing[*]}" >&2
        printf '[bench] install them with:\n    sudo apt-get install -y %s\n' "${missing[*]}" >&2
        exit 1
    fi
fi

LW_BIN=""
if [[ " $PROXIES " == *" loadweaver"* ]]; then
    if [[ -x "$LOADWEAVER" && ! -d "$LOADWEAVER" ]]; then
        LW_BIN="$(cd "$(dirname "$LOADWEAVER")" && pwd)/$(basename "$LOADWEAVER")"
    elif [[ "$LOADWEAVER" != */* ]] && command -v "$LOADWEAVER" >/dev/null 2>&1; then
        LW_BIN="$(command -v "$LOADWEAVER")"
    else
        printf '[bench] ERROR: loadweaver executable not found at %s\n' "$LOADWEAVER" >&2
        printf '[bench] install it (from %s) with:\n' "$REPO_ROOT" >&2
        printf "    python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'\n" >&2
        printf '[bench] or set LOADWEAVER=/path/to/loadweaver, or SKIP_LOADWEAVER=1 to run only HAProxy and nginx\n' >&2
        exit 1
    fi
fi

# ------------------------------------------------------------------ CPU pinning
NCPU="$(nproc 2>/dev/null || echo 1)"
PIN_PROXY=()
PIN_LOAD=()
PINNING="none"
if [[ "$PIN" == "1" ]]; then
    if ! command -v taskset >/dev/null 2>&1; then
        warn "taskset not found (package util-linux); running without CPU pinning"
    elif (( NCPU < 2 )); then
        warn "only $NCPU CPU; running without CPU pinning"
    elif (( PROXY_CPU >= NCPU || LOAD_CPU >= NCPU )); then
        die "PROXY_CPU=$PROXY_CPU / LOAD_CPU=$LOAD_CPU out of range (CPUs 0..$((NCPU - 1)))"
    else
        PIN_PROXY=(taskset -c "$PROXY_CPU")
        PIN_LOAD=(taskset -c "$LOAD_CPU")
        PINNING="proxy on CPU $PROXY_CPU; wrk + backends on CPU $LOAD_CPU"
        (( PROXY_CPU == LOAD_CPU )) && warn "PROXY_CPU == LOAD_CPU: proxy shares its CPU with wrk"
    fi
fi

# ------------------------------------------------------------------ file descriptors
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"
[[ "$NOFILE" == "unlimited" ]] && NOFILE=1048576
if (( NOFILE < IDLE_CONNS + 1024 )); then
    warn "open-file limit is $NOFILE (hard limit $(ulimit -Hn)); $IDLE_CONNS idle connections may not fit"
fi
WORKER_CONNECTIONS=$(( NOFILE > 65536 ? 65536 : NOFILE ))

# ------------------------------------------------------------------ process management
WORK="$(mktemp -d "${TMPDIR:-/tmp}/loadweaver-bench.XXXXXX")"
chmod 755 "$WORK"   # nginx workers run as 'nobody' when started by root
PIDS=()
LAST_PID=""
FG_PID=""

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM ERR
    set +e
    if [[ -n "$FG_PID" ]]; then
        kill -TERM "$FG_PID" 2>/dev/null
        wait "$FG_PID" 2>/dev/null
    fi
    if (( ${#PIDS[@]} )); then
        for (( i = ${#PIDS[@]} - 1; i >= 0; i-- )); do
            kill -TERM "${PIDS[i]}" 2>/dev/null
        done
        for (( i = 0; i < 50; i++ )); do          # up to 5 s for a clean shutdown
            local alive=0
            for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            (( alive )) || break
            sleep 0.1
        done
        for pid in "${PIDS[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then
                warn "process $pid did not stop on SIGTERM; sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null
            fi
        done
        for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    fi
    if [[ "$rc" != "0" || "$KEEP_WORKDIR" == "1" ]]; then
        log "configs, logs and raw wrk output kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'warn "interrupted"; exit 130' INT
trap 'warn "terminated"; exit 143' TERM

# start_bg LOGFILE CMD... : run CMD in the background, remember its PID in LAST_PID
start_bg() {
    local logfile="$1"; shift
    "$@" >"$logfile" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# fg_run OUTFILE CMD... : run CMD in the background and wait for it, so that INT/TERM
# traps fire at once (cleanup stops it via FG_PID); returns CMD's exit status.
fg_run() {
    local outfile="$1" rc=0; shift
    "$@" >"$outfile" 2>&1 &
    FG_PID=$!
    wait "$FG_PID" || rc=$?
    FG_PID=""
    return "$rc"
}

# exit_info PID : how a background child that is no longer running ended
exit_info() {
    local rc=0
    wait "$1" 2>/dev/null || rc=$?
    if (( rc > 128 )); then
        echo "killed by signal $((rc - 128)) (SIG$(kill -l $((rc - 128)) 2>/dev/null || echo '?'))"
    else
        echo "exit status $rc"
    fi
}

# render TEMPLATE OUTPUT KEY=VALUE... : substitute @KEY@ placeholders
render() {
    local tmpl="$1" out="$2" kv key val; shift 2
    local sed_args=()
    for kv in "$@"; do
        key="${kv%%=*}"; val="${kv#*=}"
        val="${val//\\/\\\\}"; val="${val//|/\\|}"; val="${val//&/\\&}"
        sed_args+=(-e "s|@${key}@|${val}|g")
    done
    sed "${sed_args[@]}" "$tmpl" >"$out"
    if grep -q '@[A-Z_]*@' "$out"; then die "unsubstituted placeholder in $out"; fi
}

# wait_http NAME PID URL TIMEOUT_S LOG : wait until URL answers 2xx (bounded)
wait_http() {
    local name="$1" pid="$2" url="$3" timeout_s="$4" logfile="$5" i
    for (( i = 0; i < timeout_s * 5; i++ )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            warn "$name exited during startup ($(exit_info "$pid")); last lines of $logfile:"
            tail -n 30 "$logfile" >&2 || true
            die "$name failed to start"
        fi
        if curl -sf -o /dev/null --max-time 1 "$url"; then return 0; fi
        sleep 0.2
    done
    warn "$name did not answer 2xx on $url within ${timeout_s}s; last lines of $logfile:"
    tail -n 30 "$logfile" >&2 || true
    die "$name not ready"
}

# describe_proc PID : "N process(es), M thread(s)" for PID and its descendants
describe_proc() {
    local root="$1" procs=0 threads=0 pid t queue=("$1") next
    while (( ${#queue[@]} )) && (( procs < 1000 )); do
        pid="${queue[0]}"; queue=("${queue[@]:1}")
        [[ -r "/proc/$pid/status" ]] || continue
        procs=$((procs + 1))
        t="$(awk '/^Threads:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)"
        threads=$((threads + ${t:-0}))
        for next in $(cat "/proc/$pid/task/"*/children 2>/dev/null); do queue+=("$next"); done
    done
    echo "pid $root: $procs process(es), $threads thread(s)"
}

# ------------------------------------------------------------------ ports
read -r -a PROXY_LIST <<<"$PROXIES"
PORT_COUNT=$(( 2 + 2 * ${#PROXY_LIST[@]} ))   # two backends; a listener and an admin port each
read -r -a PORTS <<<"$("$PYTHON" "$BENCH_DIR/free_ports.py" "$PORT_COUNT")"
(( ${#PORTS[@]} == PORT_COUNT )) || die "could not allocate free loopback ports"
BACKEND_A="${PORTS[0]}"
BACKEND_B="${PORTS[1]}"
declare -A PORT=()
declare -A ADMIN_PORT=()
for (( i = 0; i < ${#PROXY_LIST[@]}; i++ )); do
    PORT[${PROXY_LIST[i]}]="${PORTS[2 + 2 * i]}"
    ADMIN_PORT[${PROXY_LIST[i]}]="${PORTS[3 + 2 * i]}"
done
declare -A PID=()
declare -A LOGF=()
VARIANT_ENV=()  # set by variant_settings for the loadweaver being started

log "work dir $WORK; open-file limit $NOFILE; pinning: $PINNING"

# ------------------------------------------------------------------ backends
for name in a b; do
    dir="$WORK/backend-$name"
    mkdir -p "$dir/www" "$dir/tmp"
    head -c 1023 /dev/zero | tr '\0' 'x' >"$dir/www/1k"; echo >>"$dir/www/1k"
    port_var="BACKEND_${name^^}"
    render "$BENCH_DIR/backend-nginx.conf.in" "$dir/nginx.conf" \
        "DIR=$dir" "PORT=${!port_var}" "NAME=$name" \
        "NOFILE=$NOFILE" "WORKER_CONNECTIONS=$WORKER_CONNECTIONS"
    start_bg "$dir/stderr.log" "${PIN_LOAD[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
    PID[backend-$name]="$LAST_PID"
    LOGF[backend-$name]="$dir/error.log"
done
for name in a b; do
    port_var="BACKEND_${name^^}"
    wait_http "backend $name" "${PID[backend-$name]}" "http://127.0.0.1:${!port_var}/" 10 \
        "${LOGF[backend-$name]}"
done
log "backends: nginx a on :$BACKEND_A, nginx b on :$BACKEND_B"

# ------------------------------------------------------------------ proxies
start_proxy() {
    local name="$1" dir="$WORK/$1" timeout_s=10
    mkdir -p "$dir/tmp"
    case "$name" in
    haproxy)
        render "$BENCH_DIR/haproxy.cfg.in" "$dir/haproxy.cfg" \
            "DIR=$dir" "PORT=${PORT[haproxy]}" "BACKEND_A=$BACKEND_A" "BACKEND_B=$BACKEND_B"
        haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 \
            || { cat "$dir/check.log" >&2; die "invalid HAProxy config $dir/haproxy.cfg"; }
        LOGF[$name]="$dir/haproxy.log"
        start_bg "${LOGF[$name]}" "${PIN_PROXY[@]}" haproxy -db -f "$dir/haproxy.cfg"
        ;;
    nginx)
        render "$BENCH_DIR/proxy-nginx.conf.in" "$dir/nginx.conf" \
            "DIR=$dir" "PORT=${PORT[nginx]}" "BACKEND_A=$BACKEND_A" "BACKEND_B=$BACKEND_B" \
            "NOFILE=$NOFILE" "WORKER_CONNECTIONS=$WORKER_CONNECTIONS"
        LOGF[$name]="$dir/error.log"
        start_bg "$dir/stderr.log" "${PIN_PROXY[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
        ;;
    loadweaver*)
        render "$BENCH_DIR/loadweaver.yaml.in" "$dir/loadweaver.yaml" \
            "PORT=${PORT[$name]}" "ADMIN_PORT=${ADMIN_PORT[$name]}" \
            "BACKEND_A=$BACKEND_A" "BACKEND_B=$BACKEND_B"
        LOGF[$name]="$dir/loadweaver.log"
        variant_settings "$name" "$dir"
        start_bg "${LOGF[$name]}" env "${VARIANT_ENV[@]}" "${PIN_PROXY[@]}" \
            "$LW_BIN" node start --config "$dir/loadweaver.yaml"
        timeout_s="$LW_START_TIMEOUT"
        ;;
    esac
    PID[$name]="$LAST_PID"
    wait_http "$name" "${PID[$name]}" "http://127.0.0.1:${PORT[$name]}$URL_PATH" "$timeout_s" "${LOGF[$name]}"
}

# variant_settings NAME DIR : sets VARIANT_ENV to the LOADWEAVER_* variables a loadweaver
# variant runs with (none for plain loadweaver)
variant_settings() {
    VARIANT_ENV=()
    case "$1" in
    loadweaver-bare) VARIANT_ENV=(LOADWEAVER_METRICS__ENABLED=false
        LOADWEAVER_REQUEST_ID__ENABLED=false LOADWEAVER_TRAFFIC_PATTERNS__ENABLED=false) ;;
    loadweaver-nometrics) VARIANT_ENV=(LOADWEAVER_METRICS__ENABLED=false) ;;
    loadweaver-accesslog) VARIANT_ENV=(LOADWEAVER_LOGGING__ACCESS_LOG__ENABLED=true
        "LOADWEAVER_LOGGING__ACCESS_LOG__PATH=$2/access.log") ;;
    esac
}

# sanity check: a few requests through the proxy, show which backends answered
check_proxy() {
    local name="$1" i body seen=()
    if [[ "$URL_PATH" == "/" ]]; then
        for (( i = 0; i < 6; i++ )); do
            body="$(curl -sf --max-time 2 "http://127.0.0.1:${PORT[$name]}/")" \
                || die "$name: request $i through the proxy failed"
            [[ " ${seen[*]:-} " == *" ${body##* } "* ]] || seen+=("${body##* }")
        done
        log "$name on :${PORT[$name]} ($(describe_proc "${PID[$name]}")); backends seen: ${seen[*]}"
        (( ${#seen[@]} == 2 )) || warn "$name did not spread 6 requests over both backends"
    else
        log "$name on :${PORT[$name]} ($(describe_proc "${PID[$name]}"))"
    fi
}

for name in $PROXIES; do
    start_proxy "$name"
    check_proxy "$name"
done

# ------------------------------------------------------------------ versions / metadata
# (awk reads all input: `| head -n1` could SIGPIPE the producer and, with pipefail, fail)
HAPROXY_VERSION="$(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}' || true)"
NGINX_VERSION="$(nginx -v 2>&1 | sed 's|.*nginx/||' || true)"
WRK_VERSION="$(wrk -v 2>&1 | awk 'NR == 1 {print $2}' || true)"
LW_VERSION="n/a"
if [[ -n "$LW_BIN" ]]; then
    LW_VERSION="$(timeout 10 "$LW_BIN" --version 2>/dev/null | awk 'NR == 1' || true)"
    if [[ -z "$LW_VERSION" && -x "$(dirname "$LW_BIN")/python" ]]; then
        LW_VERSION="$(timeout 10 "$(dirname "$LW_BIN")/python" -c \
            'import importlib.metadata as m; print(m.version("loadweaver"))' 2>/dev/null || true)"
    fi
    [[ -n "$LW_VERSION" ]] || LW_VERSION="unknown"
    if git rev-parse --verify -q HEAD >/dev/null 2>&1; then
        LW_VERSION="$LW_VERSION, git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- loadweaver 2>/dev/null || echo ' + local changes')"
    else
        LW_VERSION="$LW_VERSION, uncommitted working tree"
    fi
    for name in "${PROXY_LIST[@]}"; do
        if [[ "$name" == loadweaver* ]]; then
            LW_VERSION="$LW_VERSION; $(describe_proc "${PID[$name]}" | sed 's/^pid [0-9]*: //')"
            break
        fi
    done
fi
CPU_MODEL="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"

# ------------------------------------------------------------------ wrk runs
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

# run_wrk NAME DURATION OUTFILE
run_wrk() {
    local name="$1" dur="$2" outfile="$3"
    kill -0 "${PID[$name]}" 2>/dev/null \
        || die "$name is no longer running, $(exit_info "${PID[$name]}") (log: ${LOGF[$name]})"
    fg_run "$outfile" "${PIN_LOAD[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${dur}s" --latency \
            --timeout "$WRK_TIMEOUT" -s "$BENCH_DIR/wrk_report.lua" \
            "http://127.0.0.1:${PORT[$name]}$URL_PATH" \
        || { cat "$outfile" >&2; die "wrk against $name failed"; }
    kill -0 "${PID[$name]}" 2>/dev/null || {
        tail -n 30 "${LOGF[$name]}" >&2 || true
        die "$name died during the wrk run, $(exit_info "${PID[$name]}") (log: ${LOGF[$name]})"
    }
}

# CPU whose busy share is reported as "load CPU" (wrk + backends); -1 = not pinned
CPU_TO_WATCH=-1
(( ${#PIN_LOAD[@]} )) && CPU_TO_WATCH="$LOAD_CPU"

read -r -a ORDER <<<"$PROXIES"
N=${#ORDER[@]}

if (( WARMUP > 0 )); then
    for name in "${ORDER[@]}"; do
        log "warm-up: $name for ${WARMUP}s"
        run_wrk "$name" "$WARMUP" "$WORK/wrk-$name-warmup.txt"
        sleep "$COOLDOWN"
    done
fi

for (( r = 1; r <= ROUNDS; r++ )); do
    for (( i = 0; i < N; i++ )); do
        name="${ORDER[(i + r - 1) % N]}"     # rotate the order every round
        outfile="$WORK/wrk-$name-r$r.txt"
        printf '[bench] round %d/%d: %-10s wrk -t%d -c%d -d%ds %s ... ' \
            "$r" "$ROUNDS" "$name" "$THREADS" "$CONNECTIONS" "$DURATION" "$URL_PATH" >&2
        "$PYTHON" "$BENCH_DIR/cpustat.py" snap "${PID[$name]}" "$CPU_TO_WATCH" >"$WORK/cpu-before.json"
        run_wrk "$name" "$DURATION" "$outfile"
        read -r -a cpu_labels <<<"$("$PYTHON" "$BENCH_DIR/cpustat.py" diff "$WORK/cpu-before.json" \
            "${PID[$name]}" "$CPU_TO_WATCH")"
        "$PYTHON" "$BENCH_DIR/parse_wrk.py" "$outfile" --summary \
            --label "proxy=$name" --label "round=$r" \
            --label "${cpu_labels[0]}" --label "${cpu_labels[1]}" >>"$RESULTS" \
            || { cat "$outfile" >&2; die "could not parse wrk output $outfile"; }
        sleep "$COOLDOWN"
    done
done

# ------------------------------------------------------------------ idle connection RSS
IDLE_RESULTS="$WORK/idle.jsonl"
: >"$IDLE_RESULTS"
IDLE_TARGETS=()
if (( IDLE_CONNS > 0 )); then
    case "$IDLE_RSS_FOR" in
    all) IDLE_TARGETS=("${ORDER[@]}") ;;
    none|"") ;;
    *) for name in $IDLE_RSS_FOR; do
           [[ " $PROXIES " == *" $name "* ]] && IDLE_TARGETS+=("$name") \
               || warn "IDLE_RSS_FOR: $name is not running; skipped"
       done ;;
    esac
fi
for name in "${IDLE_TARGETS[@]}"; do
    log "idle RSS: $IDLE_CONNS idle keep-alive connections to $name (pid ${PID[$name]})"
    if fg_run /dev/stderr "${PIN_LOAD[@]}" "$PYTHON" "$BENCH_DIR/idle_rss.py" \
            --port "${PORT[$name]}" --pid "${PID[$name]}" -n "$IDLE_CONNS" \
            --hold "$IDLE_HOLD" --json "$WORK/idle-$name.json" --label "proxy=$name"; then
        cat "$WORK/idle-$name.json" >>"$IDLE_RESULTS"
    else
        warn "idle RSS measurement for $name failed"
        [[ -s "$WORK/idle-$name.json" ]] && cat "$WORK/idle-$name.json" >>"$IDLE_RESULTS"
    fi
    kill -0 "${PID[$name]}" 2>/dev/null \
        || die "$name died during the idle-connection test, $(exit_info "${PID[$name]}") (log: ${LOGF[$name]})"
    sleep "$COOLDOWN"
done

# ------------------------------------------------------------------ report
mkdir -p "$(dirname "$OUT")"
echo >&2
echo "Results: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s http://127.0.0.1:PORT$URL_PATH, $ROUNDS round(s); $PINNING"
"$PYTHON" "$BENCH_DIR/report.py" --results "$RESULTS" --idle "$IDLE_RESULTS" \
    --order "${PROXIES// /,}" --baseline haproxy --second-baseline loadweaver --out "$OUT" \
    --meta "date=$(date -u '+%Y-%m-%d %H:%M:%S UTC')" \
    --meta "host=$(uname -sr), $NCPU CPU(s)${CPU_MODEL:+, $CPU_MODEL}" \
    --meta "load=wrk $WRK_VERSION -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency, path $URL_PATH, $ROUNDS round(s) (order rotated), ${WARMUP}s warm-up" \
    --meta "pinning=$PINNING" \
    --meta "backends=2 x nginx $NGINX_VERSION (1 worker each)" \
    --meta "haproxy=$HAPROXY_VERSION, nbthread 1, roundrobin, http-reuse always" \
    --meta "nginx=$NGINX_VERSION, worker_processes 1, upstream keepalive 64" \
    --meta "loadweaver=$LW_VERSION" \
    --meta "idle connections=$IDLE_CONNS per proxy (${IDLE_RSS_FOR})" \
    || die "report failed"
echo
log "markdown written to $OUT"
