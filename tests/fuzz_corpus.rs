//! The fuzz targets' seed corpora as regular tests, through the same invariants the fuzzer
//! checks (each target's check file, included here with `#[path]`, so the targets' code is
//! compiled and run in every `cargo test`):
//!
//! - `fuzz/corpus-seed/`: message parsing, kubeconfig rendering and YAML parse-back
//!   (`fuzz/check.rs`);
//! - `fuzz/corpus-seed-scram/`: the SCRAM client's reading of the server's messages
//!   (`fuzz/check_scram.rs`);
//! - `fuzz/corpus-seed-certificate/`: the readers of DER certificates and PEM certificate and
//!   key files (`fuzz/check_certificate.rs`).
//!
//! File names say what to expect: `valid-*` must be accepted, `invalid-*` rejected; any other
//! name (an input the fuzzer found, kept as a regression) only has to pass the invariants.
//! `fuzz/make_seeds.py` wrote the SCRAM and certificate seeds.
//!
//! `scripts/fuzz.sh` runs the fuzzer itself (nightly, outside CI).

#[path = "../fuzz/check.rs"]
mod check;
#[path = "../fuzz/check_certificate.rs"]
mod check_certificate;
#[path = "../fuzz/check_scram.rs"]
mod check_scram;

use std::path::{Path, PathBuf};

#[test]
fn every_seed_input_keeps_the_parse_and_render_invariants() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus-seed");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "only {} seed inputs in {}",
        files.len(),
        dir.display()
    );
    let (mut valid, mut invalid) = (0, 0);
    for path in &files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 file name");
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {name}: {e}"));
        let accepted = check::check(&data);
        check::check_user_id(&data);
        if name.starts_with("valid-") {
            assert!(accepted.is_some(), "{name} was rejected");
            valid += 1;
        } else if name.starts_with("invalid-") {
            assert!(accepted.is_none(), "{name} was accepted: {accepted:?}");
            invalid += 1;
        }
    }
    assert!(
        valid >= 5 && invalid >= 15,
        "{valid} valid, {invalid} invalid"
    );
}

#[test]
fn every_scram_seed_keeps_the_scram_client_invariants() {
    let (valid, invalid) = run_corpus("fuzz/corpus-seed-scram", check_scram::check);
    assert!(
        valid >= 2 && invalid >= 12,
        "{valid} valid, {invalid} invalid"
    );
}

#[test]
fn every_certificate_seed_keeps_the_certificate_reader_invariants() {
    let (valid, invalid) = run_corpus("fuzz/corpus-seed-certificate", check_certificate::check);
    assert!(
        valid >= 5 && invalid >= 8,
        "{valid} valid, {invalid} invalid"
    );
}

/// Runs every file of `dir` through `check` (which panics on a broken invariant and says
/// whether the input was accepted) and holds `valid-*` and `invalid-*` files to their names;
/// returns how many of each there were.
fn run_corpus(dir: &str, check: fn(&[u8]) -> bool) -> (usize, usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    let (mut valid, mut invalid) = (0, 0);
    for path in &files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 file name");
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {name}: {e}"));
        let accepted = check(&data);
        if name.starts_with("valid-") {
            assert!(accepted, "{name} was refused");
            valid += 1;
        } else if name.starts_with("invalid-") {
            assert!(!accepted, "{name} was accepted");
            invalid += 1;
        }
    }
    (valid, invalid)
}
