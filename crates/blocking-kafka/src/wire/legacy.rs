//! Message formats v0 and v1 (before Kafka 0.11): message sets, as topics written by old
//! clients still hold them on upgraded clusters, and as a broker whose topic keeps an old
//! `message.format.version` still answers a fetch. The Java consumer reads them; so do we,
//! within the same bounds as record batches (DESIGN invariant 9).
//!
//! ```text
//! offset i64 | size i32 | crc u32 | magic i8 (0, 1) | attributes i8 | timestamp i64 (v1) |
//! key: length i32 (-1 null), bytes | value: length i32 (-1 null), bytes
//! ```
//!
//! The CRC is CRC-32 (IEEE) of everything after it. A compressed message (attributes'
//! low three bits: gzip, snappy, lz4) is a wrapper whose value is a compressed message set
//! of uncompressed messages. In a v0 wrapper the inner messages carry their absolute
//! offsets; in a v1 wrapper (KIP-31) relative ones, the wrapper carrying the absolute
//! offset of the last, so the inner messages' offsets are known only once the last inner
//! message is read. A v1 wrapper is therefore read twice: once to find its last relative
//! offset (nothing held), then to hand its messages over. Old data is rare enough that
//! the second decompression is the simple price of exact offsets.
//!
//! Kafka 0.8 and 0.9 wrote lz4 frames in v0 wrappers with a wrong frame-header checksum
//! (KAFKA-3160: computed over the magic number too); the Java consumer ignores that
//! checksum for v0, and so do we, by putting the right one in before decoding.
//!
//! What cannot be decoded within the bounds (a wrapper expanding past the work bound, a
//! message too large to hold) is given up as one `Undecoded` stand-in for its offsets, as
//! record batches are; corrupt data (CRC, layout, codec) is an error.
use std::io::{self, Read};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::records::Compression;

use crate::error::KafkaError;
use crate::types::{Offset, Partition};
use crate::wire::codec::{self, Compressed};
use crate::wire::header::{be_i32, be_i64, corrupt};
use crate::wire::limits::{Budget, MESSAGE_COST, RecordLimits};
use crate::wire::message::Message;

/// Offset and size: what precedes every message of a message set.
pub(crate) const LOG_OVERHEAD: usize = 12;
/// Where the magic byte is, in a message and in a record batch alike.
pub(crate) const MAGIC_AT: usize = 16;
/// The smallest message: a v0 message with a null key and value.
pub(crate) const MIN_MESSAGE: usize = LOG_OVERHEAD + 4 + 1 + 1 + 4 + 4;

/// The lz4 frame's magic number, little-endian.
const LZ4_MAGIC: u32 = 0x184D_2204;

/// How decoding one message (a plain one or a wrapper) ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Everything handed over (or before the position): the next offset to fetch.
    Next(i64),
    /// The fetch's budget ran out: the next fetch resumes at this offset.
    Stop(i64),
    /// Offsets `first` to `last` cannot be decoded within the bounds.
    GiveUp { first: i64, last: i64, why: String },
}

/// What decoding needs to know of the partition.
pub(super) struct Context {
    pub(super) partition: Partition,
    pub(super) limits: RecordLimits,
    /// The next offset to hand over; messages before it are read past.
    pub(super) next: i64,
}

/// Decodes one whole message of a message set (`entry`: offset to the end of its value).
pub(super) fn decode(
    entry: Bytes,
    ctx: &Context,
    budget: &mut Budget,
    out: &mut Vec<Message>,
) -> Result<Step, KafkaError> {
    let outer = Outer::parse(&entry, ctx.partition)?;
    if crc32fast::hash(&entry[MAGIC_AT..]) != outer.crc {
        return Err(corrupt(
            ctx.partition,
            format!(
                "CRC mismatch in the v{} message at offset {}",
                outer.magic, outer.offset
            ),
        ));
    }
    let compression = match outer.attributes & 0x07 {
        0 => None,
        1 => Some(Compression::Gzip),
        2 => Some(Compression::Snappy),
        3 => Some(Compression::Lz4),
        other => {
            return Err(KafkaError::Codec {
                codec: "unknown",
                detail: format!(
                    "compression type {other} in the v{} message at offset {} of partition {}",
                    outer.magic, outer.offset, ctx.partition
                ),
            });
        }
    };
    let Some(compression) = compression else {
        return Ok(plain(&outer, ctx, budget, out));
    };
    let Some(value) = outer.value.clone() else {
        return Err(corrupt(
            ctx.partition,
            format!(
                "the compressed v{} message at offset {} has no value",
                outer.magic, outer.offset
            ),
        ));
    };
    let value = if compression == Compression::Lz4 && outer.magic == 0 {
        fix_kafka_lz4_checksum(value)
    } else {
        value
    };
    let wrapper = Wrapper {
        outer: &outer,
        compression,
        data: value,
    };
    wrapper.decode(ctx, budget, out)
}

