//! TLS for Kafka connections, on rustls with the ring provider.
//!
//! `TlsContext` is built from the `KAFKA_SSL_*` settings (trust roots, the client identity
//! for mutual TLS, whether the host name is checked) and shared by every connection.
//! `TlsContext::connect` runs the handshake on a connected socket under the connection's
//! deadline and turns rustls' errors into sentences an operator can act on.
//!
//! Certificates rotate on their own on edge hosts (cert-manager, ACME clients, Vault
//! agents), so the files are not only read at start: before each new connection their
//! state (modification time, size, inode) is compared with what the configuration was
//! built from, and when it changed they are read again. New connections use the new
//! configuration; open ones keep theirs. Files that do not make a configuration (a rotation
//! half done, a bad file) leave the last good one in use, said once per change. A `stat` of
//! two or three files per new connection costs nothing beside a TLS handshake, and needs
//! no watcher thread.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::ring as provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, RootCertStore, StreamOwned,
};
use tls_common::{ChainOnlyVerifier, Session, alert_words, presented_name};

use crate::error::KafkaError;
use crate::net::settings::{SecurityError, TlsFilesInfo, TlsSessionInfo, TlsSettings};

/// The rustls client configuration the connections of one client share, read again from
/// its files when they change. Its `Debug` shows the settings, never the configuration
/// itself (which holds the client's key).
pub(crate) struct TlsContext {
    settings: TlsSettings,
    /// What new connections use; replaced when the files change and make a good one.
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("verify_hostname", &self.settings.verify_hostname)
            .field(
                "has_client_identity",
                &self.settings.client_identity.is_some(),
            )
            .finish_non_exhaustive()
    }
}

/// A TLS session over one TCP connection, with the client certificate it offered.
pub(crate) struct TlsStream {
    stream: StreamOwned<ClientConnection, TcpStream>,
    /// "CN=..., O=... (expires ...)" of our certificate; `None` without mutual TLS.
    client_certificate: Option<Arc<str>>,
}

/// Read and write through either stream type, so `conn` holds one of two.
pub(crate) type Stream = tls_common::Stream<TlsStream>;

/// A configuration built from the files, and the files' state it was built from.
struct Loaded {
    /// What new connections use, and what it holds.
    built: Built,
    /// The CA, certificate and key files' state when `built` was read from them.
    files: Vec<FileState>,
    /// The files' state when they last failed to make a configuration: that was said, and
    /// is not again until they change once more.
    failed: Option<Vec<FileState>>,
}

/// A client configuration read from the files, with what `check` shows of them.
#[derive(Clone)]
struct Built {
    config: Arc<ClientConfig>,
    /// Our certificate's subject, names and expiry (`None` without mutual TLS).
    client_certificate: Option<Arc<str>>,
    /// The CAs of `KAFKA_SSL_CA_LOCATION` (`None`: the built-in roots).
    trusted: Option<Arc<str>>,
}

/// What changes when a file is replaced or rewritten; `None` when it cannot be looked at
/// (mid-rotation), which counts as a change too.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileState(Option<(SystemTime, u64, u64)>);

/// What [`TlsContext::refresh`] found.
#[derive(Debug)]
enum Refresh {
    /// The files are as they were (or as they were when they last failed).
    Unchanged,
    /// They changed and make a good configuration, now in use: our certificate, if any.
    Reloaded(Option<Arc<str>>),
    /// They changed and make none: the last good configuration stays in use.
    Failed(SecurityError),
}

impl TlsContext {
    /// Reads and checks the files: an error names the variable and the file.
    pub(crate) fn new(settings: &TlsSettings) -> Result<TlsContext, SecurityError> {
        let files = file_states(settings);
        let built = build(settings)?;
        Ok(TlsContext {
            settings: settings.clone(),
            loaded: Mutex::new(Loaded {
                built,
                files,
                failed: None,
            }),
        })
    }

    /// What the files in use hold (read again first if they changed), for `check`.
    pub(crate) fn files_info(&self) -> TlsFilesInfo {
        let built = self.current();
        TlsFilesInfo {
            trusted: built.trusted.as_deref().map(str::to_owned),
            client_certificate: built.client_certificate.as_deref().map(str::to_owned),
        }
    }

