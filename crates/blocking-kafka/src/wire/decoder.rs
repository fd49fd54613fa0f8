//! Decoding record batches into messages, within hard bounds (DESIGN invariant 9).
//!
//! Record by record, whatever the codec: a batch is never decompressed whole. Three bounds:
//!
//! - **Per record** ([`RecordLimits`]): a key or value up to `max(whole, prefix)` bytes is
//!   held whole; a longer one keeps only its first `prefix` bytes and the rest is streamed
//!   past (`Message::value_len` keeps the true length, so the caller can refuse it by
//!   size). Headers are held up to the same size per record, the rest skipped.
//! - **Per fetch** ([`Budget`]): the messages handed over hold at most about
//!   `DECODE_BUDGET` bytes (what they hold beyond the response, plus a fixed cost each).
//!   Decoding stops at the first record that does not fit; the next fetch resumes at that
//!   record (the broker sends the same batch again, and records before the position are
//!   skipped). The first message of a fetch is always taken, so every fetch progresses.
//! - **Work** ([`MAX_EXPANSION`](crate::wire::limits::MAX_EXPANSION)): a batch is not
//!   decompressed (or streamed past) beyond this many bytes. A batch that goes further is
//!   given up: one message stands for all of its offsets not handed over yet, with a
//!   reason (`Message::undecoded`), so the caller rejects them (the worker dead-letters
//!   them) and commits past them, never skipping them silently. A fetch that reaches the bound
//!   over several batches stops instead, and the next one starts with a fresh count.
//!
//! A batch is also given up when its codec would need more memory than its bound
//! (`codec::MAX_CODEC_BUFFER`). Corrupt data (CRC, codec, record layout) stays an error:
//! a real broker refuses it on produce.
//!
//! The parts: `header` (a batch's framing), `limits` (the bounds), `codec` (streaming
//! decompression), `transactions` (aborted transactions, markers), `record` (one record),
//! and here the decoder of one partition's batches that puts them together.
use std::io::{self, Read};

use bytes::Bytes;
use kafka_protocol::records::Compression;

use crate::error::KafkaError;
use crate::types::{Offset, Partition};
use crate::wire::codec::{self, Compressed};
use crate::wire::header::{BATCH_HEADER_LEN, BatchHeader, be_i32, corrupt};
use crate::wire::legacy;
use crate::wire::limits::{Budget, RecordLimits};
use crate::wire::message::{Message, Undecoded};
use crate::wire::record::{RecordReader, Source, Stop};
use crate::wire::transactions::Transactions;

/// Why decoding failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The data is not a valid batch, or not what was asked for.
    Kafka(KafkaError),
    /// Reading the answer from the connection failed (only for batches read as they arrive).
    Connection(io::Error),
}

impl From<KafkaError> for Failure {
    fn from(e: KafkaError) -> Failure {
        Failure::Kafka(e)
    }
}

/// One partition's decoding state across the batches of one fetch: the position, and the
/// aborted transactions (fetches are read_committed).
pub(crate) struct PartitionDecoder {
    partition: Partition,
    limits: RecordLimits,
    /// The next offset to hand over: everything before it is handled.
    next: i64,
    /// The aborted transactions the broker named, and those under way.
    transactions: Transactions,
    /// Decoding stopped here for this fetch (budget or work bound).
    stopped: bool,
}

impl PartitionDecoder {
    pub(crate) fn new(
        partition: Partition,
        from: Offset,
        aborted: Vec<(i64, i64)>,
        limits: RecordLimits,
    ) -> PartitionDecoder {
        PartitionDecoder {
            partition,
            limits,
            next: from.0,
            transactions: Transactions::new(aborted),
            stopped: false,
        }
    }

