//! Producing records on our own connection layer: Produce (v3 and later) with acks=all,
//! record batches we encode ourselves (`batch`), keys placed by the Java client's
//! partitioner (`partitioner`), and idempotence when the cluster allows it.
//!
//! (The worker uses it for its dead-letter topic and its `send` command.) Every connection
//! goes through `Cluster`/`Connection` with the same `Security` as the consumer's, so TLS
//! and SASL apply here without a line of their own.
//!
//! Idempotence: the producer asks for a producer id (InitProducerId) and stamps each batch
//! with it, its epoch, and a sequence number per partition. A batch whose answer was lost
//! (an outage, a timeout) is kept "in doubt" and resent byte for byte, same sequence, when
//! the caller retries the same record, so the broker writes it at most once. A cluster
//! that refuses idempotence (CLUSTER_AUTHORIZATION_FAILED on clusters older than Kafka 2.8
//! without the IdempotentWrite ACL) gets plain batches, said once in the log.
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
    TopicName,
    produce_request::{PartitionProduceData, TopicProduceData},
};
use kafka_protocol::protocol::StrBytes;

use crate::cluster::{Cluster, TopicState};
use crate::error::KafkaError;
use crate::net::interrupt::Interrupt;
use crate::settings::ProducerSettings;
use crate::types::{Offset, Partition};
use crate::wire::batch::{BatchCompression, OutRecord, ProducerStamp, encode_batch};
use crate::wire::partitioner::partition_for_key;

/// Where a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The partition the record went to (its key's, or the next in turn without a key).
    pub partition: Partition,
    /// `None` when the broker answered a resent batch as a duplicate: the record is in the
    /// log (written by the attempt whose answer was lost), at an offset it did not repeat.
    pub offset: Option<Offset>,
}

/// Why a record was not written.
#[derive(Debug)]
pub enum ProduceError {
    /// The topic does not exist (yet).
    TopicMissing {
        /// The topic.
        topic: String,
        /// The bootstrap servers asked.
        servers: String,
    },
    /// Kafka could not be asked, or did not answer: an outage, a timeout.
    Kafka(KafkaError),
    /// The broker answered with an error code for the record.
    Broker {
        /// The topic.
        topic: String,
        /// The partition, when the answer was about one.
        partition: Option<Partition>,
        /// Kafka's error code.
        code: i16,
        /// The broker's own words (Produce v8 and later), when it gave any.
        message: Option<String>,
        /// The answer carried a throttle time: the client is over a quota.
        throttled: bool,
    },
    /// The record is larger than a record batch can be.
    TooLarge {
        /// The record's size as one uncompressed batch.
        bytes: usize,
    },
}

/// A producer for one topic, owned by one thread: acks=all, idempotent when the cluster
/// allows it, one record per batch, each `send` waiting for its answer.
pub struct Producer {
    settings: ProducerSettings,
    cluster: Cluster,
    /// The topic's partition count from the last metadata answer; `None`: ask before the
    /// next send (at first, and after an answer that says the metadata is stale).
    partitions: Option<usize>,
    /// When `partitions` was learned; older than `METADATA_MAX_AGE` is asked again, so
    /// partitions added to the topic are used.
    metadata_at: Instant,
    identity: Identity,
    /// The next sequence number per partition, for the current producer id.
    sequences: HashMap<Partition, i32>,
    /// The last batch sent whose outcome is unknown; cleared by any definite answer.
    in_doubt: Option<InDoubt>,
    /// Round robin over partitions for records without a key, from a random start.
    next_unkeyed: usize,
    /// Whether the fallback to plain (non-idempotent) batches has been logged.
    said_plain: bool,
}

const PRODUCE_VERSIONS: (i16, i16) = (3, 12);
const INIT_PRODUCER_ID_VERSIONS: (i16, i16) = (0, 4);
/// acks=all: the leader answers once every in-sync replica has the batch.
const ACKS_ALL: i16 = -1;
/// As the Java client's `metadata.max.age.ms`.
const METADATA_MAX_AGE: Duration = Duration::from_secs(300);
/// Attempts within one `send` for answers that a fresh look fixes at once (stale metadata,
/// a connection the broker closed while idle, a new producer id). Timeouts are never
/// retried inside `send`: the caller decides how long it can block.
const ATTEMPTS: usize = 3;
/// For the InitProducerId request; brokers ignore it for a producer without a
/// transactional id. The Java client's default `transaction.timeout.ms`.
const TRANSACTION_TIMEOUT_MS: i32 = 60_000;

