//! Message sets in the formats before record batches: magic 0 (Kafka 0.8-0.9) and magic 1
//! (0.10, KIP-31/32: timestamps and relative inner offsets), plain or inside a gzip or
//! snappy compressed wrapper message, with offsets as a legacy broker assigns them.
//!
//! Topics written before Kafka 0.11 still hold such sets on upgraded clusters, and a broker
//! hands them to a modern consumer as they are stored (any Fetch version: brokers
//! down-convert for old consumers, never up-convert for new ones).
//!
//! tansu cannot store them: it parses every Produce payload as v2 record batches, and a
//! magic 0/1 set fails its CRC check and drops the connection (tried with tansu 0.6.0 and a
//! Produce v2 request). So [`crate::cluster::Cluster::produce_legacy`] writes placeholders
//! to tansu for the offsets and the cluster proxy serves this module's bytes in their place
//! ([`MessageSet::splice`]).
//!
//! Layout of one message (all big-endian), [`MessageSet::bytes`] is a sequence of them:
//! `offset i64, size i32, crc u32 (IEEE, over magic..end), magic i8, attributes i8,
//! [timestamp i64: magic 1], key bytes (i32 length, -1 null), value bytes (likewise)`.
//! Attributes: bits 0-2 the codec (1 gzip, 2 snappy), bit 3 (magic 1) LogAppendTime.
use std::io::Write;
use std::ops::Range;

/// The two formats before record batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Magic {
    /// Kafka 0.8-0.9: no timestamps; inner messages of a wrapper carry absolute offsets.
    V0,
    /// Kafka 0.10: a timestamp per message; inner offsets relative to the first (KIP-31).
    V1,
}

/// How the messages are wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyCodec {
    /// Each message stands alone at its own offset.
    None,
    /// Inner messages gzipped into the value of a wrapper message (codec 1).
    Gzip,
    /// Inner messages in snappy's xerial framing, as the Java producer wrote them (codec 2).
    Snappy,
}

/// One message to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyMessage {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// CreateTime in milliseconds (written by magic 1 only).
    pub timestamp: i64,
}

/// A legacy message set at known offsets, as a broker would return it from a fetch.
#[derive(Clone, Debug)]
pub struct MessageSet {
    magic: Magic,
    codec: LegacyCodec,
    offsets: Range<i64>,
    /// Top-level messages (plain messages, or wrappers): (offset of its last message, bytes).
    entries: Vec<(i64, Vec<u8>)>,
}

impl LegacyMessage {
    pub fn new(key: Option<&[u8]>, value: Option<&[u8]>, timestamp: i64) -> LegacyMessage {
        LegacyMessage {
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            timestamp,
        }
    }
}

impl MessageSet {
    /// `messages` at offsets `first_offset..`, in `magic` format. With a codec, every
    /// `per_wrapper` consecutive messages share one compressed wrapper (a legacy producer
    /// compressed each of its batches into one wrapper); without one, `per_wrapper` is
    /// ignored.
    ///
    /// Offsets are assigned as a 0.10+ broker assigned them: a plain message at its own
    /// offset; a wrapper at the offset of its last inner message, with inner offsets
    /// absolute (magic 0) or relative 0, 1, ... (magic 1). A magic 1 wrapper carries the
    /// largest inner timestamp, as CreateTime.
    pub fn build(
        magic: Magic,
        codec: LegacyCodec,
        first_offset: i64,
        messages: &[LegacyMessage],
        per_wrapper: usize,
    ) -> MessageSet {
        assert!(
            !messages.is_empty(),
            "a message set needs at least one message"
        );
        let end = first_offset + messages.len() as i64;
        let mut entries = Vec::new();
        match codec {
            LegacyCodec::None => {
                for (i, m) in messages.iter().enumerate() {
                    let offset = first_offset + i as i64;
                    entries.push((offset, message(offset, magic, 0, m)));
                }
            }
            LegacyCodec::Gzip | LegacyCodec::Snappy => {
                assert!(per_wrapper > 0, "per_wrapper must be at least 1");
                for (c, chunk) in messages.chunks(per_wrapper).enumerate() {
                    let chunk_first = first_offset + (c * per_wrapper) as i64;
                    let mut inner = Vec::new();
                    for (i, m) in chunk.iter().enumerate() {
                        let offset = match magic {
                            Magic::V0 => chunk_first + i as i64,
                            Magic::V1 => i as i64,
                        };
                        inner.extend(message(offset, magic, 0, m));
                    }
                    let (attributes, payload) = match codec {
                        LegacyCodec::Gzip => (1, gzip(&inner)),
                        _ => (2, xerial_snappy(&inner)),
                    };
                    let last = chunk_first + chunk.len() as i64 - 1;
                    let wrapper = LegacyMessage {
                        key: None,
                        value: Some(payload),
                        timestamp: chunk.iter().map(|m| m.timestamp).max().unwrap_or(-1),
                    };
                    entries.push((last, message(last, magic, attributes, &wrapper)));
                }
            }
        }
        MessageSet {
            magic,
            codec,
            offsets: first_offset..end,
            entries,
        }
    }

