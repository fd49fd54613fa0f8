//! The client's readers of certificates (DER, as a broker sends them; PEM, as the CA and
//! certificate files hold them) and of key files, on arbitrary bytes. The invariants are in
//! `fuzz/check_certificate.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check_certificate.rs"]
mod check_certificate;

fuzz_target!(|data: &[u8]| {
    check_certificate::check(data);
});