// Error codes the producer acts on itself.
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const MESSAGE_TOO_LARGE: i16 = 10;
const RECORD_LIST_TOO_LARGE: i16 = 18;
const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
const INVALID_TIMESTAMP: i16 = 32;
const UNSUPPORTED_VERSION: i16 = 35;
const POLICY_VIOLATION: i16 = 44;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
const SECURITY_DISABLED: i16 = 54;
const UNKNOWN_PRODUCER_ID: i16 = 59;
const FENCED_LEADER_EPOCH: i16 = 74;
const UNKNOWN_LEADER_EPOCH: i16 = 75;
const INVALID_RECORD: i16 = 87;
const PRODUCER_FENCED: i16 = 90;

/// Whether batches carry a producer id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// Not asked yet, or to be asked again (the broker forgot or fenced our id).
    Unknown,
    Idempotent {
        producer_id: i64,
        epoch: i16,
    },
    /// The cluster refused idempotence: plain batches, no duplicate detection.
    Plain,
}

/// A batch that was (or may have been) sent without a definite answer.
struct InDoubt {
    record: OutRecord,
    compression: BatchCompression,
    partition: Partition,
    stamp: ProducerStamp,
    batch: Bytes,
}

/// What the producer makes of one Produce answer's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Written (0), or written before by an attempt whose answer was lost (46).
    Written { duplicate: bool },
    /// The metadata is stale (leader moved, topic gone): look again and resend.
    Stale,
    /// The broker forgot or fenced our producer id, or saw a gap in our sequence: the
    /// batch was not written; get a new id and send it as a new batch.
    NewIdentity,
    /// The cluster does not allow idempotent writes: send plain batches.
    NoIdempotence,
    /// May clear by itself (timeouts, too few in-sync replicas): the caller retries later.
    Transient,
    /// Will be refused again, whatever we wait for.
    Permanent,
}

/// How one attempt inside `send` ended, when it did not write the record.
enum Attempt {
    /// Worth another attempt at once.
    Again(ProduceError),
    /// Give the error to the caller.
    Fail(ProduceError),
}

/// A [`Producer`] on a thread of its own, for a caller that must not wait for a broker:
/// [`ProducerThread::send`] queues a record and returns at once, and its outcome comes on
/// [`ProducerThread::results`], in order. Sending the same record again after an outcome
/// that left its fate unknown resends the same batch, as with `Producer::send`. Dropping it
/// stops the thread at once (its sockets are shut down) and joins it.
pub struct ProducerThread {
    requests: Option<Sender<(u64, OutRecord, BatchCompression)>>,
    results: Receiver<Produced>,
    interrupt: Arc<Interrupt>,
    thread: Option<JoinHandle<()>>,
}

/// The outcome of a record sent with [`ProducerThread::send`].
#[derive(Debug)]
pub struct Produced {
    /// The caller's number for the record.
    pub id: u64,
    /// Where it was written, or why not.
    pub result: Result<Delivery, ProduceError>,
}

impl ProducerThread {
    /// Queues `record` (the caller's number `id` comes back with its outcome). False when
    /// the thread is gone.
    pub fn send(&self, id: u64, record: OutRecord, compression: BatchCompression) -> bool {
        self.requests
            .as_ref()
            .is_some_and(|tx| tx.send((id, record, compression)).is_ok())
    }

    /// The outcomes, in the order the records were sent; a caller's event loop may select
    /// on it.
    pub fn results(&self) -> &Receiver<Produced> {
        &self.results
    }
}

impl Drop for ProducerThread {
    fn drop(&mut self) {
        self.requests = None;
        self.interrupt.interrupt();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("the producer's thread panicked");
        }
    }
}