    pub fn magic(&self) -> Magic {
        self.magic
    }

    pub fn codec(&self) -> LegacyCodec {
        self.codec
    }

    /// The offsets the set's messages occupy.
    pub fn offsets(&self) -> Range<i64> {
        self.offsets.clone()
    }

    /// The whole set, as a broker stores it.
    pub fn bytes(&self) -> Vec<u8> {
        self.entries.iter().flat_map(|(_, b)| b.clone()).collect()
    }

    /// What a broker returns for a fetch at `offset`: every top-level message whose last
    /// offset is at or past it (so a wrapper holding `offset` comes whole, and the client
    /// skips the inner messages before `offset`).
    pub fn from(&self, offset: i64) -> Vec<u8> {
        self.entries
            .iter()
            .filter(|(last, _)| *last >= offset)
            .flat_map(|(_, b)| b.clone())
            .collect()
    }

    /// `records` (v2 batches from a fetch at `fetch_offset`) with the batches inside this
    /// set's offsets replaced by the set, from `fetch_offset` on. Batches before and after
    /// the set are kept in place; a fetch past the set is returned unchanged.
    pub fn splice(&self, records: &[u8], fetch_offset: i64) -> Vec<u8> {
        if fetch_offset >= self.offsets.end {
            return records.to_vec();
        }
        let (mut before, mut after) = (Vec::new(), Vec::new());
        // Whether tansu's answer reaches the set: a fetch truncated by its byte limit before
        // the set must not jump over the offsets it did not return.
        let mut reaches = fetch_offset >= self.offsets.start;
        let mut rest = records;
        while rest.len() >= 12 {
            let base = i64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            let len = i32::from_be_bytes(rest[8..12].try_into().expect("4 bytes"));
            let total = 12 + usize::try_from(len).unwrap_or(0);
            let whole = total <= rest.len();
            let batch = &rest[..total.min(rest.len())];
            // A v2 batch's last offset: base offset + last offset delta (bytes 23..27); a
            // partial batch at the end of a fetch may not reach it. A legacy message (magic,
            // at byte 16 in both layouts, below 2: another set spliced in already) sits at
            // its last offset.
            let last = match batch.get(16) {
                Some(2) => batch.get(23..27).map_or(base, |d| {
                    base + i64::from(i32::from_be_bytes(d.try_into().expect("4 bytes")))
                }),
                _ => base,
            };
            if base >= self.offsets.end {
                after.extend_from_slice(batch);
            } else if last < self.offsets.start && whole {
                before.extend_from_slice(batch);
            }
            reaches |= base >= self.offsets.start || last + 1 >= self.offsets.start && whole;
            rest = &rest[batch.len()..];
        }
        if !reaches {
            return records.to_vec();
        }
        before.extend(self.from(fetch_offset));
        before.extend(after);
        before
    }
}

