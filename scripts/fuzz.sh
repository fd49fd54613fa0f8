#!/usr/bin/env bash
# Runs one fuzz target for a bounded time. Outside CI: it needs a nightly toolchain
# (cargo-fuzz builds with -Zsanitizer=address) and cargo-fuzz.
#
#   scripts/fuzz.sh [SECONDS] [TARGET]   (default 120 s; FUZZ_SECONDS works too)
#
# Targets (fuzz/fuzz_targets/), each with its invariants in a check file and its seed corpus:
#   parse_render  message parsing + validation + kubeconfig rendering (the default)
#                 fuzz/check.rs, fuzz/corpus-seed/
#   scram         the SCRAM client's reading of server-first and server-final messages
#                 fuzz/check_scram.rs, fuzz/corpus-seed-scram/
#   certificate   the DER certificate reader behind check, and the PEM certificate and key
#                 readers: fuzz/check_certificate.rs, fuzz/corpus-seed-certificate/
#
# - installs cargo-fuzz with `cargo install cargo-fuzz` if it is missing;
# - uses the nightly toolchain if rustup has one; otherwise tries the stable one with
#   RUSTC_BOOTSTRAP=1 (which lets stable accept nightly flags, and often works), and
#   fails with a clear message if that does not build;
# - starts from the target's seed corpus (committed; tests/fuzz_corpus.rs runs it in every
#   `cargo test`) and keeps what it learns in fuzz/corpus/TARGET/ (not committed).
# A crash is saved under fuzz/artifacts/TARGET/; replay it with
#   cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/<file>
# and, once fixed, copy the input into the seed corpus so the regular test keeps it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
budget="${1:-${FUZZ_SECONDS:-120}}"
if ! [[ "$budget" =~ ^[0-9]+$ ]] || ((budget == 0)); then
    echo "fuzz.sh: the time budget must be a whole number of seconds, got '$budget'" >&2
    exit 2
fi
target="${2:-parse_render}"
case "$target" in
parse_render) seeds=fuzz/corpus-seed max_len=70000 ;;
scram) seeds=fuzz/corpus-seed-scram max_len=4096 ;;
certificate) seeds=fuzz/corpus-seed-certificate max_len=16384 ;;
*)
    echo "fuzz.sh: unknown target '$target': parse_render, scram or certificate" >&2
    exit 2
    ;;
esac

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

mkdir -p "fuzz/corpus/$target"
if ! cargo "${toolchain[@]}" fuzz build "$target"; then
    echo "fuzz.sh: cannot build the fuzz target. cargo fuzz needs a nightly toolchain:" \
        "install one with 'rustup toolchain install nightly' and run this again." >&2
    exit 1
fi
# -max_len: a message may be up to 64 KiB, and the size check itself is worth reaching;
# SCRAM messages and certificates are far smaller.
# -timeout: one input taking seconds is a finding (deep nesting, quadratic parsing); the
# SCRAM target's PBKDF2 at its ceiling (1,000,000 iterations) takes under a second.
cargo "${toolchain[@]}" fuzz run "$target" "fuzz/corpus/$target" "$seeds" -- \
    -max_total_time="$budget" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1
