//! What the caller asks for: [`Config`] (libpq's connection parameters, by libpq's names,
//! plus the bounds this client adds), [`SslMode`], [`RootCerts`], [`ChannelBinding`] and
//! [`Password`] (zeroized, redacted in `Debug`, optionally read again from a file before
//! each login). Plain data: parsing a URL into it is the caller's business.
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use zeroize::Zeroizing;

/// Before authentication completes, no message may be longer than this: what a server
/// legitimately sends then (authentication requests, SASL data, an error) is a few hundred
/// bytes, and until the password exchange succeeds we may be talking to anyone.
pub const MAX_MESSAGE_LEN_BEFORE_AUTH: usize = 64 * 1024;

/// How a connection is made and authenticated. Field names follow libpq's parameters
/// (`sslmode`, `sslrootcert`, ...), and so do their defaults, except where noted.
#[derive(Debug)]
pub struct Config {
    /// The server's host name or IP address: connected to (unless `hostaddr` is set) and,
    /// with `sslmode=verify-full`, the name its certificate must carry.
    pub host: String,
    /// libpq's `hostaddr`: connect to this address instead of resolving `host`; `host`
    /// remains the name the certificate is checked against.
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    pub user: String,
    pub password: Option<Password>,
    /// The database; `None`: the server's default, a database named like the user.
    pub dbname: Option<String>,
    /// Shown in `pg_stat_activity` and the server's log lines.
    pub application_name: Option<String>,
    /// Command-line options for the session, e.g. `-c lock_timeout=5s -c search_path=app`.
    pub options: Option<String>,
    pub sslmode: SslMode,
    pub sslrootcert: RootCerts,
    /// Client certificate (PEM chain) for mutual TLS / `cert` authentication.
    pub sslcert: Option<PathBuf>,
    /// The client certificate's unencrypted private key (PEM: PKCS#8, PKCS#1 or SEC1).
    /// Like libpq, refused if group or others may read it (unless owned by root and only
    /// group-readable).
    pub sslkey: Option<PathBuf>,
    pub channel_binding: ChannelBinding,
    /// Limit for the TCP connection, TLS handshake, authentication and start-up together.
    /// libpq waits forever by default; we wait 10 s, since a worker must notice a dead
    /// server rather than hang.
    pub connect_timeout: Duration,
    /// Limit for each read and write once connected (a query waiting for a lock waits this
    /// long at most, then the connection is dropped). `None`: no limit, as in libpq.
    pub io_timeout: Option<Duration>,
    /// The longest message accepted once authenticated (a row, an error). Not libpq's:
    /// a server must not make us allocate what it likes. 64 MiB by default.
    pub max_message_len: usize,
    /// The most bytes of rows one query may return before it is refused (they are held in
    /// memory until the query completes). 64 MiB by default.
    pub max_result_bytes: usize,
    /// Send the password in clear when the server asks for it (`password` in pg_hba.conf)
    /// over a connection without TLS. Off by default, unlike libpq: on a plain connection
    /// anyone on the path can read it, and a man in the middle can ask for it whatever
    /// the real server's method is (see README "Security").
    pub allow_cleartext_password_without_tls: bool,
}

/// libpq's `sslmode`. `allow` (plaintext first, TLS if refused) is not supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, else plaintext; the certificate is checked only if a
    /// root certificate file exists (and then a failed check falls back to plaintext, as
    /// libpq does). The default, as in libpq.
    Prefer,
    /// TLS or nothing; the certificate is not checked, unless a root certificate file is
    /// given or exists at the default path, in which case this is `VerifyCa` (libpq's rule).
    Require,
    /// TLS, with a certificate signed by a trusted CA; any host name.
    VerifyCa,
    /// TLS, with a certificate signed by a trusted CA and naming `host`.
    VerifyFull,
}

/// libpq's `sslrootcert`: which CAs sign the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// Not set: libpq's default file `~/.postgresql/root.crt`, if it exists. If it does not,
    /// `verify-ca` and `verify-full` fail (as in libpq) and `prefer`/`require` check nothing.
    Default,
    /// A PEM file of CA certificates. It must exist.
    File(PathBuf),
    /// `sslrootcert=system`: the Mozilla roots compiled into the binary (a scratch image has
    /// no system store to read). As in libpq 16, only with `sslmode=verify-full`.
    System,
}

