#!/usr/bin/env bash
# The worker through issue 16's cluster scenarios (tests/cluster.rs against kafka-testkit's
# three-broker cluster), several times, and the median of each partition's worst
# produce->`provisioning` time per scenario: the worker's column of README's Performance
# table. librdkafka's column comes from the same timelines:
#   cargo run -p kafka-testkit --example cluster_scenarios -- --runs 3
#
# Usage: scripts/cluster-scenarios.sh [--runs N] [--worker PATH]
#   --runs N       runs of every scenario (default 3)
#   --worker PATH  the worker binary to measure (default: target/release/provision-worker,
#                  built first); another build (the one before a change, say) goes through
#                  the same scenarios this way. A worker that misses a bar of a scenario still
#                  gets its row: the row is printed before the test's assertions.
# Output: each run's rows on stderr as they come, then one row per scenario with the medians.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=3
worker=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --worker) worker="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "cluster-scenarios.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -z "$worker" ]]; then
    cargo build --release -p provision-worker >&2
    worker="$PWD/target/release/provision-worker"
fi
[[ -x "$worker" ]] || { echo "cluster-scenarios.sh: $worker is not an executable" >&2; exit 2; }
TANSU_BIN="$(scripts/kafka-up.sh --path)"
export TANSU_BIN
cargo test --test cluster --no-run >&2

rows="$(mktemp)"
trap 'rm -f "$rows"' EXIT
for run in $(seq 1 "$runs"); do
    echo "cluster-scenarios.sh: run $run of $runs (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    # The scenario tests only (not the rebalance bounce, the old formats, Kafka 2.1), one at
    # a time; a failed bar does not stop the measuring.
    PROVISION_WORKER_BIN="$worker" cargo test --test cluster -- --nocapture --test-threads 1 \
        --skip bounce --skip formats --skip kafka_2_1 2>&1 \
        | grep --line-buffered -E '^cluster scenario row: ' | tee -a "$rows" >&2 || true
done
python3 - "$rows" "$runs" <<'EOF'
import re, sys
from statistics import median
rows, runs = sys.argv[1], sys.argv[2]
order, worst = [], {}
for line in open(rows):
    m = re.match(r"cluster scenario row: \| ([a-z-]+) \| ([\d.]+) / ([\d.]+) / ([\d.]+) s \|", line)
    if not m:
        continue
    name = m.group(1)
    if name not in worst:
        order.append(name)
        worst[name] = []
    worst[name].append([float(x) for x in m.groups()[1:]])
for name in order:
    ps = [f"{median(r[i] for r in worst[name]):.2f}" for i in range(3)]
    print(f"| {name} | {' / '.join(ps)} s (median of {len(worst[name])}, {runs} asked) |")
EOF
