//! What the caller asks of TLS and SASL, and what a connection negotiated: the settings
//! `Security::new` is built from (`TlsSettings`, `SaslSettings` with its `Password`), the
//! errors of files that cannot be used (`SecurityError`), and `SessionInfo` and
//! `TlsFilesInfo` for `check`.
//! Plain data: the bottom of `net`, importing nothing of the crate but `printable`.
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// How long a connection waits: to be set up (TCP connect and TLS handshake, Kafka's
/// `socket.connection.setup.timeout.ms`) and for each answer (`request.timeout.ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect and TLS handshake.
    pub connect: Duration,
    /// Every request (long-polls and group joins add the time the broker may hold them).
    pub request: Duration,
}

use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::error::printable;

/// What `Security::new` needs for TLS (`KAFKA_SSL_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// A PEM file (or bundle) of CAs to trust; `None`: the compiled-in Mozilla roots.
    pub ca_location: Option<PathBuf>,
    /// Client certificate chain and key, for mutual TLS.
    pub client_identity: Option<ClientIdentity>,
    /// Whether the broker's certificate must name the host we connect to.
    pub verify_hostname: bool,
}

/// The client's certificate and key, for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// A PEM file of the client certificate chain, the client's own certificate first.
    pub certificate_location: PathBuf,
    /// A PEM file of its unencrypted private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key_location: PathBuf,
}

/// What `Security::new` needs for SASL (`KAFKA_SASL_*`).
#[derive(Debug)]
pub struct SaslSettings {
    /// How to authenticate.
    pub mechanism: SaslMechanism,
    /// Who to authenticate as.
    pub username: String,
    /// The password, read again before each authentication when it comes from a file.
    pub password: Password,
}

/// The SASL mechanisms the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// PLAIN: the password itself, so only over TLS outside a test.
    Plain,
    /// SCRAM-SHA-256 (RFC 5802, RFC 7677): a proof, never the password.
    ScramSha256,
    /// SCRAM-SHA-512.
    ScramSha512,
}

/// The SASL password. `Debug` never shows it, and every copy of it this crate makes is
/// wiped from memory when dropped (`Zeroizing`).
///
/// Taken from a file, it is read again before every authentication (each new connection and
/// each re-authentication), so a secret rotated on disk (a renewed Kubernetes secret, a
/// systemd credential) is used without a restart. If the file cannot be read at that moment
/// (a rotation that replaces it non-atomically), the last password read is used and a
/// warning says why.
pub struct Password {
    /// The last value read (or the value of `KAFKA_SASL_PASSWORD`).
    current: Mutex<Zeroizing<String>>,
    /// `KAFKA_SASL_PASSWORD_FILE`, if the password came from a file.
    file: Option<PathBuf>,
}

/// A TLS file that cannot be used: a configuration error (exit code 2), reported before the
/// program connects anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityError {
    /// `KAFKA_SSL_CA_LOCATION` cannot be read or holds no usable certificate.
    CaLocation {
        /// The file (`TlsSettings::ca_location`).
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// `KAFKA_SSL_CERTIFICATE_LOCATION` cannot be read or holds no certificate.
    CertificateLocation {
        /// The file (`ClientIdentity::certificate_location`).
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// `KAFKA_SSL_KEY_LOCATION` cannot be read or holds no usable key.
    KeyLocation {
        /// The file (`ClientIdentity::key_location`).
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The certificate and the key do not belong together, or rustls refuses them.
    ClientIdentity {
        /// rustls' reason.
        detail: String,
    },
}

/// What one connection negotiated, for `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    pub protocol: &'static str,
    /// The TLS session; `None` on plain TCP.
    pub tls: Option<TlsSessionInfo>,
    /// (user, mechanism) once authenticated.
    pub sasl: Option<(String, &'static str)>,
    /// The session lifetime the broker set (KIP-368), if any.
    pub sasl_session_lifetime_ms: Option<i64>,
}

/// What a TLS session negotiated and whom it talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSessionInfo {
    /// "TLS 1.3" or "TLS 1.2".
    pub version: String,
    /// The IANA name of the cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// The broker certificate's subject, e.g. `CN=kafka-1.example.com, O=Example`.
    pub subject: String,
    /// The broker certificate's notAfter, e.g. `2027-03-01 12:00:00 UTC`.
    pub not_after: String,
    /// The client certificate this connection offered (mutual TLS), as
    /// `CN=..., O=... (expires 2027-03-01 12:00:00 UTC; names ...)`: the one in use after a
    /// rotation.
    pub client_certificate: Option<String>,
}

/// What the TLS files in use hold, for `check`: as new connections use them (read again
/// first if they changed). Escaped, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFilesInfo {
    /// The CAs of `KAFKA_SSL_CA_LOCATION`: `CN=Example CA (expires 2030-01-01 00:00:00 UTC)`,
    /// or for a bundle `3 CAs, the first to expire CN=...`; `None`: the built-in roots.
    pub trusted: Option<String>,
    /// Our certificate (mutual TLS): `CN=worker, O=Example (expires ...; names worker.example)`.
    pub client_certificate: Option<String>,
}

impl SaslMechanism {
    /// The name as Kafka spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl Password {
    /// A password given as a value (`KAFKA_SASL_PASSWORD`).
    pub fn fixed(value: String) -> Password {
        Password {
            current: Mutex::new(Zeroizing::new(value)),
            file: None,
        }
    }

