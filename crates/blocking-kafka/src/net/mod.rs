//! The connection to one broker: TCP, TLS, SASL, typed requests.
pub(crate) mod sasl;
pub(crate) mod settings;
pub(crate) mod tls;
pub(crate) mod transport;
