//! Bootstrap, metadata and one connection per broker, for one thread.
//!
//! The cluster knows which broker leads each partition of the client's topic and keeps a
//! connection to each broker it talks to. A failed connection is dropped and opened again
//! on next use, so every caller's retry is also a reconnect. "Any broker" (for metadata,
//! FindCoordinator, a producer id) is the best of every broker known, not only the
//! bootstrap servers: the [`BrokerBook`] ranks them by how they have been doing, and may be
//! shared by several threads of one client, each with its own `Cluster` (and sockets).
//!
//! A broker that refused us for a security reason (credentials, certificate) is not asked
//! again at every retry of every caller: for a backoff (1 s, doubling to 10 s) the same
//! refusal is returned without connecting, so a rotated password does not turn into a
//! stream of failed logins in the broker's log.
//!
//! - `book`: [`BrokerBook`], the brokers a client knows and their health.
pub(crate) mod book;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    ApiKey, MetadataRequest, MetadataResponse, TopicName, metadata_request::MetadataRequestTopic,
};
use kafka_protocol::protocol::StrBytes;

use crate::cluster::book::BrokerBook;
use crate::error::{KafkaError, check_code, printable};
use crate::net::conn::Connection;
use crate::net::interrupt::Interrupt;
use crate::net::security::Security;
use crate::net::settings::{SessionInfo, Timeouts};
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
    /// The brokers known (bootstrap, metadata) and their health; maybe shared.
    book: Arc<BrokerBook>,
    client_id: String,
    timeouts: Timeouts,
    /// Applied to every connection this cluster opens.
    security: Arc<Security>,
    /// Partition to the id of its leader (-1: none), from the last metadata answer.
    leaders: HashMap<Partition, i32>,
    /// Open connections by "host:port"; removed when they fail.
    conns: HashMap<String, Connection>,
    /// Brokers that refused us for a security reason: not asked again before `retry_at`.
    refused: HashMap<String, Refusal>,
    /// Where this cluster's sockets are registered for the owner of its thread to cut
    /// them (a cluster owned by a thread of the consumer); `None`: not interruptible.
    interrupt: Option<Arc<Interrupt>>,
}

struct Refusal {
    retry_at: Instant,
    backoff: Duration,
    error: KafkaError,
}

impl Cluster {
    /// A cluster of its own, knowing only `bootstrap` to begin with.
    pub fn new(
        bootstrap: Vec<String>,
        client_id: &str,
        timeouts: Timeouts,
        security: Arc<Security>,
    ) -> Cluster {
        Cluster::with_book(
            Arc::new(BrokerBook::new(bootstrap)),
            client_id,
            timeouts,
            security,
        )
    }

    /// A cluster sharing `book` with other threads of the same client (its connections
    /// are its own).
    pub fn with_book(
        book: Arc<BrokerBook>,
        client_id: &str,
        timeouts: Timeouts,
        security: Arc<Security>,
    ) -> Cluster {
        Cluster {
            book,
            client_id: client_id.to_owned(),
            timeouts,
            security,
            leaders: HashMap::new(),
            conns: HashMap::new(),
            refused: HashMap::new(),
            interrupt: None,
        }
    }

    /// Registers every socket this cluster opens with `interrupt` (see `net::interrupt`).
    pub fn interruptible(mut self, interrupt: Arc<Interrupt>) -> Cluster {
        self.set_interrupt(interrupt);
        self
    }

    /// Like `interruptible`, for a cluster already in use: connections open now are
    /// dropped, so that every socket from now on is registered.
    pub fn set_interrupt(&mut self, interrupt: Arc<Interrupt>) {
        self.conns.clear();
        self.interrupt = Some(interrupt);
    }

    pub fn servers(&self) -> String {
        self.book.servers()
    }

    pub fn timeout(&self) -> Duration {
        self.timeouts.request
    }

    /// A connection to any broker: an open one to a broker doing well, else each broker
    /// known (best first: see [`BrokerBook::candidates`]), else each bootstrap server.
    /// Fails with `Unreachable` naming the bootstrap servers and why each address failed.
    pub fn any(&mut self) -> Result<&mut Connection, KafkaError> {
        let open = self
            .conns
            .iter()
            .find(|(addr, c)| c.is_usable() && !self.book.is_failing(addr))
            .map(|(addr, _)| addr.clone());
        if let Some(addr) = open {
            return self.to(&addr);
        }
        let mut details = Vec::new();
        for addr in self.book.candidates() {
            if self.conns.get(&addr).is_some_and(Connection::is_usable) {
                return self.to(&addr);
            }
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
        match Connection::open(
            addr,
            &self.client_id,
            self.timeouts,
            &self.security,
            self.interrupt.as_deref(),
        ) {
            Ok(conn) => {
                if self.refused.remove(addr).is_some() {
                    // (A broker's address may come from metadata: the broker's text.)
                    log::info!("Kafka broker {} accepts us again", printable(addr));
                }
                Ok(conn)
            }
            Err(e) => {
                // The half-open socket's handle must not keep it open.
                if let Some(i) = &self.interrupt {
                    i.forget(addr);
                }
                self.book.failed(addr);
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
        if let Some(i) = &self.interrupt {
            i.forget(addr);
        }
    }

    /// Forgets a connection after `e`; a connection failure also counts against the
    /// broker, so "any broker" tries the others first for a while.
    pub fn failed(&mut self, addr: &str, e: &KafkaError) {
        self.drop_conn(addr);
        if e.is_connection() {
            self.book.failed(addr);
        }
    }

    /// Forgets every connection (after a broker outage, say).
    pub fn drop_all(&mut self) {
        self.conns.clear();
        if let Some(i) = &self.interrupt {
            i.forget_all();
        }
    }

    /// Asks for the topic's partitions and their leaders, and remembers the brokers.
    pub fn refresh(&mut self, topic: &str) -> Result<TopicState, KafkaError> {
        let conn = self.any()?;
        let addr = conn.addr().to_owned();
        let started = Instant::now();
        let result = (|| {
            let version = conn.version(ApiKey::Metadata, METADATA_VERSIONS)?;
            let request = metadata_request(topic);
            conn.call::<_, MetadataResponse>(ApiKey::Metadata, version, &request)
        })();
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                self.failed(&addr, &e);
                return Err(e);
            }
        };
        self.book.answered(&addr, started.elapsed());
        self.book.learn(
            response
                .brokers
                .iter()
                .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
                .collect::<BTreeMap<i32, String>>(),
        );
        self.leaders.clear();
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
        self.book.addr(*id)
    }

    /// Every partition of the last metadata answer with the address of its leader (`None`:
    /// no leader now, e.g. during an election).
    pub fn leaders(&self) -> BTreeMap<Partition, Option<String>> {
        self.leaders
            .iter()
            .map(|(p, id)| (*p, self.book.addr(*id)))
            .collect()
    }

    /// "host:port" of a broker by id, from a coordinator answer.
    pub fn remember_broker(&mut self, id: i32, addr: String) {
        self.book.remember(id, addr);
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