    /// A password read from `file` (`KAFKA_SASL_PASSWORD_FILE`); `initial` is what was read
    /// at start, when the configuration was checked.
    pub fn from_file(file: PathBuf, initial: String) -> Password {
        Password {
            current: Mutex::new(Zeroizing::new(initial)),
            file: Some(file),
        }
    }

    /// The password to authenticate with now: the file read again, if there is one. A copy
    /// that is wiped when dropped.
    pub(crate) fn get(&self) -> Zeroizing<String> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(file) = &self.file {
            match read_password_file(file) {
                Ok(value) => {
                    if value != *current {
                        log::info!(
                            "Using the new SASL password from KAFKA_SASL_PASSWORD_FILE={}",
                            file.display()
                        );
                        // (The old value is wiped as it is dropped.)
                        *current = value;
                    }
                }
                Err(reason) => log::warn!(
                    "Cannot read KAFKA_SASL_PASSWORD_FILE={} ({reason}); using the password read before",
                    file.display()
                ),
            }
        }
        current.clone()
    }
}

/// The password is held in `Zeroizing` only.
impl ZeroizeOnDrop for Password {}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "Password(<redacted>, from file {})", file.display()),
            None => f.write_str("Password(<redacted>)"),
        }
    }
}

impl fmt::Display for SecurityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecurityError::CaLocation { path, detail } => write!(
                f,
                "cannot use KAFKA_SSL_CA_LOCATION={}: {detail} (point it at a PEM file of CA certificates, or unset it to trust the built-in Mozilla roots)",
                path.display()
            ),
            SecurityError::CertificateLocation { path, detail } => write!(
                f,
                "cannot use KAFKA_SSL_CERTIFICATE_LOCATION={}: {detail} (point it at the client certificate chain in PEM)",
                path.display()
            ),
            SecurityError::KeyLocation { path, detail } => write!(
                f,
                "cannot use KAFKA_SSL_KEY_LOCATION={}: {detail} (point it at the client certificate's unencrypted private key in PEM: PKCS#8, RSA or EC)",
                path.display()
            ),
            SecurityError::ClientIdentity { detail } => write!(
                f,
                "cannot use KAFKA_SSL_CERTIFICATE_LOCATION with KAFKA_SSL_KEY_LOCATION: {detail} (the key must be the certificate's own private key)"
            ),
        }
    }
}

impl std::error::Error for SecurityError {}

impl fmt::Display for SessionInfo {
    /// "SASL_SSL: TLS 1.3, TLS13_AES_256_GCM_SHA384, broker certificate CN=... (expires ...),
    /// authenticated as alice with SCRAM-SHA-512", through [`printable`]: the certificate's
    /// names are the broker's text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        self.write_unescaped(&mut text)?;
        f.write_str(&printable(&text))
    }
}

impl SessionInfo {
    fn write_unescaped(&self, f: &mut String) -> fmt::Result {
        use std::fmt::Write as _;
        write!(f, "{}", self.protocol)?;
        let mut parts = Vec::new();
        match &self.tls {
            Some(t) => {
                parts.push(format!(
                    "{}, {}, broker certificate {} (expires {})",
                    t.version, t.cipher_suite, t.subject, t.not_after
                ));
                if let Some(ours) = &t.client_certificate {
                    parts.push(format!("client certificate {ours}"));
                }
            }
            None => parts.push("no TLS".to_owned()),
        }
        match &self.sasl {
            Some((user, mechanism)) => {
                let mut s = format!("authenticated as {user} with {mechanism}");
                if let Some(ms) = self.sasl_session_lifetime_ms {
                    s.push_str(&format!(
                        " (session lifetime {} s, re-authenticated before it ends)",
                        ms / 1000
                    ));
                }
                parts.push(s);
            }
            None => parts.push("no SASL".to_owned()),
        }
        write!(f, ": {}", parts.join(", "))
    }
}

/// Reads the password file; a trailing newline (as `echo` or an editor writes) is not part
/// of the password. The file's bytes and the password are wiped when dropped.
fn read_password_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| e.to_string())?);
    let text = std::str::from_utf8(&bytes).map_err(|_| "it is not UTF-8 text".to_owned())?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err("it is empty".to_owned());
    }
    Ok(Zeroizing::new(password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_and_its_copies_are_wiped_when_dropped() {
        fn wiped_on_drop<T: ZeroizeOnDrop>(_: &T) {}
        let p = Password::fixed("hunter2".into());
        wiped_on_drop(&p);
        // Each login's copy.
        wiped_on_drop(&p.get());
    }

    #[test]
    fn a_password_file_is_read_again_and_a_vanished_file_keeps_the_last_password() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("password");
        std::fs::write(&file, "first\n").expect("write");
        let p = Password::from_file(file.clone(), "first".into());
        assert_eq!(*p.get(), "first");
        std::fs::write(&file, "second\r\n").expect("write");
        assert_eq!(*p.get(), "second");
        std::fs::remove_file(&file).expect("remove");
        assert_eq!(*p.get(), "second");
        std::fs::write(&file, "").expect("write");
        assert_eq!(*p.get(), "second", "an empty file is not a password");
    }
}
