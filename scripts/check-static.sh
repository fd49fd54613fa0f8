#!/usr/bin/env bash
# Proves that the static binary runs in an empty root: a fresh directory holding only the
# binary, /tmp, /etc/hosts and a /data directory for the database (what the Dockerfile's
# scratch image holds) -- no shared libraries, no dynamic loader, no /proc, no /dev.
# Inside that root, talking to a private tansu broker by IP, the binary must:
#   check     pass every check (the database does not exist yet; its directory is writable)
#   send      insert a pending row into /data/poc.db and publish the request
#   run       provision it, while serving /healthz (probed from outside the root)
#   status    show it completed
# and exit 0 on SIGTERM. Before all that, the binary must be within its size bar: at most
# 6,000,000 bytes (MAX_STATIC_BYTES), the bar of the edge-host issues (README "Static binary").
# Then, over TLS (a second broker behind stunnel4, whose CA -- made
# here with openssl -- is copied into the root): `check` must pass and report TLS 1.3 and
# the broker's certificate, proving rustls and its ring code run in the empty root.
#
# Usage:
#   scripts/check-static.sh [BINARY]   default: build it with scripts/build-static.sh
#
# Needs root for chroot; otherwise it tries an unprivileged user namespace (unshare -r).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "check-static: $*" >&2; }
die() {
    echo "check-static: FAILED: $*" >&2
    exit 1
}

bin="${1:-}"
if [[ -z "$bin" ]]; then
    bin="$(scripts/build-static.sh --path)"
fi
[[ -x "$bin" ]] || die "$bin is not an executable"
readonly MAX_STATIC_BYTES="${MAX_STATIC_BYTES:-6000000}"
size="$(stat -c %s "$bin")"
if ((size > MAX_STATIC_BYTES)); then
    die "$bin is $size bytes, over the bar of $MAX_STATIC_BYTES; README \"Static binary\" says what was measured to keep it within (opt-levels in Cargo.toml, SQLite flags in scripts/build-static.sh)"
fi
say "size $size bytes (bar $MAX_STATIC_BYTES)"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
answers() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

work="$(mktemp -d -t check-static.XXXXXX)"
root="$work/root"
broker_pid=""
worker_pid=""
tls_broker_pid=""
stunnel_pid=""
cleanup() {
    [[ -n "$worker_pid" ]] && kill -KILL "$worker_pid" 2>/dev/null || true
    [[ -n "$broker_pid" ]] && kill -KILL "$broker_pid" 2>/dev/null || true
    [[ -n "$tls_broker_pid" ]] && kill -KILL "$tls_broker_pid" 2>/dev/null || true
    [[ -n "$stunnel_pid" ]] && kill -KILL "$stunnel_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# A private broker on a free port, so nothing else's topics or groups get in the way.
tansu="$(scripts/kafka-up.sh --path)"
port="$(free_port)"
NO_COLOR=1 "$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$work/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 1 300); do
    answers "$port" && break
    sleep 0.1
done
answers "$port" || die "the broker did not start; its log: $(cat "$work/broker.log")"
NO_COLOR=1 "$tansu" topic create provision-requests --partitions 3 --broker "tcp://127.0.0.1:$port" >/dev/null
NO_COLOR=1 "$tansu" topic create provision-requests.dlq --partitions 1 --broker "tcp://127.0.0.1:$port" >/dev/null

# The empty root.
mkdir -p "$root/tmp" "$root/etc" "$root/data"
chmod 1777 "$root/tmp"
cp "$bin" "$root/provision-worker"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"

# Absolute paths: `env -i` below clears PATH.
chroot_bin="$(command -v chroot)" || die "chroot is not installed"
if [[ $EUID -eq 0 ]]; then
    enter=("$chroot_bin" "$root")
else
    enter=("$(command -v unshare)" --map-root-user "$chroot_bin" "$root")
fi
metrics_port="$(free_port)"
# Only what the run needs: no PATH, no HOME, no locale. An array, not a function, so that
# `&` below starts the worker itself (a function would run in a subshell, and SIGTERM
# would reach the subshell instead of the worker).
in_root=(
    env -i
    DATABASE_URL=sqlite:////data/poc.db
    KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
    MOCK_PROVISION_DELAY_SECONDS=0.2
    KAFKA_SESSION_TIMEOUT_MS=6000
    KAFKA_HEARTBEAT_INTERVAL_MS=500
    METRICS_ADDR="127.0.0.1:$metrics_port"
    "${enter[@]}" /provision-worker
)

say "root holds: $(cd "$root" && find . -mindepth 1 | sort | tr '\n' ' ')"
"${in_root[@]}" check || die "check failed inside the root"

id="$("${in_root[@]}" send --user alice --gpus 4 --hours 2)" || die "send failed inside the root"
say "sent request $id"

"${in_root[@]}" >"$work/worker.log" 2>&1 &
worker_pid=$!

status=""
for _ in $(seq 1 300); do
    status="$("${in_root[@]}" status "$id" | awk '$1 == "status:" { print $2 }')"
    [[ "$status" == completed ]] && break
    kill -0 "$worker_pid" 2>/dev/null || die "the worker exited; its log:
$(cat "$work/worker.log")"
    sleep 0.2
done
[[ "$status" == completed ]] || die "request $id is $status, not completed; worker log:
$(cat "$work/worker.log")"

health="$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
    "http://127.0.0.1:$metrics_port/healthz")" || die "/healthz did not answer 200"