/// A message's outer fields, its key and value sliced from the entry.
struct Outer {
    offset: i64,
    crc: u32,
    magic: i8,
    attributes: i8,
    /// -1 in v0, which has no timestamps.
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
}

impl Outer {
    fn parse(entry: &Bytes, partition: Partition) -> Result<Outer, KafkaError> {
        let bad = |detail: &str| corrupt(partition, format!("a v0/v1 message {detail}"));
        if entry.len() < MIN_MESSAGE {
            return Err(bad("is shorter than its fixed fields"));
        }
        let offset = be_i64(&entry[0..8]);
        let magic = entry[MAGIC_AT] as i8;
        let attributes = entry[MAGIC_AT + 1] as i8;
        let mut at = MAGIC_AT + 2;
        let timestamp = if magic == 1 {
            let ts = entry.get(at..at + 8).ok_or_else(|| bad("is cut short"))?;
            at += 8;
            be_i64(ts)
        } else {
            -1
        };
        let mut rest = entry.slice(at..);
        let key = bytes_field(&mut rest).ok_or_else(|| bad("is cut short in its key"))?;
        let value = bytes_field(&mut rest).ok_or_else(|| bad("is cut short in its value"))?;
        if !rest.is_empty() {
            return Err(bad("is longer than its key and value"));
        }
        Ok(Outer {
            offset,
            crc: u32::from_be_bytes([entry[12], entry[13], entry[14], entry[15]]),
            magic,
            attributes,
            timestamp,
            key,
            value,
        })
    }
}

/// A length-prefixed byte field (i32 length, -1 null) sliced from `rest`.
fn bytes_field(rest: &mut Bytes) -> Option<Option<Bytes>> {
    if rest.len() < 4 {
        return None;
    }
    let len = rest.get_i32();
    let Ok(len) = usize::try_from(len) else {
        return Some(None);
    };
    (rest.len() >= len).then(|| Some(rest.split_to(len)))
}

/// An uncompressed message: handed over as it is (sliced, held up to the record limits).
fn plain(outer: &Outer, ctx: &Context, budget: &mut Budget, out: &mut Vec<Message>) -> Step {
    if outer.offset < ctx.next {
        return Step::Next(ctx.next);
    }
    let (value, value_len) = held(outer.value.clone(), ctx.limits);
    let (key, _) = held(outer.key.clone(), ctx.limits);
    // Slices of the answer: nothing copied, so only the bookkeeping counts.
    if !budget.admit(MESSAGE_COST) {
        return Step::Stop(outer.offset);
    }
    out.push(Message {
        partition: ctx.partition,
        offset: Offset(outer.offset),
        key,
        value,
        value_len,
        headers: Vec::new(),
        timestamp_ms: outer.timestamp,
        undecoded: None,
    });
    Step::Next(outer.offset + 1)
}

/// A field as far as the limits hold it, with its true length.
fn held(field: Option<Bytes>, limits: RecordLimits) -> (Option<Bytes>, usize) {
    match field {
        Some(mut b) => {
            let len = b.len();
            b.truncate(limits.kept(len));
            (Some(b), len)
        }
        None => (None, 0),
    }
}

/// A compressed wrapper and its compressed message set.
struct Wrapper<'o> {
    outer: &'o Outer,
    compression: Compression,
    data: Bytes,
}