    /// The configuration (and what it holds) for a new connection: the files read again
    /// first if they changed.
    fn current(&self) -> Built {
        match self.refresh() {
            Refresh::Unchanged => {}
            Refresh::Reloaded(certificate) => log::info!(
                "The TLS files changed; new Kafka connections use them{}",
                certificate
                    .map(|c| format!(" (client certificate {c})"))
                    .unwrap_or_default()
            ),
            Refresh::Failed(e) => log::error!(
                "The TLS files changed but cannot be used: {e}; new Kafka connections keep the ones read before (said once per change)"
            ),
        }
        self.lock().built.clone()
    }

    /// Reads the files again if their state changed since they were last read (or last
    /// failed).
    fn refresh(&self) -> Refresh {
        let mut loaded = self.lock();
        // The state is taken before the files are read: a change while they are read shows
        // as a change at the next connection, and they are read once more.
        let now = file_states(&self.settings);
        if now == loaded.files || loaded.failed.as_ref() == Some(&now) {
            return Refresh::Unchanged;
        }
        match build(&self.settings) {
            Ok(built) => {
                let client_certificate = built.client_certificate.clone();
                *loaded = Loaded {
                    built,
                    files: now,
                    failed: None,
                };
                Refresh::Reloaded(client_certificate)
            }
            Err(e) => {
                loaded.failed = Some(now);
                Refresh::Failed(e)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        // Every update replaces whole values; a panic elsewhere leaves it consistent.
        self.loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The state of the files a configuration is read from, in a fixed order.
fn file_states(settings: &TlsSettings) -> Vec<FileState> {
    let mut paths: Vec<&Path> = Vec::new();
    paths.extend(settings.ca_location.as_deref());
    if let Some(id) = &settings.client_identity {
        paths.push(&id.certificate_location);
        paths.push(&id.key_location);
    }
    paths.into_iter().map(file_state).collect()
}

fn file_state(path: &Path) -> FileState {
    // The file a symbolic link points to: Kubernetes swaps a link to rotate a secret.
    let Ok(meta) = std::fs::metadata(path) else {
        return FileState(None);
    };
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    FileState(
        meta.modified()
            .ok()
            .map(|modified| (modified, meta.len(), inode)),
    )
}

/// A client configuration from the settings' files, and what `check` shows of them.
fn build(settings: &TlsSettings) -> Result<Built, SecurityError> {
    let mut trusted = None;
    let roots = match &settings.ca_location {
        Some(path) => {
            let fail = |detail: String| SecurityError::CaLocation {
                path: path.clone(),
                detail,
            };
            let certs = tls_common::read_certificates(path, pem_problem).map_err(fail)?;
            let description = describe_cas(&certs);
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(fail(format!(
                    "none of its {ignored} certificate(s) can be used as a trust anchor"
                )));
            }
            trusted = Some(description);
            roots
        }
        // Mozilla's roots, compiled in: a scratch image has no system store to read.
        None => RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    };
    let provider = Arc::new(provider::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SecurityError::ClientIdentity {
            detail: e.to_string(),
        })?;
    let builder = if settings.verify_hostname {
        builder.with_root_certificates(roots)
    } else {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| SecurityError::CaLocation {
                path: settings.ca_location.clone().unwrap_or_default(),
                detail: e.to_string(),
            })?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnlyVerifier::new(inner)))
    };
    let mut client_certificate = None;
    let config = match &settings.client_identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = tls_common::read_certificates(&id.certificate_location, pem_problem)
                .map_err(|detail| SecurityError::CertificateLocation {
                    path: id.certificate_location.clone(),
                    detail,
                })?;
            client_certificate = chain.first().map(|c| describe(c.as_ref()));
            let key = read_key(&id.key_location).map_err(|detail| SecurityError::KeyLocation {
                path: id.key_location.clone(),
                detail,
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                SecurityError::ClientIdentity {
                    detail: e.to_string(),
                }
            })?
        }
    };
    Ok(Built {
        config: Arc::new(config),
        client_certificate,
        trusted,
    })
}

/// "CN=..., O=... (expires ...; names a.example, 10.0.0.1)" of a certificate, escaped: it
/// is a file's text (or a peer's), shown on one line.
fn describe(der: &[u8]) -> Arc<str> {
    Arc::from(describe_certificate(der))
}

/// See [`describe`] (the fuzz target's entry too).
pub(crate) fn describe_certificate(der: &[u8]) -> String {
    /// Names shown; a certificate for hundreds of hosts would fill the screen.
    const SHOWN: usize = 8;
    let text = match der::facts(der) {
        None => "(unreadable) (expires (unknown))".to_owned(),
        Some(f) if f.names.is_empty() => format!("{} (expires {})", f.subject, f.not_after),
        Some(f) => {
            let mut names = f.names[..f.names.len().min(SHOWN)].join(", ");
            if f.names.len() > SHOWN {
                names.push_str(&format!(" and {} more", f.names.len() - SHOWN));
            }
            format!("{} (expires {}; names {names})", f.subject, f.not_after)
        }
    };
    crate::error::printable(&text).into_owned()
}

