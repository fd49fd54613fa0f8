//! rustls' findings in sentences: the parts both clients word alike.
use rustls::{AlertDescription, CertificateError, ClientConnection};

/// A certificate problem that needs no client's advice, in words naming the host. Each
/// client words the name mismatch, the unknown issuer and the expiry itself (they point at
/// its own settings) and hands the rest to this one.
pub fn certificate_problem(e: &CertificateError, host: &str) -> String {
    match e {
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("the certificate of {host} is not valid yet: check this host's clock")
        }
        CertificateError::BadSignature => format!(
            "the certificate of {host} carries a signature that does not verify: it is corrupt or forged"
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            format!("the certificate of {host} is not meant for a TLS server (extended key usage)")
        }
        other => format!("the certificate of {host} was rejected: {other}"),
    }
}

/// A name of `CertificateError::NotValidForNameContext`'s `presented`, without its `Debug`
/// wrapping: `DnsName("kafka.example.com")` -> `kafka.example.com`; `IpAddress(10.0.0.1)`
/// -> `10.0.0.1`; anything else as it is.
pub fn presented_name(name: &str) -> &str {
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

/// A TLS alert about certificates or access as words ("unknown CA"); any other by its
/// rustls name. `DecryptError` is left to its name here: the PostgreSQL client words it
/// itself, the Kafka client's messages have always shown the name.
pub fn alert_words(alert: AlertDescription) -> String {
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

/// What a session negotiated, as `check` shows it: the version ("TLS 1.3" or "TLS 1.2")
/// and the IANA name of the cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
pub fn version_and_cipher_suite(conn: &ClientConnection) -> (String, String) {
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
    (version, cipher_suite)
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
        assert_eq!(
            presented_name("DnsName(\"db.example.com\")"),
            "db.example.com"
        );
        assert_eq!(presented_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(presented_name("DirectoryName"), "DirectoryName");
    }

    #[test]
    fn alerts_about_certificates_are_words_and_others_their_names() {
        assert_eq!(alert_words(AlertDescription::UnknownCA), "unknown CA");
        assert_eq!(
            alert_words(AlertDescription::CertificateRequired),
            "certificate required"
        );
        assert_eq!(alert_words(AlertDescription::DecryptError), "DecryptError");
        assert_eq!(
            alert_words(AlertDescription::ProtocolVersion),
            "ProtocolVersion"
        );
    }

    #[test]
    fn certificate_problems_without_advice_name_the_host() {
        let host = "db.example.com";
        assert_eq!(
            certificate_problem(&CertificateError::NotValidYet, host),
            "the certificate of db.example.com is not valid yet: check this host's clock"
        );
        assert_eq!(
            certificate_problem(&CertificateError::BadSignature, host),
            "the certificate of db.example.com carries a signature that does not verify: it is corrupt or forged"
        );
        assert_eq!(
            certificate_problem(&CertificateError::InvalidPurpose, host),
            "the certificate of db.example.com is not meant for a TLS server (extended key usage)"
        );
        let rejected = certificate_problem(&CertificateError::Revoked, host);
        assert!(
            rejected.starts_with("the certificate of db.example.com was rejected: "),
            "{rejected}"
        );
    }
}