/// libpq's `channel_binding`: whether SCRAM must bind the authentication to the TLS
/// session (SCRAM-SHA-256-PLUS with `tls-server-end-point`), which proves that the server
/// that knows the password is the one whose certificate we see: a man in the middle with
/// a certificate of its own cannot relay the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never; plain SCRAM-SHA-256 even over TLS.
    Disable,
    /// When the connection is TLS and the server offers SCRAM-SHA-256-PLUS. The default.
    Prefer,
    /// Always: refuse any authentication other than SCRAM-SHA-256-PLUS (so also trust,
    /// MD5, cleartext and plaintext connections).
    Require,
}

/// A password. Its memory is wiped when dropped; `Debug` never shows it.
///
/// Taken from a file, it is read again before every login, so a secret rotated on disk (a
/// renewed Kubernetes secret) is used by the next connection without a restart; if the
/// file cannot be read then, the last password read is used and a warning says why.
pub struct Password {
    /// The last value read (or the value given).
    current: Mutex<Zeroizing<String>>,
    /// The file it is read from, if any.
    file: Option<PathBuf>,
}

impl Config {
    /// A configuration with libpq's defaults (port 5432, `sslmode=prefer`,
    /// `channel_binding=prefer`) and ours (10 s connect timeout, 64 MiB bounds).
    pub fn new(host: impl Into<String>, user: impl Into<String>) -> Config {
        Config {
            host: host.into(),
            hostaddr: None,
            port: 5432,
            user: user.into(),
            password: None,
            dbname: None,
            application_name: None,
            options: None,
            sslmode: SslMode::Prefer,
            sslrootcert: RootCerts::Default,
            sslcert: None,
            sslkey: None,
            channel_binding: ChannelBinding::Prefer,
            connect_timeout: Duration::from_secs(10),
            io_timeout: None,
            max_message_len: 64 * 1024 * 1024,
            max_result_bytes: 64 * 1024 * 1024,
            allow_cleartext_password_without_tls: false,
        }
    }

    /// "host:port", as errors name the server.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl SslMode {
    /// libpq's spelling: `disable`, `prefer`, `require`, `verify-ca`, `verify-full`.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Parses libpq's spelling; `None` for anything else (`allow` included).
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether the connection must be TLS.
    pub fn requires_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ChannelBinding {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }

    pub fn parse(s: &str) -> Option<ChannelBinding> {
        Some(match s {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            _ => return None,
        })
    }
}

impl Password {
    /// A password given as a value.
    pub fn new(value: impl Into<String>) -> Password {
        Password {
            current: Mutex::new(Zeroizing::new(value.into())),
            file: None,
        }
    }

    /// A password read from `file` now and again before each login. One trailing newline
    /// (`\n` or `\r\n`) is not part of it, as files written by `echo` end with one.
    pub fn from_file(file: impl Into<PathBuf>) -> Result<Password, String> {
        let file = file.into();
        let initial = read_password_file(&file)?;
        Ok(Password {
            current: Mutex::new(initial),
            file: Some(file),
        })
    }

    /// The password to log in with now: the file read again, if there is one.
    pub(crate) fn get(&self) -> Zeroizing<String> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(file) = &self.file {
            match read_password_file(file) {
                Ok(value) => {
                    if *value != **current {
                        log::info!("Using the new PostgreSQL password from {}", file.display());
                        *current = value;
                    }
                }
                Err(reason) => log::warn!(
                    "Cannot read the PostgreSQL password file {} ({reason}); using the password read before",
                    file.display()
                ),
            }
        }
        current.clone()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "Password(<redacted>, from file {})", file.display()),
            None => f.write_str("Password(<redacted>)"),
        }
    }
}

fn read_password_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| e.to_string())?);
    let text = std::str::from_utf8(&bytes).map_err(|_| "it is not UTF-8 text".to_owned())?;
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    Ok(Zeroizing::new(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows_in_debug() {
        let mut config = Config::new("db", "app");
        config.password = Some(Password::new("hunter2"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("Password(<redacted>)"), "{shown}");
    }

    #[test]
    fn a_password_file_is_read_again_and_loses_one_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "first\n").expect("write");
        let password = Password::from_file(&path).expect("readable");
        assert_eq!(password.get().as_str(), "first");
        std::fs::write(&path, "second\r\n").expect("write");
        assert_eq!(password.get().as_str(), "second");
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(
            password.get().as_str(),
            "second",
            "the last one read is kept"
        );
        assert!(format!("{password:?}").contains("from file"));
    }

    #[test]
    fn sslmodes_parse_as_libpq_spells_them() {
        for mode in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(SslMode::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(SslMode::parse("allow"), None);
        assert_eq!(Config::new("::1", "u").addr(), "[::1]:5432");
    }
}
