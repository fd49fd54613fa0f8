#!/usr/bin/env bash
# Benchmark of the release worker (issue 5): builds target/release/provision-worker and the
# bench driver (bench/, its own crate and workspace, built into bench/target), then runs the
# driver, which starts its own tansu on a free port and measures the worker from outside.
#
# Usage:
#   scripts/bench.sh                 all six scenarios, 3 runs each (under 10 minutes)
#   scripts/bench.sh --quick         CI smoke: scenario 1 with 2,000 requests, 1 run; exits 1
#                                    only if a request is lost or processed twice, never on speed
#   scripts/bench.sh --scenario 4 --runs 5
#   scripts/bench.sh --help          every option of the driver
#
# Output: progress on stderr; one JSON line per scenario on stdout (also appended to
# bench/results.jsonl), then the table. Exit status: 0 fine, 1 a request was lost or
# processed twice (or, with --quick, the run could not be measured), 2 any other error.
#
# Environment:
#   TANSU_BIN   use this tansu binary (passed on to scripts/kafka-up.sh --path)
#   CARGO       cargo to build with (default: cargo)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly CARGO="${CARGO:-cargo}"

die() {
    echo "bench: error: $*" >&2
    exit 2
}

for arg in "$@"; do
    if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
        echo >&2
        # The driver's own help needs it built; build it quietly if needed.
        "$CARGO" build --quiet --release --manifest-path "$ROOT/bench/Cargo.toml" >&2 &&
            "$ROOT/bench/target/release/provision-bench" --help >&2
        exit 0
    fi
done

echo "bench: building the worker (cargo build --release)" >&2
(cd "$ROOT" && "$CARGO" build --release --bin provision-worker) >&2 ||
    die "the release build of the worker failed"
echo "bench: building the bench driver (bench/)" >&2
"$CARGO" build --release --manifest-path "$ROOT/bench/Cargo.toml" >&2 ||
    die "the build of the bench driver (bench/) failed"

TANSU="$("$ROOT/scripts/kafka-up.sh" --path)" || die "no tansu binary (scripts/kafka-up.sh --path failed)"

exec "$ROOT/bench/target/release/provision-bench" \
    --root "$ROOT" \
    --worker "$ROOT/target/release/provision-worker" \
    --tansu "$TANSU" \
    "$@"
