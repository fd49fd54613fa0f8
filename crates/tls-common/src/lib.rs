//! tls-common: the TLS code that the workspace's two clients, `blocking-kafka` and
//! `blocking-postgres`, share. Both run rustls on the ring provider and both use this crate;
//! it holds one copy of what is the same logic in both, and nothing of either client.
//!
//! What differs stays with each client: its settings, which checks a mode asks for, and the
//! advice in its error messages (a Kafka operator is told about `KAFKA_SSL_CA_LOCATION`, a
//! PostgreSQL one about `sslrootcert`). Where a shared function needs words that differ, the
//! client passes them in, so every message reads as it did before this crate existed.
//!
//! # Layout
//! - `verify.rs`: [`ChainOnlyVerifier`], which checks the chain but not the host name.
//! - `pem.rs`: [`read_certificates`], [`parse_certificates`], [`parse_key`]: PEM files of
//!   certificates and private keys, with a client's [`PemWords`] for a malformed section.
//! - `words.rs`: rustls' findings in sentences: [`certificate_problem`] (those that need no
//!   client's advice), [`presented_name`], [`alert_words`], [`version_and_cipher_suite`].
//! - `stream.rs`: [`Stream`], a connection's socket, plain or TLS, and [`Session`], what a
//!   client's TLS stream offers it.
//! - `der.rs`: [`der::tlv`], one DER tag-length-value, beneath the clients' display-only
//!   certificate readers.
pub mod der;
mod pem;
mod stream;
mod verify;
mod words;

pub use pem::{PemWords, parse_certificates, parse_key, read_certificates};
pub use stream::{Session, Stream};
pub use verify::ChainOnlyVerifier;
pub use words::{alert_words, certificate_problem, presented_name, version_and_cipher_suite};
