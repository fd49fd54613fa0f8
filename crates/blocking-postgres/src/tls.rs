//! TLS for PostgreSQL connections, on rustls with the ring provider, with libpq's `sslmode`
//! semantics: which CAs are trusted ([`RootCerts`]), what is checked (nothing, the chain,
//! or the chain and the host name), the client certificate for mutual TLS, the handshake
//! with rustls' errors turned into sentences, and the `tls-server-end-point` hash that
//! SCRAM-SHA-256-PLUS binds to.
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring as provider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct,
    RootCertStore, SignatureScheme, StreamOwned,
};
use sha2::Digest;
use tls_common::{ChainOnlyVerifier, presented_name};

use crate::config::{Config, RootCerts, SslMode};
use crate::error::Error;

/// How the server's certificate is checked, as decided from `sslmode` and the root
/// certificates found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Nothing but the handshake's own signatures (`require` or `prefer` without a root
    /// certificate file): encryption against a passive eavesdropper only.
    Nothing,
    /// The chain up to a trusted CA and the validity dates, any host name (`verify-ca`, and
    /// `require`/`prefer` when a root certificate file exists).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// The rustls configuration of one `Connector`, built once from the `Config` (files read
/// and checked before anything is sent). `Debug` shows the decisions, never the key.
pub(crate) struct TlsSetup {
    config: Arc<ClientConfig>,
    pub(crate) verify: Verify,
    /// Where the trusted CAs came from, for error messages.
    roots: String,
    /// Whether we offer a client certificate, to explain a server that asks for one.
    has_client_identity: bool,
}

/// A TLS session over one TCP connection.
pub(crate) type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// The socket a connection talks through; `tls()` gives the session's `ClientConnection`.
pub(crate) type Stream = tls_common::Stream<TlsStream>;

/// What a connection's TLS session negotiated, for an operator's `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// "TLS 1.3" or "TLS 1.2".
    pub version: String,
    /// The IANA name of the cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// How the server's certificate was checked: "none", "CA" or "CA and host name".
    pub verified: &'static str,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup")
            .field("verify", &self.verify)
            .field("roots", &self.roots)
            .field("has_client_identity", &self.has_client_identity)
            .finish_non_exhaustive()
    }
}

