//! Fetching records of exactly the assigned partitions, and listing log offsets.
//!
//! Fetches are `read_committed`: the broker stops at the last stable offset and names the
//! aborted transactions, whose records we skip, as we skip control records (commit and
//! abort markers). Offsets have gaps (compaction, markers), so the next position is taken
//! from each batch's last offset, not from counting records.
//!
//! Memory is bounded whatever the log holds (DESIGN invariant 9). An answer of up to
//! [`ANSWER_IN_MEMORY`] is read in one piece and its records sliced from it; a larger one
//! (a first batch above the fetch size, which Kafka returns whole: KIP-74) is read as it
//! arrives, its records held up to [`RECORDS_IN_MEMORY`] and a batch larger than that
//! decoded as it comes off the connection, never held. Decoding itself is bounded by
//! `records` (per record, per fetch, and in work).
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    TopicName,
    fetch_request::{FetchPartition, FetchTopic},
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
};
use kafka_protocol::protocol::{HeaderVersion, StrBytes};

use crate::cluster::Cluster;
use crate::error::{KafkaError, check_code};
use crate::net::body::Body;
use crate::net::conn::Connection;
use crate::types::{Offset, Partition, StartFrom};
use crate::wire::decoder::{Failure, PartitionDecoder};
use crate::wire::header::{BATCH_HEADER_LEN, be_i32, corrupt};
use crate::wire::legacy;
use crate::wire::limits::{Budget, RecordLimits};
use crate::wire::message::Message;

const FETCH_VERSIONS: (i16, i16) = (4, 12);
/// From 2: the first version with the isolation level (read_committed: the latest offset
/// is the last stable one).
const LIST_OFFSETS_VERSIONS: (i16, i16) = (2, 7);
const READ_COMMITTED: i8 = 1;
/// Per-partition byte budget of one fetch; a larger batch still comes whole (KIP-74).
/// A quarter MiB is a few thousand requests, more than the job channel holds, while it
/// keeps one fetch's memory small on an edge host.
const PARTITION_MAX_BYTES: i32 = 256 * 1024;
const FETCH_MAX_BYTES: i32 = 4 * 1024 * 1024;
/// The most of an answer's records held in memory: the fetch size, and room for a first
/// batch above it (KIP-74) as large as a broker accepts by default (`message.max.bytes`,
/// about 1 MiB). A larger batch is decoded as it arrives.
const RECORDS_IN_MEMORY: usize = FETCH_MAX_BYTES as usize + 1024 * 1024;
/// An answer up to this size (its records, and room for the rest) is read in one piece and
/// its records sliced from it without copying; a larger one is read as it arrives.
const ANSWER_IN_MEMORY: usize = RECORDS_IN_MEMORY + 64 * 1024;
/// What the messages of one fetch may hold beyond the answer itself (see `records`): a
/// few MiB over the fetch size, so a fetch of ordinary records is never cut short.
const DECODE_BUDGET: usize = FETCH_MAX_BYTES as usize + 4 * 1024 * 1024;

/// What one Fetch from one broker brought.
#[derive(Debug, Default)]
pub struct Fetched {
    pub messages: Vec<Message>,
    /// The next offset to fetch, for every partition that answered and was decoded.
    pub positions: HashMap<Partition, Offset>,
    /// Partitions whose position is outside the log: reset them.
    pub out_of_range: Vec<Partition>,
    /// Partitions this broker does not lead (any more), with the error code that said so:
    /// UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER,
    /// FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH. The metadata is stale.
    pub stale: Vec<(Partition, i16)>,
    /// Per-partition errors worth a log line (code, partition).
    pub errors: Vec<(Partition, KafkaError)>,
    /// The end of each answered partition's log as a read_committed consumer sees it (the
    /// last stable offset), for the lag.
    pub log_ends: Vec<(Partition, Offset)>,
}

/// What ListOffsets said, partition by partition.
#[derive(Debug, Default)]
pub struct Listed {
    pub offsets: HashMap<Partition, Offset>,
    /// Partitions this broker does not lead (any more), as in [`Fetched::stale`].
    pub stale: Vec<(Partition, i16)>,
    pub errors: Vec<(Partition, KafkaError)>,
}

/// Error codes that mean the metadata is stale: the partition's leader is elsewhere.
pub fn is_stale_code(code: i16) -> bool {
    // UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER,
    // FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH.
    matches!(code, 3 | 5 | 6 | 74 | 75)
}