/// The CAs of a CA file, for `check`: the one as [`describe`] shows it, or for a bundle how
/// many and the first to expire (the one to renew first).
fn describe_cas(certs: &[CertificateDer<'_>]) -> Arc<str> {
    if let [one] = certs {
        return describe(one.as_ref());
    }
    // "YYYY-MM-DD HH:MM:SS UTC" sorts as it reads.
    let first = certs
        .iter()
        .filter_map(|c| der::facts(c.as_ref()).map(|f| (f.not_after, c)))
        .min_by(|a, b| a.0.cmp(&b.0));
    Arc::from(match first {
        Some((_, c)) => format!(
            "{} CAs, the first to expire {}",
            certs.len(),
            describe_certificate(c.as_ref())
        ),
        None => format!("{} CAs", certs.len()),
    })
}

impl TlsContext {
    pub(crate) fn verify_hostname(&self) -> bool {
        self.settings.verify_hostname
    }

    /// Runs the TLS handshake on `tcp` (whose read and write deadlines are already set).
    /// `addr` is "host:port"; the host is what the certificate must name.
    pub(crate) fn connect(
        &self,
        tcp: TcpStream,
        addr: &str,
        timeout: Duration,
    ) -> Result<TlsStream, KafkaError> {
        let host = host_of(addr);
        let name = ServerName::try_from(host.to_owned()).map_err(|_| KafkaError::Tls {
            broker: addr.to_owned(),
            reason: format!("{host} is neither a host name nor an IP address"),
        })?;
        let Built {
            config,
            client_certificate,
            ..
        } = self.current();
        let conn = ClientConnection::new(config, name).map_err(|e| KafkaError::Tls {
            broker: addr.to_owned(),
            reason: e.to_string(),
        })?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                return Err(self.failure(addr, "TLS handshake", timeout, e, true));
            }
        }
        Ok(TlsStream {
            stream,
            client_certificate,
        })
    }

    /// Turns an error of a TLS stream into a `KafkaError`: rustls' own errors (a bad
    /// certificate, an alert from the broker) into `Tls` or `WrongProtocol` in words, socket
    /// errors into `Io`/`Timeout` as on a plain connection. `handshake`: the error happened
    /// before the session was set up.
    pub(crate) fn failure(
        &self,
        addr: &str,
        what: &'static str,
        timeout: Duration,
        e: std::io::Error,
        handshake: bool,
    ) -> KafkaError {
        let tls = |reason: String| KafkaError::Tls {
            broker: addr.to_owned(),
            reason,
        };
        let host = host_of(addr);
        let Some(rustls_error) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            // Socket errors stay outages (retried): a broker that is restarting also hangs
            // up mid-handshake. They only carry the likelier explanation along.
            return match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    KafkaError::Timeout {
                        broker: addr.to_owned(),
                        what: if handshake {
                            "the TLS handshake (if it is a plaintext listener, set KAFKA_SECURITY_PROTOCOL=PLAINTEXT or SASL_PLAINTEXT)"
                        } else {
                            what
                        },
                        after: timeout,
                    }
                }
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                    if handshake =>
                {
                    KafkaError::Io {
                        broker: addr.to_owned(),
                        what: "the TLS handshake",
                        source: std::io::Error::new(
                            e.kind(),
                            format!(
                                "{e}; if it is a plaintext listener, set KAFKA_SECURITY_PROTOCOL=PLAINTEXT or SASL_PLAINTEXT"
                            ),
                        ),
                    }
                }
                _ => KafkaError::Io {
                    broker: addr.to_owned(),
                    what,
                    source: e,
                },
            };
        };
        match rustls_error {
            rustls::Error::InvalidCertificate(c) => tls(certificate_problem(c, host)),
            rustls::Error::AlertReceived(alert) => match alert {
                AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure
                    if self.settings.client_identity.is_none() =>
                {
                    tls(format!(
                        "the broker at {addr} requires a client certificate (mutual TLS) and none is configured: set KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION"
                    ))
                }
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::AccessDenied
                | AlertDescription::CertificateRequired
                | AlertDescription::HandshakeFailure => tls(format!(
                    "the broker at {addr} refused our client certificate (alert: {}): check that KAFKA_SSL_CERTIFICATE_LOCATION holds a certificate the broker's CA signed, and that it has not expired",
                    alert_words(*alert)
                )),
                // OpenSSL's answer to a client certificate whose issuer has the name of a
                // trusted CA but not its key.
                AlertDescription::DecryptError if self.settings.client_identity.is_some() => {
                    tls(format!(
                        "the broker at {addr} refused our client certificate (alert: decrypt error): check that KAFKA_SSL_CERTIFICATE_LOCATION holds a certificate the broker's CA signed"
                    ))
                }
                AlertDescription::ProtocolVersion => tls(format!(
                    "the broker at {addr} speaks no TLS version we do (we speak TLS 1.2 and 1.3)"
                )),
                other => tls(format!(
                    "the broker at {addr} ended the TLS session (alert: {})",
                    alert_words(*other)
                )),
            },
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. }
                if handshake =>
            {
                KafkaError::WrongProtocol {
                    broker: addr.to_owned(),
                    reason: format!(
                        "Kafka broker {addr} did not answer in TLS ({rustls_error}): if it is a plaintext listener, set KAFKA_SECURITY_PROTOCOL=PLAINTEXT (or SASL_PLAINTEXT)"
                    ),
                }
            }
            other => tls(format!("connection to {addr}: {other}")),
        }
    }
}

