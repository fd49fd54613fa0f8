//! blocking-postgres: a small PostgreSQL client for one thread at a time, in plain
//! blocking Rust: no async runtime, no C. TLS on rustls (ring) with libpq's `sslmode`
//! rules, SCRAM-SHA-256(-PLUS), MD5, prepared statements on the extended protocol, and
//! memory bounded whatever the server sends. See README.md.
//!
//! # Layout
//! Layers import only downward:
//! - `error.rs`: [`Error`], [`DbError`] (the server's ErrorResponse) and [`Class`]
//!   (transient or permanent). Imports nothing of the crate.
//! - `config.rs`: [`Config`] (libpq's parameters), [`SslMode`], [`RootCerts`],
//!   [`ChannelBinding`], [`Password`].
//! - `types.rs`: [`Type`], [`Timestamp`], [`ToSql`], [`FromSql`]: values in binary format.
//! - `row.rs`: [`Statement`], [`Column`], [`Row`], [`SimpleRow`].
//! - `auth.rs`: SCRAM-SHA-256(-PLUS) and MD5, pure, secrets zeroized.
//! - `tls.rs`: the rustls setup per `sslmode`, verifiers, TLS errors in words, the
//!   channel-binding hash; `Stream` (plain or TLS). What it shares with the Kafka client
//!   (the chain-only verifier, PEM readers, words, `Stream`) is in `crates/tls-common`.
//! - `wire.rs`: framing with length bounds; the start-up deadline and I/O timeout.
//! - `client.rs`: [`Connector`] and [`Client`]: start-up, authentication, simple and
//!   extended queries, the connection's state.
//! - `transaction.rs`: [`Transaction`].
//! - `pool.rs`: [`Manager`], for r2d2 (feature `r2d2`).
mod auth;
mod client;
mod config;
mod error;
#[cfg(feature = "r2d2")]
mod pool;
mod row;
mod tls;
mod transaction;
mod types;
mod wire;

pub use client::{
    AuthMethod, Client, Connector, Isolation, Session, ToStatement, TransactionStatus,
};
pub use config::{
    ChannelBinding, Config, MAX_MESSAGE_LEN_BEFORE_AUTH, Password, RootCerts, SslMode,
};
pub use error::{Class, DbError, Error};
#[cfg(feature = "r2d2")]
pub use pool::Manager;
pub use row::{Column, Row, SimpleRow, Statement};
pub use tls::TlsInfo;
pub use transaction::Transaction;
pub use types::{FromSql, Timestamp, ToSql, Type};
