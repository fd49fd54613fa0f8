//! What a client is configured with: the servers, the client id, deadlines and the one
//! `Security` of the program; for a consumer also its group, topic, timings, where to start
//! and how much of a record to hold. A producer's settings are derived from a consumer's
//! (`ProducerSettings::for_topic`), and the admin client takes a consumer's, so one
//! configuration serves every client of a program.
use std::sync::Arc;
use std::time::Duration;

use crate::net::security::Security;
use crate::types::StartFrom;
use crate::wire::limits::RecordLimits;

/// Where and how a consumer connects, the group it joins and the one topic it reads.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub bootstrap: Vec<String>,
    pub client_id: String,
    pub group_id: String,
    pub topic: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub fetch_max_wait: Duration,
    /// Deadline for ordinary requests (metadata, commits, heartbeats).
    pub request_timeout: Duration,
    pub start_from: StartFrom,
    /// TLS and SASL for every connection (bootstrap, brokers, coordinator).
    pub security: Arc<Security>,
    /// How much of a record a fetch holds: keys and values past the limit arrive cut, with
    /// their true length (`Message::value_len`).
    pub record_limits: RecordLimits,
}

/// Where and how a producer connects, and the one topic it writes to.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    pub bootstrap: Vec<String>,
    pub client_id: String,
    pub topic: String,
    /// Deadline of each request; the broker is given most of it to gather acknowledgements.
    pub request_timeout: Duration,
    /// The same TLS and SASL settings as every other connection of the program.
    pub security: Arc<Security>,
}

impl ProducerSettings {
    /// Settings for producing to `topic` with the consumer's servers, client id, request
    /// deadline and security (the same `Arc`, so one TLS/SASL configuration serves both).
    pub fn for_topic(consumer: &ConsumerSettings, topic: &str) -> ProducerSettings {
        ProducerSettings {
            bootstrap: consumer.bootstrap.clone(),
            client_id: consumer.client_id.clone(),
            topic: topic.to_owned(),
            request_timeout: consumer.request_timeout,
            security: consumer.security.clone(),
        }
    }
}
