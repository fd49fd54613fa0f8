//! Entry points for the fuzz targets (`fuzz/` at the repository's root) and for the tests
//! that run their seed corpora in every `cargo test`: the code that reads what a peer or a
//! file controls, reached without making it part of the API. Hidden from the
//! documentation; not for other use, and free to change.
//!
//! - SCRAM: the client's reading of the server-first and server-final messages
//!   ([`scram_sha256`]), with a fixed user, nonce and password (RFC 7677's).
//! - Certificates: the DER reader behind `check`'s subject and expiry
//!   ([`certificate_subject_and_expiry`], [`certificate_description`], [`session_line`]), and the PEM readers of the CA,
//!   certificate and key files ([`read_certificates_pem`], [`read_key_pem`]).
use std::path::Path;

use crate::net::scram::ScramClient;
use crate::net::settings::{SessionInfo, TlsSessionInfo};
use crate::net::tls;

/// The user name [`scram_sha256`] authenticates as.
pub const SCRAM_USER: &str = "user";
/// The client nonce [`scram_sha256`] sends (RFC 7677's test vector).
pub const SCRAM_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
/// The password [`scram_sha256`] proves (RFC 7677's).
pub const SCRAM_PASSWORD: &str = "pencil";

/// How the SCRAM-SHA-256 client answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramOutcome {
    /// The server-first message was refused, in the client's words.
    Refused(String),
    /// The client-final message sent, and whether the server-final message was accepted
    /// (else the client's words).
    Answered {
        /// `c=biws,r=<nonce>,p=<proof>`.
        client_final: String,
        /// The verdict on the server-final message.
        server_final: Result<(), String>,
    },
}

/// Runs the client side of one SCRAM-SHA-256 exchange ([`SCRAM_USER`], [`SCRAM_NONCE`],
/// [`SCRAM_PASSWORD`]) against these two server messages.
pub fn scram_sha256(server_first: &str, server_final: &str) -> ScramOutcome {
    let client = ScramClient::<sha2::Sha256>::new(SCRAM_USER, SCRAM_NONCE);
    match client.final_message(SCRAM_PASSWORD, server_first) {
        Err(e) => ScramOutcome::Refused(e),
        Ok((client_final, expected)) => ScramOutcome::Answered {
            client_final: client_final.to_string(),
            server_final: ScramClient::<sha2::Sha256>::verify_server_final(server_final, &expected),
        },
    }
}

/// The subject and expiry `check` shows for a certificate in DER; `None` when it does not
/// read as one.
pub fn certificate_subject_and_expiry(der: &[u8]) -> Option<(String, String)> {
    tls::der::subject_and_expiry(der)
}

/// How `check` and the log show a certificate of ours or a CA: subject, expiry and
/// alternative names, escaped.
pub fn certificate_description(der: &[u8]) -> String {
    tls::describe_certificate(der)
}

/// How `check` shows a session with a broker that presented the certificate `der` (through
/// `SessionInfo`'s `Display`, as the operator sees it).
pub fn session_line(der: &[u8]) -> String {
    let (subject, not_after) = certificate_subject_and_expiry(der)
        .unwrap_or_else(|| ("(unreadable)".to_owned(), "(unknown)".to_owned()));
    SessionInfo {
        protocol: "SSL",
        tls: Some(TlsSessionInfo {
            version: "TLS 1.3".to_owned(),
            cipher_suite: "TLS13_AES_256_GCM_SHA384".to_owned(),
            subject,
            not_after,
            client_certificate: None,
        }),
        sasl: None,
        sasl_session_lifetime_ms: None,
    }
    .to_string()
}

/// A CA or certificate file's contents read as the client reads them: how many
/// certificates, or why none can be used.
pub fn read_certificates_pem(pem: &[u8]) -> Result<usize, String> {
    tls::parse_certificates(pem).map(|certs| certs.len())
}

/// A key file's contents read as the client reads them (named `KEY` in the error).
pub fn read_key_pem(pem: &[u8]) -> Result<(), String> {
    tls::parse_key(pem, Path::new("KEY")).map(drop)
}
