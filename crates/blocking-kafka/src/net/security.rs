//! How every connection to Kafka is secured: TLS and SASL, set up once and applied by
//! `Connection::open` to bootstrap, broker, coordinator and producer connections alike.
//!
//! `Security::new` reads and checks every file once, at start (CA bundle, client certificate
//! and key), so a file that cannot be used stops the program before it talks to anyone.
//! `Security::default()` is PLAINTEXT: no TLS, no SASL.
use crate::net::settings::{SaslSettings, SecurityError, TlsSettings};
use crate::net::tls::TlsContext;

/// The security settings every connection of one client uses.
#[derive(Debug, Default)]
pub struct Security {
    /// `None`: plain TCP.
    tls: Option<TlsContext>,
    /// `None`: no SASL authentication after connecting.
    sasl: Option<SaslSettings>,
}

impl Security {
    /// No TLS, no SASL.
    pub fn plaintext() -> Security {
        Security::default()
    }

    /// Reads and checks the TLS files and sets up SASL. Errors name the variable and the file.
    pub fn new(
        tls: Option<TlsSettings>,
        sasl: Option<SaslSettings>,
    ) -> Result<Security, SecurityError> {
        let tls = tls.map(|t| TlsContext::new(&t)).transpose()?;
        Ok(Security { tls, sasl })
    }

    /// The name `KAFKA_SECURITY_PROTOCOL` uses for this combination.
    pub fn protocol(&self) -> &'static str {
        match (self.tls.is_some(), self.sasl.is_some()) {
            (false, false) => "PLAINTEXT",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        }
    }

    /// True when the broker's host name is not checked (`KAFKA_SSL_ENDPOINT_IDENTIFICATION=none`).
    pub fn skips_hostname_verification(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| !t.verify_hostname())
    }

    pub(crate) fn tls(&self) -> Option<&TlsContext> {
        self.tls.as_ref()
    }

    pub(crate) fn sasl(&self) -> Option<&SaslSettings> {
        self.sasl.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::settings::{Password, SaslMechanism};

    #[test]
    fn passwords_never_show_in_debug_output() {
        let p = Password::fixed("hunter2".into());
        assert!(!format!("{p:?}").contains("hunter2"));
        let s = Security::new(
            None,
            Some(SaslSettings {
                mechanism: SaslMechanism::ScramSha512,
                username: "alice".into(),
                password: p,
            }),
        )
        .expect("no files to read");
        let text = format!("{s:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("alice"), "{text}");
        assert_eq!(s.protocol(), "SASL_PLAINTEXT");
    }
}
