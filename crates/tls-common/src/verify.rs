//! The verifier for a server whose certificate is checked but not its host name.
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// Checks the certificate chain but not the host name (Kafka's
/// `KAFKA_SSL_ENDPOINT_IDENTIFICATION=none`, PostgreSQL's `sslmode=verify-ca`): the server
/// must still prove it holds a certificate a trusted CA signed, and it must not have
/// expired; only "is it for this host" is skipped.
#[derive(Debug)]
pub struct ChainOnlyVerifier {
    /// The web PKI verifier of the trusted roots, which does every check.
    inner: Arc<WebPkiServerVerifier>,
}

impl ChainOnlyVerifier {
    /// `inner`'s checks, all but the host name's.
    pub fn new(inner: Arc<WebPkiServerVerifier>) -> ChainOnlyVerifier {
        ChainOnlyVerifier { inner }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::RootCertStore;
    use rustls::crypto::ring::default_provider;

    /// A CA called `ca_name` and a server certificate it signed for `name`.
    fn ca_and_server(
        ca_name: &str,
        name: &str,
    ) -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca = params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let server = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("sign");
        (ca.der().clone(), server.der().clone())
    }

    fn verifier(ca: CertificateDer<'static>) -> ChainOnlyVerifier {
        let mut roots = RootCertStore::empty();
        roots.add(ca).expect("root");
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(default_provider()),
        )
        .build()
        .expect("verifier");
        ChainOnlyVerifier::new(inner)
    }

    fn verify(
        verifier: &ChainOnlyVerifier,
        cert: &CertificateDer<'_>,
        name: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).expect("name");
        verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
    }

    #[test]
    fn any_host_name_passes_but_an_untrusted_chain_does_not() {
        let (ca, server) = ca_and_server("trusted CA", "db.example.com");
        let trusting = verifier(ca);
        assert!(verify(&trusting, &server, "db.example.com").is_ok());
        assert!(verify(&trusting, &server, "other.example.com").is_ok());
        let (other_ca, _) = ca_and_server("another CA", "db.example.com");
        let refused = verify(&verifier(other_ca), &server, "db.example.com");
        assert!(
            matches!(
                refused,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer
                ))
            ),
            "{refused:?}"
        );
    }
}
