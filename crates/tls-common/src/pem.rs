//! PEM files of certificates and private keys.
use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Says what is wrong with a PEM section, in a client's words: the PEM reader's own text,
/// or the Kafka client's shorter, escaped one (its `pem_problem`).
pub type PemWords = fn(&pem::Error) -> String;

/// The certificates of the PEM file at `path`, at least one. The error says what is wrong
/// with the file, for the caller to name it and its setting.
pub fn read_certificates(
    path: &Path,
    pem_words: PemWords,
) -> Result<Vec<CertificateDer<'static>>, String> {
    // Read first, so a missing file says "No such file" rather than a PEM error.
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    parse_certificates(&bytes, pem_words)
}

/// The certificates of a PEM file's contents, at least one.
pub fn parse_certificates(
    bytes: &[u8],
    pem_words: PemWords,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM file of certificates ({})", pem_words(&e)))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".to_owned());
    }
    Ok(certs)
}

/// The private key in a PEM file's contents. An encrypted key is for the caller to refuse
/// first, in its own words: the clients recognise different forms of it and advise
/// differently.
pub fn parse_key(bytes: &[u8], pem_words: PemWords) -> Result<PrivateKeyDer<'static>, String> {
    // PKCS#8 ("PRIVATE KEY"), PKCS#1 ("RSA PRIVATE KEY") and SEC1 ("EC PRIVATE KEY").
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            "no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in it".to_owned()
        }
        other => format!("not a PEM private key ({})", pem_words(&other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(e: &pem::Error) -> String {
        format!("words for {e}")
    }

    #[test]
    fn certificates_are_read_and_a_file_without_one_is_refused_in_the_callers_words() {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("self-signed");
        let two = format!("{}{}", cert.pem(), cert.pem());
        let certs = parse_certificates(two.as_bytes(), words).expect("two certificates");
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].as_ref(), cert.der().as_ref());
        assert_eq!(
            parse_certificates(b"", words).unwrap_err(),
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
        );
        let err = parse_certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n", words).unwrap_err();
        assert!(
            err.starts_with("not a PEM file of certificates (words for "),
            "{err}"
        );
        let dir = std::env::temp_dir().join("tls-common-no-such-dir");
        let err = read_certificates(&dir.join("ca.pem"), words).unwrap_err();
        assert!(err.contains("No such file"), "{err}");
    }

    #[test]
    fn keys_are_read_and_a_file_without_one_is_refused_in_the_callers_words() {
        let key = rcgen::KeyPair::generate().expect("key");
        assert!(parse_key(key.serialize_pem().as_bytes(), words).is_ok());
        assert_eq!(
            parse_key(b"not a key", words).unwrap_err(),
            "no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in it"
        );
        let err = parse_key(b"-----BEGIN PRIVATE KEY-----\nnot base64\n", words).unwrap_err();
        assert!(
            err.starts_with("not a PEM private key (words for "),
            "{err}"
        );
    }
}
