//! How every connection to Kafka is secured: TLS and SASL, set up once and applied by
//! `Connection::open` to bootstrap, broker, coordinator and producer connections alike.
//!
//! `Security::default()` is PLAINTEXT: no TLS, no SASL.

/// The security settings every connection of one client uses.
#[derive(Debug, Default)]
pub struct Security {}

impl Security {
    /// No TLS, no SASL.
    pub fn plaintext() -> Security {
        Security::default()
    }
}
