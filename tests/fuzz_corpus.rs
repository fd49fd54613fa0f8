//! The fuzz target's seed corpus as a regular test: every file of `fuzz/corpus-seed/` goes
//! through message parsing, kubeconfig rendering and YAML parse-back, with the same
//! invariants the fuzzer checks (`fuzz/check.rs`). File names say what to expect:
//! `valid-*` must be accepted, `invalid-*` rejected; any other name (an input the fuzzer
//! found, kept as a regression) only has to pass the invariants.
//!
//! `scripts/fuzz.sh` runs the fuzzer itself (nightly, outside CI).

#[path = "../fuzz/check.rs"]
mod check;

use std::path::Path;

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