/// What the session negotiated, whom it talks to and with which certificate of ours, for
/// `check`.
pub(crate) fn session_info(session: &TlsStream) -> TlsSessionInfo {
    let conn = &session.stream.conn;
    let (version, cipher_suite) = tls_common::version_and_cipher_suite(conn);
    let (subject, not_after) = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| der::subject_and_expiry(cert.as_ref()))
        .unwrap_or_else(|| ("(unreadable)".to_owned(), "(unknown)".to_owned()));
    TlsSessionInfo {
        version,
        cipher_suite,
        subject,
        not_after,
        client_certificate: session.client_certificate.as_deref().map(str::to_owned),
    }
}

/// Whether a TLS server answers at `addr`: a handshake on a fresh connection that trusts no
/// CA, so it can only fail, but a certificate refusal (or any TLS alert) proves that TLS is
/// spoken there. Only asked after a plaintext request was hung up on, to explain it; nothing
/// is sent over this connection beyond the handshake.
pub(crate) fn speaks_tls(addr: &str, timeout: Duration) -> bool {
    let probe = || -> Option<bool> {
        let tcp = TcpStream::connect(
            std::net::ToSocketAddrs::to_socket_addrs(addr)
                .ok()?
                .next()?,
        )
        .ok()?;
        let limit = Some(timeout.min(Duration::from_secs(2)));
        tcp.set_read_timeout(limit).ok()?;
        tcp.set_write_timeout(limit).ok()?;
        let config = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let name = ServerName::try_from(host_of(addr).to_owned()).ok()?;
        let conn = ClientConnection::new(Arc::new(config), name).ok()?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                let rustls_error = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>());
                return Some(matches!(
                    rustls_error,
                    Some(rustls::Error::InvalidCertificate(_) | rustls::Error::AlertReceived(_))
                ));
            }
        }
        Some(true)
    };
    probe().unwrap_or(false)
}

/// Whether the first bytes a plaintext client read look like a TLS record (an alert or a
/// handshake): the broker expects TLS.
pub(crate) fn looks_like_tls(first: &[u8]) -> bool {
    matches!(first, [0x15 | 0x16, 0x03, 0x00..=0x04, ..])
}

/// "host" of "host:port" (and of "\[v6\]:port").
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The certificates of a PEM file's contents (the fuzz target's entry too).
pub(crate) fn parse_certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    tls_common::parse_certificates(bytes, pem_problem)
}

/// Reads the key file; its bytes are wiped once the key is decoded from them. (The decoded
/// key goes to rustls, which keeps it in its own form for signing: see README "Security".)
fn read_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| e.to_string())?);
    parse_key(&bytes, path)
}