/// Why reading the inner message set stopped early.
enum Halt {
    /// The wrapper expands past the work bound, or its codec past its buffer bound.
    Bound(String),
    /// The fetch as a whole did too much work: resume in the next one.
    FetchWork,
    Corrupt(String),
    Codec(io::Error),
}

impl Wrapper<'_> {
    fn decode(
        &self,
        ctx: &Context,
        budget: &mut Budget,
        out: &mut Vec<Message>,
    ) -> Result<Step, KafkaError> {
        let last = self.outer.offset;
        if last < ctx.next {
            // Handed over already (the wrapper's offset is its last message's).
            return Ok(Step::Next(ctx.next));
        }
        // v1: offsets are relative; the wrapper's offset is the last one's absolute offset.
        let base = if self.outer.magic == 1 {
            match self.scan(budget) {
                Ok(last_relative) => last - last_relative,
                Err(halt) => return self.halted(halt, ctx, ctx.next),
            }
        } else {
            0
        };
        let mut taken = Vec::new();
        let mut next = ctx.next;
        let result = self.each(budget, |inner, budget| {
            let offset = base + inner.offset;
            let keep = offset >= next;
            let message = inner.read(keep.then_some(ctx.limits), budget)?;
            let Some((message, cost)) = message else {
                return Ok(true);
            };
            if !budget.admit(cost) {
                return Ok(false);
            }
            next = offset + 1;
            taken.push(Message {
                partition: ctx.partition,
                offset: Offset(offset),
                timestamp_ms: if self.outer.magic == 1 && self.outer.attributes & 0x08 != 0 {
                    // LogAppendTime: the broker's time, on the wrapper.
                    self.outer.timestamp
                } else {
                    message.timestamp_ms
                },
                ..message
            });
            Ok(true)
        });
        match result {
            Ok(true) => {
                out.append(&mut taken);
                Ok(Step::Next(next.max(last + 1)))
            }
            Ok(false) => {
                out.append(&mut taken);
                Ok(Step::Stop(next))
            }
            Err(halt) => {
                // What was decoded before a bound is handed over; the rest is given up.
                out.append(&mut taken);
                self.halted(halt, ctx, next)
            }
        }
    }

    /// The last relative offset of the inner message set, reading past everything.
    fn scan(&self, budget: &mut Budget) -> Result<i64, Halt> {
        let mut last = None;
        self.each(budget, |inner, budget| {
            last = Some(inner.offset);
            inner.skip_rest(budget)?;
            Ok(true)
        })?;
        last.ok_or_else(|| Halt::Corrupt("its compressed message set is empty".into()))
    }

    /// Calls `f` with each inner message until it returns false or the set ends.
    fn each(
        &self,
        budget: &mut Budget,
        mut f: impl FnMut(&mut Inner<'_, '_>, &mut Budget) -> Result<bool, Halt>,
    ) -> Result<bool, Halt> {
        let reader = codec::decompressor(self.compression, Compressed::Memory(self.data.clone()))
            .map_err(halt_of)?;
        let mut input = Counted {
            inner: reader,
            pulled: 0,
        };
        loop {
            let mut head = [0u8; LOG_OVERHEAD];
            if !read_head(&mut input, &mut head, budget)? {
                return Ok(true);
            }
            let size = be_i32(&head[8..12]);
            let size = usize::try_from(size)
                .ok()
                .filter(|s| *s >= MIN_MESSAGE - LOG_OVERHEAD)
                .ok_or_else(|| Halt::Corrupt(format!("an inner message of size {size}")))?;
            let mut inner = Inner {
                input: &mut input,
                offset: be_i64(&head[0..8]),
                left: size,
                crc: crc32fast::Hasher::new(),
            };
            if !f(&mut inner, budget)? {
                return Ok(false);
            }
            if inner.left != 0 {
                return Err(Halt::Corrupt(
                    "an inner message is longer than its key and value".into(),
                ));
            }
        }
    }

    fn halted(&self, halt: Halt, ctx: &Context, next: i64) -> Result<Step, KafkaError> {
        let what = format!(
            "the {} v{} message at offset {} of partition {}",
            codec::name(self.compression),
            self.outer.magic,
            self.outer.offset,
            ctx.partition
        );
        match halt {
            Halt::Bound(why) => Ok(Step::GiveUp {
                first: next,
                last: self.outer.offset,
                why,
            }),
            Halt::FetchWork => Ok(Step::Stop(next)),
            Halt::Corrupt(detail) => Err(corrupt(ctx.partition, format!("{what}: {detail}"))),
            Halt::Codec(e) => Err(KafkaError::Codec {
                codec: codec::name(self.compression),
                detail: format!("{what}: {e}"),
            }),
        }
    }
}

