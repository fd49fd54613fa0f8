//! Fetching records of exactly the assigned partitions, and listing log offsets.
//!
//! Fetches are `read_committed`: the broker stops at the last stable offset and names the
//! aborted transactions, whose records we skip, as we skip control records (commit and
//! abort markers). Offsets have gaps (compaction, markers), so the next position is taken
//! from each batch's last offset, not from counting records.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    TopicName,
    fetch_request::{FetchPartition, FetchTopic},
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;

use super::cluster::Cluster;
use super::{KafkaError, Offset, Partition, StartFrom, codec};

const FETCH_VERSIONS: (i16, i16) = (4, 12);
const LIST_OFFSETS_VERSIONS: (i16, i16) = (1, 7);
const READ_COMMITTED: i8 = 1;
/// Per-partition byte budget of one fetch; a larger batch still comes whole (KIP-74).
/// A quarter MiB is a few thousand requests, more than the job channel holds, while it
/// keeps one fetch's memory small on an edge host.
const PARTITION_MAX_BYTES: i32 = 256 * 1024;
const FETCH_MAX_BYTES: i32 = 4 * 1024 * 1024;
/// The smallest record batch: its fixed header (61 bytes).
const BATCH_HEADER_LEN: usize = 61;

/// One record as the worker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub partition: Partition,
    pub offset: Offset,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// The value's length in the log. Equal to `value`'s length, except for a record too
    /// large to hold, whose `value` is only its first bytes.
    pub value_len: usize,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp_ms: i64,
}

/// The result of one round of fetches.
#[derive(Debug, Default)]
pub struct Fetched {
    pub messages: Vec<Message>,
    /// The next offset to fetch, for every partition that answered.
    pub positions: HashMap<Partition, Offset>,
    /// Partitions whose position is outside the log: reset them.
    pub out_of_range: Vec<Partition>,
    /// A partition's leader moved or is unknown: refresh metadata.
    pub stale_metadata: bool,
    /// Per-partition errors worth a log line (code, partition).
    pub errors: Vec<(Partition, KafkaError)>,
}

/// Fetches from each partition's leader, at the given positions.
pub fn fetch(
    cluster: &mut Cluster,
    topic: &str,
    positions: &[(Partition, Offset)],
    max_wait: Duration,
) -> Result<Fetched, KafkaError> {
    let mut out = Fetched::default();
    let mut by_leader: BTreeMap<String, Vec<(Partition, Offset)>> = BTreeMap::new();
    for (p, o) in positions {
        match cluster.leader(*p) {
            Some(addr) => by_leader.entry(addr).or_default().push((*p, *o)),
            None => out.stale_metadata = true,
        }
    }
    let wait = max_wait / u32::try_from(by_leader.len().max(1)).unwrap_or(1);
    for (addr, parts) in by_leader {
        let wanted: HashMap<Partition, Offset> = parts.iter().copied().collect();
        let response = match fetch_from(cluster, &addr, topic, &parts, wait) {
            Ok(r) => r,
            Err(e) => {
                cluster.drop_conn(&addr);
                return Err(e);
            }
        };
        super::check_code("Fetch", response.error_code)?;
        for t in &response.responses {
            for pd in &t.partitions {
                let p = Partition(pd.partition_index);
                let Some(from) = wanted.get(&p) else { continue };
                match pd.error_code {
                    0 => {}
                    1 => {
                        out.out_of_range.push(p);
                        continue;
                    }
                    // Unknown partition, no leader, not the leader, fenced or unknown epoch.
                    3 | 5 | 6 | 74 | 75 => {
                        out.stale_metadata = true;
                        continue;
                    }
                    code => {
                        out.errors.push((
                            p,
                            KafkaError::Broker {
                                what: "Fetch",
                                code,
                            },
                        ));
                        continue;
                    }
                }
                let aborted: Vec<(i64, i64)> = pd
                    .aborted_transactions
                    .iter()
                    .flatten()
                    .map(|a| (a.producer_id.0, a.first_offset))
                    .collect();
                let records = pd.records.clone().unwrap_or_default();
                let next = decode_partition(p, *from, records, aborted, &mut out.messages)?;
                out.positions.insert(p, next);
            }
        }
    }
    Ok(out)
}