/// One message (offset and size prefix included); `attributes` bits 0-2 name the codec.
fn message(offset: i64, magic: Magic, attributes: i8, m: &LegacyMessage) -> Vec<u8> {
    let mut body = Vec::new();
    body.push(match magic {
        Magic::V0 => 0u8,
        Magic::V1 => 1u8,
    });
    body.push(attributes as u8);
    if magic == Magic::V1 {
        body.extend_from_slice(&m.timestamp.to_be_bytes());
    }
    for field in [&m.key, &m.value] {
        match field {
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(bytes) => {
                let len = i32::try_from(bytes.len()).expect("a field under 2 GiB");
                body.extend_from_slice(&len.to_be_bytes());
                body.extend_from_slice(bytes);
            }
        }
    }
    let mut crc = flate2::Crc::new();
    crc.update(&body);
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&offset.to_be_bytes());
    let size = i32::try_from(4 + body.len()).expect("a message under 2 GiB");
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&crc.sum().to_be_bytes());
    out.extend(body);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// snappy-java's stream format (SnappyOutputStream), which the Java producer used for
/// legacy sets: a 16-byte header, then blocks of (i32 length, raw snappy block).
fn xerial_snappy(data: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 32 * 1024;
    let mut out = vec![0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
    out.extend_from_slice(&1i32.to_be_bytes()); // version
    out.extend_from_slice(&1i32.to_be_bytes()); // minimum compatible version
    let mut encoder = snap::raw::Encoder::new();
    for block in data.chunks(BLOCK) {
        let compressed = encoder.compress_vec(block).expect("snappy into memory");
        let len = i32::try_from(compressed.len()).expect("a small block");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend(compressed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// (offset, magic, attributes, timestamp, key, value) of each top-level message.
    type Parsed = (i64, u8, u8, Option<i64>, Option<Vec<u8>>, Option<Vec<u8>>);

    fn parse(mut data: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let offset = i64::from_be_bytes(data[..8].try_into().unwrap());
            let size = i32::from_be_bytes(data[8..12].try_into().unwrap()) as usize;
            let msg = &data[12..12 + size];
            let crc = u32::from_be_bytes(msg[..4].try_into().unwrap());
            let mut check = flate2::Crc::new();
            check.update(&msg[4..]);
            assert_eq!(crc, check.sum(), "crc of the message at {offset}");
            let (magic, attributes) = (msg[4], msg[5]);
            let mut at = 6;
            let timestamp = (magic == 1).then(|| {
                at += 8;
                i64::from_be_bytes(msg[6..14].try_into().unwrap())
            });
            let mut field = || {
                let len = i32::from_be_bytes(msg[at..at + 4].try_into().unwrap());
                at += 4;
                (len >= 0).then(|| {
                    let v = msg[at..at + len as usize].to_vec();
                    at += len as usize;
                    v
                })
            };
            let key = field();
            let value = field();
            out.push((offset, magic, attributes, timestamp, key, value));
            data = &data[12 + size..];
        }
        out
    }

    fn messages(n: usize) -> Vec<LegacyMessage> {
        (0..n)
            .map(|i| {
                let value = format!("v{i}");
                LegacyMessage::new(Some(b"k"), Some(value.as_bytes()), 1_000 + i as i64)
            })
            .collect()
    }

    #[test]
    fn plain_messages_sit_at_their_own_offsets() {
        let set = MessageSet::build(Magic::V0, LegacyCodec::None, 5, &messages(3), 1);
        let parsed = parse(&set.bytes());
        let offsets: Vec<i64> = parsed.iter().map(|m| m.0).collect();
        assert_eq!(offsets, [5, 6, 7]);
        assert!(parsed.iter().all(|m| m.1 == 0 && m.3.is_none()));
        assert_eq!(parsed[2].5.as_deref(), Some(&b"v2"[..]));
        assert_eq!(set.offsets(), 5..8);
    }

    #[test]
    fn magic1_gzip_wrapper_has_relative_inner_offsets_and_the_last_offset() {
        let set = MessageSet::build(Magic::V1, LegacyCodec::Gzip, 10, &messages(3), 3);
        let parsed = parse(&set.bytes());
        assert_eq!(parsed.len(), 1);
        let (offset, magic, attributes, timestamp, _, value) = &parsed[0];
        assert_eq!(
            (*offset, *magic, *attributes, *timestamp),
            (12, 1, 1, Some(1_002))
        );
        let mut inner = Vec::new();
        flate2::read::GzDecoder::new(&value.as_ref().unwrap()[..])
            .read_to_end(&mut inner)
            .unwrap();
        let inner = parse(&inner);
        let offsets: Vec<i64> = inner.iter().map(|m| m.0).collect();
        assert_eq!(offsets, [0, 1, 2]);
        assert_eq!(inner[1].3, Some(1_001));
    }

    #[test]
    fn magic0_snappy_wrappers_have_absolute_inner_offsets() {
        let set = MessageSet::build(Magic::V0, LegacyCodec::Snappy, 20, &messages(5), 2);
        let parsed = parse(&set.bytes());
        let offsets: Vec<i64> = parsed.iter().map(|m| m.0).collect();
        assert_eq!(
            offsets,
            [21, 23, 24],
            "a wrapper sits at its last inner offset"
        );
        let value = parsed[1].5.as_ref().unwrap();
        assert_eq!(&value[..8], b"\x82SNAPPY\0");
        let block_len = i32::from_be_bytes(value[16..20].try_into().unwrap()) as usize;
        let inner = snap::raw::Decoder::new()
            .decompress_vec(&value[20..20 + block_len])
            .unwrap();
        let inner: Vec<i64> = parse(&inner).iter().map(|m| m.0).collect();
        assert_eq!(inner, [22, 23]);
    }

    #[test]
    fn a_fetch_inside_a_wrapper_gets_the_whole_wrapper() {
        let set = MessageSet::build(Magic::V1, LegacyCodec::Gzip, 0, &messages(4), 2);
        let offsets = |b: &[u8]| parse(b).iter().map(|m| m.0).collect::<Vec<_>>();
        assert_eq!(offsets(&set.from(0)), [1, 3]);
        assert_eq!(offsets(&set.from(2)), [3]);
        assert_eq!(offsets(&set.from(3)), [3]);
        assert!(set.from(4).is_empty());
    }

    /// A v2 batch header (61 bytes, no records) at `base` covering `count` offsets.
    fn v2_batch(base: i64, count: i32) -> Vec<u8> {
        let mut b = base.to_be_bytes().to_vec();
        b.extend_from_slice(&49i32.to_be_bytes());
        b.extend_from_slice(&[0; 4]); // partition leader epoch
        b.push(2);
        b.extend_from_slice(&[0; 4]); // crc
        b.extend_from_slice(&[0; 2]); // attributes
        b.extend_from_slice(&(count - 1).to_be_bytes());
        b.resize(61, 0);
        b
    }

    #[test]
    fn splice_replaces_the_placeholders_and_keeps_the_batches_around_them() {
        let set = MessageSet::build(Magic::V0, LegacyCodec::None, 2, &messages(2), 1);
        let records = [v2_batch(0, 2), v2_batch(2, 2), v2_batch(4, 1)].concat();
        let spliced = set.splice(&records, 0);
        let expected = [v2_batch(0, 2), set.bytes(), v2_batch(4, 1)].concat();
        assert_eq!(spliced, expected);
        assert_eq!(
            set.splice(&records[61..], 3),
            [set.from(3), v2_batch(4, 1)].concat()
        );
        assert_eq!(set.splice(&records[122..], 4), records[122..]);
        // Truncated before the set: returned as it is, the next fetch reaches the set.
        let far = MessageSet::build(Magic::V0, LegacyCodec::None, 9, &messages(1), 1);
        assert_eq!(far.splice(&records[..61], 0), records[..61]);
    }
}