impl ProduceError {
    /// True when Kafka refused this record for a reason retrying will not cure (too large,
    /// invalid, not authorized, against a policy); false when waiting may help (outage,
    /// leader election, missing topic, too few replicas).
    pub fn is_permanent(&self) -> bool {
        match self {
            ProduceError::TopicMissing { .. } | ProduceError::Kafka(_) => false,
            ProduceError::TooLarge { .. } => true,
            ProduceError::Broker {
                code, throttled, ..
            } => classify_answer(*code, *throttled) == Outcome::Permanent,
        }
    }
}

impl Producer {
    /// A producer for `settings.topic`; it connects on first use.
    pub fn new(settings: ProducerSettings) -> Producer {
        let cluster = Cluster::new(
            settings.bootstrap.clone(),
            &settings.client_id,
            settings.timeouts(),
            settings.security.clone(),
        );
        Producer {
            settings,
            cluster,
            partitions: None,
            metadata_at: Instant::now(),
            identity: Identity::Unknown,
            sequences: HashMap::new(),
            in_doubt: None,
            next_unkeyed: rand::random::<u16>() as usize,
            said_plain: false,
        }
    }

    /// The topic it writes to.
    pub fn topic(&self) -> &str {
        &self.settings.topic
    }

    /// Moves the producer to a thread of its own (named `name`), which sends what it is
    /// given one record at a time.
    pub fn spawn(mut self, name: &str) -> std::io::Result<ProducerThread> {
        let interrupt = Arc::new(Interrupt::default());
        self.cluster.set_interrupt(interrupt.clone());
        let (requests, incoming) =
            crossbeam_channel::unbounded::<(u64, OutRecord, BatchCompression)>();
        let (outcomes, results) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while let Ok((id, record, compression)) = incoming.recv() {
                    let result = self.send(&record, compression);
                    if outcomes.send(Produced { id, result }).is_err() {
                        return;
                    }
                }
            })?;
        Ok(ProducerThread {
            requests: Some(requests),
            results,
            interrupt,
            thread: Some(thread),
        })
    }

    /// Whether the topic exists, and its partitions (asks the cluster now).
    pub fn topic_state(&mut self) -> Result<TopicState, KafkaError> {
        let state = self.cluster.refresh(&self.settings.topic)?;
        self.partitions = match &state {
            TopicState::Partitions(p) => Some(p.len()),
            TopicState::Missing => None,
        };
        self.metadata_at = Instant::now();
        Ok(state)
    }

    /// Writes one record, stamped with the current time (CreateTime), and waits until every
    /// in-sync replica has it. Retrying the same record after an error that left its fate
    /// unknown resends the same batch, which an idempotent producer's broker writes once.
    pub fn send(
        &mut self,
        record: &OutRecord,
        compression: BatchCompression,
    ) -> Result<Delivery, ProduceError> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match self.attempt(record, compression) {
                Ok(delivery) => return Ok(delivery),
                Err(Attempt::Again(e)) => {
                    log::debug!("producing to {}: {e}; trying again", self.settings.topic);
                    last = Some(e);
                }
                Err(Attempt::Fail(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ProduceError::Kafka(self.unreachable("no attempt made"))))
    }

    fn attempt(
        &mut self,
        record: &OutRecord,
        compression: BatchCompression,
    ) -> Result<Delivery, Attempt> {
        let count = self.partition_count()?;
        self.settle_doubt(record, compression);
        if self.identity == Identity::Unknown {
            self.init_identity()?;
        }
        let (partition, stamp, batch) = match &self.in_doubt {
            Some(d) => (d.partition, d.stamp, d.batch.clone()),
            None => {
                let partition = match &record.key {
                    Some(key) => partition_for_key(key, count),
                    None => {
                        self.next_unkeyed = self.next_unkeyed.wrapping_add(1);
                        Partition(i32::try_from(self.next_unkeyed % count).unwrap_or(0))
                    }
                };
                let stamp = match self.identity {
                    Identity::Idempotent { producer_id, epoch } => ProducerStamp {
                        producer_id,
                        epoch,
                        sequence: self.sequences.get(&partition).copied().unwrap_or(0),
                    },
                    Identity::Unknown | Identity::Plain => ProducerStamp::NONE,
                };
                let batch =
                    encode_batch(std::slice::from_ref(record), now_ms(), stamp, compression)
                        .map_err(|e| Attempt::Fail(ProduceError::TooLarge { bytes: e.bytes }))?;
                self.in_doubt = Some(InDoubt {
                    record: record.clone(),
                    compression,
                    partition,
                    stamp,
                    batch: batch.clone(),
                });
                (partition, stamp, batch)
            }
        };
        let Some(addr) = self.cluster.leader(partition) else {
            self.partitions = None;
            return Err(Attempt::Again(self.broker_error(
                Some(partition),
                LEADER_NOT_AVAILABLE,
                None,
                false,
            )));
        };
        let (code, base_offset, message, throttled) = self.produce(&addr, partition, batch)?;
        match classify_answer(code, throttled) {
            Outcome::Written { duplicate } => {
                self.in_doubt = None;
                if stamp != ProducerStamp::NONE {
                    self.sequences
                        .insert(partition, next_sequence(stamp.sequence, 1));
                }
                Ok(Delivery {
                    partition,
                    offset: (!duplicate).then_some(Offset(base_offset)),
                })
            }
            Outcome::Stale => {
                self.partitions = None;
                Err(Attempt::Again(self.broker_error(
                    Some(partition),
                    code,
                    message,
                    throttled,
                )))
            }
            Outcome::NewIdentity => {
                // Not written: a new id starts every sequence at 0, and the record goes as
                // a new batch (its duplicate detection restarts with it).
                log::debug!(
                    "Kafka answered error code {code} to producer {}: asking for a new producer id",
                    stamp.producer_id
                );
                self.forget_identity();
                Err(Attempt::Again(self.broker_error(
                    Some(partition),
                    code,
                    message,
                    throttled,
                )))
            }
            Outcome::NoIdempotence => {
                self.in_doubt = None;
                self.go_plain(code);
                Err(Attempt::Again(self.broker_error(
                    Some(partition),
                    code,
                    message,
                    throttled,
                )))
            }
            Outcome::Transient => Err(Attempt::Fail(self.broker_error(
                Some(partition),
                code,
                message,
                throttled,
            ))),
            Outcome::Permanent => {
                // Refused, so not written: its sequence number is free for the next batch.
                self.in_doubt = None;
                Err(Attempt::Fail(self.broker_error(
                    Some(partition),
                    code,
                    message,
                    throttled,
                )))
            }
        }
    }

    /// The topic's partition count, from metadata asked for when missing or old.
    fn partition_count(&mut self) -> Result<usize, Attempt> {
        if let Some(n) = self.partitions
            && self.metadata_at.elapsed() < METADATA_MAX_AGE
        {
            return Ok(n);
        }
        match self.topic_state() {
            Ok(TopicState::Partitions(p)) if !p.is_empty() => Ok(p.len()),
            Ok(_) => Err(Attempt::Fail(ProduceError::TopicMissing {
                topic: self.settings.topic.clone(),
                servers: self.cluster.servers(),
            })),
            Err(KafkaError::Broker { code, .. }) if classify(code) == Outcome::Permanent => {
                Err(Attempt::Fail(self.broker_error(None, code, None, false)))
            }
            Err(e) => Err(self.after_kafka_error(e)),
        }
    }

    /// A batch in doubt is resent only for the same record. For any other record its fate
    /// stays unknown forever, and with it whether its sequence number was used: a new
    /// producer id starts clean, so the next batch is never taken for its duplicate.
    fn settle_doubt(&mut self, record: &OutRecord, compression: BatchCompression) {
        let Some(d) = &self.in_doubt else { return };
        let same = d.record == *record && d.compression == compression;
        let current = match self.identity {
            Identity::Idempotent { producer_id, epoch } => {
                d.stamp.producer_id == producer_id && d.stamp.epoch == epoch
            }
            Identity::Plain => d.stamp == ProducerStamp::NONE,
            Identity::Unknown => false,
        };
        if same && current {
            return;
        }
        if !same && d.stamp != ProducerStamp::NONE {
            log::debug!(
                "a batch to {} partition {} was left unanswered and is not being resent; starting a new producer id",
                self.settings.topic,
                d.partition
            );
            self.forget_identity();
        }
        self.in_doubt = None;
    }

    fn forget_identity(&mut self) {
        if self.identity != Identity::Plain {
            self.identity = Identity::Unknown;
        }
        self.sequences.clear();
        self.in_doubt = None;
    }

    /// Asks any broker for a producer id (InitProducerId without a transactional id).
    fn init_identity(&mut self) -> Result<(), Attempt> {
        let conn = self
            .cluster
            .any()
            .map_err(|e| Attempt::Fail(ProduceError::Kafka(e)))?;
        let addr = conn.addr().to_owned();
        let version = match conn.version(ApiKey::InitProducerId, INIT_PRODUCER_ID_VERSIONS) {
            Ok(v) => v,
            Err(_) => {
                self.go_plain(UNSUPPORTED_VERSION);
                return Ok(());
            }
        };
        let request = init_producer_id_request();
        let response =
            match conn.call::<_, InitProducerIdResponse>(ApiKey::InitProducerId, version, &request)
            {
                Ok(r) => r,
                Err(e) => {
                    self.cluster.drop_conn(&addr);
                    return Err(self.after_kafka_error(e));
                }
            };
        match response.error_code {
            0 => {
                self.identity = Identity::Idempotent {
                    producer_id: response.producer_id.0,
                    epoch: response.producer_epoch,
                };
                self.sequences.clear();
                log::debug!(
                    "producing to {} as idempotent producer {} (epoch {})",
                    self.settings.topic,
                    response.producer_id.0,
                    response.producer_epoch
                );
                Ok(())
            }
            code if ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable()) => {
                Err(Attempt::Fail(ProduceError::Kafka(KafkaError::Broker {
                    what: "InitProducerId",
                    code,
                })))
            }
            code => {
                self.go_plain(code);
                Ok(())
            }
        }
    }

    /// From now on, plain batches; said once per producer.
    fn go_plain(&mut self, code: i16) {
        self.identity = Identity::Plain;
        self.sequences.clear();
        if !self.said_plain {
            self.said_plain = true;
            log::warn!(
                "Kafka refused an idempotent producer for topic {} ({}); producing without idempotence, so a record whose acknowledgement is lost in an outage may be written twice (grant the IdempotentWrite permission on the cluster, or use Kafka 2.8 or later, to turn it on)",
                self.settings.topic,
                code_name(code)
            );
        }
    }

    /// One Produce request with one batch; returns the partition's error code, base offset
    /// and error message, and whether the broker throttled the answer.
    fn produce(
        &mut self,
        addr: &str,
        partition: Partition,
        batch: Bytes,
    ) -> Result<(i16, i64, Option<String>, bool), Attempt> {
        let timeout = self.settings.request_timeout;
        let topic = self.settings.topic.clone();
        let result = self.cluster.to(addr).and_then(|conn| {
            let version = conn.version(ApiKey::Produce, PRODUCE_VERSIONS)?;
            let request = produce_request(&topic, partition, batch, timeout);
            conn.call_with_timeout::<_, ProduceResponse>(
                ApiKey::Produce,
                version,
                &request,
                timeout,
            )
        });
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                self.cluster.drop_conn(addr);
                return Err(self.after_kafka_error(e));
            }
        };
        let answer = response
            .responses
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| &t.partition_responses)
            .find(|p| p.index == partition.0);
        match answer {
            Some(p) => Ok((
                p.error_code,
                p.base_offset,
                p.error_message.as_ref().map(|m| m.to_string()),
                response.throttle_time_ms > 0,
            )),
            None => Err(Attempt::Fail(ProduceError::Kafka(KafkaError::Protocol {
                broker: addr.to_owned(),
                detail: format!("Produce answer does not mention {topic} partition {partition}"),
            }))),
        }
    }

    /// A connection error: a connection the broker closed (while we were idle, say) is worth
    /// one fresh attempt at once; anything else is the caller's to retry later.
    fn after_kafka_error(&mut self, e: KafkaError) -> Attempt {
        self.partitions = None;
        match &e {
            KafkaError::Io { source, .. }
                if !matches!(
                    source.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                Attempt::Again(ProduceError::Kafka(e))
            }
            _ => Attempt::Fail(ProduceError::Kafka(e)),
        }
    }

    fn broker_error(
        &self,
        partition: Option<Partition>,
        code: i16,
        message: Option<String>,
        throttled: bool,
    ) -> ProduceError {
        ProduceError::Broker {
            topic: self.settings.topic.clone(),
            partition,
            code,
            message: message.filter(|m| !m.is_empty()),
            throttled,
        }
    }

    fn unreachable(&self, detail: &str) -> KafkaError {
        KafkaError::Unreachable {
            servers: self.cluster.servers(),
            detail: detail.to_owned(),
        }
    }
}