impl TlsSetup {
    /// The TLS configuration `config` asks for; `None` for `sslmode=disable`.
    pub(crate) fn new(config: &Config) -> Result<Option<TlsSetup>, Error> {
        if config.sslmode == SslMode::Disable {
            return Ok(None);
        }
        let roots = load_roots(config)?;
        // libpq: verify-ca and verify-full need roots; `require` (and `prefer`) check the
        // chain when a root file is there, and nothing when it is not.
        let verify = match (config.sslmode, &roots) {
            (SslMode::VerifyFull, Some(_)) => Verify::Full,
            (SslMode::VerifyCa, Some(_)) => Verify::Chain,
            (SslMode::Require | SslMode::Prefer, Some(_)) => Verify::Chain,
            (SslMode::Require | SslMode::Prefer, None) => Verify::Nothing,
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(Error::Config {
                    setting: "sslrootcert",
                    detail: format!(
                        "sslmode={} checks the server's certificate against a root certificate file, and the default one ({}) does not exist: set sslrootcert to the PEM file of the CA that signed the server's certificate, or sslrootcert=system for the public CAs, or choose sslmode=require to check nothing",
                        config.sslmode,
                        default_root_file().map_or_else(
                            || "~/.postgresql/root.crt, with HOME unset".to_owned(),
                            |p| p.display().to_string()
                        )
                    ),
                });
            }
            (SslMode::Disable, _) => return Ok(None),
        };
        let provider = Arc::new(provider::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config {
                setting: "sslmode",
                detail: format!("rustls refused its own defaults ({e})"),
            })?;
        let (roots_desc, store) = match roots {
            Some((desc, store)) => (desc, Some(Arc::new(store))),
            None => ("no root certificates".to_owned(), None),
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (verify, store) {
            (Verify::Full, Some(store)) | (Verify::Chain, Some(store)) => {
                let inner = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                    .build()
                    .map_err(|e| Error::Config {
                        setting: "sslrootcert",
                        detail: format!("{roots_desc} cannot be used ({e})"),
                    })?;
                if verify == Verify::Full {
                    inner
                } else {
                    Arc::new(ChainOnlyVerifier::new(inner))
                }
            }
            _ => Arc::new(SignaturesOnlyVerifier { provider }),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let client = match (&config.sslcert, &config.sslkey) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = read_certificates(cert).map_err(|detail| Error::Config {
                    setting: "sslcert",
                    detail: format!(
                        "{}: {detail} (point it at the client certificate chain in PEM)",
                        cert.display()
                    ),
                })?;
                let key = read_key(key).map_err(|detail| Error::Config {
                    setting: "sslkey",
                    detail: format!("{}: {detail}", key.display()),
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Config {
                        setting: "sslcert with sslkey",
                        detail: format!("{e} (sslcert must hold an X.509 v3 certificate and sslkey its own private key)"),
                    })?
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::Config {
                    setting: "sslcert and sslkey",
                    detail:
                        "a client certificate needs both: set both sslcert and sslkey, or neither"
                            .to_owned(),
                });
            }
        };
        Ok(Some(TlsSetup {
            config: Arc::new(client),
            verify,
            roots: roots_desc,
            has_client_identity: config.sslcert.is_some(),
        }))
    }

    /// Runs the handshake on `tcp` (whose timeouts are already set). `host` is the name the
    /// certificate must carry with `verify-full` (and the SNI).
    pub(crate) fn connect(
        &self,
        tcp: TcpStream,
        host: &str,
        addr: &str,
    ) -> Result<TlsStream, Error> {
        let name = ServerName::try_from(host.to_owned()).map_err(|_| Error::Config {
            setting: "host",
            detail: format!("{host:?} is neither a host name nor an IP address"),
        })?;
        let conn = ClientConnection::new(self.config.clone(), name).map_err(|e| Error::Tls {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                return Err(self.failure(addr, host, "the TLS handshake", e));
            }
        }
        Ok(stream)
    }

    /// An error of a TLS stream as an `Error`: rustls' own (a certificate refused, an
    /// alert) as `Tls` in words, socket errors as `Io`/`Timeout` as on a plain connection.
    pub(crate) fn failure(
        &self,
        addr: &str,
        host: &str,
        what: &'static str,
        e: std::io::Error,
    ) -> Error {
        let tls = |reason: String| Error::Tls {
            addr: addr.to_owned(),
            reason,
        };
        let Some(rustls_error) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return io_error(addr, what, e);
        };
        match rustls_error {
            rustls::Error::InvalidCertificate(c) => tls(certificate_problem(c, host, &self.roots)),
            rustls::Error::AlertReceived(alert) => match alert {
                AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure
                    if !self.has_client_identity =>
                {
                    tls(format!(
                        "the server requires a client certificate and none is configured (alert: {}): set sslcert and sslkey",
                        alert_words(*alert)
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
                | AlertDescription::HandshakeFailure
                | AlertDescription::DecryptError => tls(format!(
                    "the server refused our client certificate (alert: {}): check that sslcert holds a certificate signed by the CA in the server's ssl_ca_file, and that it has not expired",
                    alert_words(*alert)
                )),
                AlertDescription::ProtocolVersion => tls(
                    "the server speaks no TLS version we do (we speak TLS 1.2 and 1.3)".to_owned(),
                ),
                other => tls(format!(
                    "the server ended the TLS session (alert: {})",
                    alert_words(*other)
                )),
            },
            other => tls(other.to_string()),
        }
    }
}

/// What the session negotiated.
pub(crate) fn session_info(conn: &ClientConnection, verify: Verify) -> TlsInfo {
    let (version, cipher_suite) = tls_common::version_and_cipher_suite(conn);
    TlsInfo {
        version,
        cipher_suite,
        verified: match verify {
            Verify::Nothing => "none",
            Verify::Chain => "CA",
            Verify::Full => "CA and host name",
        },
    }
}

/// The `tls-server-end-point` channel binding data (RFC 5929): the hash of the server's
/// certificate, with the hash function of the certificate's signature algorithm, SHA-256
/// for MD5 and SHA-1. `None` when the algorithm has no single hash (Ed25519, RSASSA-PSS
/// with its parameters): then we cannot bind, as the server (OpenSSL) cannot either.
pub(crate) fn end_point_hash(conn: &ClientConnection) -> Option<Vec<u8>> {
    let cert = conn.peer_certificates()?.first()?;
    let oid = der::signature_algorithm(cert.as_ref())?;
    // OIDs in DER: 1.2.840.113549.1.1.x (RSA PKCS#1) and 1.2.840.10045.4.x (ECDSA).
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    let hash = match oid {
        [prefix @ .., last] if prefix == RSA => match last {
            4 | 5 | 11 => Hash::Sha256, // md5, sha1, sha256 WithRSAEncryption
            12 => Hash::Sha384,
            13 => Hash::Sha512,
            14 => Hash::Sha224,
            _ => return None,
        },
        _ if oid == ECDSA_SHA1 => Hash::Sha256,
        [prefix @ .., last] if prefix == ECDSA_SHA2 => match last {
            1 => Hash::Sha224,
            2 => Hash::Sha256,
            3 => Hash::Sha384,
            4 => Hash::Sha512,
            _ => return None,
        },
        _ => return None,
    };
    let der = cert.as_ref();
    Some(match hash {
        Hash::Sha224 => sha2::Sha224::digest(der).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(der).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(der).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(der).to_vec(),
    })
}

enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// A socket error as `Timeout` or `Io`.
pub(crate) fn io_error(addr: &str, what: &'static str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::Timeout {
            addr: addr.to_owned(),
            what,
            // The caller knows the limit; `Client` fills it in.
            after: std::time::Duration::ZERO,
        },
        _ => Error::Io {
            addr: addr.to_owned(),
            what,
            source: e,
        },
    }
}

