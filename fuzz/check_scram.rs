//! The invariants of the SCRAM client's reading of the server's messages, shared by the fuzz
//! target (`fuzz/fuzz_targets/scram.rs`) and the regular test `tests/fuzz_corpus.rs`, which
//! both include this file with `#[path]`.
//!
//! An input is the server-first message, a NUL byte, and the server-final message (text
//! read as the client reads it: UTF-8, invalid sequences replaced). Per input:
//! - the client never panics, whatever the messages;
//! - a refusal (of either message) is said in words that, in the error the caller shows,
//!   stay one line with no control character (a broker's `e=` text included);
//! - a client-final message is sent only for a server-first message with each of its
//!   attributes once, whose nonce extends ours, with a salt and an iteration count from
//!   4096 to 1,000,000, and it is
//!   `c=biws,r=<that nonce>,p=<a 32-byte proof in base64>`;
//! - a server-final message is accepted only if it carries `v=` once, with the server
//!   signature, and the same message with that signature changed in one character is
//!   refused.

use blocking_kafka::KafkaError;
use blocking_kafka::fuzzing::{SCRAM_NONCE, ScramOutcome, scram_sha256};

/// Checks every invariant for one input; true when the exchange was accepted to the end.
pub fn check(data: &[u8]) -> bool {
    let (first, last) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let server_first = String::from_utf8_lossy(first);
    let server_final = String::from_utf8_lossy(last);
    match scram_sha256(&server_first, &server_final) {
        ScramOutcome::Refused(reason) => {
            check_refusal(&reason);
            false
        }
        ScramOutcome::Answered {
            client_final,
            server_final: verdict,
        } => {
            check_client_final(&server_first, &client_final);
            match verdict {
                Ok(()) => {
                    check_forgery_refused(&server_first, &server_final);
                    true
                }
                Err(reason) => {
                    check_refusal(&reason);
                    false
                }
            }
        }
    }
}

/// The refusal as the caller shows it (`KafkaError::Authentication`): one line, no control
/// characters.
fn check_refusal(reason: &str) {
    assert!(!reason.is_empty(), "an empty refusal");
    let shown = KafkaError::Authentication {
        broker: "broker:9092".into(),
        user: "user".into(),
        mechanism: "SCRAM-SHA-256",
        message: reason.to_owned(),
    }
    .to_string();
    assert!(
        !shown.chars().any(char::is_control),
        "a refusal shown with a control character: {shown:?}"
    );
}

fn check_client_final(server_first: &str, client_final: &str) {
    let attribute = |name: &str| {
        let mut values = server_first.split(',').filter_map(|a| a.strip_prefix(name));
        match (values.next(), values.next()) {
            (Some(value), None) => value,
            _ => panic!("answered a server-first without exactly one {name}: {server_first:?}"),
        }
    };
    let nonce = attribute("r=");
    assert!(
        nonce.starts_with(SCRAM_NONCE) && nonce.len() > SCRAM_NONCE.len(),
        "answered a nonce that does not extend ours: {server_first:?}"
    );
    let iterations: u32 = attribute("i=")
        .parse()
        .unwrap_or_else(|_| panic!("answered a bad iteration count: {server_first:?}"));
    assert!(
        (4096..=1_000_000).contains(&iterations),
        "answered {iterations} iterations"
    );
    attribute("s=");
    let proof = client_final
        .strip_prefix(&format!("c=biws,r={nonce},p="))
        .unwrap_or_else(|| panic!("client-final {client_final:?} for {server_first:?}"));
    // 32 bytes in base64: 43 characters and one '='.
    assert!(
        proof.len() == 44
            && proof.ends_with('=')
            && proof[..43]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'),
        "proof {proof:?}"
    );
}

/// The accepted server-final message with its signature changed in one character (to
/// another base64 character): refused.
fn check_forgery_refused(server_first: &str, server_final: &str) {
    let start = server_final
        .split(',')
        .scan(0, |at, attribute| {
            let here = *at;
            *at += attribute.len() + 1;
            Some((here, attribute))
        })
        .find(|(_, a)| a.starts_with("v="))
        .map(|(at, _)| at + 2)
        .unwrap_or_else(|| panic!("accepted a server-final without v=: {server_final:?}"));
    let mut forged = server_final.to_owned();
    let first = &server_final[start..start + 1];
    forged.replace_range(start..start + 1, if first == "A" { "B" } else { "A" });
    match scram_sha256(server_first, &forged) {
        ScramOutcome::Answered {
            server_final: Err(_),
            ..
        } => {}
        other => panic!("a forged server-final {forged:?} was not refused: {other:?}"),
    }
}