    /// The next offset to fetch.
    pub(crate) fn next(&self) -> Offset {
        Offset(self.next)
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    /// Stops here for this fetch: the rest of the partition waits for the next one.
    pub(crate) fn stop(&mut self, budget: &mut Budget) {
        self.stopped = true;
        budget.exhausted = true;
    }

    /// Decodes a partition's record batches held in memory, until the budget stops it. A
    /// batch cut short at the end (a fetch limit fell inside it) is left for the next fetch.
    pub(crate) fn records(
        &mut self,
        mut records: Bytes,
        budget: &mut Budget,
        out: &mut Vec<Message>,
    ) -> Result<(), Failure> {
        // A record batch and an old-format message alike: offset, length, then the magic
        // byte at the same place; an old message may be shorter than a batch's header.
        while records.len() > legacy::MAGIC_AT && !self.stopped {
            let len = be_i32(&records[8..12]);
            let smallest = if records[legacy::MAGIC_AT] < 2 {
                legacy::MIN_MESSAGE
            } else {
                BATCH_HEADER_LEN
            };
            let total = usize::try_from(len)
                .ok()
                .map(|l| l + legacy::LOG_OVERHEAD)
                .filter(|t| *t >= smallest)
                .ok_or_else(|| self.corrupt(format!("batch length {len}")))?;
            if records.len() < total {
                break;
            }
            self.batch(records.split_to(total), budget, out)?;
        }
        Ok(())
    }

    /// Decodes one complete batch held in memory (or one message of format v0 or v1).
    pub(crate) fn batch(
        &mut self,
        batch: Bytes,
        budget: &mut Budget,
        out: &mut Vec<Message>,
    ) -> Result<(), Failure> {
        if batch.get(legacy::MAGIC_AT).is_some_and(|m| *m < 2) {
            return self.legacy(batch, budget, out);
        }
        if batch.len() < BATCH_HEADER_LEN {
            return Err(self
                .corrupt(format!("a batch of {} bytes", batch.len()))
                .into());
        }
        let h = BatchHeader::parse(&batch[..BATCH_HEADER_LEN]);
        if !self.begin(&h)? {
            return Ok(());
        }
        if crc32c::crc32c(&batch[21..]) != h.crc {
            return Err(self.corrupt("CRC mismatch".into()).into());
        }
        let compression = h.compression(self.partition)?;
        let body = batch.slice(BATCH_HEADER_LEN..);
        let source = if compression == Compression::None {
            // Zero copy: keys and values are slices of the response.
            Source::memory(body)
        } else {
            match codec::decompressor(compression, Compressed::Memory(body)) {
                Ok(reader) => Source::reader(reader),
                Err(e) => return self.codec_failed(&h, compression, e, budget, out),
            }
        };
        self.decode(&h, compression, source, budget, out)
    }

    /// Decodes one message of format v0 or v1 (a wrapper with its compressed set, or a
    /// plain message), held whole.
    fn legacy(
        &mut self,
        entry: Bytes,
        budget: &mut Budget,
        out: &mut Vec<Message>,
    ) -> Result<(), Failure> {
        let ctx = legacy::Context {
            partition: self.partition,
            limits: self.limits,
            next: self.next,
        };
        match legacy::decode(entry, &ctx, budget, out)? {
            legacy::Step::Next(next) => self.next = next,
            legacy::Step::Stop(at) => {
                self.next = at;
                self.stop(budget);
            }
            legacy::Step::GiveUp { first, last, why } => {
                self.give_up_range(first, last, -1, why, budget, out)
            }
        }
        Ok(())
    }

    /// Decodes one batch too large to hold, as it arrives: `header` is its first
    /// [`BATCH_HEADER_LEN`] bytes, and `body` yields the rest (exactly that, and all of it is
    /// read, so the connection stays in step). Its messages are handed over only once the
    /// CRC of the whole batch has been checked.
    pub(crate) fn streamed_batch(
        &mut self,
        header: &[u8; BATCH_HEADER_LEN],
        body: &mut dyn Read,
        budget: &mut Budget,
        out: &mut Vec<Message>,
    ) -> Result<(), Failure> {
        let h = BatchHeader::parse(header);
        let body_len = h.total.saturating_sub(BATCH_HEADER_LEN) as u64;
        if h.magic < 2 {
            // An old-format message too large to hold: given up for its offsets (its
            // `base` is the message's offset, a wrapper's the last of its set).
            io::copy(&mut body.take(body_len), &mut io::sink()).map_err(Failure::Connection)?;
            if h.base >= self.next {
                let why = format!(
                    "a message of format v{} of {} bytes is larger than a fetch holds in memory",
                    h.magic, h.total
                );
                self.give_up_range(self.next, h.base, -1, why, budget, out);
            }
            return Ok(());
        }
        let mut input = CrcReader {
            inner: body.take(body_len),
            crc: crc32c::crc32c(&header[21..]),
            failed: None,
        };
        let mut held = Vec::new();
        let result = match self.begin(&h) {
            Ok(true) => match h.compression(self.partition) {
                Ok(compression) => {
                    self.decode_stream(&h, compression, &mut input, budget, &mut held)
                }
                Err(e) => Err(e.into()),
            },
            Ok(false) => Ok(()),
            Err(e) => Err(e.into()),
        };
        // Whatever happened, read the rest, so the CRC covers the whole batch. A failure of
        // the connection comes first: it explains any decoding error above.
        if let Err(e) = io::copy(&mut input, &mut io::sink()) {
            return Err(Failure::Connection(input.failed.take().unwrap_or(e)));
        }
        if let Some(e) = input.failed.take() {
            return Err(Failure::Connection(e));
        }
        if input.inner.limit() > 0 {
            return Err(Failure::Connection(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the answer ended inside a record batch",
            )));
        }
        result?;
        if input.crc != h.crc {
            return Err(self.corrupt("CRC mismatch".into()).into());
        }
        out.append(&mut held);
        Ok(())
    }

    fn decode_stream(
        &mut self,
        h: &BatchHeader,
        compression: Compression,
        input: &mut CrcReader<'_>,
        budget: &mut Budget,
        out: &mut Vec<Message>,
    ) -> Result<(), Failure> {
        // A failure of the connection underneath shows here as a codec error; the caller
        // looks at `input.failed` first.
        match codec::decompressor(compression, Compressed::Stream(input)) {
            Ok(reader) => self.decode(h, compression, Source::reader(reader), budget, out),
            Err(e) => self.codec_failed(h, compression, e, budget, out),
        }
    }

    /// Whether to decode this batch; moves past it when not (already handled, or part of
    /// an aborted transaction).
    fn begin(&mut self, h: &BatchHeader) -> Result<bool, KafkaError> {
        if h.magic != 2 {
            return Err(KafkaError::Protocol {
                broker: String::new(),
                detail: format!(
                    "partition {} holds a batch of unknown message format v{} (known: v0 to v2)",
                    self.partition, h.magic
                ),
            });
        }
        if h.last < self.next {
            return Ok(false);
        }
        self.transactions.reach(h.last);
        if h.transactional && !h.control && self.transactions.aborts(h.producer_id) {
            self.next = h.last + 1;
            return Ok(false);
        }
        Ok(true)
    }

