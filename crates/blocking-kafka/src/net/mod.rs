//! The connection to one broker: TCP, TLS, SASL, typed requests. Bottom first:
//!
//! - `settings`: what TLS and SASL are asked to do (`TlsSettings`, `SaslSettings`,
//!   `Password`), `SecurityError`, and `SessionInfo`; plain data.
//! - `tls`: rustls on ring: trust roots, mutual TLS, the handshake, errors in words; on
//!   `crates/tls-common` for what it shares with the PostgreSQL client.
//! - `security`: `Security`, the TLS context and SASL settings every connection applies.
//! - `body`: an answer's body, held whole or read as it arrives (`Body`).
//! - `throttle`: quotas (KIP-219): every answer's throttle time, and when to send again.
//! - `interrupt`: `Interrupt`, the sockets of one thread, for its owner to shut down.
//! - `transport`: one TCP or TLS stream: framing, correlation, deadlines, API versions.
//! - `scram`: the SCRAM client's messages and proofs (pure).
//! - `sasl`: SaslHandshake and SaslAuthenticate over a transport: PLAIN and SCRAM.
//! - `conn`: `Connection`, a transport authenticated with SASL and renewed in band.
//!
//! `fuzzing` exposes the readers of peer-controlled text and files to the fuzz targets.
pub(crate) mod body;
pub(crate) mod conn;
pub mod fuzzing;
pub(crate) mod interrupt;
pub(crate) mod sasl;
pub(crate) mod scram;
pub(crate) mod security;
pub(crate) mod settings;
pub(crate) mod throttle;
pub(crate) mod tls;
pub(crate) mod transport;
