//! TLS for Kafka connections, on rustls with the ring provider.
//!
//! `TlsContext` is built once from the `KAFKA_SSL_*` settings (trust roots, the client
//! identity for mutual TLS, whether the host name is checked) and shared by every
//! connection. `TlsContext::connect` runs the handshake on a connected socket under the
//! connection's deadline and turns rustls' errors into sentences an operator can act on.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct,
    RootCertStore, SignatureScheme, StreamOwned,
};

use crate::error::KafkaError;
use crate::net::settings::{SecurityError, TlsSessionInfo, TlsSettings};

/// The rustls client configuration every connection of one client shares. Its `Debug`
/// shows the settings, never the configuration itself (which holds the client's key).
pub(crate) struct TlsContext {
    config: Arc<ClientConfig>,
    verify_hostname: bool,
    /// Whether we offer a client certificate, to explain a broker that asks for one.
    has_client_identity: bool,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("verify_hostname", &self.verify_hostname)
            .field("has_client_identity", &self.has_client_identity)
            .finish_non_exhaustive()
    }
}

/// A TLS session over one TCP connection.
pub(crate) type TlsStream = StreamOwned<ClientConnection, TcpStream>;

impl TlsContext {
    pub(crate) fn new(settings: &TlsSettings) -> Result<TlsContext, SecurityError> {
        let roots = match &settings.ca_location {
            Some(path) => {
                let fail = |detail: String| SecurityError::CaLocation {
                    path: path.clone(),
                    detail,
                };
                let certs = read_certificates(path).map_err(fail)?;
                let mut roots = RootCertStore::empty();
                let (added, ignored) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(fail(format!(
                        "none of its {ignored} certificate(s) can be used as a trust anchor"
                    )));
                }
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
                .with_custom_certificate_verifier(Arc::new(ChainOnlyVerifier { inner }))
        };
        let config = match &settings.client_identity {
            None => builder.with_no_client_auth(),
            Some(id) => {
                let chain = read_certificates(&id.certificate_location).map_err(|detail| {
                    SecurityError::CertificateLocation {
                        path: id.certificate_location.clone(),
                        detail,
                    }
                })?;
                let key =
                    read_key(&id.key_location).map_err(|detail| SecurityError::KeyLocation {
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
        Ok(TlsContext {
            config: Arc::new(config),
            verify_hostname: settings.verify_hostname,
            has_client_identity: settings.client_identity.is_some(),
        })
    }

    pub(crate) fn verify_hostname(&self) -> bool {
        self.verify_hostname
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
        let conn =
            ClientConnection::new(self.config.clone(), name).map_err(|e| KafkaError::Tls {
                broker: addr.to_owned(),
                reason: e.to_string(),
            })?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                return Err(self.failure(addr, "TLS handshake", timeout, e, true));
            }
        }
        Ok(stream)
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
                    if !self.has_client_identity =>
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
                AlertDescription::DecryptError if self.has_client_identity => tls(format!(
                    "the broker at {addr} refused our client certificate (alert: decrypt error): check that KAFKA_SSL_CERTIFICATE_LOCATION holds a certificate the broker's CA signed"
                )),
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

/// What the session negotiated and whom it talks to, for `check`.
pub(crate) fn session_info(conn: &ClientConnection) -> TlsSessionInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_owned(),
    };
    let cipher_suite = conn
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("unknown")
        .to_owned();
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

/// Checks the certificate chain but not the host name (`KAFKA_SSL_ENDPOINT_IDENTIFICATION=none`):
/// the broker must still prove it holds a certificate a trusted CA signed, and it must not
/// have expired; only "is it for this host" is skipped.
#[derive(Debug)]
struct ChainOnlyVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The web PKI verifier checks the chain (trust, validity dates, key usage) first and
        // the name last, so a name error means everything else passed.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn read_certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    // Read first, so a missing file says "No such file" rather than a PEM error.
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM file of certificates ({e})"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".to_owned());
    }
    Ok(certs)
}