/// The earliest or latest offset of each partition (latest = the last stable offset).
pub fn list_offsets(
    cluster: &mut Cluster,
    topic: &str,
    partitions: &[Partition],
    from: StartFrom,
) -> Result<HashMap<Partition, Offset>, KafkaError> {
    let timestamp = match from {
        StartFrom::Earliest => -2,
        StartFrom::Latest => -1,
    };
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
        let result = cluster.to(&addr).and_then(|conn| {
            let version = conn.version(ApiKey::ListOffsets, LIST_OFFSETS_VERSIONS)?;
            let request = ListOffsetsRequest::default()
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
                ]);
            conn.call::<_, ListOffsetsResponse>(ApiKey::ListOffsets, version, &request)
        });
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                cluster.drop_conn(&addr);
                return Err(e);
            }
        };
        for t in &response.topics {
            for p in &t.partitions {
                super::check_code("ListOffsets", p.error_code)?;
                out.insert(Partition(p.partition_index), Offset(p.offset));
            }
        }
    }
    Ok(out)
}

fn fetch_from(
    cluster: &mut Cluster,
    addr: &str,
    topic: &str,
    parts: &[(Partition, Offset)],
    wait: Duration,
) -> Result<FetchResponse, KafkaError> {
    let request_timeout = cluster.timeout();
    let conn = cluster.to(addr)?;
    let version = conn.version(ApiKey::Fetch, FETCH_VERSIONS)?;
    let request = FetchRequest::default()
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
        ]);
    conn.call_with_timeout(ApiKey::Fetch, version, &request, wait + request_timeout)
}

/// Decodes one partition's record batches into `out`, skipping control records, aborted
/// transactions and anything before `from`; returns the next offset to fetch. A batch cut
/// short at the end of the response is left for the next fetch.
pub(crate) fn decode_partition(
    partition: Partition,
    from: Offset,
    mut records: Bytes,
    mut aborted: Vec<(i64, i64)>,
    out: &mut Vec<Message>,
) -> Result<Offset, KafkaError> {
    let mut next = from.0;
    // Aborted transactions, by first offset; a producer becomes "aborting" once we reach
    // its first offset and stops being so at its abort marker.
    aborted.sort_by_key(|(_, first)| std::cmp::Reverse(*first));
    let mut aborting: HashSet<i64> = HashSet::new();
    while records.len() >= BATCH_HEADER_LEN {
        let base = be_i64(&records[0..8]);
        let len = be_i32(&records[8..12]);
        let Some(total) = usize::try_from(len).ok().map(|l| l + 12) else {
            return Err(corrupt(partition, format!("negative batch length {len}")));
        };
        if records.len() < total {
            break;
        }
        let magic = records[16];
        if magic != 2 {
            return Err(KafkaError::Protocol {
                broker: String::new(),
                detail: format!(
                    "partition {partition} holds message format v{magic}; this worker reads record batches (v2, Kafka 0.11+) only"
                ),
            });
        }
        let batch = records.split_to(total);
        let attributes = be_i16(&batch[21..23]);
        let last = base + i64::from(be_i32(&batch[23..27]));
        let producer_id = be_i64(&batch[43..51]);
        let transactional = attributes & (1 << 4) != 0;
        let control = attributes & (1 << 5) != 0;
        if last < next {
            continue;
        }
        while aborted.last().is_some_and(|(_, first)| *first <= last) {
            if let Some((pid, _)) = aborted.pop() {
                aborting.insert(pid);
            }
        }
        if transactional && !control && aborting.contains(&producer_id) {
            next = last + 1;
            continue;
        }
        let records = decode_records(partition, &batch)?;
        for record in records {
            if control {
                // Control record key: version (i16), type (i16: 0 abort, 1 commit).
                let is_abort = record
                    .key
                    .as_ref()
                    .is_some_and(|k| k.len() >= 4 && be_i16(&k[2..4]) == 0);
                if is_abort {
                    aborting.remove(&producer_id);
                }
                continue;
            }
            if record.offset.0 < next {
                continue;
            }
            out.push(record);
        }
        next = last + 1;
    }
    Ok(Offset(next))
}

