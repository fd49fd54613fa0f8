//! User ids that a naive renderer or query builder would get wrong, shared by the fault
//! tests (which send them through the worker) and tests/kubeconfig.rs (which reads the
//! kubeconfigs rendered for them back with YAML 1.1 and 1.2 parsers).

/// User ids a naive renderer or query builder would get wrong; all valid.
pub const TRICKY_USERS: &[&str] = &[
    "alice",
    "'; DROP TABLE provision_requests; --",
    "\" OR 1=1 --",
    "Robert'); DELETE FROM provision_requests WHERE ('1'='1",
    "a: b",
    "key: value\nother: thing",
    "- item",
    "!!python/object/apply:os.system ['rm -rf /']",
    "&anchor *alias",
    "# comment",
    "{flow: map}",
    "[flow, seq]",
    "---\n...",
    "%YAML 1.2",
    "null",
    "~",
    "yes",
    "0x1F",
    "1e3",
    "|\n  block",
    ">",
    "@at `tick`",
    "tab\there",
    "nul\0byte",
    "bell\u{7}esc\u{1b}del\u{7f}",
    "\u{85}\u{2028}\u{2029}\u{feff}",
    "日本語 😀 ﷽",
    "\\backslash\\",
    "  leading and trailing  ",
    "cr\r\nlf",
];

/// The characters of the longest user ids the tests make (256 of them, the limit): quotes,
/// `:`, `#`, a newline and multi-byte text.
pub const LONG_USER_CHARS: &str = "ä'\":#\n😀x";