    /// Decodes the records of one batch from `source`, handing over those at or after the
    /// position until the budget stops it.
    fn decode(
        &mut self,
        h: &BatchHeader,
        compression: Compression,
        mut source: Source<'_>,
        budget: &mut Budget,
        out: &mut Vec<Message>,
    ) -> Result<(), Failure> {
        let reader = RecordReader {
            header: h,
            partition: self.partition,
            limits: self.limits,
        };
        for _ in 0..h.count {
            let record = match reader.read(&mut source, budget, self.next) {
                Ok(r) => r,
                Err(Stop::Expands) => {
                    let why = format!(
                        "the {} batch expands past {} bytes",
                        codec::name(compression),
                        budget.max_expansion
                    );
                    self.give_up(h, why, budget, out);
                    return Ok(());
                }
                Err(Stop::FetchWork) => {
                    self.stop(budget);
                    return Ok(());
                }
                Err(Stop::CutShort) => {
                    return Err(self.corrupt("record cut short".into()).into());
                }
                Err(Stop::Corrupt(detail)) => return Err(self.corrupt(detail).into()),
                Err(Stop::Io(e)) => return self.codec_failed(h, compression, e, budget, out),
            };
            let Some(record) = record else { continue };
            if h.control {
                self.transactions
                    .control_record(h.producer_id, record.message.key.as_ref());
                continue;
            }
            if !budget.admit(record.cost) {
                // The first record not handed over: the next fetch starts here.
                self.next = record.message.offset.0;
                self.stopped = true;
                return Ok(());
            }
            self.next = record.message.offset.0 + 1;
            out.push(record.message);
        }
        self.next = h.last + 1;
        Ok(())
    }

    /// A decompressor failed: at a bound (the batch is given up), or on corrupt data.
    fn codec_failed(
        &mut self,
        h: &BatchHeader,
        compression: Compression,
        e: io::Error,
        budget: &mut Budget,
        out: &mut Vec<Message>,
    ) -> Result<(), Failure> {
        if let Some(why) = codec::past_bound(&e) {
            self.give_up(h, why.to_owned(), budget, out);
            return Ok(());
        }
        Err(KafkaError::Codec {
            codec: codec::name(compression),
            detail: format!(
                "batch at offset {} of partition {}: {e}",
                h.base, self.partition
            ),
        }
        .into())
    }

    /// Gives up the rest of a batch: one message stands for its offsets from the position
    /// to its last, so they are rejected and committed, not skipped.
    fn give_up(
        &mut self,
        h: &BatchHeader,
        why: String,
        budget: &mut Budget,
        out: &mut Vec<Message>,
    ) {
        if h.control {
            // Markers carry no data; either kind ends the producer's transaction.
            self.next = h.last + 1;
            self.transactions.end(h.producer_id);
            return;
        }
        self.give_up_range(
            self.next.max(h.base),
            h.last,
            h.max_timestamp,
            why,
            budget,
            out,
        );
    }

    /// One message stands for offsets `first` to `last`, not decoded; the position moves
    /// past them.
    fn give_up_range(
        &mut self,
        first: i64,
        last: i64,
        timestamp_ms: i64,
        why: String,
        budget: &mut Budget,
        out: &mut Vec<Message>,
    ) {
        self.next = last + 1;
        // A stand-in is handed over like a message: a batch too large to hold that comes
        // after it waits for the next fetch.
        budget.handed = true;
        let reason = format!(
            "offsets {first} to {last} of partition {} were not decoded: {why} (the worker's memory bound); read them with another client if they matter",
            self.partition
        );
        out.push(Message {
            partition: self.partition,
            offset: Offset(first),
            key: None,
            value: None,
            value_len: 0,
            headers: Vec::new(),
            timestamp_ms,
            undecoded: Some(Box::new(Undecoded {
                last: Offset(last),
                reason,
            })),
        });
    }

    fn corrupt(&self, detail: String) -> KafkaError {
        corrupt(self.partition, detail)
    }
}

/// The connection under a batch read as it arrives: computes the CRC of what passes, and
/// keeps the connection's own error apart from the decompressor's.
struct CrcReader<'a> {
    inner: io::Take<&'a mut dyn Read>,
    crc: u32,
    failed: Option<io::Error>,
}