/// Decodes the records of one complete v2 batch (CRC checked, decompressed).
///
/// Our own decoding rather than kafka-protocol's `RecordBatchDecoder`: that one keeps headers
/// in a map, so a record carrying the same header name twice (legal, and kept by brokers and
/// librdkafka) would lose one; and this one slices keys and values out of the batch without
/// copying them.
fn decode_records(partition: Partition, batch: &Bytes) -> Result<Vec<Message>, KafkaError> {
    let base_offset = be_i64(&batch[0..8]);
    let crc = u32::from_be_bytes([batch[17], batch[18], batch[19], batch[20]]);
    if crc32c::crc32c(&batch[21..]) != crc {
        return Err(corrupt(partition, "CRC mismatch".into()));
    }
    let attributes = be_i16(&batch[21..23]);
    let log_append_time = attributes & (1 << 3) != 0;
    let base_timestamp = be_i64(&batch[27..35]);
    let max_timestamp = be_i64(&batch[35..43]);
    let count = be_i32(&batch[57..61]);
    let compression = match attributes & 0x7 {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        other => {
            return Err(KafkaError::Codec {
                codec: "unknown",
                detail: format!("compression type {other} in partition {partition}"),
            });
        }
    };
    let data = codec::decompress(&batch.slice(BATCH_HEADER_LEN..), compression)?;
    let mut r = Reader {
        data: &data,
        at: 0,
        partition,
    };
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(4096));
    for _ in 0..count {
        let len = r.varint()?;
        let end = r.at + usize::try_from(len).map_err(|_| r.bad("negative record length"))?;
        let _attributes = r.bytes(1)?;
        let timestamp_delta = r.varint()?;
        let offset_delta = r.varint()?;
        let key = r.nullable()?;
        let value = r.nullable()?;
        let header_count = r.varint()?;
        let mut headers = Vec::with_capacity(usize::try_from(header_count).unwrap_or(0).min(64));
        for _ in 0..header_count {
            let name = r.nullable()?.unwrap_or_default();
            let value = r.nullable()?;
            headers.push((String::from_utf8_lossy(&name).into_owned(), value));
        }
        if r.at != end {
            return Err(r.bad("record length does not match its fields"));
        }
        out.push(Message {
            partition,
            offset: Offset(base_offset + offset_delta),
            key,
            value_len: value.as_ref().map_or(0, Bytes::len),
            value,
            headers,
            timestamp_ms: if log_append_time {
                max_timestamp
            } else {
                base_timestamp + timestamp_delta
            },
        });
    }
    Ok(out)
}

/// A cursor over decompressed records, reading Kafka's zigzag varints.
struct Reader<'a> {
    data: &'a Bytes,
    at: usize,
    partition: Partition,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<i64, KafkaError> {
        let mut raw: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .data
                .get(self.at)
                .ok_or_else(|| self.bad("record cut short"))?;
            self.at += 1;
            raw |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err(self.bad("varint longer than 10 bytes"))
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, KafkaError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.data.len());
        let end = end.ok_or_else(|| self.bad("record cut short"))?;
        let b = self.data.slice(self.at..end);
        self.at = end;
        Ok(b)
    }

    /// A varint length, then that many bytes; -1 is null.
    fn nullable(&mut self) -> Result<Option<Bytes>, KafkaError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let n = usize::try_from(len).map_err(|_| self.bad("length too large"))?;
        self.bytes(n).map(Some)
    }

    fn bad(&self, what: &str) -> KafkaError {
        corrupt(self.partition, what.to_owned())
    }
}

fn corrupt(partition: Partition, detail: String) -> KafkaError {
    KafkaError::Protocol {
        broker: String::new(),
        detail: format!("cannot decode a record batch of partition {partition}: {detail}"),
    }
}

