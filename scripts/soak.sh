#!/usr/bin/env bash
# Soak run of the fault-injection tests (tests/faults.rs): the same scenarios, longer.
#
#   scripts/soak.sh [--long] [--seeds N] [--seed S] [TEST_FILTER]
#
#   --long     the soak sizes (FAULTS_LONG=1): 30 crashes over 2,000 requests, a 30 s
#              broker outage, 5 database holds, a 20 s unwritable database, 1,000
#              requests through the rebalances, 50,000 hostile messages (10 of 1 MiB).
#              Without it, the regular sizes of `cargo test` (10 crashes over 500, 10 s,
#              2 holds, 4 s, 300, 10,000 with 3 of 1 MiB).
#   --seeds N  run the whole set N times, with seeds S, S+1, ... (default 1 time); each
#              test derives all of its random choices from the seed.
#   --seed S   the first seed (default: each test's own fixed seed for the first round,
#              then 1000, 1001, ...).
#   TEST_FILTER  passed to the test binary, e.g. `crash_loop`.
#
# Tests run one at a time (--test-threads=1) so the long scenarios don't compete for the
# CPU. A failing round stops the script and prints its seed: replay it with
#   FAULTS_SEED=<seed> [FAULTS_LONG=1] cargo test --test faults <test name>
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

long=0
seeds=1
first_seed=""
filter=()
while (($#)); do
    case "$1" in
        --long) long=1 ;;
        --seeds) seeds="${2:?--seeds needs a number}"; shift ;;
        --seed) first_seed="${2:?--seed needs a number}"; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        -*) echo "soak.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) filter+=("$1") ;;
    esac
    shift
done

PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
    -r tests/requirements.txt
TANSU_BIN="$(scripts/kafka-up.sh --path)"
export TANSU_BIN
if ((long)); then
    export FAULTS_LONG=1
fi

cargo test --test faults --no-run
for ((round = 0; round < seeds; round++)); do
    if [[ -n "$first_seed" ]]; then
        export FAULTS_SEED=$((first_seed + round))
    elif ((round > 0)); then
        export FAULTS_SEED=$((1000 + round - 1))
    fi
    echo "== soak round $((round + 1))/$seeds: FAULTS_LONG=${FAULTS_LONG:-0} FAULTS_SEED=${FAULTS_SEED:-per-test default}" >&2
    start=$SECONDS
    if ! cargo test --test faults -- --test-threads=1 "${filter[@]}"; then
        echo "soak.sh: round $((round + 1)) failed; replay with FAULTS_SEED=${FAULTS_SEED:-<the seed printed by the test>} FAULTS_LONG=${FAULTS_LONG:-0}" >&2
        exit 1
    fi
    echo "== round $((round + 1)) passed in $((SECONDS - start)) s" >&2
done
