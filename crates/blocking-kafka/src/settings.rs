//! What a client is configured with: the servers, the client id, deadlines and the one
//! `Security` of the program; for a consumer also its group, topic, timings, where to start
//! and how much of a record to hold. A producer's settings are derived from a consumer's
//! (`ProducerSettings::for_topic`), and the admin client takes a consumer's, so one
//! configuration serves every client of a program.
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::BackoffSettings;
use crate::net::security::Security;
use crate::net::settings::Timeouts;
use crate::types::{Assignor, StartFrom};
use crate::wire::limits::RecordLimits;

/// Where and how a consumer connects, the group it joins and the one topic it reads.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// "host:port" of brokers to learn the cluster from, tried in turn.
    pub bootstrap: Vec<String>,
    /// The client id every request carries (the broker's logs and quotas name it).
    pub client_id: String,
    /// The consumer group to join.
    pub group_id: String,
    /// `group.instance.id`: set, the consumer is a static member (KIP-345): restarted
    /// within the session timeout it takes its old place and partitions back without a
    /// rebalance. Every process needs its own; a second one with the same id fences the
    /// first (`KafkaError::FencedInstanceId`).
    pub group_instance_id: Option<String>,
    /// The partition assignment strategies offered, in order of preference
    /// (`partition.assignment.strategy`; never empty): see [`Assignor::DEFAULT`].
    pub assignors: Vec<Assignor>,
    /// The one topic to read.
    pub topic: String,
    /// How long the coordinator waits for a heartbeat before it drops the member.
    pub session_timeout: Duration,
    /// How long the coordinator waits for every member to rejoin in a rebalance.
    pub rebalance_timeout: Duration,
    /// How often to heartbeat (a third of the session timeout is usual).
    pub heartbeat_interval: Duration,
    /// How long the broker may hold a fetch that has nothing to return.
    pub fetch_max_wait: Duration,
    /// Deadline of every request (`request.timeout.ms`); a fetch may take its long-poll
    /// wait longer, a join the rebalance timeout, and a heartbeat at most the session.
    pub request_timeout: Duration,
    /// Deadline of a TCP connect and TLS handshake (`socket.connection.setup.timeout.ms`).
    pub connect_timeout: Duration,
    /// Between attempts of a request that failed but may succeed later: a metadata
    /// refresh, finding the coordinator (`retry.backoff.ms` → `retry.backoff.max.ms`).
    pub retry_backoff: BackoffSettings,
    /// Between attempts to reach a broker that could not be reached
    /// (`reconnect.backoff.ms` → `reconnect.backoff.max.ms`).
    pub reconnect_backoff: BackoffSettings,
    /// Where to start a partition without a committed offset (or with one out of range).
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
    /// "host:port" of brokers to learn the cluster from, tried in turn.
    pub bootstrap: Vec<String>,
    /// The client id every request carries.
    pub client_id: String,
    /// The one topic to write to.
    pub topic: String,
    /// Deadline of each request; the broker is given most of it to gather acknowledgements.
    pub request_timeout: Duration,
    /// Deadline of a TCP connect and TLS handshake.
    pub connect_timeout: Duration,
    /// The same TLS and SASL settings as every other connection of the program.
    pub security: Arc<Security>,
}

impl ConsumerSettings {
    /// The deadlines of every connection.
    pub(crate) fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.connect_timeout,
            request: self.request_timeout,
        }
    }
}

impl ProducerSettings {
    /// The deadlines of every connection.
    pub(crate) fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.connect_timeout,
            request: self.request_timeout,
        }
    }

    /// Settings for producing to `topic` with the consumer's servers, client id, request
    /// deadline and security (the same `Arc`, so one TLS/SASL configuration serves both).
    pub fn for_topic(consumer: &ConsumerSettings, topic: &str) -> ProducerSettings {
        ProducerSettings {
            bootstrap: consumer.bootstrap.clone(),
            client_id: consumer.client_id.clone(),
            topic: topic.to_owned(),
            request_timeout: consumer.request_timeout,
            connect_timeout: consumer.connect_timeout,
            security: consumer.security.clone(),
        }
    }
}
