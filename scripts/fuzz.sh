#!/usr/bin/env bash
# Fuzzes message parsing + validation + kubeconfig rendering (fuzz/fuzz_targets/
# parse_render.rs, invariants in fuzz/check.rs) for a bounded time. Outside CI: it needs
# a nightly toolchain (cargo-fuzz builds with -Zsanitizer=address) and cargo-fuzz.
#
#   scripts/fuzz.sh [SECONDS]      (default 120; FUZZ_SECONDS works too)
#
# - installs cargo-fuzz with `cargo install cargo-fuzz` if it is missing;
# - uses the nightly toolchain if rustup has one; otherwise tries the stable one with
#   RUSTC_BOOTSTRAP=1 (which lets stable accept nightly flags, and often works), and
#   fails with a clear message if that does not build;
# - starts from fuzz/corpus-seed/ (committed; tests/fuzz_corpus.rs runs it in every
#   `cargo test`) and keeps what it learns in fuzz/corpus/parse_render/ (not committed).
# A crash is saved under fuzz/artifacts/parse_render/; replay it with
#   cargo +nightly fuzz run parse_render fuzz/artifacts/parse_render/<file>
# and, once fixed, copy the input into fuzz/corpus-seed/ so the regular test keeps it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
budget="${1:-${FUZZ_SECONDS:-120}}"
if ! [[ "$budget" =~ ^[0-9]+$ ]] || ((budget == 0)); then
    echo "fuzz.sh: the time budget must be a whole number of seconds, got '$budget'" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz (cargo install cargo-fuzz)" >&2
    cargo install cargo-fuzz --locked
fi

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    echo "fuzz.sh: no nightly toolchain (rustup toolchain install nightly adds one);" \
        "trying stable with RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
fi

target=parse_render
mkdir -p "fuzz/corpus/$target"
if ! cargo "${toolchain[@]}" fuzz build "$target"; then
    echo "fuzz.sh: cannot build the fuzz target. cargo fuzz needs a nightly toolchain:" \
        "install one with 'rustup toolchain install nightly' and run this again." >&2
    exit 1
fi
# -max_len: a message may be up to 64 KiB, and the size check itself is worth reaching.
# -timeout: one input taking seconds is a finding (deep nesting, quadratic parsing).
cargo "${toolchain[@]}" fuzz run "$target" "fuzz/corpus/$target" fuzz/corpus-seed -- \
    -max_total_time="$budget" -max_len=70000 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1
