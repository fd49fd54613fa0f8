#!/usr/bin/env bash
# Runs the whole test suite: installs the Python interop client, fetches the tansu broker
# binary once up front (each integration test starts its own broker from it on a free
# port, so no shared broker is needed), then `cargo test --all-targets`.
# Extra arguments go to cargo test, e.g. `scripts/test.sh --test broker_smoke`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# PIP_ROOT_USER_ACTION quiets the warning about installing as root (CI runs as root).
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
    -r tests/requirements.txt
TANSU_BIN="$(scripts/kafka-up.sh --path)"
export TANSU_BIN
echo "test.sh: using tansu at $TANSU_BIN" >&2
cargo test --all-targets "$@"
