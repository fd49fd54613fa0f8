//! blocking-kafka: a Kafka client in plain blocking Rust: consumer-group membership, fetch
//! with bounded memory, commits, an idempotent producer, an admin client for group offsets,
//! TLS and SASL/SCRAM. No async runtime, no C. The consumer is driven by one thread of its
//! caller; beneath it, threads of its own (a fetch thread per broker, a group thread, a
//! metadata thread) keep one broker's trouble from holding back the others.
//! README.md says what it speaks (APIs and versions), its security modes, its memory
//! bounds and what is deliberately absent.
//!
//! # Layout
//! Layers, bottom first; each imports only from the layers below it (`tests/layers.rs`
//! checks that from the source), errors at the bottom.
//!
//! - `error`: [`KafkaError`], every variant saying what to do. `types`: [`Partition`],
//!   [`Offset`], [`StartFrom`], [`Assignor`]. `backoff`: [`BackoffSettings`], exponential
//!   with jitter.
//! - `wire` (pure, no I/O): `message` ([`Message`]), `header` (a batch's framing),
//!   `limits` ([`RecordLimits`], the per-fetch budget, the work bound), `codec` (streaming
//!   decompression), `transactions` (aborted transactions, markers), `record` (one record),
//!   `legacy` (message formats v0 and v1), `decoder` (a partition's batches into messages),
//!   `batch` (batches out: [`OutRecord`]), `partitioner` ([`partition_for_key`]).
//! - `net` (one broker): `settings` ([`TlsSettings`], [`SaslSettings`], [`Password`],
//!   [`SessionInfo`]), `tls` (rustls on ring), `security` ([`Security`]), `body` (an answer
//!   read as it arrives), `throttle` (quotas, KIP-219), `interrupt` (a thread's sockets, for
//!   its owner to cut), `transport` (framing, deadlines, API versions), `scram` (pure),
//!   `sasl`, `conn` (the authenticated connection, renewed in band).
//! - `cluster`: bootstrap, metadata, a connection per broker ([`TopicState`]); `book`: the
//!   brokers known, shared by a client's threads, healthy ones first.
//! - `settings`: [`ConsumerSettings`], [`ProducerSettings`].
//! - Client roles: `fetch` (read_committed fetch, ListOffsets), `group` (membership, static
//!   members, commits: [`Generation`]; `assignor`: range and cooperative-sticky, pure),
//!   `producer` ([`Producer`]), [`admin`].
//! - `consumer`: [`Consumer`], the facade a caller drives; `events` ([`Event`]), `fetcher`
//!   (a broker's fetch thread), `coordinator` (the group thread), `metadata` (the metadata
//!   thread).
//!
//! `src/bin/consume.rs` is a small consumer on the public API (`blocking-kafka-consume`).
#![warn(missing_docs)]
pub mod admin;
mod backoff;
mod cluster;
mod consumer;
mod error;
mod fetch;
mod group;
mod net;
mod producer;
mod settings;
mod types;
mod wire;

pub use backoff::BackoffSettings;
pub use cluster::TopicState;
pub use consumer::events::Event;
pub use consumer::{Assignment, Change, CommitResult, Consumer, GroupSignal};
pub use error::KafkaError;
pub use group::{Generation, assign_range, encode_offset_commit};
pub use net::security::Security;
pub use net::settings::{
    ClientIdentity, Password, SaslMechanism, SaslSettings, SecurityError, SessionInfo,
    TlsSessionInfo, TlsSettings,
};
pub use producer::{Delivery, ProduceError, Produced, Producer, ProducerThread};
pub use settings::{ConsumerSettings, ProducerSettings};
pub use types::{Assignor, Offset, Partition, StartFrom};
pub use wire::batch::{BatchCompression, OutRecord, uncompressed_batch_len};
pub use wire::limits::RecordLimits;
pub use wire::message::{Message, Undecoded};
pub use wire::partitioner::{murmur2, partition_for_key};
