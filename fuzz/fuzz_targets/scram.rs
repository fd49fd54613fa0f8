//! The SCRAM client's reading of a server's messages, on arbitrary bytes: the server-first
//! message, a NUL, the server-final message. The invariants are in `fuzz/check_scram.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check_scram.rs"]
mod check_scram;

fuzz_target!(|data: &[u8]| {
    check_scram::check(data);
});