fn be_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_be_bytes(a)
}

fn be_i32(b: &[u8]) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    i32::from_be_bytes(a)
}

fn be_i16(b: &[u8]) -> i16 {
    i16::from_be_bytes([b[0], b[1]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use indexmap::IndexMap;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn record(offset: i64, value: &str, pid: i64, transactional: bool, control: bool) -> Record {
        Record {
            transactional,
            control,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: pid,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: offset as i32,
            timestamp: 1,
            key: if control {
                // version 0, type 0 (abort) or 1 (commit) encoded in the value we pass.
                Some(Bytes::from(vec![0, 0, 0, value.parse::<u8>().unwrap()]))
            } else {
                Some(Bytes::from_static(b"k"))
            },
            value: Some(Bytes::from(value.to_owned())),
            headers: IndexMap::new(),
        }
    }

    fn batch(records: &[Record], compression: Compression) -> Bytes {
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode_with_custom_compression(
            &mut buf,
            records,
            &options,
            None::<fn(&mut BytesMut, &mut BytesMut, Compression) -> anyhow::Result<()>>,
        )
        .unwrap();
        buf.freeze()
    }

    fn values(msgs: &[Message]) -> Vec<String> {
        msgs.iter()
            .map(|m| String::from_utf8(m.value.clone().unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn plain_batches_decode_in_order_and_position_follows() {
        let mut data = BytesMut::new();
        data.extend_from_slice(&batch(
            &[
                record(0, "a", -1, false, false),
                record(1, "b", -1, false, false),
            ],
            Compression::None,
        ));
        data.extend_from_slice(&batch(
            &[record(5, "c", -1, false, false)],
            Compression::None,
        ));
        let mut out = Vec::new();
        let next =
            decode_partition(Partition(0), Offset(1), data.freeze(), vec![], &mut out).unwrap();
        assert_eq!(values(&out), vec!["b", "c"]);
        assert_eq!(next, Offset(6));
    }

    #[test]
    fn a_batch_cut_short_is_left_for_the_next_fetch() {
        let mut data = BytesMut::new();
        data.extend_from_slice(&batch(
            &[record(0, "a", -1, false, false)],
            Compression::None,
        ));
        let second = batch(&[record(1, "b", -1, false, false)], Compression::None);
        data.extend_from_slice(&second[..second.len() - 3]);
        let mut out = Vec::new();
        let next =
            decode_partition(Partition(0), Offset(0), data.freeze(), vec![], &mut out).unwrap();
        assert_eq!(values(&out), vec!["a"]);
        assert_eq!(next, Offset(1));
    }

    #[test]
    fn aborted_transactions_and_markers_are_hidden() {
        let mut data = BytesMut::new();
        // Producer 7 writes offsets 0-1 then aborts (marker at 2); producer 8 commits 3 (marker 4).
        data.extend_from_slice(&batch(
            &[
                record(0, "x", 7, true, false),
                record(1, "y", 7, true, false),
            ],
            Compression::None,
        ));
        data.extend_from_slice(&batch(&[record(2, "0", 7, true, true)], Compression::None));
        data.extend_from_slice(&batch(
            &[record(3, "ok", 8, true, false)],
            Compression::None,
        ));
        data.extend_from_slice(&batch(&[record(4, "1", 8, true, true)], Compression::None));
        let mut out = Vec::new();
        let next = decode_partition(
            Partition(0),
            Offset(0),
            data.freeze(),
            vec![(7, 0)],
            &mut out,
        )
        .unwrap();
        assert_eq!(values(&out), vec!["ok"]);
        assert_eq!(next, Offset(5));
    }

    #[test]
    fn empty_records_keep_the_position() {
        let mut out = Vec::new();
        let next =
            decode_partition(Partition(3), Offset(9), Bytes::new(), vec![], &mut out).unwrap();
        assert_eq!(next, Offset(9));
        assert!(out.is_empty());
    }
}
