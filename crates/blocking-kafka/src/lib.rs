//! blocking-kafka: a Kafka client for one thread at a time, in plain blocking Rust.
pub mod admin;
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

pub use cluster::TopicState;
pub use consumer::{Assignment, Consumer, GroupSignal};
pub use error::KafkaError;
pub use group::{Generation, assign_range, encode_offset_commit};
pub use net::security::Security;
pub use net::settings::{
    ClientIdentity, Password, SaslMechanism, SaslSettings, SecurityError, SessionInfo,
    TlsSessionInfo, TlsSettings,
};
pub use producer::{Delivery, ProduceError, Producer};
pub use settings::{ConsumerSettings, ProducerSettings};
pub use types::{Offset, Partition, StartFrom};
pub use wire::batch::{BatchCompression, OutRecord, uncompressed_batch_len};
pub use wire::limits::RecordLimits;
pub use wire::message::{Message, Undecoded};
pub use wire::partitioner::{murmur2, partition_for_key};