/// Reads an inner message's offset and size; false at the end of the set.
fn read_head(
    input: &mut Counted<'_>,
    head: &mut [u8; LOG_OVERHEAD],
    budget: &mut Budget,
) -> Result<bool, Halt> {
    let mut got = 0;
    while got < head.len() {
        match input.read(&mut head[got..], budget)? {
            0 if got == 0 => return Ok(false),
            0 => {
                return Err(Halt::Corrupt(
                    "the message set ends inside a message".into(),
                ));
            }
            n => got += n,
        }
    }
    Ok(true)
}

/// The decompressed inner message set, every byte counted against the work bounds.
struct Counted<'a> {
    inner: Box<dyn Read + 'a>,
    /// Bytes decompressed from this wrapper (one pass).
    pulled: u64,
}

impl Counted<'_> {
    fn read(&mut self, buf: &mut [u8], budget: &mut Budget) -> Result<usize, Halt> {
        let n = loop {
            match self.inner.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(halt_of(e)),
            }
        };
        self.pulled += n as u64;
        budget.expanded += n as u64;
        if self.pulled > budget.max_expansion {
            return Err(Halt::Bound(format!(
                "the compressed message set expands past {} bytes",
                budget.max_expansion
            )));
        }
        if budget.expanded > budget.max_expansion {
            return Err(Halt::FetchWork);
        }
        Ok(n)
    }
}

fn halt_of(e: io::Error) -> Halt {
    match codec::past_bound(&e) {
        Some(why) => Halt::Bound(why.to_owned()),
        None => Halt::Codec(e),
    }
}

/// One uncompressed message inside a wrapper, read from the decompressed set.
struct Inner<'a, 'b> {
    input: &'a mut Counted<'b>,
    /// Absolute (v0 wrapper) or relative (v1 wrapper).
    offset: i64,
    /// Bytes of the message not read yet.
    left: usize,
    crc: crc32fast::Hasher,
}

impl Inner<'_, '_> {
    /// Reads the message: with `limits`, the message (its offset still the inner one) and
    /// what holding it costs; without, reads past it. Its CRC is checked either way.
    fn read(
        &mut self,
        limits: Option<RecordLimits>,
        budget: &mut Budget,
    ) -> Result<Option<(Message, usize)>, Halt> {
        let mut fixed = [0u8; 6];
        self.exact(&mut fixed, budget, false)?;
        // The CRC covers the message from its magic byte on.
        self.crc.update(&fixed[4..]);
        let crc = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
        let magic = fixed[4] as i8;
        let attributes = fixed[5];
        if attributes & 0x07 != 0 {
            return Err(Halt::Corrupt(
                "an inner message is itself compressed".into(),
            ));
        }
        let timestamp = if magic >= 1 {
            let mut ts = [0u8; 8];
            self.exact(&mut ts, budget, true)?;
            i64::from_be_bytes(ts)
        } else {
            -1
        };
        let (key, _, key_held) = self.field(limits, budget)?;
        let (value, value_len, value_held) = self.field(limits, budget)?;
        if self.left != 0 {
            return Err(Halt::Corrupt(
                "an inner message is longer than its key and value".into(),
            ));
        }
        if std::mem::take(&mut self.crc).finalize() != crc {
            return Err(Halt::Corrupt("CRC mismatch in an inner message".into()));
        }
        if limits.is_none() {
            return Ok(None);
        }
        let message = Message {
            partition: Partition(-1),
            offset: Offset(self.offset),
            key,
            value,
            value_len,
            headers: Vec::new(),
            timestamp_ms: timestamp,
            undecoded: None,
        };
        // Copies out of the decompressor: what they hold counts.
        Ok(Some((message, MESSAGE_COST + key_held + value_held)))
    }