/// libpq's default root certificate file, `~/.postgresql/root.crt`.
fn default_root_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".postgresql").join("root.crt"))
}

/// The trusted CAs and where they came from; `None` when `sslrootcert` is not set and
/// libpq's default file does not exist.
fn load_roots(config: &Config) -> Result<Option<(String, RootCertStore)>, Error> {
    let from_file = |path: &Path| -> Result<(String, RootCertStore), Error> {
        let fail = |detail: String| Error::Config {
            setting: "sslrootcert",
            detail: format!(
                "{}: {detail} (point it at a PEM file of CA certificates)",
                path.display()
            ),
        };
        let certs = read_certificates(path).map_err(fail)?;
        let mut store = RootCertStore::empty();
        let (added, ignored) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(fail(format!(
                "none of its {ignored} certificate(s) can be used as a trust anchor"
            )));
        }
        Ok((format!("sslrootcert={}", path.display()), store))
    };
    match &config.sslrootcert {
        RootCerts::File(path) => from_file(path).map(Some),
        RootCerts::System => {
            // libpq 16 refuses `system` with anything weaker than verify-full: the public
            // CAs sign certificates for anyone's host names, so only the name check makes
            // them mean something.
            if config.sslmode != SslMode::VerifyFull {
                return Err(Error::Config {
                    setting: "sslrootcert=system",
                    detail: format!(
                        "sslmode={} with the public CAs would accept any server with any public certificate: use sslmode=verify-full",
                        config.sslmode
                    ),
                });
            }
            let store = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            Ok(Some((
                "the compiled-in Mozilla roots (sslrootcert=system)".to_owned(),
                store,
            )))
        }
        RootCerts::Default => match default_root_file() {
            Some(path) if path.exists() => from_file(&path).map(Some),
            _ => Ok(None),
        },
    }
}