/// A producer id without a transactional id: idempotence only.
fn init_producer_id_request() -> InitProducerIdRequest {
    InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(TRANSACTION_TIMEOUT_MS)
}

/// One batch for one partition, acks=all. The broker gets most of our deadline to gather
/// the replicas' acknowledgements, so its REQUEST_TIMED_OUT reaches us before our own read
/// gives up.
fn produce_request(
    topic: &str,
    partition: Partition,
    batch: Bytes,
    request_timeout: Duration,
) -> ProduceRequest {
    ProduceRequest::default()
        .with_transactional_id(None)
        .with_acks(ACKS_ALL)
        .with_timeout_ms(
            i32::try_from(broker_timeout(request_timeout).as_millis()).unwrap_or(i32::MAX),
        )
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition.0)
                        .with_records(Some(batch)),
                ]),
        ])
}

/// The time the broker is given to gather acknowledgements (the Produce request's
/// `timeout_ms`): below our own deadline by a tenth of it, at least a second and at most
/// five, so that the broker's REQUEST_TIMED_OUT (retried) arrives before we give up on the
/// answer (its fate then unknown).
pub(crate) fn broker_timeout(request_timeout: Duration) -> Duration {
    let margin = (request_timeout / 10).clamp(Duration::from_secs(1), Duration::from_secs(5));
    request_timeout
        .saturating_sub(margin)
        .max(request_timeout / 2)
}