    /// Reads past the rest of the message (its CRC unchecked: only offsets are wanted).
    fn skip_rest(&mut self, budget: &mut Budget) -> Result<(), Halt> {
        self.skip(self.left, budget, false)
    }

    /// A length-prefixed field, held as far as `limits` allow (`None`: not at all), the
    /// rest read past: what is held, the true length, and the bytes held.
    fn field(
        &mut self,
        limits: Option<RecordLimits>,
        budget: &mut Budget,
    ) -> Result<(Option<Bytes>, usize, usize), Halt> {
        let mut len = [0u8; 4];
        self.exact(&mut len, budget, true)?;
        let Ok(len) = usize::try_from(i32::from_be_bytes(len)) else {
            return Ok((None, 0, 0));
        };
        if len > self.left {
            return Err(Halt::Corrupt("a field is longer than its message".into()));
        }
        let Some(limits) = limits else {
            self.skip(len, budget, true)?;
            return Ok((None, len, 0));
        };
        let kept = limits.kept(len);
        let mut buf = BytesMut::zeroed(kept);
        self.exact(&mut buf, budget, true)?;
        self.skip(len - kept, budget, true)?;
        Ok((Some(buf.freeze()), len, kept))
    }

    fn exact(&mut self, buf: &mut [u8], budget: &mut Budget, hashed: bool) -> Result<(), Halt> {
        if buf.len() > self.left {
            return Err(Halt::Corrupt("an inner message is cut short".into()));
        }
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..], budget)? {
                0 => {
                    return Err(Halt::Corrupt(
                        "the message set ends inside a message".into(),
                    ));
                }
                n => got += n,
            }
        }
        self.left -= buf.len();
        if hashed {
            self.crc.update(buf);
        }
        Ok(())
    }

    fn skip(&mut self, mut n: usize, budget: &mut Budget, hashed: bool) -> Result<(), Halt> {
        if n > self.left {
            return Err(Halt::Corrupt("an inner message is cut short".into()));
        }
        let mut scratch = [0u8; 8192];
        while n > 0 {
            let want = n.min(scratch.len());
            let got = self.input.read(&mut scratch[..want], budget)?;
            if got == 0 {
                return Err(Halt::Corrupt(
                    "the message set ends inside a message".into(),
                ));
            }
            if hashed {
                self.crc.update(&scratch[..got]);
            }
            n -= got;
            self.left -= got;
        }
        Ok(())
    }
}

/// The lz4 frame of a Kafka 0.8/0.9 v0 wrapper with the frame-header checksum Kafka
/// should have written (KAFKA-3160: it hashed the magic number too). A frame whose
/// checksum is already right is unchanged; anything that is not an lz4 frame is left for
/// the decoder to refuse.
fn fix_kafka_lz4_checksum(frame: Bytes) -> Bytes {
    if frame.len() < 7 || u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) != LZ4_MAGIC
    {
        return frame;
    }
    let flags = frame[4];
    let mut at = 6;
    if flags & 0x08 != 0 {
        at += 8; // content size
    }
    if flags & 0x01 != 0 {
        at += 4; // dictionary id
    }
    if frame.len() <= at {
        return frame;
    }
    let right = (twox_hash::XxHash32::oneshot(0, &frame[4..at]) >> 8) as u8;
    if frame[at] == right {
        return frame;
    }
    let mut fixed = BytesMut::from(&frame[..]);
    fixed[at] = right;
    fixed.freeze()
}

#[cfg(test)]
pub(crate) mod tests {
    //! Message sets written by hand, as Kafka before 0.11 (and the Java client) wrote them.
    use super::*;
    use std::io::Write;

    const P: Partition = Partition(0);
    const LIMITS: RecordLimits = RecordLimits {
        whole: 64 * 1024,
        prefix: 1000,
    };