say "/healthz: $health"
"${in_root[@]}" status "$id" --kubeconfig | grep -q '^apiVersion:' || die "no kubeconfig for $id"

kill -TERM "$worker_pid"
code=0
wait "$worker_pid" || code=$?
worker_pid=""
[[ $code -eq 0 ]] || die "the worker exited with $code after SIGTERM; its log:
$(cat "$work/worker.log")"
grep -q "Worker stopped" "$work/worker.log" || die "no clean stop in the worker log"

# ---- TLS inside the root
stunnel_bin="$(command -v stunnel4 || command -v stunnel)" || die "stunnel4 is not installed (apt-get install -y stunnel4)"
command -v openssl >/dev/null || die "openssl is not installed (apt-get install -y openssl)"
tls_port="$(free_port)"
plain_port="$(free_port)"
# A broker that advertises stunnel's port, so every connection after bootstrap is TLS too.
NO_COLOR=1 "$tansu" broker --listener-url "tcp://127.0.0.1:$plain_port" \
    --advertised-listener-url "tcp://127.0.0.1:$tls_port" \
    --storage-engine memory://tansu/ >"$work/tls-broker.log" 2>&1 &
tls_broker_pid=$!
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -days 2 \
    -subj "/CN=check-static CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -subj "/CN=localhost" \
    -keyout "$work/broker.key" -out "$work/broker.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/broker.ext"
openssl x509 -req -in "$work/broker.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -days 2 \
    -extfile "$work/broker.ext" -out "$work/broker.pem" 2>/dev/null
printf 'foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\ncert = %s\nkey = %s\n' \
    "$tls_port" "$plain_port" "$work/broker.pem" "$work/broker.key" >"$work/stunnel.conf"
"$stunnel_bin" "$work/stunnel.conf" >"$work/stunnel.log" 2>&1 &
stunnel_pid=$!
for _ in $(seq 1 300); do
    answers "$plain_port" && answers "$tls_port" && break
    sleep 0.1
done
answers "$tls_port" || die "stunnel did not start; its log: $(cat "$work/stunnel.log")"
NO_COLOR=1 "$tansu" topic create provision-requests --partitions 3 --broker "tcp://127.0.0.1:$plain_port" >/dev/null
NO_COLOR=1 "$tansu" topic create provision-requests.dlq --partitions 1 --broker "tcp://127.0.0.1:$plain_port" >/dev/null
mkdir -p "$root/etc/kafka"
cp "$work/ca.pem" "$root/etc/kafka/ca.pem"
tls_check="$(env -i DATABASE_URL=sqlite:////data/poc.db \
    KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$tls_port" \
    KAFKA_SECURITY_PROTOCOL=SSL KAFKA_SSL_CA_LOCATION=/etc/kafka/ca.pem \
    "${enter[@]}" /provision-worker check)" || die "check over TLS failed inside the root:
$tls_check"
grep -q "^OK   kafka: .*(SSL: TLS 1.3, .*broker certificate CN=localhost" <<<"$tls_check" \
    || die "check over TLS did not describe the session: $tls_check"
say "over TLS: $(grep '^OK   kafka:' <<<"$tls_check")"

say "root holds afterwards: $(cd "$root" && find . -mindepth 1 | sort | tr '\n' ' ')"
echo "check-static: OK: $(stat -c %s "$bin") bytes; check, send, run, status and SIGTERM work in an empty root, and check over TLS"