/// What an error code in a Produce answer means for us. Kafka's own list of retriable
/// errors decides, with these exceptions: producer-state errors are handled here;
/// CORRUPT_MESSAGE, which Kafka counts as retriable (a bit flipped on the wire), is
/// permanent, since we would resend the same bytes; and an unknown code is permanent,
/// as the Java client treats it.
fn classify(code: i16) -> Outcome {
    match code {
        0 => Outcome::Written { duplicate: false },
        DUPLICATE_SEQUENCE_NUMBER => Outcome::Written { duplicate: true },
        UNKNOWN_TOPIC_OR_PARTITION
        | LEADER_NOT_AVAILABLE
        | NOT_LEADER_OR_FOLLOWER
        | FENCED_LEADER_EPOCH
        | UNKNOWN_LEADER_EPOCH => Outcome::Stale,
        OUT_OF_ORDER_SEQUENCE_NUMBER
        | INVALID_PRODUCER_EPOCH
        | UNKNOWN_PRODUCER_ID
        | PRODUCER_FENCED => Outcome::NewIdentity,
        CLUSTER_AUTHORIZATION_FAILED
        | TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        | SECURITY_DISABLED => Outcome::NoIdempotence,
        CORRUPT_MESSAGE => Outcome::Permanent,
        code if ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable()) => {
            Outcome::Transient
        }
        _ => Outcome::Permanent,
    }
}