/// One Fetch from `conn`, the leader of the partitions in `positions`, at those positions.
/// Decoding stops where the fetch's budget runs out; partitions not reached keep their
/// positions. On an error the connection may be out of step: drop it.
pub fn fetch(
    conn: &mut Connection,
    topic: &str,
    positions: &[(Partition, Offset)],
    max_wait: Duration,
    limits: RecordLimits,
) -> Result<Fetched, KafkaError> {
    let mut out = Fetched::default();
    let mut decoding = Decoding {
        limits,
        budget: Budget::new(DECODE_BUDGET),
        in_memory: RECORDS_IN_MEMORY,
    };
    let wanted: HashMap<Partition, Offset> = positions.iter().copied().collect();
    fetch_from(conn, topic, positions, max_wait, |body, version| {
        read_response(body, version, &wanted, &mut decoding, &mut out)
    })?;
    Ok(out)
}

/// The earliest or latest offset of each partition (latest = the last stable offset),
/// asked of each partition's leader; for tools (the consumer asks its leaders itself).
pub fn list_offsets(
    cluster: &mut Cluster,
    topic: &str,
    partitions: &[Partition],
    from: StartFrom,
) -> Result<HashMap<Partition, Offset>, KafkaError> {
    let mut by_leader: BTreeMap<String, Vec<Partition>> = BTreeMap::new();
    for p in partitions {
        let addr = cluster.leader(*p).ok_or(KafkaError::Broker {
            what: "ListOffsets",
            code: 5, // LEADER_NOT_AVAILABLE
        })?;
        by_leader.entry(addr).or_default().push(*p);
    }
    let mut out = HashMap::new();
    for (addr, parts) in by_leader {
        let listed = match cluster
            .to(&addr)
            .and_then(|conn| list_offsets_on(conn, topic, &parts, from))
        {
            Ok(l) => l,
            Err(e) => {
                cluster.failed(&addr, &e);
                return Err(e);
            }
        };
        if let Some((_, code)) = listed.stale.first() {
            return Err(KafkaError::Broker {
                what: "ListOffsets",
                code: *code,
            });
        }
        if let Some((_, e)) = listed.errors.into_iter().next() {
            return Err(e);
        }
        out.extend(listed.offsets);
    }
    Ok(out)
}

/// The earliest or latest offset of each partition, asked of `conn`, their leader.
pub fn list_offsets_on(
    conn: &mut Connection,
    topic: &str,
    partitions: &[Partition],
    from: StartFrom,
) -> Result<Listed, KafkaError> {
    let timestamp = match from {
        StartFrom::Earliest => -2,
        StartFrom::Latest => -1,
    };
    let version = conn.version(ApiKey::ListOffsets, LIST_OFFSETS_VERSIONS)?;
    let request = list_offsets_request(topic, partitions, timestamp);
    let response: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, version, &request)?;
    let mut out = Listed::default();
    for t in &response.topics {
        for p in &t.partitions {
            let partition = Partition(p.partition_index);
            match p.error_code {
                0 => {
                    out.offsets.insert(partition, Offset(p.offset));
                }
                code if is_stale_code(code) => out.stale.push((partition, code)),
                code => out.errors.push((
                    partition,
                    KafkaError::Broker {
                        what: "ListOffsets",
                        code,
                    },
                )),
            }
        }
    }
    Ok(out)
}

/// A read_committed Fetch of `parts` from their positions, held by the broker up to `wait`.
fn fetch_request(topic: &str, parts: &[(Partition, Offset)], wait: Duration) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(i32::try_from(wait.as_millis()).unwrap_or(i32::MAX))
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES)
        .with_isolation_level(READ_COMMITTED)
        // No fetch session (KIP-227): every fetch names its partitions in full.
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(
                    parts
                        .iter()
                        .map(|(p, o)| {
                            FetchPartition::default()
                                .with_partition(p.0)
                                .with_current_leader_epoch(-1)
                                .with_fetch_offset(o.0)
                                .with_last_fetched_epoch(-1)
                                .with_log_start_offset(-1)
                                .with_partition_max_bytes(PARTITION_MAX_BYTES)
                        })
                        .collect(),
                ),
        ])
}

/// ListOffsets for `timestamp` (-2 earliest, -1 latest), read_committed.
fn list_offsets_request(topic: &str, parts: &[Partition], timestamp: i64) -> ListOffsetsRequest {
    ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(READ_COMMITTED)
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(
                    parts
                        .iter()
                        .map(|p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p.0)
                                .with_current_leader_epoch(-1)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                ),
        ])
}

