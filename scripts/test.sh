#!/usr/bin/env bash
# Runs the whole test suite of the workspace (the worker, crates/blocking-kafka,
# crates/blocking-postgres and the test harnesses): installs the Python interop client and
# PostgreSQL 15 when missing, fetches the tansu broker
# binary once up front (each integration test starts its own broker from it on a free
# port, so no shared broker is needed), then `cargo test --workspace --all-targets`.
# Extra arguments go to cargo test, e.g. `scripts/test.sh --no-fail-fast`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# PIP_ROOT_USER_ACTION quiets the warning about installing as root (CI runs as root).
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
    -r tests/requirements.txt
# The TLS tests put stunnel4 (OpenSSL) in front of the test broker and convert keys with the
# openssl command; installed here when missing, so a fresh machine (CI) has them.
if ! command -v stunnel4 >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing stunnel4 and openssl" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4 openssl >/dev/null
    else
        echo "test.sh: stunnel4 and openssl are needed by the TLS tests (tests/security.rs, crates/blocking-kafka/tests/security.rs); install them (apt-get install -y stunnel4 openssl)" >&2
        exit 1
    fi
fi
# The PostgreSQL tests (the worker's tests/postgres.rs and tests/worker.rs, and
# crates/blocking-postgres) start clusters of their own (crates/pg-testkit) from Debian's
# PostgreSQL 15 server programs, as the postgres user; installed here when missing.
if [[ -z "${PG_BIN:-}" && ! -x /usr/lib/postgresql/15/bin/initdb ]]; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing postgresql-15" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
    else
        echo "test.sh: PostgreSQL 15's server is needed by the PostgreSQL tests (tests/postgres.rs, tests/worker.rs, crates/blocking-postgres/tests); install it (apt-get install -y postgresql-15) or set PG_BIN" >&2
        exit 1
    fi
fi
TANSU_BIN="$(scripts/kafka-up.sh --path)"
export TANSU_BIN
echo "test.sh: using tansu at $TANSU_BIN" >&2
cargo test --workspace --all-targets "$@"