/// The key in a PEM file's contents; `path` only names it in the error (the fuzz target's
/// entry too).
pub(crate) fn parse_key(bytes: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    // PKCS#8 ("ENCRYPTED PRIVATE KEY") or the legacy OpenSSL form ("RSA PRIVATE KEY" or
    // "EC PRIVATE KEY" with a "Proc-Type: 4,ENCRYPTED" header, whose base64 decoder would
    // otherwise stop at the header's colon). `openssl pkey` decrypts all three (checked
    // with OpenSSL 3 by tests/security.rs) and writes PKCS#8.
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    if contains(b"ENCRYPTED PRIVATE KEY") || contains(b"Proc-Type: 4,ENCRYPTED") {
        let p = path.display();
        return Err(format!(
            "encrypted keys are not supported, decrypt it with `openssl pkey -in {p} -out {p}.dec` (which asks for its passphrase) and keep the result readable by this user only"
        ));
    }
    tls_common::parse_key(bytes, pem_problem)
}

/// A PEM reading error in words. The PEM reader's own text shows the lines it stumbled on
/// as lists of byte values, however long (found by the fuzz target: 533 bytes for one
/// line); here a marker line is shown as text, cut short and escaped.
fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    let shown = |line: &[u8]| {
        // Escaped first, then cut: an escape can be six characters for one byte.
        let text = crate::error::printable(&String::from_utf8_lossy(line)).into_owned();
        let mut cut: String = text.chars().take(64).collect();
        if cut.len() < text.len() {
            cut.push_str("...");
        }
        cut
    };
    match e {
        Error::MissingSectionEnd { end_marker } => {
            format!("a PEM section has no {} line", shown(end_marker))
        }
        Error::IllegalSectionStart { line } => {
            format!("a malformed PEM BEGIN line: {}", shown(line))
        }
        Error::Base64Decode(detail) => format!("a PEM section is not base64: {detail}"),
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM section in it".to_owned(),
        Error::SectionTooLarge => "a PEM section is larger than 256 MB".to_owned(),
        other => format!("{other:?}").chars().take(80).collect(),
    }
}

/// The certificate problem in words, naming the host and what to do.
///
/// A name mismatch lists the names the certificate has, not the switch that turns the check
/// off: operators paste such hints into production.
fn certificate_problem(e: &CertificateError, host: &str) -> String {
    match e {
        CertificateError::NotValidForName => format!(
            "the broker's certificate is not valid for {host}: connect by a name it has in KAFKA_BOOTSTRAP_SERVERS and in the brokers' advertised listeners, or have the broker's certificate issued for {host}"
        ),
        CertificateError::NotValidForNameContext { presented, .. } => {
            let names: Vec<&str> = presented.iter().map(|n| presented_name(n)).collect();
            if names.is_empty() {
                return format!(
                    "the broker's certificate has no subject alternative names, so it is valid for no host name, {host} included (the subject's CN is not used): have it issued with a subject alternative name for {host}"
                );
            }
            let names = names.join(", ");
            format!(
                "certificate for {names} is not valid for {host}: connect by a name it has ({names}) in KAFKA_BOOTSTRAP_SERVERS and in the brokers' advertised listeners, or have the broker's certificate issued for {host}"
            )
        }
        CertificateError::UnknownIssuer => format!(
            "the certificate of {host} is not signed by a trusted CA: set KAFKA_SSL_CA_LOCATION to the PEM file of the CA that signed the broker's certificate"
        ),
        CertificateError::Expired => {
            format!("the certificate of {host} has expired: the broker's operator must renew it")
        }
        CertificateError::ExpiredContext { time, not_after } => format!(
            "the certificate of {host} expired on {} (now {}): the broker's operator must renew it",
            der::format_unix(not_after.as_secs()),
            der::format_unix(time.as_secs())
        ),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "the certificate of {host} is valid only from {} (now {}): check this host's clock",
            der::format_unix(not_before.as_secs()),
            der::format_unix(time.as_secs())
        ),
        // Not valid yet, a bad signature, the wrong key usage: nothing Kafka's to advise.
        other => tls_common::certificate_problem(other, host),
    }
}

/// Session for [`TlsStream`]: `Stream::tls` hands out the whole wrapper, for the client
/// certificate `check` shows.
impl Session for TlsStream {
    type State = TlsStream;

    fn tcp(&self) -> &TcpStream {
        &self.stream.sock
    }