/// Accepts any certificate (`sslmode=require` without root certificates, as libpq), but
/// still checks that the server signed the handshake with the certificate's key: so the
/// session is bound to that certificate, and SCRAM-SHA-256-PLUS over it detects a man in
/// the middle that does not know the password.
#[derive(Debug)]
struct SignaturesOnlyVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SignaturesOnlyVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The certificates of a PEM file; a malformed section in the PEM reader's own words.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    tls_common::read_certificates(path, |e| e.to_string())
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    check_key_permissions(path)?;
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| e.to_string())?);
    if String::from_utf8_lossy(&bytes).contains("ENCRYPTED PRIVATE KEY") {
        return Err(
            "the key is encrypted; store it unencrypted (e.g. `openssl pkey -in key.pem -out plain.pem`) and protect the file instead"
                .to_owned(),
        );
    }
    tls_common::parse_key(&bytes, |e| e.to_string())
}

/// libpq's rule for the client key file: if we own it, group and others must have no
/// access (0600 or less); if root owns it, the group may read it (0640 or less). A key
/// others can read is no longer only ours.
#[cfg(unix)]
fn check_key_permissions(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".to_owned());
    }
    let mode = meta.mode();
    // SAFETY: geteuid has no preconditions and cannot fail. Called through std's own
    // re-export would be nicer, but std has none.
    let euid = unsafe { libc_geteuid() };
    if meta.uid() == euid && mode & 0o077 != 0 {
        return Err(format!(
            "the private key file has group or world access (mode {:o}): it must be u=rw (0600) or less when owned by the current user (chmod 600 it)",
            mode & 0o777
        ));
    }
    if meta.uid() == 0 && mode & 0o037 != 0 {
        return Err(format!(
            "the private key file owned by root has more than group read access (mode {:o}): it must be u=rw,g=r (0640) or less",
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_key_permissions(_path: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(unix)]
unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// The certificate problem in words, naming the host, the names in the certificate, and
/// what to do.
fn certificate_problem(e: &CertificateError, host: &str, roots: &str) -> String {
    match e {
        CertificateError::NotValidForName => format!(
            "the server's certificate is not valid for {host} (sslmode=verify-full): connect by a name the certificate carries, or use sslmode=verify-ca to check only its CA"
        ),
        CertificateError::NotValidForNameContext { presented, .. } => {
            let names: Vec<&str> = presented.iter().map(|n| presented_name(n)).collect();
            let names = if names.is_empty() {
                "no names at all (no subject alternative names)".to_owned()
            } else {
                names.join(", ")
            };
            format!(
                "the server's certificate is for {names}, not for {host} (sslmode=verify-full): connect by one of those names, or use sslmode=verify-ca to check only its CA"
            )
        }
        CertificateError::UnknownIssuer => format!(
            "the certificate of {host} is not signed by a CA in {roots}: set sslrootcert to the PEM file of the CA that signed the server's certificate"
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
            "the certificate of {host} has expired: the server's administrator must renew it"
        ),
        // Not valid yet, a bad signature, the wrong key usage: nothing of sslmode's to advise.
        other => tls_common::certificate_problem(other, host),
    }
}

/// An alert in words: the shared ones, and `DecryptError` as words too (the Kafka client
/// shows its name).
fn alert_words(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::DecryptError => "decrypt error".to_owned(),
        other => tls_common::alert_words(other),
    }
}

/// Just enough DER to find a certificate's signature algorithm. Used only to pick the
/// channel-binding hash: every trust decision is rustls' (webpki's), on the same bytes.
mod der {
    use tls_common::der::tlv;

    /// The OID (its DER content bytes) of an X.509 certificate's signatureAlgorithm.
    pub(super) fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
        let (tag, certificate, _) = tlv(cert)?;
        if tag != 0x30 {
            return None;
        }
        // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
        let (_, _, after_tbs) = tlv(certificate)?;
        let (tag, algorithm, _) = tlv(after_tbs)?;
        if tag != 0x30 {
            return None;
        }
        let (tag, oid, _) = tlv(algorithm)?;
        (tag == 0x06).then_some(oid)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_signature_algorithm_of_an_ecdsa_certificate_is_found() {
            let key = rcgen::KeyPair::generate().expect("key");
            let params =
                rcgen::CertificateParams::new(vec!["db.example.com".to_owned()]).expect("params");
            let cert = params.self_signed(&key).expect("self-signed");
            // rcgen's default key is ECDSA P-256 with SHA-256: 1.2.840.10045.4.3.2.
            assert_eq!(
                signature_algorithm(cert.der().as_ref()),
                Some(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02][..])
            );
            assert_eq!(signature_algorithm(&cert.der()[..30]), None);
            assert_eq!(signature_algorithm(&[]), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_roots_need_verify_full_as_in_libpq() {
        let mut config = Config::new("db", "app");
        config.sslrootcert = RootCerts::System;
        config.sslmode = SslMode::Require;
        let err = TlsSetup::new(&config).unwrap_err().to_string();
        assert!(err.contains("use sslmode=verify-full"), "{err}");
        config.sslmode = SslMode::VerifyFull;
        let setup = TlsSetup::new(&config).expect("ok").expect("tls");
        assert_eq!(setup.verify, Verify::Full);
    }

    #[test]
    fn verify_full_without_sslrootcert_needs_libpqs_default_file() {
        let mut config = Config::new("db", "app");
        config.sslmode = SslMode::VerifyFull;
        match default_root_file() {
            Some(path) if path.exists() => {
                let setup = TlsSetup::new(&config).expect("the default file is usable");
                assert_eq!(setup.expect("tls").verify, Verify::Full);
            }
            _ => {
                let err = TlsSetup::new(&config).unwrap_err().to_string();
                assert!(
                    err.contains("root.crt") && err.contains("does not exist"),
                    "{err}"
                );
                assert!(err.contains("sslrootcert=system"), "{err}");
                config.sslmode = SslMode::Require;
                let setup = TlsSetup::new(&config).expect("ok").expect("tls");
                assert_eq!(setup.verify, Verify::Nothing);
            }
        }
    }

    #[test]
    fn require_checks_nothing_without_a_root_file_and_the_chain_with_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new("db", "app");
        config.sslmode = SslMode::Require;
        // No ~/.postgresql/root.crt under this HOME... but HOME is the process's: point
        // sslrootcert at a file instead, the same rule.
        config.sslrootcert = RootCerts::File(dir.path().join("missing.crt"));
        let err = TlsSetup::new(&config).unwrap_err().to_string();
        assert!(err.contains("missing.crt"), "{err}");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("ca");
        let path = dir.path().join("root.crt");
        std::fs::write(&path, ca.pem()).expect("write");
        config.sslrootcert = RootCerts::File(path);
        let setup = TlsSetup::new(&config).expect("ok").expect("tls");
        assert_eq!(
            setup.verify,
            Verify::Chain,
            "require with a root file is verify-ca"
        );
        config.sslmode = SslMode::Disable;
        assert!(TlsSetup::new(&config).expect("ok").is_none());
    }

    #[test]
    fn a_client_key_others_can_read_is_refused_as_libpq_does() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("client.key");
        std::fs::write(&path, "not a key").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read_key(&path).unwrap_err();
        assert!(
            err.contains("group or world access") || err.contains("owned by root"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = read_key(&path).unwrap_err();
        assert!(err.contains("no PEM private key"), "{err}");
    }
}