    /// One message: `magic` 0 or 1, the codec in `attributes`.
    pub(crate) fn message(
        offset: i64,
        magic: i8,
        attributes: i8,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut body = vec![magic as u8, attributes as u8];
        if magic == 1 {
            body.extend_from_slice(&timestamp.to_be_bytes());
        }
        for field in [key, value] {
            match field {
                Some(b) => {
                    body.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    body.extend_from_slice(b);
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// A wrapper of `inner` (messages with their own offsets) compressed with `codec`
    /// (1 gzip, 2 snappy xerial-framed as the Java client wrote it, 3 lz4), which is also
    /// the wrapper's attributes (0x08: LogAppendTime).
    pub(crate) fn wrapper(
        offset: i64,
        magic: i8,
        codec: i8,
        timestamp: i64,
        inner: &[Vec<u8>],
    ) -> Vec<u8> {
        let set: Vec<u8> = inner.concat();
        let compressed = match codec & 0x07 {
            1 => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&set).unwrap();
                e.finish().unwrap()
            }
            2 => {
                let block = snap::raw::Encoder::new().compress_vec(&set).unwrap();
                let mut out = b"\x82SNAPPY\x00".to_vec();
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&(block.len() as i32).to_be_bytes());
                out.extend_from_slice(&block);
                out
            }
            3 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(&set).unwrap();
                let mut frame = e.finish().unwrap();
                if magic == 0 {
                    // As Kafka 0.8/0.9 wrote it: the header checksum over the magic too.
                    frame[6] = (twox_hash::XxHash32::oneshot(0, &frame[..6]) >> 8) as u8;
                }
                frame
            }
            _ => panic!("codec {codec}"),
        };
        message(offset, magic, codec, timestamp, None, Some(&compressed))
    }

    fn decode_all(
        entry: Vec<u8>,
        next: i64,
        budget: &mut Budget,
    ) -> (Result<Step, KafkaError>, Vec<Message>) {
        let ctx = Context {
            partition: P,
            limits: LIMITS,
            next,
        };
        let mut out = Vec::new();
        let step = decode(Bytes::from(entry), &ctx, budget, &mut out);
        (step, out)
    }

    fn values(out: &[Message]) -> Vec<(i64, String)> {
        out.iter()
            .map(|m| {
                let v = m
                    .value
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                (m.offset.0, v.into_owned())
            })
            .collect()
    }

    fn budget() -> Budget {
        Budget::new(8 * 1024 * 1024)
    }