fn fetch_from(
    conn: &mut Connection,
    topic: &str,
    parts: &[(Partition, Offset)],
    wait: Duration,
    read: impl FnOnce(&mut Body<'_>, i16) -> Result<i32, KafkaError>,
) -> Result<(), KafkaError> {
    let request_timeout = conn.request_timeout();
    let version = conn.version(ApiKey::Fetch, FETCH_VERSIONS)?;
    let request = fetch_request(topic, parts, wait);
    let throttle_ms = conn.call_streaming(
        ApiKey::Fetch,
        version,
        &request,
        FetchResponse::header_version(version),
        wait + request_timeout,
        ANSWER_IN_MEMORY,
        |body| read(body, version),
    )?;
    conn.note_throttle(throttle_ms);
    Ok(())
}

/// What one fetch may still decode, across the answers of its brokers.
#[derive(Debug, Clone)]
struct Decoding {
    limits: RecordLimits,
    budget: Budget,
    /// Bytes of records the answers may still hold in memory.
    in_memory: usize,
}

/// Reads a Fetch answer (versions 4 to 12) as it arrives, decoding the records of the
/// partitions in `wanted` into `out`; returns the answer's throttle time (KIP-219). The
/// layout is Kafka's FetchResponse schema; from version 12 on ("flexible") arrays and
/// strings carry varint lengths and every structure ends in tagged fields, none of which
/// we need.
fn read_response(
    body: &mut Body<'_>,
    version: i16,
    wanted: &HashMap<Partition, Offset>,
    decoding: &mut Decoding,
    out: &mut Fetched,
) -> Result<i32, KafkaError> {
    let flexible = version >= 12;
    let throttle_time_ms = body.i32()?;
    if version >= 7 {
        let code = body.i16()?;
        let _session_id = body.i32()?;
        check_code("Fetch", code)?;
    }
    for _ in 0..array_len(body, flexible)? {
        // The topic's name: we asked for one topic only.
        let name_len = if flexible {
            body.uvarint()?.saturating_sub(1)
        } else {
            u64::try_from(body.i16()?).unwrap_or(0)
        };
        body.skip(name_len)?;
        for _ in 0..array_len(body, flexible)? {
            read_partition(body, version, wanted, decoding, out)?;
        }
        if flexible {
            body.skip_tagged_fields()?;
        }
    }
    if flexible {
        body.skip_tagged_fields()?;
    }
    Ok(throttle_time_ms)
}

fn read_partition(
    body: &mut Body<'_>,
    version: i16,
    wanted: &HashMap<Partition, Offset>,
    decoding: &mut Decoding,
    out: &mut Fetched,
) -> Result<(), KafkaError> {
    let flexible = version >= 12;
    let p = Partition(body.i32()?);
    let code = body.i16()?;
    let high_watermark = body.i64()?;
    let last_stable_offset = body.i64()?;
    if version >= 5 {
        let _log_start_offset = body.i64()?;
    }
    let mut aborted = Vec::new();
    for _ in 0..array_len(body, flexible)? {
        let producer_id = body.i64()?;
        let first_offset = body.i64()?;
        if flexible {
            body.skip_tagged_fields()?;
        }
        aborted.push((producer_id, first_offset));
    }
    if version >= 11 {
        let _preferred_read_replica = body.i32()?;
    }
    let len = if flexible {
        body.uvarint()?.saturating_sub(1)
    } else {
        u64::try_from(body.i32()?).unwrap_or(0)
    };
    let from = match (wanted.get(&p), code) {
        (None, _) => None,
        (Some(from), 0) => Some(*from),
        (Some(_), 1) => {
            out.out_of_range.push(p);
            None
        }
        (Some(_), code) if is_stale_code(code) => {
            out.stale.push((p, code));
            None
        }
        (Some(_), code) => {
            out.errors.push((
                p,
                KafkaError::Broker {
                    what: "Fetch",
                    code,
                },
            ));
            None
        }
    };
    if code == 0 && wanted.contains_key(&p) {
        // Brokers before 0.11 answer -1 for the last stable offset: the high watermark then.
        let end = if last_stable_offset >= 0 {
            last_stable_offset
        } else {
            high_watermark
        };
        out.log_ends.push((p, Offset(end)));
    }
    match from {
        Some(from) if !decoding.budget.exhausted() => {
            let next = read_records(body, p, from, aborted, len, decoding, &mut out.messages)?;
            out.positions.insert(p, next);
        }
        // Not decoded: its position stays, for the next fetch.
        _ => body.skip(len)?,
    }
    if flexible {
        body.skip_tagged_fields()?;
    }
    Ok(())
}

/// Decodes a partition's `len` bytes of record batches; returns the next offset to fetch.
fn read_records(
    body: &mut Body<'_>,
    partition: Partition,
    from: Offset,
    aborted: Vec<(i64, i64)>,
    len: u64,
    decoding: &mut Decoding,
    out: &mut Vec<Message>,
) -> Result<Offset, KafkaError> {
    let mut decoder = PartitionDecoder::new(partition, from, aborted, decoding.limits);
    let budget = &mut decoding.budget;
    let fail = |body: &Body<'_>, f: Failure| match f {
        Failure::Kafka(e) => e,
        Failure::Connection(e) => body.fail(e),
    };
    if let Some(n) = usize::try_from(len)
        .ok()
        .filter(|n| *n <= decoding.in_memory)
    {
        // The usual case: all of it in memory, decoded without copying.
        decoding.in_memory -= n;
        let records = body.bytes(n)?;
        decoder
            .records(records, budget, out)
            .map_err(|f| fail(body, f))?;
        return Ok(decoder.next());
    }
    // Too much to hold: batch by batch, each held if it fits, else decoded as it arrives.
    let mut left = len;
    let mut header = [0u8; BATCH_HEADER_LEN];
    // A batch, or a message of format v0/v1 (which may be shorter than a batch's header).
    while left >= legacy::MIN_MESSAGE as u64 && !decoder.stopped() {
        body.exact(&mut header[..12])?;
        left -= 12;
        let batch_len = be_i32(&header[8..12]);
        let total = u64::try_from(batch_len)
            .ok()
            .map(|l| l + 12)
            .filter(|t| *t >= legacy::MIN_MESSAGE as u64)
            .ok_or_else(|| corrupt(partition, format!("batch length {batch_len}")))?;
        let rest = total - 12;
        if rest > left {
            // Cut short by a fetch limit: the next fetch starts with it.
            break;
        }
        left -= rest;
        match usize::try_from(total)
            .ok()
            .filter(|t| *t <= decoding.in_memory)
        {
            Some(total) => {
                decoding.in_memory -= total;
                let mut batch = BytesMut::with_capacity(total);
                batch.extend_from_slice(&header[..12]);
                batch.resize(total, 0);
                body.exact(&mut batch[12..])?;
                decoder
                    .batch(batch.freeze(), budget, out)
                    .map_err(|f| fail(body, f))?;
            }
            None if budget.handed() => {
                // No room left, and this fetch has work already: the next one starts here.
                decoder.stop(budget);
                body.skip(rest)?;
            }
            None => {
                body.exact(&mut header[12..])?;
                decoder
                    .streamed_batch(&header, body, budget, out)
                    .map_err(|f| fail(body, f))?;
            }
        }
    }
    body.skip(left)?;
    Ok(decoder.next())
}