/// What a Produce answer's error code means, given whether the answer was throttled. Azure
/// Event Hubs answers a throttled request that outlasts its timeout with POLICY_VIOLATION
/// (and a throttle time): over a quota, not against a policy, so it clears by itself.
fn classify_answer(code: i16, throttled: bool) -> Outcome {
    match code {
        POLICY_VIOLATION if throttled => Outcome::Transient,
        code => classify(code),
    }
}

/// Kafka sequence numbers wrap from `i32::MAX` to 0.
fn next_sequence(sequence: i32, records: i32) -> i32 {
    let next = i64::from(sequence) + i64::from(records);
    i32::try_from(next % (i64::from(i32::MAX) + 1)).unwrap_or(0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// "MESSAGE_TOO_LARGE (error code 10)", or the bare code when kafka-protocol does not know it.
fn code_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(e) => format!("{} (error code {code})", screaming(&format!("{e:?}"))),
        None => format!("error code {code}"),
    }
}

/// "MessageTooLarge" → "MESSAGE_TOO_LARGE", the name Kafka's documentation uses.
fn screaming(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// What to do about a permanent refusal, by code.
fn advice(code: i16) -> &'static str {
    match code {
        MESSAGE_TOO_LARGE | RECORD_LIST_TOO_LARGE => {
            "the topic's max.message.bytes (or the broker's message.max.bytes) is smaller than the record; lower KAFKA_DLQ_MAX_BYTES below it, or raise the limit"
        }
        TOPIC_AUTHORIZATION_FAILED => "grant this client WRITE on the topic",
        INVALID_RECORD => {
            "the topic refuses the record (a compacted topic needs a key, for one); check the topic's configuration"
        }
        INVALID_TIMESTAMP => {
            "the broker refuses the record's timestamp; check this host's clock against the topic's message.timestamp.*.max.ms"
        }
        POLICY_VIOLATION => "the broker's policy refuses the record; ask its operator",
        CORRUPT_MESSAGE => "the broker found the batch corrupt; check the broker's log",
        _ => "retrying will not help; check the broker's log",
    }
}