    #[test]
    fn plain_v0_and_v1_messages_are_decoded() {
        let (step, out) = decode_all(
            message(7, 0, 0, 0, Some(b"k"), Some(b"v0")),
            0,
            &mut budget(),
        );
        assert_eq!(step.unwrap(), Step::Next(8));
        assert_eq!(values(&out), vec![(7, "v0".into())]);
        assert_eq!(out[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(out[0].timestamp_ms, -1, "v0 has no timestamp");

        let (step, out) = decode_all(message(8, 1, 0, 1234, None, Some(b"v1")), 8, &mut budget());
        assert_eq!(step.unwrap(), Step::Next(9));
        assert_eq!(values(&out), vec![(8, "v1".into())]);
        assert_eq!((out[0].timestamp_ms, out[0].key.clone()), (1234, None));

        // Before the position: read past.
        let (step, out) = decode_all(message(8, 1, 0, 1234, None, Some(b"v1")), 9, &mut budget());
        assert_eq!(step.unwrap(), Step::Next(9));
        assert!(out.is_empty());
    }

    #[test]
    fn compressed_wrappers_of_every_codec_are_decoded_with_absolute_offsets() {
        for codec in [1, 2, 3] {
            // v1: relative inner offsets 0..2, the wrapper at the last one's absolute offset.
            let inner: Vec<Vec<u8>> = (0..3)
                .map(|i| message(i, 1, 0, 100 + i, None, Some(format!("r{i}").as_bytes())))
                .collect();
            let (step, out) = decode_all(wrapper(12, 1, codec, 999, &inner), 0, &mut budget());
            assert_eq!(step.unwrap(), Step::Next(13), "codec {codec}");
            assert_eq!(
                values(&out),
                vec![(10, "r0".into()), (11, "r1".into()), (12, "r2".into())],
                "codec {codec}"
            );
            assert_eq!(out[1].timestamp_ms, 101, "CreateTime: the inner message's");

            // v0: absolute inner offsets; lz4 with Kafka 0.8's wrong header checksum.
            let inner: Vec<Vec<u8>> = (20..22)
                .map(|i| message(i, 0, 0, 0, Some(b"k"), Some(format!("a{i}").as_bytes())))
                .collect();
            let (step, out) = decode_all(wrapper(21, 0, codec, 0, &inner), 0, &mut budget());
            assert_eq!(step.unwrap(), Step::Next(22), "codec {codec}");
            assert_eq!(values(&out), vec![(20, "a20".into()), (21, "a21".into())]);
        }
    }

    #[test]
    fn a_log_append_time_wrapper_gives_its_time_to_every_message() {
        let inner = vec![message(0, 1, 0, 5, None, Some(b"x"))];
        let (step, out) = decode_all(wrapper(3, 1, 1 | 0x08, 777, &inner), 0, &mut budget());
        assert_eq!(step.unwrap(), Step::Next(4));
        assert_eq!((out[0].offset, out[0].timestamp_ms), (Offset(3), 777));
    }

    #[test]
    fn a_wrapper_resent_after_a_partial_fetch_resumes_at_the_position() {
        let inner: Vec<Vec<u8>> = (0..4)
            .map(|i| message(i, 1, 0, 0, None, Some(format!("m{i}").as_bytes())))
            .collect();
        let entry = wrapper(3, 1, 1, 0, &inner);
        // The budget takes two messages: the next fetch starts at the third.
        let mut small = Budget::new(2 * MESSAGE_COST + 64 + 10);
        let (step, out) = decode_all(entry.clone(), 0, &mut small);
        assert_eq!(step.unwrap(), Step::Stop(2));
        assert_eq!(values(&out), vec![(0, "m0".into()), (1, "m1".into())]);
        let (step, out) = decode_all(entry, 2, &mut budget());
        assert_eq!(step.unwrap(), Step::Next(4));
        assert_eq!(values(&out), vec![(2, "m2".into()), (3, "m3".into())]);
    }

    #[test]
    fn large_values_are_held_as_a_prefix_with_their_true_length() {
        let big = vec![b'z'; 100_000];
        let (step, out) = decode_all(message(0, 1, 0, 0, None, Some(&big)), 0, &mut budget());
        assert_eq!(step.unwrap(), Step::Next(1));
        assert_eq!(
            (out[0].value_len, out[0].value.as_ref().map(Bytes::len)),
            (100_000, Some(1000))
        );

        let inner = vec![message(0, 1, 0, 0, None, Some(&big))];
        let (step, out) = decode_all(wrapper(0, 1, 1, 0, &inner), 0, &mut budget());
        assert_eq!(step.unwrap(), Step::Next(1));
        assert_eq!(
            (out[0].value_len, out[0].value.as_ref().map(Bytes::len)),
            (100_000, Some(1000))
        );
    }

    #[test]
    fn a_wrapper_expanding_past_the_work_bound_is_given_up_for_its_offsets() {
        let bomb = vec![0u8; 4 * 1024 * 1024];
        let inner = vec![
            message(0, 1, 0, 0, None, Some(&bomb)),
            message(1, 1, 0, 0, None, Some(b"y")),
        ];
        let mut b = Budget::with_expansion(8 * 1024 * 1024, 1024 * 1024);
        let (step, out) = decode_all(wrapper(41, 1, 1, 0, &inner), 30, &mut b);
        match step.unwrap() {
            Step::GiveUp { first, last, why } => {
                assert_eq!((first, last), (30, 41));
                assert!(why.contains("expands past"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert!(out.is_empty());
    }

    #[test]
    fn corrupt_messages_are_errors_naming_the_partition() {
        let mut entry = message(0, 1, 0, 0, None, Some(b"v"));
        let last = entry.len() - 1;
        entry[last] ^= 1;
        let (step, _) = decode_all(entry, 0, &mut budget());
        let err = step.unwrap_err().to_string();
        assert!(
            err.contains("CRC mismatch") && err.contains("partition 0"),
            "{err}"
        );

        let inner = vec![message(0, 1, 0, 0, None, Some(b"v"))];
        let mut entry = wrapper(0, 1, 1, 0, &inner);
        let n = entry.len();
        entry.truncate(n - 4); // the compressed value cut short, the CRC no longer right
        let (step, _) = decode_all(entry, 0, &mut budget());
        assert!(step.is_err());
    }
}