/// An array's length (a null array is empty).
fn array_len(body: &mut Body<'_>, flexible: bool) -> Result<u64, KafkaError> {
    Ok(if flexible {
        body.uvarint()?.saturating_sub(1)
    } else {
        u64::try_from(body.i32()?).unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::peak;
    use bytes::Bytes;
    use indexmap::IndexMap;
    use kafka_protocol::messages::ProducerId;
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
    };
    use kafka_protocol::protocol::Encodable;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    const LIMITS: RecordLimits = RecordLimits {
        whole: 64 * 1024,
        prefix: 1000,
    };

    fn batch(first: i64, values: &[Vec<u8>]) -> Bytes {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: first + i as i64,
                // kafka-protocol starts a new batch where offset - sequence changes.
                sequence: i as i32,
                timestamp: 1,
                key: None,
                value: Some(Bytes::from(v.clone())),
                headers: IndexMap::new(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode_with_custom_compression(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
            None::<fn(&mut BytesMut, &mut BytesMut, Compression) -> anyhow::Result<()>>,
        )
        .unwrap();
        buf.freeze()
    }

    fn partition(index: i32, code: i16, records: Option<Bytes>) -> PartitionData {
        PartitionData::default()
            .with_partition_index(index)
            .with_error_code(code)
            .with_high_watermark(100)
            .with_last_stable_offset(100)
            .with_records(records)
    }

    /// The body of a Fetch answer of `version` (after its header), as a broker writes it.
    fn answer(version: i16, partitions: Vec<PartitionData>) -> Vec<u8> {
        let response = FetchResponse::default().with_responses(vec![
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(partitions),
        ]);
        let mut buf = BytesMut::new();
        response.encode(&mut buf, version).unwrap();
        buf.to_vec()
    }

    /// Reads `body` as a Fetch answer of `version`; checks it is read to its end.
    fn read(
        body: &[u8],
        version: i16,
        wanted: &[(i32, i64)],
        decoding: &mut Decoding,
    ) -> Result<Fetched, KafkaError> {
        let wanted: HashMap<Partition, Offset> = wanted
            .iter()
            .map(|(p, o)| (Partition(*p), Offset(*o)))
            .collect();
        let timeout = Duration::from_secs(1);
        let mut copy = decoding.clone();
        let mut input = body;
        let mut streamed = Body::stream(&mut input, body.len() as u64, "t", "Fetch", timeout);
        let streamed = read_all(&mut streamed, version, &wanted, decoding);
        if body.len() > ANSWER_IN_MEMORY {
            return streamed;
        }
        // A small answer is held whole: the same outcome as reading it as it arrives.
        let mut held = Body::memory(Bytes::copy_from_slice(body), "t", "Fetch", timeout);
        let held = read_all(&mut held, version, &wanted, &mut copy);
        match (&held, &streamed) {
            (Ok(a), Ok(b)) => assert_eq!(
                (
                    &a.messages,
                    &a.positions,
                    &a.out_of_range,
                    &a.stale,
                    a.errors.len()
                ),
                (
                    &b.messages,
                    &b.positions,
                    &b.out_of_range,
                    &b.stale,
                    b.errors.len()
                ),
                "v{version}: held whole and streamed differ"
            ),
            (Err(_), Err(_)) => {}
            _ => panic!("v{version}: held whole {held:?}, streamed {streamed:?}"),
        }
        streamed
    }

    fn read_all(
        body: &mut Body<'_>,
        version: i16,
        wanted: &HashMap<Partition, Offset>,
        decoding: &mut Decoding,
    ) -> Result<Fetched, KafkaError> {
        let mut out = Fetched::default();
        read_response(body, version, wanted, decoding, &mut out)?;
        let mut rest = Vec::new();
        std::io::Read::read_to_end(body, &mut rest).unwrap();
        assert!(rest.is_empty(), "v{version}: {} bytes left", rest.len());
        Ok(out)
    }

    fn decoding() -> Decoding {
        Decoding {
            limits: LIMITS,
            budget: Budget::new(DECODE_BUDGET),
            in_memory: RECORDS_IN_MEMORY,
        }
    }

    fn values(f: &Fetched) -> Vec<(i32, i64, String)> {
        f.messages
            .iter()
            .map(|m| {
                let v = String::from_utf8_lossy(m.value.as_deref().unwrap_or_default());
                (m.partition.0, m.offset.0, v.into_owned())
            })
            .collect()
    }

    #[test]
    fn answers_of_every_version_we_speak_are_read() {
        for version in FETCH_VERSIONS.0..=FETCH_VERSIONS.1 {
            let body = answer(
                version,
                vec![
                    partition(0, 0, Some(batch(5, &[b"a".to_vec(), b"b".to_vec()])))
                        .with_aborted_transactions(Some(vec![
                            AbortedTransaction::default()
                                .with_producer_id(ProducerId(9))
                                .with_first_offset(50),
                        ]))
                        // Tagged fields from version 12 on: read past.
                        .with_diverging_epoch(EpochEndOffset::default().with_epoch(3))
                        .with_current_leader(LeaderIdAndEpoch::default().with_leader_epoch(4)),
                    partition(1, 1, None),
                    partition(2, 0, Some(batch(0, &[b"not asked for".to_vec()]))),
                    partition(3, 6, None),
                    partition(4, 29, None),
                    partition(5, 0, None),
                ],
            );
            let wanted = [(0, 6), (1, 0), (3, 0), (4, 0), (5, 7)];
            let f = read(&body, version, &wanted, &mut decoding())
                .unwrap_or_else(|e| panic!("v{version}: {e}"));
            assert_eq!(values(&f), vec![(0, 6, "b".into())], "v{version}");
            let positions: BTreeMap<i32, i64> =
                f.positions.iter().map(|(p, o)| (p.0, o.0)).collect();
            assert_eq!(positions, BTreeMap::from([(0, 7), (5, 7)]), "v{version}");
            assert_eq!(f.out_of_range, vec![Partition(1)], "v{version}");
            assert_eq!(f.stale, vec![(Partition(3), 6)], "v{version}");
            assert_eq!(
                f.log_ends,
                vec![(Partition(0), Offset(100)), (Partition(5), Offset(100))],
                "v{version}: the partitions answered without error"
            );
            assert_eq!(f.errors.len(), 1, "v{version}");
            assert_eq!(f.errors[0].0, Partition(4));
        }
    }

    #[test]
    fn the_fetch_request_encodes_at_every_version_we_negotiate() {
        for v in FETCH_VERSIONS.0..=FETCH_VERSIONS.1 {
            let mut buf = BytesMut::new();
            let request =
                fetch_request("t", &[(Partition(0), Offset(5))], Duration::from_millis(40));
            if let Err(e) = request.encode(&mut buf, v) {
                panic!("Fetch v{v} cannot be encoded: {e}");
            }
        }
    }

    #[test]
    fn the_list_offsets_request_encodes_at_every_version_we_negotiate() {
        // The isolation level exists from version 2: below it, read_committed cannot be sent.
        for v in LIST_OFFSETS_VERSIONS.0..=LIST_OFFSETS_VERSIONS.1 {
            let mut buf = BytesMut::new();
            let request = list_offsets_request("t", &[Partition(0)], -1);
            if let Err(e) = request.encode(&mut buf, v) {
                panic!("ListOffsets v{v} cannot be encoded: {e}");
            }
        }
    }

    #[test]
    fn old_message_formats_mixed_with_record_batches_are_decoded_in_order() {
        use crate::wire::legacy::tests::{message, wrapper};
        // A topic upgraded in place: v0 and v1 messages (a gzip wrapper among them), then
        // record batches, then (written by an old client after the upgrade) a v0 message
        // shorter than a record batch's header, last in the answer.
        let mut records = Vec::new();
        records.extend(message(0, 0, 0, 0, Some(b"k"), Some(b"zero")));
        let inner: Vec<Vec<u8>> = (0..2)
            .map(|i| message(i, 1, 0, 50 + i, None, Some(format!("one-{i}").as_bytes())))
            .collect();
        records.extend(wrapper(2, 1, 1, 0, &inner));
        records.extend_from_slice(&batch(3, &[b"two-3".to_vec(), b"two-4".to_vec()]));
        records.extend(message(5, 0, 0, 0, None, None));
        for version in [4, 12] {
            let body = answer(
                version,
                vec![partition(0, 0, Some(Bytes::from(records.clone())))],
            );
            let f = read(&body, version, &[(0, 0)], &mut decoding())
                .unwrap_or_else(|e| panic!("v{version}: {e}"));
            assert_eq!(
                values(&f),
                vec![
                    (0, 0, "zero".into()),
                    (0, 1, "one-0".into()),
                    (0, 2, "one-1".into()),
                    (0, 3, "two-3".into()),
                    (0, 4, "two-4".into()),
                    (0, 5, String::new()),
                ]
            );
            assert_eq!(
                f.positions[&Partition(0)],
                Offset(6),
                "never stuck at the last"
            );
        }
        // Read batch by batch (little room in memory): the wrapper waits for the next
        // fetch, which starts with it and decodes it off the wire... as given up, since
        // an old-format message is never decoded as it arrives.
        let body = answer(
            12,
            vec![partition(0, 0, Some(Bytes::from(records.clone())))],
        );
        let mut d = decoding();
        d.in_memory = 40;
        let f = read(&body, 12, &[(0, 0)], &mut d).unwrap();
        assert_eq!(values(&f), vec![(0, 0, "zero".into())]);
        assert_eq!(f.positions[&Partition(0)], Offset(1));
        let mut d = decoding();
        d.in_memory = 40;
        let f = read(&body, 12, &[(0, 1)], &mut d).unwrap();
        let undecoded = f.messages[0].undecoded.as_ref().expect("given up");
        assert_eq!(
            (f.messages[0].offset, undecoded.last),
            (Offset(1), Offset(2))
        );
        assert!(
            undecoded.reason.contains("format v1"),
            "{}",
            undecoded.reason
        );
        assert_eq!(f.positions[&Partition(0)], Offset(3));
    }

    #[test]
    fn a_fetch_level_error_is_returned() {
        let mut buf = BytesMut::new();
        FetchResponse::default()
            .with_error_code(70) // FETCH_SESSION_ID_NOT_FOUND
            .encode(&mut buf, 12)
            .unwrap();
        let err = read(&buf, 12, &[], &mut decoding()).unwrap_err();
        assert!(matches!(err, KafkaError::Broker { code: 70, .. }), "{err}");
    }

    #[test]
    fn an_answer_ending_early_is_a_protocol_error() {
        let body = answer(12, vec![partition(0, 0, Some(batch(0, &[b"x".to_vec()])))]);
        let err = read(&body[..body.len() - 20], 12, &[(0, 0)], &mut decoding()).unwrap_err();
        assert!(matches!(err, KafkaError::Protocol { .. }), "{err}");
    }

    #[test]
    fn a_first_batch_larger_than_the_records_held_in_memory_is_decoded_as_it_arrives() {
        // KIP-74: the first batch comes whole whatever its size. This one is above what an
        // answer may hold in memory, so it is decoded off the wire and its huge record is
        // kept only as a prefix.
        let huge = vec![b'h'; RECORDS_IN_MEMORY + 1024 * 1024];
        let body = answer(
            12,
            vec![
                partition(0, 0, Some(batch(0, &[b"small".to_vec(), huge.clone()]))),
                partition(1, 0, Some(batch(0, &[b"other".to_vec()]))),
            ],
        );
        let (f, held) = peak::during(|| read(&body, 12, &[(0, 0), (1, 0)], &mut decoding()));
        let f = f.unwrap();
        assert_eq!(f.messages.len(), 3);
        assert_eq!(f.messages[1].value_len, huge.len());
        assert_eq!(
            f.messages[1].value.as_ref().map(Bytes::len),
            Some(LIMITS.prefix)
        );
        assert_eq!(values(&f)[2], (1, 0, "other".into()));
        assert_eq!(f.positions[&Partition(0)], Offset(2));
        assert!(
            held < 1024 * 1024,
            "held {held} bytes of a {}-byte answer",
            body.len()
        );
    }

    #[test]
    fn a_large_batch_after_others_waits_for_the_next_fetch() {
        // Only the first batch of a fetch is decoded off the wire: after work is handed
        // over, a batch that does not fit in memory starts the next fetch.
        let mut records = BytesMut::new();
        records.extend_from_slice(&batch(0, &[b"first".to_vec()]));
        records.extend_from_slice(&batch(1, &[vec![b'x'; 4096]]));
        let body = answer(12, vec![partition(0, 0, Some(records.freeze()))]);
        let mut d = decoding();
        d.in_memory = 1024;
        let f = read(&body, 12, &[(0, 0)], &mut d).unwrap();
        assert_eq!(values(&f), vec![(0, 0, "first".into())]);
        assert_eq!(f.positions[&Partition(0)], Offset(1));
        // The next fetch starts there and decodes it off the wire.
        let body = answer(
            12,
            vec![partition(0, 0, Some(batch(1, &[vec![b'x'; 4096]])))],
        );
        let mut d = decoding();
        d.in_memory = 1024;
        let f = read(&body, 12, &[(0, 1)], &mut d).unwrap();
        assert_eq!(f.messages[0].value_len, 4096);
        assert_eq!(f.positions[&Partition(0)], Offset(2));
    }

    #[test]
    fn when_the_budget_runs_out_later_partitions_keep_their_positions() {
        let five: Vec<Vec<u8>> = (0..5).map(|i| format!("v{i}").into_bytes()).collect();
        let body = answer(
            12,
            vec![
                partition(0, 0, Some(batch(0, &five))),
                partition(1, 0, Some(batch(0, &five))),
            ],
        );
        let mut d = decoding();
        d.budget = Budget::new(300); // two messages' bookkeeping
        let f = read(&body, 12, &[(0, 0), (1, 0)], &mut d).unwrap();
        assert_eq!(f.messages.len(), 2);
        assert_eq!(f.positions[&Partition(0)], Offset(2));
        assert!(
            !f.positions.contains_key(&Partition(1)),
            "partition 1 waits"
        );
    }
}