impl fmt::Display for ProduceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProduceError::TopicMissing { topic, servers } => write!(
                f,
                "topic {topic} does not exist at {servers}; create it (e.g. `kafka-topics.sh --bootstrap-server {servers} --create --topic {topic}`)"
            ),
            ProduceError::Kafka(e) => write!(f, "{e}"),
            ProduceError::Broker {
                topic,
                partition,
                code,
                message,
                ..
            } => {
                let at = match partition {
                    Some(p) => format!("{topic} partition {p}"),
                    None => topic.clone(),
                };
                let said = message
                    .as_ref()
                    .map(|m| format!(" ({m:?})"))
                    .unwrap_or_default();
                if self.is_permanent() {
                    write!(
                        f,
                        "Kafka refused the record for {at}: {}{said}; {}",
                        code_name(*code),
                        advice(*code)
                    )
                } else {
                    write!(
                        f,
                        "Kafka could not take the record for {at} yet: {}{said} (will retry)",
                        code_name(*code)
                    )
                }
            }
            ProduceError::TooLarge { bytes } => write!(
                f,
                "a record of {bytes} bytes is larger than a Kafka record batch can be; it cannot be produced"
            ),
        }
    }
}

impl std::error::Error for ProduceError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_error_codes_are_sorted_into_what_to_do() {
        assert_eq!(classify(0), Outcome::Written { duplicate: false });
        assert_eq!(classify(46), Outcome::Written { duplicate: true });
        for code in [3, 5, 6, 74, 75] {
            assert_eq!(classify(code), Outcome::Stale, "{code}");
        }
        for code in [45, 47, 59, 90] {
            assert_eq!(classify(code), Outcome::NewIdentity, "{code}");
        }
        assert_eq!(classify(31), Outcome::NoIdempotence);
        // REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS(_AFTER_APPEND), NETWORK_EXCEPTION,
        // KAFKA_STORAGE_ERROR, THROTTLING_QUOTA_EXCEEDED.
        for code in [7, 13, 19, 20, 56, 89] {
            assert_eq!(classify(code), Outcome::Transient, "{code}");
        }
        // MESSAGE_TOO_LARGE, CORRUPT_MESSAGE, INVALID_TOPIC, RECORD_LIST_TOO_LARGE,
        // TOPIC_AUTHORIZATION_FAILED, INVALID_TIMESTAMP, UNSUPPORTED_FOR_MESSAGE_FORMAT,
        // POLICY_VIOLATION, UNSUPPORTED_COMPRESSION_TYPE, INVALID_RECORD,
        // UNKNOWN_SERVER_ERROR, and a code nobody knows.
        for code in [10, 2, 17, 18, 29, 32, 43, 44, 76, 87, -1, 9999] {
            assert_eq!(classify(code), Outcome::Permanent, "{code}");
        }
    }

    #[test]
    fn errors_say_whether_to_wait_and_what_to_do() {
        let refused = ProduceError::Broker {
            topic: "dlq".into(),
            partition: Some(Partition(2)),
            code: 10,
            message: Some("too big".into()),
            throttled: false,
        };
        assert!(refused.is_permanent());
        let text = refused.to_string();
        assert!(
            text.contains("dlq partition 2: MESSAGE_TOO_LARGE (error code 10)"),
            "{text}"
        );
        assert!(text.contains("KAFKA_DLQ_MAX_BYTES"), "{text}");
        assert!(!text.ends_with('.'));

        let waiting = ProduceError::Broker {
            topic: "dlq".into(),
            partition: Some(Partition(0)),
            code: 6,
            message: None,
            throttled: false,
        };
        assert!(!waiting.is_permanent());
        assert!(
            waiting.to_string().contains("NOT_LEADER_OR_FOLLOWER"),
            "{waiting}"
        );
        let missing = ProduceError::TopicMissing {
            topic: "dlq".into(),
            servers: "k:9092".into(),
        };
        assert!(!missing.is_permanent());
        assert!(missing.to_string().contains("--create --topic dlq"));
    }

    #[test]
    fn producer_requests_encode_at_every_version_we_negotiate() {
        use bytes::BytesMut;
        use kafka_protocol::protocol::Encodable;
        for v in PRODUCE_VERSIONS.0..=PRODUCE_VERSIONS.1 {
            let request = produce_request(
                "t",
                Partition(0),
                Bytes::from_static(b"x"),
                Duration::from_secs(30),
            );
            if let Err(e) = request.encode(&mut BytesMut::new(), v) {
                panic!("Produce v{v} cannot be encoded: {e}");
            }
        }
        for v in INIT_PRODUCER_ID_VERSIONS.0..=INIT_PRODUCER_ID_VERSIONS.1 {
            if let Err(e) = init_producer_id_request().encode(&mut BytesMut::new(), v) {
                panic!("InitProducerId v{v} cannot be encoded: {e}");
            }
        }
    }

    #[test]
    fn the_broker_is_given_less_time_than_we_wait_for_its_answer() {
        for (ours, broker) in [
            (30_000, 27_000),
            (5_000, 4_000),
            (60_000, 55_000),
            (1_500, 750),
        ] {
            assert_eq!(
                broker_timeout(Duration::from_millis(ours)),
                Duration::from_millis(broker),
                "request timeout {ours} ms"
            );
        }
    }

    #[test]
    fn a_throttled_policy_violation_is_transient_as_event_hubs_means_it() {
        assert_eq!(classify_answer(POLICY_VIOLATION, false), Outcome::Permanent);
        assert_eq!(classify_answer(POLICY_VIOLATION, true), Outcome::Transient);
        // Only that one: a throttled answer is otherwise what its code says.
        assert_eq!(classify_answer(MESSAGE_TOO_LARGE, true), Outcome::Permanent);
        assert_eq!(
            classify_answer(0, true),
            Outcome::Written { duplicate: false }
        );
        let e = ProduceError::Broker {
            topic: "dlq".into(),
            partition: Some(Partition(0)),
            code: POLICY_VIOLATION,
            message: Some("throttled".into()),
            throttled: true,
        };
        assert!(!e.is_permanent());
        assert!(e.to_string().ends_with("(will retry)"), "{e}");
    }

    #[test]
    fn sequences_wrap_to_zero_after_the_largest_int32() {
        assert_eq!(next_sequence(0, 1), 1);
        assert_eq!(next_sequence(i32::MAX - 1, 1), i32::MAX);
        assert_eq!(next_sequence(i32::MAX, 1), 0);
        assert_eq!(next_sequence(i32::MAX, 3), 2);
    }
}
