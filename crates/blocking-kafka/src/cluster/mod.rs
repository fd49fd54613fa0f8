//! Bootstrap, metadata and one connection per broker.
//!
//! The cluster knows which broker leads each partition of the client's topic and keeps a
//! connection to each broker it talks to. A failed connection is dropped and opened again
//! on next use, so every caller's retry is also a reconnect.
//!
//! A broker that refused us for a security reason (credentials, certificate) is not asked
//! again at every retry of every caller: for a backoff (1 s, doubling to 10 s) the same
//! refusal is returned without connecting, so a rotated password does not turn into a
//! stream of failed logins in the broker's log.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    ApiKey, MetadataRequest, MetadataResponse, TopicName, metadata_request::MetadataRequestTopic,
};
use kafka_protocol::protocol::StrBytes;

use crate::error::{KafkaError, check_code};
use crate::net::conn::Connection;
use crate::net::security::Security;
use crate::net::settings::SessionInfo;
use crate::types::Partition;

/// From 4: the first version that can say "do not create the topic" (Kafka 1.0 and later).
const METADATA_VERSIONS: (i16, i16) = (4, 9);
const REFUSAL_BACKOFF_MIN: Duration = Duration::from_secs(1);
const REFUSAL_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What the cluster says about the client's topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    /// The topic does not exist (yet).
    Missing,
    /// The topic's partitions, sorted.
    Partitions(Vec<Partition>),
}

pub struct Cluster {
    bootstrap: Vec<String>,
    client_id: String,
    timeout: Duration,
    /// Applied to every connection this cluster opens.
    security: Arc<Security>,
    /// Broker id to "host:port", from the last metadata answer.
    brokers: HashMap<i32, String>,
    /// Partition to the id of its leader, from the last metadata answer.
    leaders: HashMap<Partition, i32>,
    /// Open connections by "host:port"; removed when they fail.
    conns: HashMap<String, Connection>,
    /// Brokers that refused us for a security reason: not asked again before `retry_at`.
    refused: HashMap<String, Refusal>,
}

struct Refusal {
    retry_at: Instant,
    backoff: Duration,
    error: KafkaError,
}

impl Cluster {
    pub fn new(
        bootstrap: Vec<String>,
        client_id: &str,
        timeout: Duration,
        security: Arc<Security>,
    ) -> Cluster {
        Cluster {
            bootstrap,
            client_id: client_id.to_owned(),
            timeout,
            security,
            brokers: HashMap::new(),
            leaders: HashMap::new(),
            conns: HashMap::new(),
            refused: HashMap::new(),
        }
    }

