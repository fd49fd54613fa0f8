//! Message parsing + validation + kubeconfig rendering, on arbitrary bytes: each input is
//! parsed as a whole message, and (when it is UTF-8) also used as the `user_id` of an
//! otherwise valid one. The invariants are in `fuzz/check.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    check::check(data);
    check::check_user_id(data);
});