fn read_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&bytes).contains("ENCRYPTED PRIVATE KEY") {
        return Err(
            "the key is encrypted; store it unencrypted (e.g. `openssl pkey -in key.pem -out plain.pem`) and protect the file instead"
                .to_owned(),
        );
    }
    // PKCS#8 ("PRIVATE KEY"), PKCS#1 ("RSA PRIVATE KEY") and SEC1 ("EC PRIVATE KEY").
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in it".to_owned()
        }
        other => format!("not a PEM private key ({other})"),
    })
}

/// The certificate problem in words, naming the host and what to do.
fn certificate_problem(e: &CertificateError, host: &str) -> String {
    match e {
        CertificateError::NotValidForName => format!(
            "certificate is not valid for {host} (set KAFKA_SSL_ENDPOINT_IDENTIFICATION=none only for testing)"
        ),
        CertificateError::NotValidForNameContext { presented, .. } => {
            let names: Vec<&str> = presented.iter().map(|n| presented_name(n)).collect();
            let names = if names.is_empty() {
                "(a certificate without subject alternative names)".to_owned()
            } else {
                names.join(", ")
            };
            format!(
                "certificate for {names} is not valid for {host} (set KAFKA_SSL_ENDPOINT_IDENTIFICATION=none only for testing)"
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
        CertificateError::NotValidYet => {
            format!("the certificate of {host} is not valid yet: check this host's clock")
        }
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "the certificate of {host} is valid only from {} (now {}): check this host's clock",
            der::format_unix(not_before.as_secs()),
            der::format_unix(time.as_secs())
        ),
        CertificateError::BadSignature => format!(
            "the certificate of {host} carries a signature that does not verify: it is corrupt or forged"
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            format!("the certificate of {host} is not meant for a TLS server (extended key usage)")
        }
        other => format!("the certificate of {host} was rejected: {other}"),
    }
}

/// `DnsName("kafka.example.com")` -> `kafka.example.com`; `IpAddress(10.0.0.1)` -> `10.0.0.1`.
fn presented_name(name: &str) -> &str {
    if let Some(inner) = name
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
    {
        return inner;
    }
    if let Some(inner) = name
        .strip_prefix("IpAddress(")
        .and_then(|n| n.strip_suffix(')'))
    {
        return inner;
    }
    name
}

fn alert_words(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::CertificateRequired => "certificate required".to_owned(),
        AlertDescription::HandshakeFailure => "handshake failure".to_owned(),
        AlertDescription::BadCertificate => "bad certificate".to_owned(),
        AlertDescription::UnknownCA => "unknown CA".to_owned(),
        AlertDescription::CertificateExpired => "certificate expired".to_owned(),
        AlertDescription::CertificateRevoked => "certificate revoked".to_owned(),
        AlertDescription::CertificateUnknown => "certificate unknown".to_owned(),
        AlertDescription::AccessDenied => "access denied".to_owned(),
        other => format!("{other:?}"),
    }
}

/// Read and write through either stream type, so `conn` holds one of two.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    pub(crate) fn tls(&self) -> Option<&ClientConnection> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => Some(&s.conn),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Just enough DER to show a certificate's subject and expiry in `check`. Display only:
/// every trust decision is rustls' (webpki's), on the same bytes.
mod der {
    /// (subject, notAfter) of an X.509 certificate, or `None` if it does not parse.
    pub(super) fn subject_and_expiry(cert: &[u8]) -> Option<(String, String)> {
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
        Some((name(subject), not_after))
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

    /// One tag-length-value: (tag, value, the bytes after it).
    fn tlv(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = bytes.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let mut len = 0usize;
            for b in &rest[..n] {
                len = (len << 8) | usize::from(*b);
            }
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
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

    #[test]
    fn presented_names_lose_their_debug_wrapping() {
        assert_eq!(
            presented_name("DnsName(\"kafka.example.com\")"),
            "kafka.example.com"
        );
        assert_eq!(presented_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(presented_name("DirectoryName"), "DirectoryName");
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