    pub fn servers(&self) -> String {
        self.bootstrap.join(",")
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A connection to any broker: an open one, else each known broker, else each
    /// bootstrap server in turn. Fails with `Unreachable` naming the servers.
    pub fn any(&mut self) -> Result<&mut Connection, KafkaError> {
        if let Some(addr) = self.conns.keys().next().cloned() {
            return self.to(&addr);
        }
        let mut candidates: Vec<String> = self.brokers.values().cloned().collect();
        candidates.extend(self.bootstrap.iter().cloned());
        let mut details = Vec::new();
        for addr in candidates {
            match self.open(&addr) {
                Ok(conn) => {
                    self.conns.insert(addr.clone(), conn);
                    return self.to(&addr);
                }
                // Credentials or certificates the cluster refuses: every broker of it will
                // say the same, and the operator needs this reason, not "unreachable".
                Err(e) if e.is_security() => return Err(e),
                Err(e) => details.push(short_reason(&addr, &e)),
            }
        }
        Err(KafkaError::Unreachable {
            servers: self.servers(),
            detail: details.join("; "),
        })
    }

    /// The connection to one broker, opened if needed (or if the last one broke).
    pub fn to(&mut self, addr: &str) -> Result<&mut Connection, KafkaError> {
        if self.conns.get(addr).is_some_and(|c| !c.is_usable()) {
            self.conns.remove(addr);
        }
        if !self.conns.contains_key(addr) {
            let conn = self.open(addr)?;
            self.conns.insert(addr.to_owned(), conn);
        }
        self.conns
            .get_mut(addr)
            .ok_or_else(|| KafkaError::Protocol {
                broker: addr.to_owned(),
                detail: "connection vanished".into(),
            })
    }

    /// What the connection to some broker negotiated (TLS, SASL), for `check`.
    pub fn session_info(&mut self) -> Result<SessionInfo, KafkaError> {
        Ok(self.any()?.session_info())
    }

    /// Opens a connection, unless the broker refused us for a security reason within the
    /// backoff: then the same refusal, without asking it again.
    fn open(&mut self, addr: &str) -> Result<Connection, KafkaError> {
        let now = Instant::now();
        if let Some(refusal) = self.refused.get(addr)
            && now < refusal.retry_at
            && let Some(e) = refusal.error.clone_security()
        {
            return Err(e);
        }
        match Connection::open(addr, &self.client_id, self.timeout, &self.security) {
            Ok(conn) => {
                if self.refused.remove(addr).is_some() {
                    log::info!("Kafka broker {addr} accepts us again");
                }
                Ok(conn)
            }
            Err(e) => {
                if let Some(copy) = e.clone_security() {
                    let backoff = self.refused.get(addr).map_or(REFUSAL_BACKOFF_MIN, |r| {
                        (r.backoff * 2).min(REFUSAL_BACKOFF_MAX)
                    });
                    self.refused.insert(
                        addr.to_owned(),
                        Refusal {
                            retry_at: now + backoff,
                            backoff,
                            error: copy,
                        },
                    );
                }
                Err(e)
            }
        }
    }

    /// Forgets a connection after an error, so the next use reconnects.
    pub fn drop_conn(&mut self, addr: &str) {
        self.conns.remove(addr);
    }

    /// Forgets every connection (after a broker outage, say).
    pub fn drop_all(&mut self) {
        self.conns.clear();
    }

    /// Asks for the topic's partitions and their leaders, and remembers the brokers.
    pub fn refresh(&mut self, topic: &str) -> Result<TopicState, KafkaError> {
        let conn = self.any()?;
        let addr = conn.addr().to_owned();
        let result = (|| {
            let version = conn.version(ApiKey::Metadata, METADATA_VERSIONS)?;
            let request = metadata_request(topic);
            conn.call::<_, MetadataResponse>(ApiKey::Metadata, version, &request)
        })();
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                self.drop_conn(&addr);
                return Err(e);
            }
        };
        self.brokers = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let Some(t) = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        else {
            return Ok(TopicState::Missing);
        };
        // UNKNOWN_TOPIC_OR_PARTITION (3): the topic is not there. Anything else is an error.
        if t.error_code == 3 {
            return Ok(TopicState::Missing);
        }
        check_code("Metadata", t.error_code)?;
        self.leaders = t
            .partitions
            .iter()
            .map(|p| (Partition(p.partition_index), p.leader_id.0))
            .collect();
        let mut partitions: Vec<Partition> = self.leaders.keys().copied().collect();
        partitions.sort();
        if partitions.is_empty() {
            return Ok(TopicState::Missing);
        }
        Ok(TopicState::Partitions(partitions))
    }

    /// "host:port" of the partition's leader, if the last metadata named a live one.
    pub fn leader(&self, partition: Partition) -> Option<String> {
        let id = self.leaders.get(&partition)?;
        self.brokers.get(id).cloned()
    }

    /// "host:port" of a broker by id, from the last metadata or a coordinator answer.
    pub fn remember_broker(&mut self, id: i32, addr: String) {
        self.brokers.insert(id, addr);
    }
}

/// Metadata of the one topic, never creating it: the worker must not create a topic by
/// typo, so a missing topic is reported instead.
fn metadata_request(topic: &str) -> MetadataRequest {
    MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_owned())),
        ))]))
        .with_allow_auto_topic_creation(false)
}

/// "host:port: reason" without the advice, for the list inside `Unreachable`.
fn short_reason(addr: &str, e: &KafkaError) -> String {
    match e {
        KafkaError::Io { source, .. } => format!("{addr}: {source}"),
        KafkaError::Timeout { after, .. } => format!("{addr}: no answer within {after:?}"),
        other => format!("{addr}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::protocol::Encodable;

    #[test]
    fn the_metadata_request_encodes_at_every_version_we_negotiate() {
        // allow_auto_topic_creation exists from version 4: below it, "false" cannot be sent.
        for v in METADATA_VERSIONS.0..=METADATA_VERSIONS.1 {
            let mut buf = BytesMut::new();
            if let Err(e) = metadata_request("t").encode(&mut buf, v) {
                panic!("Metadata v{v} cannot be encoded: {e}");
            }
        }
    }
}