impl Read for CrcReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                self.failed = Some(e);
                Err(io::Error::new(kind, "the connection failed"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::peak;
    use crate::wire::limits::MESSAGE_COST;
    use bytes::{BufMut, BytesMut};
    use indexmap::IndexMap;
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    use std::io::Write;

    const P: Partition = Partition(0);
    /// The size of the bombs below: far above every bound the tests check against.
    const HUGE: usize = 24 * 1024 * 1024;
    /// The most one decode may hold in these tests (chunks, codec state, prefixes).
    const SMALL: usize = 2 * 1024 * 1024;
    const LIMITS: RecordLimits = RecordLimits {
        whole: 64 * 1024,
        prefix: 1000,
    };

    // ---- Batches made with kafka-protocol's encoder (small ones, with transactions).

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

    fn encoded(records: &[Record], compression: Compression) -> Bytes {
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

    // ---- Batches made by hand: records described as pieces, so a huge value costs
    // nothing to describe, and codecs that write long runs compactly.

    #[derive(Clone)]
    enum Piece {
        Bytes(Vec<u8>),
        /// `len` copies of a byte.
        Fill(u8, usize),
    }

    impl Piece {
        fn len(&self) -> usize {
            match self {
                Piece::Bytes(b) => b.len(),
                Piece::Fill(_, n) => *n,
            }
        }
    }

    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    /// A record's pieces: `value` (None: null), optional key, no headers.
    fn rec(offset_delta: i64, key: Option<&[u8]>, value: Option<Vec<Piece>>) -> Vec<Piece> {
        let mut head = vec![0u8];
        varint(&mut head, 0);
        varint(&mut head, offset_delta);
        match key {
            Some(k) => {
                varint(&mut head, k.len() as i64);
                head.extend_from_slice(k);
            }
            None => varint(&mut head, -1),
        }
        let value_len = value
            .as_ref()
            .map(|v| v.iter().map(Piece::len).sum::<usize>());
        varint(&mut head, value_len.map_or(-1, |l| l as i64));
        let tail = vec![0u8]; // no headers
        let len = head.len() + value_len.unwrap_or(0) + tail.len();
        let mut out = Vec::new();
        varint(&mut out, len as i64);
        out.extend(head);
        let mut pieces = vec![Piece::Bytes(out)];
        pieces.extend(value.unwrap_or_default());
        pieces.push(Piece::Bytes(tail));
        pieces
    }

    fn text(v: &str) -> Option<Vec<Piece>> {
        Some(vec![Piece::Bytes(v.as_bytes().to_vec())])
    }

    /// A value of `prefix` and then `HUGE` bytes of 'a'.
    fn huge(prefix: &str) -> Option<Vec<Piece>> {
        Some(vec![
            Piece::Bytes(prefix.as_bytes().to_vec()),
            Piece::Fill(b'a', HUGE),
        ])
    }

    fn materialize(pieces: &[Piece]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            match p {
                Piece::Bytes(b) => out.extend_from_slice(b),
                Piece::Fill(b, n) => out.resize(out.len() + n, *b),
            }
        }
        out
    }

    /// The records section compressed with `codec` (snappy: xerial framing).
    fn compress(codec: Compression, pieces: &[Piece]) -> Vec<u8> {
        const MIB: usize = 1024 * 1024;
        const BLOCK: usize = 64 * 1024;
        let mut out = Vec::new();
        match codec {
            Compression::None => out = materialize(pieces),
            Compression::Lz4 => {
                // 64 KiB blocks, as Kafka's clients write them.
                let info = lz4_flex::frame::FrameInfo::new()
                    .block_size(lz4_flex::frame::BlockSize::Max64KB);
                let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
                enc.write_all(&materialize(pieces)).unwrap();
                out = enc.finish().unwrap();
            }
            Compression::Gzip => {
                // Concatenated gzip members are one gzip stream.
                let member = |data: &[u8]| {
                    let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
                    e.write_all(data).unwrap();
                    e.finish().unwrap()
                };
                for p in pieces {
                    match p {
                        Piece::Bytes(b) => out.extend(member(b)),
                        Piece::Fill(b, n) => {
                            let whole = member(&vec![*b; MIB]);
                            for _ in 0..n / MIB {
                                out.extend_from_slice(&whole);
                            }
                            out.extend(member(&vec![*b; n % MIB]));
                        }
                    }
                }
            }
            Compression::Snappy => {
                out.extend_from_slice(b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01");
                let mut block = |data: &[u8]| {
                    let raw = snap::raw::Encoder::new().compress_vec(data).unwrap();
                    out.extend_from_slice(&(raw.len() as u32).to_be_bytes());
                    out.extend(raw);
                };
                for p in pieces {
                    match p {
                        Piece::Bytes(b) => b.chunks(BLOCK).for_each(&mut block),
                        Piece::Fill(b, n) => {
                            let full = vec![*b; BLOCK];
                            (0..n / BLOCK).for_each(|_| block(&full));
                            if n % BLOCK > 0 {
                                block(&vec![*b; n % BLOCK]);
                            }
                        }
                    }
                }
            }
            Compression::Zstd => {
                // Raw and RLE blocks of at most 128 KiB; a 128 KiB window.
                out.extend_from_slice(&[0x28, 0xB5, 0x2F, 0xFD, 0x00, 7 << 3]);
                let mut blocks: Vec<(u32, Vec<u8>, usize)> = Vec::new();
                for p in pieces {
                    match p {
                        Piece::Bytes(b) => {
                            for c in b.chunks(128 * 1024) {
                                blocks.push((0, c.to_vec(), c.len()));
                            }
                        }
                        Piece::Fill(b, n) => {
                            let mut left = *n;
                            while left > 0 {
                                let k = left.min(128 * 1024);
                                blocks.push((1, vec![*b], k));
                                left -= k;
                            }
                        }
                    }
                }
                let last = blocks.len() - 1;
                for (i, (kind, content, size)) in blocks.into_iter().enumerate() {
                    let header = u32::from(i == last) | kind << 1 | (size as u32) << 3;
                    out.extend_from_slice(&header.to_le_bytes()[..3]);
                    out.extend(content);
                }
            }
        }
        out
    }

    /// A v2 batch at `base` whose records section is `payload`; `last_delta` and `count` as
    /// given (they need not match the records: compaction leaves gaps).
    fn raw_batch(
        base: i64,
        codec: Compression,
        payload: &[u8],
        last_delta: i32,
        count: i32,
    ) -> Bytes {
        let attributes: i16 = match codec {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        };
        let mut tail = BytesMut::new();
        tail.put_i16(attributes);
        tail.put_i32(last_delta);
        tail.put_i64(1000); // base timestamp
        tail.put_i64(2000); // max timestamp
        tail.put_i64(-1);
        tail.put_i16(-1);
        tail.put_i32(-1);
        tail.put_i32(count);
        tail.extend_from_slice(payload);
        let mut out = BytesMut::new();
        out.put_i64(base);
        out.put_i32((4 + 1 + 4 + tail.len()) as i32);
        out.put_i32(0);
        out.put_u8(2);
        out.put_u32(crc32c::crc32c(&tail));
        out.extend_from_slice(&tail);
        out.freeze()
    }

    /// A batch at `base` of `records` with offset deltas 0, 1, ... (as `rec` was told).
    fn batch(base: i64, codec: Compression, records: &[Vec<Piece>]) -> Bytes {
        let pieces: Vec<Piece> = records.iter().flatten().cloned().collect();
        let n = records.len() as i32;
        raw_batch(base, codec, &compress(codec, &pieces), n - 1, n)
    }

    /// Decodes `records` from `from` with `budget`: the messages and the next position.
    fn decode_with(
        records: Bytes,
        from: i64,
        budget: &mut Budget,
        limits: RecordLimits,
    ) -> (Vec<Message>, Offset) {
        let mut d = PartitionDecoder::new(P, Offset(from), vec![], limits);
        let mut out = Vec::new();
        d.records(records, budget, &mut out)
            .unwrap_or_else(|e| panic!("decode failed: {e:?}"));
        (out, d.next())
    }

    fn decode(records: Bytes, from: i64) -> (Vec<Message>, Offset) {
        decode_with(records, from, &mut Budget::new(8 << 20), LIMITS)
    }

    fn values(msgs: &[Message]) -> Vec<String> {
        msgs.iter()
            .map(|m| String::from_utf8_lossy(m.value.as_deref().unwrap_or_default()).into_owned())
            .collect()
    }

    fn offsets(msgs: &[Message]) -> Vec<i64> {
        msgs.iter().map(|m| m.offset.0).collect()
    }

    fn concat(batches: &[Bytes]) -> Bytes {
        let mut all = BytesMut::new();
        for b in batches {
            all.extend_from_slice(b);
        }
        all.freeze()
    }

    // ---- What decoding did before the bounds, still true.

    #[test]
    fn plain_batches_decode_in_order_and_position_follows() {
        let data = concat(&[
            encoded(
                &[
                    record(0, "a", -1, false, false),
                    record(1, "b", -1, false, false),
                ],
                Compression::None,
            ),
            encoded(&[record(5, "c", -1, false, false)], Compression::None),
        ]);
        let (out, next) = decode(data, 1);
        assert_eq!(values(&out), vec!["b", "c"]);
        assert_eq!(next, Offset(6));
    }

    #[test]
    fn a_batch_cut_short_is_left_for_the_next_fetch() {
        let second = encoded(&[record(1, "b", -1, false, false)], Compression::None);
        let data = concat(&[
            encoded(&[record(0, "a", -1, false, false)], Compression::None),
            second.slice(..second.len() - 3),
        ]);
        let (out, next) = decode(data, 0);
        assert_eq!(values(&out), vec!["a"]);
        assert_eq!(next, Offset(1));
    }

    #[test]
    fn aborted_transactions_and_markers_are_hidden() {
        // Producer 7 writes offsets 0-1 then aborts (marker at 2); producer 8 commits 3 (marker 4).
        let data = concat(&[
            encoded(
                &[
                    record(0, "x", 7, true, false),
                    record(1, "y", 7, true, false),
                ],
                Compression::None,
            ),
            encoded(&[record(2, "0", 7, true, true)], Compression::None),
            encoded(&[record(3, "ok", 8, true, false)], Compression::None),
            encoded(&[record(4, "1", 8, true, true)], Compression::None),
        ]);
        let mut d = PartitionDecoder::new(P, Offset(0), vec![(7, 0)], LIMITS);
        let mut out = Vec::new();
        d.records(data, &mut Budget::new(1 << 20), &mut out)
            .unwrap();
        assert_eq!(values(&out), vec!["ok"]);
        assert_eq!(d.next(), Offset(5));
    }

    #[test]
    fn empty_records_keep_the_position() {
        let (out, next) = decode(Bytes::new(), 9);
        assert_eq!(next, Offset(9));
        assert!(out.is_empty());
    }

    #[test]
    fn every_codec_decodes_valid_batches_whole() {
        let records: Vec<Vec<Piece>> = (0..50)
            .map(|i| rec(i, Some(b"k"), text(&format!("value {i}"))))
            .collect();
        let pieces: Vec<Piece> = records.iter().flatten().cloned().collect();
        let raw_snappy = snap::raw::Encoder::new()
            .compress_vec(&materialize(&pieces))
            .unwrap();
        let mut batches: Vec<(&str, Bytes)> = [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ]
        .into_iter()
        .map(|c| (codec::name(c), batch(0, c, &records)))
        .collect();
        batches.push((
            "raw snappy",
            raw_batch(0, Compression::Snappy, &raw_snappy, 49, 50),
        ));
        for (name, data) in batches {
            let (out, next) = decode(data, 0);
            assert_eq!(out.len(), 50, "{name}");
            assert_eq!(out[49].value.as_deref(), Some(&b"value 49"[..]), "{name}");
            assert_eq!(out[49].key.as_deref(), Some(&b"k"[..]), "{name}");
            assert_eq!(next, Offset(50), "{name}");
        }
    }

    // ---- Bombs: a record far larger than anything held is cut to its prefix, streamed
    // past, and the batch goes on; what decoding holds stays small.

    fn bomb_is_cut_to_its_prefix(codec: Compression) {
        let data = batch(
            0,
            codec,
            &[
                rec(0, None, text("before")),
                rec(1, Some(b"key"), huge("{\"pad\":\"")),
                rec(2, None, text("after")),
            ],
        );
        assert!(data.len() < 4 * 1024 * 1024, "a bomb is small");
        let ((out, next), held) = peak::during(|| decode(data, 0));
        let name = codec::name(codec);
        assert_eq!(offsets(&out), vec![0, 1, 2], "{name}");
        assert_eq!(next, Offset(3), "{name}");
        let bomb = &out[1];
        assert_eq!(bomb.value_len, HUGE + 8, "{name}: the true length");
        let value = bomb.value.as_deref().unwrap();
        assert_eq!(
            value.len(),
            LIMITS.prefix,
            "{name}: only the prefix is held"
        );
        assert!(value.starts_with(b"{\"pad\":\"aaaa"), "{name}");
        assert_eq!(bomb.key.as_deref(), Some(&b"key"[..]));
        assert_eq!(
            values(&[out[0].clone(), out[2].clone()]),
            vec!["before", "after"]
        );
        assert!(held < SMALL, "{name}: decoding held {held} bytes");
    }

    #[test]
    fn a_gzip_bomb_is_cut_to_its_prefix_and_the_batch_goes_on() {
        bomb_is_cut_to_its_prefix(Compression::Gzip);
    }

    #[test]
    fn a_xerial_snappy_bomb_is_cut_to_its_prefix_and_the_batch_goes_on() {
        bomb_is_cut_to_its_prefix(Compression::Snappy);
    }

    #[test]
    fn an_lz4_bomb_is_cut_to_its_prefix_and_the_batch_goes_on() {
        bomb_is_cut_to_its_prefix(Compression::Lz4);
    }

    #[test]
    fn a_zstd_bomb_is_cut_to_its_prefix_and_the_batch_goes_on() {
        bomb_is_cut_to_its_prefix(Compression::Zstd);
    }

    #[test]
    fn an_uncompressed_oversized_record_is_sliced_not_copied() {
        let data = batch(
            0,
            Compression::None,
            &[rec(0, None, text("a")), rec(1, None, huge("x"))],
        );
        let ((out, next), held) = peak::during(|| decode(data, 0));
        assert_eq!((offsets(&out), next), (vec![0, 1], Offset(2)));
        assert_eq!(out[1].value.as_ref().map(Bytes::len), Some(LIMITS.prefix));
        assert_eq!(out[1].value_len, HUGE + 1);
        assert!(held < 64 * 1024, "held {held} bytes");
    }

    #[test]
    fn values_up_to_the_larger_limit_are_held_whole() {
        // Whole up to max(whole, prefix): a value between the two is not cut.
        let limits = RecordLimits {
            whole: 100,
            prefix: 300,
        };
        let data = batch(
            0,
            Compression::Zstd,
            &[
                rec(0, None, Some(vec![Piece::Fill(b'b', 250)])),
                rec(1, None, Some(vec![Piece::Fill(b'c', 301)])),
            ],
        );
        let (out, _) = decode_with(data, 0, &mut Budget::new(1 << 20), limits);
        assert_eq!(out[0].value.as_ref().map(Bytes::len), Some(250));
        assert_eq!(out[1].value.as_ref().map(Bytes::len), Some(300));
        assert_eq!(out[1].value_len, 301);
    }

    // ---- Batches given up: their offsets reach the caller as one rejected message.

    fn undecoded(m: &Message) -> (i64, i64, &str) {
        let u = m.undecoded.as_ref().expect("an undecoded message");
        (m.offset.0, u.last.0, u.reason.as_str())
    }

    #[test]
    fn a_raw_snappy_batch_larger_than_its_bound_is_given_up_whole() {
        // Raw snappy is one block that must be held whole: it states its length first.
        let mut payload = Vec::new();
        let mut n = 300u64 << 20; // an unsigned varint
        while n >= 0x80 {
            payload.push((n as u8) | 0x80);
            n >>= 7;
        }
        payload.push(n as u8);
        payload.extend_from_slice(&[0; 32]);
        let data = raw_batch(10, Compression::Snappy, &payload, 2, 3);
        let ((out, next), held) = peak::during(|| decode(data, 11));
        assert_eq!(out.len(), 1);
        let (first, last, reason) = undecoded(&out[0]);
        assert_eq!((first, last, next), (11, 12, Offset(13)));
        assert!(
            reason.contains("offsets 11 to 12") && reason.contains("314572800"),
            "{reason}"
        );
        assert!(out[0].value.is_none() && out[0].key.is_none());
        assert!(held < SMALL, "held {held} bytes");
    }

    #[test]
    fn a_zstd_batch_asking_for_a_huge_window_is_given_up() {
        let mut payload = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 20 << 3];
        payload.extend_from_slice(&[0; 16]);
        let data = raw_batch(0, Compression::Zstd, &payload, 0, 1);
        let (out, next) = decode(data, 0);
        assert_eq!(undecoded(&out[0]).0..=undecoded(&out[0]).1, 0..=0);
        assert!(undecoded(&out[0]).2.contains("window"));
        assert_eq!(next, Offset(1));
    }

    #[test]
    fn a_batch_expanding_past_the_work_bound_is_given_up_from_the_position() {
        let data = batch(
            100,
            Compression::Zstd,
            &[
                rec(0, None, text("first")),
                rec(1, None, huge("x")),
                rec(2, None, text("third")),
            ],
        );
        let bound = 4 * 1024 * 1024;
        // From the start: the first record is handed over, the rest given up.
        let mut budget = Budget::with_expansion(8 << 20, bound);
        let (out, next) = decode_with(data.clone(), 100, &mut budget, LIMITS);
        assert_eq!(values(&out[..1]), vec!["first"]);
        let (first, last, reason) = undecoded(&out[1]);
        assert_eq!((first, last, next), (101, 102, Offset(103)));
        assert!(reason.contains("expands past 4194304 bytes"), "{reason}");
        // The same from the next record on (a later fetch): the same decision.
        let mut budget = Budget::with_expansion(8 << 20, bound);
        let (out, next) = decode_with(data.clone(), 101, &mut budget, LIMITS);
        assert_eq!((undecoded(&out[0]).0, next), (101, Offset(103)));
        // Past it: nothing.
        let (out, next) = decode_with(data, 103, &mut Budget::with_expansion(1, bound), LIMITS);
        assert_eq!((out.len(), next), (0, Offset(103)));
    }

    #[test]
    fn a_fetch_reaching_the_work_bound_over_several_batches_stops_and_resumes() {
        // Two batches of 3 MiB each under a 4 MiB bound: each fits alone, not both.
        let value = || Some(vec![Piece::Fill(b'z', 3 << 20)]);
        let data = concat(&[
            batch(0, Compression::Zstd, &[rec(0, None, value())]),
            batch(1, Compression::Zstd, &[rec(0, None, value())]),
        ]);
        let bound = 4 * 1024 * 1024;
        let mut budget = Budget::with_expansion(64 << 20, bound);
        let (out, next) = decode_with(data.clone(), 0, &mut budget, LIMITS);
        assert_eq!((offsets(&out), next), (vec![0], Offset(1)));
        assert!(budget.exhausted());
        let mut budget = Budget::with_expansion(64 << 20, bound);
        let (out, next) = decode_with(data, 1, &mut budget, LIMITS);
        assert_eq!((offsets(&out), next), (vec![1], Offset(2)));
        assert!(out[0].undecoded.is_none());
    }

    // ---- The fetch budget: decoding stops at a record, and the next fetch resumes there.

    #[test]
    fn a_record_straddling_the_budget_is_decoded_by_the_next_fetch() {
        // Ten records of 40 KiB each, compressed; a budget of about three of them.
        let records: Vec<Vec<Piece>> = (0..10)
            .map(|i| rec(i, None, Some(vec![Piece::Fill(b'0' + i as u8, 40 * 1024)])))
            .collect();
        for codec in [
            Compression::Gzip,
            Compression::Zstd,
            Compression::Lz4,
            Compression::Snappy,
        ] {
            let data = batch(0, codec, &records);
            let mut from = 0;
            let mut fetches = Vec::new();
            while from < 10 {
                let mut budget = Budget::new(3 * 40 * 1024 + 3 * MESSAGE_COST);
                let (out, next) = decode_with(data.clone(), from, &mut budget, LIMITS);
                assert_eq!(offsets(&out), (from..next.0).collect::<Vec<_>>());
                for m in &out {
                    let v = m.value.as_deref().unwrap();
                    assert_eq!((v.len(), v[0]), (40 * 1024, b'0' + m.offset.0 as u8));
                }
                fetches.push(out.len());
                from = next.0;
            }
            assert_eq!(fetches, vec![3, 3, 3, 1], "{}", codec::name(codec));
        }
    }

    #[test]
    fn the_first_message_of_a_fetch_is_always_taken() {
        let data = batch(
            0,
            Compression::Zstd,
            &[rec(0, None, huge("x")), rec(1, None, text("y"))],
        );
        let mut budget = Budget::new(10);
        let (out, next) = decode_with(data, 0, &mut budget, LIMITS);
        assert_eq!((offsets(&out), next), (vec![0], Offset(1)));
    }

    #[test]
    fn uncompressed_records_cost_only_their_bookkeeping() {
        // Held as slices of the answer: the budget counts a fixed cost per message.
        // (Two fit; if their 100-byte values counted, only the first would.)
        let value = || Some(vec![Piece::Fill(b'v', 100)]);
        let records: Vec<Vec<Piece>> = (0..5).map(|i| rec(i, None, value())).collect();
        let data = batch(0, Compression::None, &records);
        let mut budget = Budget::new(2 * MESSAGE_COST + 10);
        let (out, next) = decode_with(data, 0, &mut budget, LIMITS);
        assert_eq!((offsets(&out), next), (vec![0, 1], Offset(2)));
    }

    #[test]
    fn every_offset_is_handed_over_or_given_up_exactly_once() {
        // A log of five batches: plain, zstd with compaction gaps, a gzip bomb past the
        // work bound, raw snappy too large to hold, lz4; read with a small budget, each
        // fetch resuming where the last stopped.
        let gaps: Vec<Vec<Piece>> = [0, 2, 6]
            .iter()
            .map(|d| rec(*d, None, text(&format!("gap {d}"))))
            .collect();
        let gap_pieces: Vec<Piece> = gaps.iter().flatten().cloned().collect();
        let mut snappy = vec![0x80, 0x80, 0x80, 0x80, 0x01]; // 256 MiB stated
        snappy.extend_from_slice(&[0; 8]);
        let log = concat(&[
            batch(
                0,
                Compression::None,
                &(0..3).map(|i| rec(i, None, text("p"))).collect::<Vec<_>>(),
            ),
            raw_batch(
                3,
                Compression::Zstd,
                &compress(Compression::Zstd, &gap_pieces),
                6,
                3,
            ),
            batch(
                10,
                Compression::Gzip,
                &[
                    rec(0, None, text("g0")),
                    rec(1, None, huge("g")),
                    rec(2, None, text("g2")),
                ],
            ),
            raw_batch(13, Compression::Snappy, &snappy, 1, 2),
            batch(
                15,
                Compression::Lz4,
                &(0..4).map(|i| rec(i, None, text("l"))).collect::<Vec<_>>(),
            ),
        ]);
        let existing: Vec<i64> = vec![0, 1, 2, 3, 5, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18];
        let mut seen: Vec<i64> = Vec::new();
        let mut from = 0;
        let mut fetches = 0;
        while from < 19 {
            fetches += 1;
            assert!(fetches < 50, "no progress at {from}");
            let mut budget = Budget::with_expansion(2 * MESSAGE_COST + 10, 8 << 20);
            let (out, next) = decode_with(log.clone(), from, &mut budget, LIMITS);
            assert!(next.0 > from, "each fetch moves on");
            for m in &out {
                match &m.undecoded {
                    None => seen.push(m.offset.0),
                    Some(u) => seen.extend(
                        existing
                            .iter()
                            .filter(|o| (m.offset.0..=u.last.0).contains(o)),
                    ),
                }
            }
            from = next.0;
        }
        seen.sort();
        assert_eq!(seen, existing, "each offset exactly once");
    }

    // ---- A batch too large to hold, decoded as it arrives from the connection.

    /// Yields `pieces` without ever holding them whole.
    struct PieceReader {
        pieces: Vec<Piece>,
        at: usize,
        within: usize,
    }

    impl Read for PieceReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            while let Some(p) = self.pieces.get(self.at) {
                let left = p.len() - self.within;
                if left == 0 {
                    self.at += 1;
                    self.within = 0;
                    continue;
                }
                let n = left.min(buf.len());
                match p {
                    Piece::Bytes(b) => buf[..n].copy_from_slice(&b[self.within..self.within + n]),
                    Piece::Fill(b, _) => buf[..n].fill(*b),
                }
                self.within += n;
                return Ok(n);
            }
            Ok(0)
        }
    }

    /// An uncompressed batch of `records` as a header and a lazily produced body.
    fn streamed(base: i64, records: &[Vec<Piece>]) -> ([u8; BATCH_HEADER_LEN], PieceReader) {
        let body: Vec<Piece> = records.iter().flatten().cloned().collect();
        let len: usize = body.iter().map(Piece::len).sum();
        let n = records.len() as i32;
        let mut header = raw_batch(base, Compression::None, &[], n - 1, n).to_vec();
        header[8..12].copy_from_slice(&((BATCH_HEADER_LEN - 12 + len) as i32).to_be_bytes());
        let mut crc = crc32c::crc32c(&header[21..]);
        let mut reader = PieceReader {
            pieces: body.clone(),
            at: 0,
            within: 0,
        };
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            let k = reader.read(&mut chunk).unwrap();
            if k == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &chunk[..k]);
        }
        header[17..21].copy_from_slice(&crc.to_be_bytes());
        let header: [u8; BATCH_HEADER_LEN] = header.try_into().unwrap();
        (
            header,
            PieceReader {
                pieces: body,
                at: 0,
                within: 0,
            },
        )
    }

    #[test]
    fn a_batch_too_large_to_hold_is_decoded_as_it_arrives() {
        let (header, mut body) = streamed(
            0,
            &[
                rec(0, None, text("a")),
                rec(1, None, huge("big")),
                rec(2, None, text("c")),
            ],
        );
        let mut d = PartitionDecoder::new(P, Offset(0), vec![], LIMITS);
        let mut out = Vec::new();
        let (result, held) = peak::during(|| {
            d.streamed_batch(&header, &mut body, &mut Budget::new(8 << 20), &mut out)
        });
        result.unwrap();
        assert_eq!((offsets(&out), d.next()), (vec![0, 1, 2], Offset(3)));
        assert_eq!(out[1].value_len, HUGE + 3);
        assert_eq!(out[1].value.as_ref().map(Bytes::len), Some(LIMITS.prefix));
        assert!(held < SMALL, "held {held} bytes");
        assert_eq!(
            body.read(&mut [0u8; 16]).unwrap(),
            0,
            "the whole batch was read"
        );
    }

    #[test]
    fn a_streamed_batch_with_a_bad_crc_hands_nothing_over() {
        let (mut header, mut body) = streamed(0, &[rec(0, None, text("a"))]);
        header[20] ^= 1;
        let mut d = PartitionDecoder::new(P, Offset(0), vec![], LIMITS);
        let mut out = Vec::new();
        let err = d
            .streamed_batch(&header, &mut body, &mut Budget::new(1 << 20), &mut out)
            .unwrap_err();
        assert!(
            matches!(err, Failure::Kafka(ref e) if e.to_string().contains("CRC")),
            "{err:?}"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_connection_failing_inside_a_streamed_batch_is_a_connection_error() {
        let (header, body) = streamed(0, &[rec(0, None, text("a")), rec(1, None, huge("b"))]);
        let mut cut = body.take(1000);
        let mut d = PartitionDecoder::new(P, Offset(0), vec![], LIMITS);
        let mut out = Vec::new();
        let err = d
            .streamed_batch(&header, &mut cut, &mut Budget::new(1 << 20), &mut out)
            .unwrap_err();
        assert!(matches!(err, Failure::Connection(_)), "{err:?}");
        assert!(out.is_empty());
    }
}
