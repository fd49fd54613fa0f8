//! Encoding record batches (magic v2, CRC-32C) for the producer.
//!
//! Our own encoder rather than kafka-protocol's `RecordBatchEncoder`: that one keeps a
//! record's headers in a map, so a header name used twice (legal, and kept by brokers and
//! every client) would lose a value; its compression hook is typed with `anyhow`; and with
//! the decoder in `fetch.rs` also ours, both halves of the format are read in one place.
//!
//! Layout of a batch (all integers big-endian; see the protocol guide, "Record Batch"):
//! ```text
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 (2) | crc u32 |
//! attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//! producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32 | records
//! ```
//! The CRC-32C covers everything from `attributes` to the end. Each record is a zigzag
//! varint length, then: attributes i8, timestampDelta varint, offsetDelta varint, key and
//! value (varint length, -1 for null, then the bytes), a varint header count, and per
//! header a name (varint length, bytes) and a value (varint length or -1, bytes).
use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::header::BATCH_HEADER_LEN;

/// One record to produce. Header names may repeat; their order is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutRecord {
    /// The key (`None`: null); a keyed record goes to its key's partition.
    pub key: Option<Bytes>,
    /// The value (`None`: null, a tombstone on a compacted topic).
    pub value: Option<Bytes>,
    /// Headers in order: (name, value or null).
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Who wrote a batch, for the broker's duplicate detection (idempotence): the producer id,
/// its epoch, and the sequence number of the batch's first record in its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: i64,
    pub epoch: i16,
    pub sequence: i32,
}

/// How the records section of a batch is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchCompression {
    /// Uncompressed.
    None,
    /// gzip, through flate2's pure-Rust backend (miniz_oxide).
    Gzip,
}

/// A batch that cannot be encoded: its length does not fit the format's 32-bit fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchTooLarge {
    pub bytes: usize,
}

/// The codec bits of the attributes (0-2) for gzip. Bit 3 (LogAppendTime) stays clear: our
/// timestamps are CreateTime; a topic with `message.timestamp.type=LogAppendTime` has the
/// broker overwrite them.
const COMPRESSION_GZIP: i16 = 1;

impl ProducerStamp {
    /// No idempotence: the broker does no duplicate detection for this batch.
    pub const NONE: ProducerStamp = ProducerStamp {
        producer_id: -1,
        epoch: -1,
        sequence: -1,
    };
}

