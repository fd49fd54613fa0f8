#!/usr/bin/env bash
# Builds provision-worker as one fully static x86-64 Linux executable: glibc and the bundled
# SQLite linked in (`-C target-feature=+crt-static` on the gnu target; musl is not needed),
# LTO, stripped. Checks that the result needs no dynamic loader or shared library, then
# prints its path and size.
#
# Usage:
#   scripts/build-static.sh          build, check, print "path: ..." and "size: ..."
#   scripts/build-static.sh --path   the same, but print only the binary's path on stdout
#
# Environment:
#   STATIC_OPT_LEVEL  opt-level for this build's Rust code (default: the release profile's,
#                     see Cargo.toml and README "Static binary" for the measurements)
#   LIBSQLITE3_FLAGS  -D/-U flags for the bundled SQLite (default: without the extensions
#                     the worker never uses, see below)
#
# The build goes to target/static, so it never invalidates the normal debug or release
# builds in target/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly TARGET=x86_64-unknown-linux-gnu
readonly TARGET_DIR=target/static
readonly BIN="$TARGET_DIR/$TARGET/release/provision-worker"
OPT_LEVEL="${STATIC_OPT_LEVEL:-}"

say() { echo "build-static: $*" >&2; }
die() {
    echo "build-static: error: $*" >&2
    exit 1
}

path_only=false
case "${1:-}" in
    "") ;;
    --path) path_only=true ;;
    *) die "unknown argument ${1}; use --path or nothing" ;;
esac

# With an explicit --target, RUSTFLAGS apply to the target only: build scripts and proc
# macros stay dynamic, as they must (rustc loads proc macros as shared libraries).
#
# getrandom_backend="linux_getrandom": by default the getrandom crate (under `rand`, which
# makes request ids and kubeconfig tokens) finds glibc's getrandom() through dlsym, which a
# static binary does not have, and falls back to reading /dev/urandom. An empty root or a
# scratch image may have no /dev, so call getrandom() directly (glibc 2.25, Linux 3.17).
# rusqlite's bundled SQLite comes with full-text search (FTS3/4/5), R*Tree, dbstat, soundex
# and extension loading turned on. The worker uses none of them (plain tables and
# transactions), a static binary cannot load extensions anyway, and FTS alone is about
# 280 KB: leaving them out keeps the binary within its 6 MB bar now that it carries TLS.
# JSON functions stay (a backend's views or checks may use them). A backend that put an FTS
# index with triggers on provision_requests would need them back: set LIBSQLITE3_FLAGS=" ".
#
# -z pack-relative-relocs: the binary is a static PIE (loaded at a random address, as a
# dynamic one is), so glibc's start-up code relocates it: every pointer in its read-only
# data is a relative relocation, 24 bytes each in .rela.dyn (167 KB with the PostgreSQL
# client in). RELR packs them into a bitmap (2 KB): the same relocations, applied at start
# by glibc 2.36 and later (the glibc linked in; Debian 12), so the binary stays a PIE and
# within its 6 MB bar. lld (rustc's linker here) has the option since LLD 15.
export LIBSQLITE3_FLAGS="${LIBSQLITE3_FLAGS:--USQLITE_ENABLE_FTS3 -USQLITE_ENABLE_FTS3_PARENTHESIS -USQLITE_ENABLE_FTS5 -USQLITE_ENABLE_RTREE -USQLITE_ENABLE_DBSTAT_VTAB -USQLITE_SOUNDEX -USQLITE_ENABLE_LOAD_EXTENSION -DSQLITE_OMIT_LOAD_EXTENSION}"
say "building $TARGET (crt-static, opt-level ${OPT_LEVEL:-of the release profile}, SQLite flags: $LIBSQLITE3_FLAGS) in $TARGET_DIR"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\" -C link-arg=-Wl,-z,pack-relative-relocs" \
    env ${OPT_LEVEL:+CARGO_PROFILE_RELEASE_OPT_LEVEL="$OPT_LEVEL"} \
    cargo build --release --locked --target "$TARGET" --target-dir "$TARGET_DIR" >&2

[[ -x "$BIN" ]] || die "cargo finished but $BIN is missing"
# The release profile already strips; strip again in case a profile override turned it off.
strip "$BIN"

# Static means: no program interpreter (dynamic loader) and no needed shared library.
if readelf --program-headers "$BIN" | grep -q INTERP; then
    die "$BIN asks for a dynamic loader; it is not static"
fi
if readelf --dynamic "$BIN" | grep -q NEEDED; then
    die "$BIN needs shared libraries: $(readelf --dynamic "$BIN" | grep NEEDED)"
fi

size=$(stat -c %s "$BIN")
if $path_only; then
    echo "$(pwd)/$BIN"
else
    echo "path: $(pwd)/$BIN"
    echo "size: $size bytes ($(( (size + 1023) / 1024 )) KiB)"
fi
say "static, stripped, $size bytes"
