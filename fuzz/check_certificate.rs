//! The invariants of the client's readers of certificates and keys, shared by the fuzz
//! target (`fuzz/fuzz_targets/certificate.rs`) and the regular test `tests/fuzz_corpus.rs`,
//! which both include this file with `#[path]`.
//!
//! Every input is read three ways: as a DER certificate (the subject and expiry `check`
//! shows; a broker sends these), as a PEM file of certificates (a CA or certificate file)
//! and as a PEM key file. Per input:
//! - nothing panics;
//! - how `check` describes it (subject, expiry, alternative names) is one line with no
//!   control character, of bounded length;
//! - a certificate that reads has an expiry `YYYY-MM-DD HH:MM:SS UTC`, digits where digits
//!   go (display only: webpki decides validity on the same bytes), and a subject of bounded
//!   length, which `check` shows on one line with no control character (the subject is the
//!   broker's text);
//! - the PEM readers' refusals are short, one line, in the project's style (lower case, no
//!   trailing period).

use blocking_kafka::fuzzing::{
    certificate_description, certificate_subject_and_expiry, read_certificates_pem, read_key_pem,
    session_line,
};

/// Checks every invariant for one input; true when it reads as a DER certificate.
pub fn check(data: &[u8]) -> bool {
    let read = certificate_subject_and_expiry(data);
    if let Some((subject, not_after)) = &read {
        check_expiry(not_after);
        assert!(!subject.is_empty(), "an empty subject");
        // Each byte of a name becomes at most a few characters, plus the labels.
        assert!(
            subject.len() <= 4 * data.len() + 16,
            "a subject of {} bytes from {} bytes",
            subject.len(),
            data.len()
        );
    }
    // Our certificate and the CA as `check` shows them, alternative names included.
    let description = certificate_description(data);
    assert!(
        !description.chars().any(char::is_control),
        "check would show a control character: {description:?}"
    );
    // Each byte of a name becomes at most a few characters; at most 8 names are shown.
    assert!(
        description.len() <= 8 * data.len() + 128,
        "a description of {} bytes from {} bytes",
        description.len(),
        data.len()
    );
    let line = session_line(data);
    assert!(
        !line.chars().any(char::is_control),
        "check would show a control character: {line:?}"
    );
    if let Err(reason) = read_certificates_pem(data) {
        check_refusal(&reason);
    }
    if let Err(reason) = read_key_pem(data) {
        check_refusal(&reason);
    }
    read.is_some()
}

fn check_expiry(not_after: &str) {
    let shape = "dddd-dd-dd dd:dd:dd UTC";
    assert!(
        not_after.len() == shape.len()
            && not_after
                .bytes()
                .zip(shape.bytes())
                .all(|(c, s)| if s == b'd' {
                    c.is_ascii_digit()
                } else {
                    c == s
                }),
        "expiry {not_after:?} is not {shape}"
    );
}

fn check_refusal(reason: &str) {
    assert!(!reason.is_empty(), "an empty refusal");
    assert!(
        reason.len() <= 400,
        "a refusal of {} bytes: {reason:?}",
        reason.len()
    );
    assert!(
        !reason.chars().any(char::is_control),
        "a refusal with a control character: {reason:?}"
    );
    assert!(
        !reason.starts_with(char::is_uppercase) && !reason.ends_with('.'),
        "a refusal not in the project's style: {reason:?}"
    );
}