/// Encodes `records` as one batch with base offset 0 (the broker assigns offsets), every
/// record stamped with `timestamp_ms` (CreateTime).
///
/// Compression is used only when it makes the batch smaller, so the result is never larger
/// than [`uncompressed_batch_len`]: a size limit checked on that holds for what is sent.
pub fn encode_batch(
    records: &[OutRecord],
    timestamp_ms: i64,
    stamp: ProducerStamp,
    compression: BatchCompression,
) -> Result<Bytes, BatchTooLarge> {
    let too_large = || BatchTooLarge {
        bytes: uncompressed_batch_len(records),
    };
    let count = i32::try_from(records.len()).map_err(|_| too_large())?;
    let mut raw = BytesMut::with_capacity(uncompressed_batch_len(records) - BATCH_HEADER_LEN);
    for (delta, record) in records.iter().enumerate() {
        let delta = i64::try_from(delta).map_err(|_| too_large())?;
        encode_record(&mut raw, record, delta);
    }
    let (attributes, body) = match compression {
        BatchCompression::None => (0, raw.freeze()),
        BatchCompression::Gzip => match gzip(&raw) {
            Some(packed) if packed.len() < raw.len() => (COMPRESSION_GZIP, Bytes::from(packed)),
            _ => (0, raw.freeze()),
        },
    };

    let total = BATCH_HEADER_LEN + body.len();
    let batch_length = i32::try_from(total - 12).map_err(|_| too_large())?;
    let mut buf = BytesMut::with_capacity(total);
    buf.put_i64(0); // base offset
    buf.put_i32(batch_length);
    // -1: no leader epoch known to us; the leader writes its own.
    buf.put_i32(-1);
    buf.put_i8(2); // magic
    buf.put_u32(0); // CRC, filled in below
    buf.put_i16(attributes);
    buf.put_i32(count.saturating_sub(1)); // last offset delta
    buf.put_i64(timestamp_ms); // base timestamp
    buf.put_i64(timestamp_ms); // max timestamp
    buf.put_i64(stamp.producer_id);
    buf.put_i16(stamp.epoch);
    buf.put_i32(stamp.sequence);
    buf.put_i32(count);
    buf.put_slice(&body);
    let crc = crc32c::crc32c(&buf[21..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(buf.freeze())
}

/// The length of `records` encoded as one uncompressed batch, as a broker measures it
/// against `max.message.bytes` (the whole batch, its 61-byte header included). Computed,
/// not encoded, so a caller can fit a record to a limit cheaply.
pub fn uncompressed_batch_len(records: &[OutRecord]) -> usize {
    BATCH_HEADER_LEN
        + records
            .iter()
            .enumerate()
            .map(|(delta, r)| {
                let body = record_body_len(r, delta as i64);
                varint_len(body as i64) + body
            })
            .sum::<usize>()
}

/// The length of a zigzag varint.
pub fn varint_len(v: i64) -> usize {
    let mut raw = zigzag(v);
    let mut n = 1;
    while raw >= 0x80 {
        raw >>= 7;
        n += 1;
    }
    n
}

fn encode_record(buf: &mut BytesMut, record: &OutRecord, offset_delta: i64) {
    put_varint(buf, record_body_len(record, offset_delta) as i64);
    buf.put_i8(0); // attributes: unused
    put_varint(buf, 0); // timestamp delta: every record has the batch's timestamp
    put_varint(buf, offset_delta);
    put_nullable(buf, record.key.as_deref());
    put_nullable(buf, record.value.as_deref());
    put_varint(buf, record.headers.len() as i64);
    for (name, value) in &record.headers {
        put_nullable(buf, Some(name.as_bytes()));
        put_nullable(buf, value.as_deref());
    }
}

/// The record's length without its own length prefix.
fn record_body_len(record: &OutRecord, offset_delta: i64) -> usize {
    1 + varint_len(0)
        + varint_len(offset_delta)
        + nullable_len(record.key.as_deref())
        + nullable_len(record.value.as_deref())
        + varint_len(record.headers.len() as i64)
        + record
            .headers
            .iter()
            .map(|(name, value)| {
                nullable_len(Some(name.as_bytes())) + nullable_len(value.as_deref())
            })
            .sum::<usize>()
}

fn nullable_len(data: Option<&[u8]>) -> usize {
    match data {
        None => varint_len(-1),
        Some(d) => varint_len(d.len() as i64) + d.len(),
    }
}

fn put_nullable(buf: &mut BytesMut, data: Option<&[u8]>) {
    match data {
        None => put_varint(buf, -1),
        Some(d) => {
            put_varint(buf, d.len() as i64);
            buf.put_slice(d);
        }
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn put_varint(buf: &mut BytesMut, v: i64) {
    let mut raw = zigzag(v);
    while raw >= 0x80 {
        buf.put_u8((raw as u8 & 0x7f) | 0x80);
        raw >>= 7;
    }
    buf.put_u8(raw as u8);
}

/// gzip at the default level; `None` if the encoder fails (it writes to memory, so it
/// does not), and the caller then sends the records uncompressed.
fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 2),
        flate2::Compression::default(),
    );
    enc.write_all(data).ok()?;
    enc.finish().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Offset, Partition};
    use crate::wire::decoder::PartitionDecoder;
    use crate::wire::limits::{Budget, RecordLimits};
    use crate::wire::message::Message;

    fn record(
        key: Option<&str>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&str>)],
    ) -> OutRecord {
        OutRecord {
            key: key.map(|k| Bytes::from(k.to_owned())),
            value: value.map(Bytes::copy_from_slice),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.map(|v| Bytes::from(v.to_owned()))))
                .collect(),
        }
    }

    fn decode(batch: &Bytes) -> Vec<Message> {
        let mut out = Vec::new();
        let mut decoder =
            PartitionDecoder::new(Partition(0), Offset(0), vec![], RecordLimits::default());
        decoder
            .records(batch.clone(), &mut Budget::new(8 << 20), &mut out)
            .unwrap_or_else(|e| panic!("our decoder reads what we encode: {e:?}"));
        assert_eq!(
            decoder.next().0,
            out.len() as i64,
            "the position follows the batch"
        );
        out
    }

    #[test]
    fn what_we_encode_our_decoder_reads_back_with_repeated_headers_and_nulls() {
        let records = vec![
            record(
                Some("request-1"),
                Some(b"{\"a\":1}"),
                &[
                    ("x-dlq-reason", Some("bad")),
                    ("dup", Some("1")),
                    ("dup", Some("2")),
                ],
            ),
            record(None, None, &[("null-valued", None)]),
            record(Some(""), Some(b""), &[]),
        ];
        for compression in [BatchCompression::None, BatchCompression::Gzip] {
            let batch = encode_batch(
                &records,
                1_700_000_000_123,
                ProducerStamp::NONE,
                compression,
            )
            .unwrap();
            let got = decode(&batch);
            assert_eq!(got.len(), 3, "{compression:?}");
            for (i, (m, r)) in got.iter().zip(&records).enumerate() {
                assert_eq!(m.offset, Offset(i as i64));
                assert_eq!(m.key, r.key, "{compression:?} record {i}");
                assert_eq!(m.value, r.value, "{compression:?} record {i}");
                assert_eq!(m.timestamp_ms, 1_700_000_000_123);
                let headers: Vec<(String, Option<Bytes>)> = m.headers.clone();
                assert_eq!(headers, r.headers, "{compression:?} record {i}");
            }
        }
    }

    #[test]
    fn the_header_fields_say_magic_2_create_time_and_the_producer_stamp() {
        let stamp = ProducerStamp {
            producer_id: 4242,
            epoch: 3,
            sequence: 17,
        };
        let batch = encode_batch(
            &[
                record(Some("k"), Some(b"v"), &[]),
                record(None, Some(b"w"), &[]),
            ],
            99,
            stamp,
            BatchCompression::None,
        )
        .unwrap();
        let be32 = |at: usize| i32::from_be_bytes(batch[at..at + 4].try_into().unwrap());
        let be64 = |at: usize| i64::from_be_bytes(batch[at..at + 8].try_into().unwrap());
        assert_eq!(be64(0), 0, "base offset");
        assert_eq!(be32(8) as usize, batch.len() - 12, "batch length");
        assert_eq!(batch[16], 2, "magic");
        let crc = u32::from_be_bytes(batch[17..21].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(&batch[21..]));
        assert_eq!(
            i16::from_be_bytes([batch[21], batch[22]]),
            0,
            "no codec, CreateTime"
        );
        assert_eq!(be32(23), 1, "last offset delta");
        assert_eq!((be64(27), be64(35)), (99, 99), "timestamps");
        assert_eq!(be64(43), 4242, "producer id");
        assert_eq!(i16::from_be_bytes([batch[51], batch[52]]), 3, "epoch");
        assert_eq!(be32(53), 17, "base sequence");
        assert_eq!(be32(57), 2, "record count");
    }

    /// The batch librdkafka 2.16 (confluent-kafka) wrote for `produce(topic, key=b"key",
    /// value=b"value", headers=[("h", b"1"), ("h", b"2")], timestamp=1700000000000)` with
    /// no compression and no idempotence, as fetched back from the broker (raw Fetch v4,
    /// offset 0). Ours must be the same bytes, CRC included, but for the partition leader
    /// epoch, which the broker fills in (we send -1, as the Java client does).
    #[test]
    fn one_record_is_encoded_byte_for_byte_as_librdkafka_encodes_it() {
        let ours = encode_batch(
            &[record(
                Some("key"),
                Some(b"value"),
                &[("h", Some("1")), ("h", Some("2"))],
            )],
            1_700_000_000_000,
            ProducerStamp::NONE,
            BatchCompression::None,
        )
        .unwrap();
        let librdkafka = hex(concat!(
            "0000000000000000", // base offset
            "00000048",         // batch length
            "00000000",         // partition leader epoch (the broker's)
            "02",               // magic
            "ba6aa0c8",         // CRC-32C
            "0000",             // attributes
            "00000000",         // last offset delta
            "0000018bcfe56800", // base timestamp
            "0000018bcfe56800", // max timestamp
            "ffffffffffffffff", // producer id
            "ffff",             // producer epoch
            "ffffffff",         // base sequence
            "00000001",         // record count
            "2c000000066b65790a76616c7565040268023102680232",
        ));
        let mut ours = ours.to_vec();
        ours[12..16].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(ours, librdkafka);
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn gzip_is_used_only_when_it_makes_the_batch_smaller() {
        let text = record(
            None,
            Some("{\"request_id\":\"x\"}".repeat(200).as_bytes()),
            &[],
        );
        let packed = encode_batch(
            std::slice::from_ref(&text),
            1,
            ProducerStamp::NONE,
            BatchCompression::Gzip,
        )
        .unwrap();
        assert_eq!(packed[22] & 0x7, 1, "gzip in the attributes");
        assert!(packed.len() < uncompressed_batch_len(&[text]) / 4);

        // Random bytes do not compress: sent as they are, never larger than uncompressed.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                // xorshift64: bytes gzip cannot shrink.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        let noise = record(None, Some(&noise), &[]);
        let plain = encode_batch(
            std::slice::from_ref(&noise),
            1,
            ProducerStamp::NONE,
            BatchCompression::Gzip,
        )
        .unwrap();
        assert_eq!(plain[22] & 0x7, 0, "no codec when it does not help");
        assert_eq!(plain.len(), uncompressed_batch_len(&[noise]));
    }

    #[test]
    fn the_computed_length_is_the_encoded_length_across_varint_boundaries() {
        for len in [
            0usize, 1, 62, 63, 64, 127, 128, 8191, 8192, 8193, 1_048_575, 1_048_576,
        ] {
            let value = vec![b'x'; len];
            let r = record(
                Some("k"),
                Some(&value),
                &[("x-dlq-reason", Some("r")), ("n", None)],
            );
            let batch = encode_batch(
                &[r.clone(), r.clone()],
                5,
                ProducerStamp::NONE,
                BatchCompression::None,
            )
            .unwrap();
            assert_eq!(
                batch.len(),
                uncompressed_batch_len(&[r.clone(), r]),
                "value of {len} bytes"
            );
        }
    }

    #[test]
    fn varints_are_zigzag() {
        let mut buf = BytesMut::new();
        for v in [0i64, -1, 1, -64, 63, 64, 300] {
            put_varint(&mut buf, v);
        }
        assert_eq!(
            &buf[..],
            &[0x00, 0x01, 0x02, 0x7f, 0x7e, 0x80, 0x01, 0xd8, 0x04]
        );
        assert_eq!(varint_len(63), 1);
        assert_eq!(varint_len(64), 2);
        assert_eq!(varint_len(-1), 1);
    }
}