    fn state(&self) -> &TlsStream {
        self
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// Just enough DER to show a certificate's subject and expiry in `check`. Display only:
/// every trust decision is rustls' (webpki's), on the same bytes.
pub(crate) mod der {
    use tls_common::der::tlv;

    /// (subject, notAfter) of an X.509 certificate, or `None` if it does not parse.
    pub(crate) fn subject_and_expiry(cert: &[u8]) -> Option<(String, String)> {
        facts(cert).map(|f| (f.subject, f.not_after))
    }

    /// What `check` shows of a certificate.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Facts {
        /// "CN=..., O=...", or "(empty subject)".
        pub(crate) subject: String,
        /// "YYYY-MM-DD HH:MM:SS UTC".
        pub(crate) not_after: String,
        /// The subject alternative names: DNS names, IP addresses, URIs (a SPIFFE id) and
        /// e-mail addresses, in the certificate's order. A client certificate may have no
        /// subject and only these.
        pub(crate) names: Vec<String>,
    }

    /// The subject, expiry and alternative names of an X.509 certificate, or `None` if it
    /// does not parse. (Names in an extension that does not parse are left out.)
    pub(crate) fn facts(cert: &[u8]) -> Option<Facts> {
        let (tag, certificate, _) = tlv(cert)?;
        if tag != 0x30 {
            return None;
        }
        let (tag, tbs, _) = tlv(certificate)?;
        if tag != 0x30 {
            return None;
        }
        let mut rest = tbs;
        let mut field = || {
            let (tag, value, after) = tlv(rest)?;
            rest = after;
            Some((tag, value))
        };
        let (mut tag, _) = field()?;
        if tag == 0xa0 {
            // [0] version; the serial number follows.
            (tag, _) = field()?;
        }
        if tag != 0x02 {
            return None;
        }
        // signature algorithm, issuer
        field()?;
        field()?;
        let (tag, validity) = field()?;
        if tag != 0x30 {
            return None;
        }
        let (_, _, after_not_before) = tlv(validity)?;
        let (time_tag, not_after, _) = tlv(after_not_before)?;
        let not_after = time(time_tag, not_after)?;
        let (tag, subject) = field()?;
        if tag != 0x30 {
            return None;
        }
        // subjectPublicKeyInfo, then the optional unique ids ([1], [2]) and extensions ([3]).
        let mut names = Vec::new();
        while let Some((tag, value)) = field() {
            if tag == 0xa3 {
                names = alternative_names(value).unwrap_or_default();
            }
        }
        Some(Facts {
            subject: name(subject),
            not_after,
            names,
        })
    }

    /// The names of the subjectAltName extension (2.5.29.17) among `[3] Extensions`.
    fn alternative_names(explicit: &[u8]) -> Option<Vec<String>> {
        let (0x30, mut extensions, _) = tlv(explicit)? else {
            return None;
        };
        while let Some((0x30, extension, after)) = tlv(extensions) {
            extensions = after;
            let Some((0x06, [0x55, 0x1d, 0x11], rest)) = tlv(extension) else {
                continue;
            };
            // `critical BOOLEAN DEFAULT FALSE` may come before the value.
            let rest = match tlv(rest)? {
                (0x01, _, after) => after,
                _ => rest,
            };
            let (0x04, octets, _) = tlv(rest)? else {
                return None;
            };
            let (0x30, mut general_names, _) = tlv(octets)? else {
                return None;
            };
            let mut names = Vec::new();
            while let Some((tag, value, after)) = tlv(general_names) {
                general_names = after;
                match (tag, value.len()) {
                    // [1] rfc822Name, [2] dNSName, [6] uniformResourceIdentifier: IA5 text.
                    (0x81 | 0x82 | 0x86, _) => {
                        names.push(String::from_utf8_lossy(value).into_owned());
                    }
                    // [7] iPAddress.
                    (0x87, 4) => {
                        let octets: [u8; 4] = value.try_into().ok()?;
                        names.push(std::net::Ipv4Addr::from(octets).to_string());
                    }
                    (0x87, 16) => {
                        let octets: [u8; 16] = value.try_into().ok()?;
                        names.push(std::net::Ipv6Addr::from(octets).to_string());
                    }
                    _ => {}
                }
            }
            return Some(names);
        }
        None
    }

    /// Seconds since 1970 as "YYYY-MM-DD HH:MM:SS UTC".
    pub(super) fn format_unix(secs: u64) -> String {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days as i64);
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }

    /// An X.501 Name as "CN=..., O=...", in the certificate's order; unknown attributes skipped.
    fn name(mut rdns: &[u8]) -> String {
        let mut parts = Vec::new();
        while let Some((0x31, set, after)) = tlv(rdns) {
            rdns = after;
            let mut attrs = set;
            while let Some((0x30, attr, after)) = tlv(attrs) {
                attrs = after;
                let Some((0x06, oid, value)) = tlv(attr) else {
                    continue;
                };
                let Some((_, text, _)) = tlv(value) else {
                    continue;
                };
                let label = match oid {
                    [0x55, 0x04, 0x03] => "CN",
                    [0x55, 0x04, 0x06] => "C",
                    [0x55, 0x04, 0x07] => "L",
                    [0x55, 0x04, 0x08] => "ST",
                    [0x55, 0x04, 0x0a] => "O",
                    [0x55, 0x04, 0x0b] => "OU",
                    _ => continue,
                };
                parts.push(format!("{label}={}", String::from_utf8_lossy(text)));
            }
        }
        if parts.is_empty() {
            "(empty subject)".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) as "YYYY-MM-DD HH:MM:SS UTC".
    fn time(tag: u8, value: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(value).ok()?;
        let digits = text.strip_suffix('Z')?;
        let full = match (tag, digits.len()) {
            (0x17, 12) => {
                let yy: u32 = digits[..2].parse().ok()?;
                let century = if yy >= 50 { "19" } else { "20" };
                format!("{century}{digits}")
            }
            (0x18, 14) => digits.to_owned(),
            _ => return None,
        };
        if !full.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(format!(
            "{}-{}-{} {}:{}:{} UTC",
            &full[0..4],
            &full[4..6],
            &full[6..8],
            &full[8..10],
            &full[10..12],
            &full[12..14]
        ))
    }

    /// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
    fn civil_from_days(z: i64) -> (i64, u32, u32) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        (if m <= 2 { y + 1 } else { y }, m, d)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn subject_and_expiry_are_read_from_a_certificate() {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(vec!["kafka.example.com".to_owned()])
                .expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "kafka.example.com");
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "Example");
            params.not_after = rcgen::date_time_ymd(2031, 7, 4);
            let cert = params.self_signed(&key).expect("self-signed");
            let (subject, not_after) = subject_and_expiry(cert.der().as_ref()).expect("parses");
            assert_eq!(subject, "CN=kafka.example.com, O=Example");
            assert_eq!(not_after, "2031-07-04 00:00:00 UTC");
            assert_eq!(subject_and_expiry(&cert.der()[..40]), None);
            assert_eq!(
                facts(cert.der().as_ref()).expect("parses").names,
                ["kafka.example.com"]
            );
        }

        #[test]
        fn alternative_names_of_every_kind_are_read_and_a_subject_may_be_empty() {
            use rcgen::SanType;
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            let ia5 = |s: &str| s.try_into().expect("IA5");
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.subject_alt_names = vec![
                SanType::URI(ia5("spiffe://example.org/worker")),
                SanType::DnsName(ia5("worker.example.org")),
                SanType::IpAddress("10.0.0.7".parse().expect("v4")),
                SanType::IpAddress("fd00::7".parse().expect("v6")),
                SanType::Rfc822Name(ia5("ops@example.org")),
            ];
            let cert = params.self_signed(&key).expect("self-signed");
            let f = facts(cert.der().as_ref()).expect("parses");
            assert_eq!(f.subject, "(empty subject)");
            assert_eq!(
                f.names,
                [
                    "spiffe://example.org/worker",
                    "worker.example.org",
                    "10.0.0.7",
                    "fd00::7",
                    "ops@example.org"
                ]
            );
            // Without the extension: no names, the rest as before.
            let plain = rcgen::CertificateParams::new(Vec::<String>::new())
                .expect("params")
                .self_signed(&key)
                .expect("self-signed");
            assert_eq!(
                facts(plain.der().as_ref()).expect("parses").names,
                Vec::<String>::new()
            );
        }

        #[test]
        fn unix_times_format_as_utc_dates() {
            assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
            assert_eq!(format_unix(951_782_400), "2000-02-29 00:00:00 UTC");
            assert_eq!(format_unix(1_767_225_599), "2025-12-31 23:59:59 UTC");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::settings::ClientIdentity;

    /// A CA in `dir/ca.pem`, and a way to write a client certificate it signed (and its key)
    /// as a renewal does: each file replaced by a rename.
    struct Pki {
        dir: tempfile::TempDir,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().expect("dir");
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "reload CA");
            let cert = params.self_signed(&key).expect("self-sign");
            std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write");
            Pki {
                dir,
                issuer: rcgen::Issuer::new(params, key),
            }
        }

        fn path(&self, name: &str) -> std::path::PathBuf {
            self.dir.path().join(name)
        }

        fn replace(&self, name: &str, contents: &str) {
            let tmp = self.path(&format!("{name}.tmp"));
            std::fs::write(&tmp, contents).expect("write");
            std::fs::rename(&tmp, self.path(name)).expect("rename");
        }

        /// A client certificate for `cn`: (certificate PEM, key PEM).
        fn client(&self, cn: &str) -> (String, String) {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(vec![cn.to_owned()]).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            let cert = params.signed_by(&key, &self.issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        }

        fn settings(&self) -> TlsSettings {
            TlsSettings {
                ca_location: Some(self.path("ca.pem")),
                client_identity: Some(ClientIdentity {
                    certificate_location: self.path("client.pem"),
                    key_location: self.path("client.key"),
                }),
                verify_hostname: true,
            }
        }
    }

    #[test]
    fn changed_files_are_read_again_and_bad_ones_keep_the_last_good_configuration_said_once() {
        let pki = Pki::new();
        let (cert, key) = pki.client("one.client");
        pki.replace("client.pem", &cert);
        pki.replace("client.key", &key);
        let ctx = TlsContext::new(&pki.settings()).expect("good files");
        assert!(matches!(ctx.refresh(), Refresh::Unchanged));
        // What `check` shows: the CA and our certificate, with its names and expiry.
        let info = ctx.files_info();
        let trusted = info.trusted.unwrap_or_default();
        assert!(trusted.starts_with("CN=reload CA (expires "), "{trusted}");
        let ours = info.client_certificate.unwrap_or_default();
        assert!(
            ours.starts_with("CN=one.client (expires ")
                && ours.ends_with(" UTC; names one.client)"),
            "{ours}"
        );
        let Built {
            config: first,
            client_certificate: ours,
            ..
        } = ctx.current();
        assert!(
            ours.as_deref()
                .unwrap_or_default()
                .starts_with("CN=one.client (expires ")
        );

        // Renewed: the next connection uses the new certificate.
        let (cert, key) = pki.client("two.client");
        pki.replace("client.pem", &cert);
        pki.replace("client.key", &key);
        match ctx.refresh() {
            Refresh::Reloaded(Some(c)) => assert!(c.starts_with("CN=two.client"), "{c}"),
            other => panic!("{other:?}"),
        }
        let Built {
            config: second,
            client_certificate: ours,
            ..
        } = ctx.current();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(
            ours.as_deref()
                .unwrap_or_default()
                .starts_with("CN=two.client")
        );
        assert!(matches!(ctx.refresh(), Refresh::Unchanged));

        // A bad key: said once, and the last good configuration stays in use.
        pki.replace("client.key", "-----BEGIN PRIVATE KEY-----\nnot base64\n");
        match ctx.refresh() {
            Refresh::Failed(e) => assert!(
                e.to_string()
                    .starts_with("cannot use KAFKA_SSL_KEY_LOCATION="),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(ctx.refresh(), Refresh::Unchanged), "said twice");
        let Built {
            config: kept,
            client_certificate: ours,
            ..
        } = ctx.current();
        assert!(Arc::ptr_eq(&kept, &second));
        assert!(
            ours.as_deref()
                .unwrap_or_default()
                .starts_with("CN=two.client")
        );

        // Half a rotation (a new certificate, the old key): refused, kept, said; then the
        // key arrives and both are used.
        let (cert, key) = pki.client("three.client");
        pki.replace("client.pem", &cert);
        assert!(matches!(ctx.refresh(), Refresh::Failed(_)));
        pki.replace("client.key", &key);
        assert!(
            matches!(ctx.refresh(), Refresh::Reloaded(Some(c)) if c.starts_with("CN=three.client"))
        );

        // A vanished CA file (mid-rotation) is a change that fails, not a crash.
        std::fs::remove_file(pki.path("ca.pem")).expect("remove");
        assert!(matches!(
            ctx.refresh(),
            Refresh::Failed(SecurityError::CaLocation { .. })
        ));
        assert!(matches!(ctx.refresh(), Refresh::Unchanged));
    }

    #[test]
    fn hosts_are_taken_from_addresses() {
        assert_eq!(host_of("kafka-1.example.com:9093"), "kafka-1.example.com");
        assert_eq!(host_of("127.0.0.1:9093"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9093"), "::1");
    }

    #[test]
    fn a_tls_alert_or_handshake_record_is_recognised() {
        assert!(looks_like_tls(&[0x15, 0x03, 0x03, 0x00]));
        assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x02]));
        assert!(!looks_like_tls(&[0x00, 0x00, 0x01, 0x02]));
    }
}
