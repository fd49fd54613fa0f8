//! One record of a batch, read from its records section: held whole and sliced when it is
//! small (the usual case), else field by field, each key, value and header held up to the
//! record limits and the rest read past. The records section is in memory or comes from a
//! decompressor (or the connection) a chunk at a time ([`Source`]); every byte pulled from
//! a reader counts against the work bound.
use std::io::{self, Read};

use bytes::{Buf, Bytes, BytesMut};

use crate::types::{Offset, Partition};
use crate::wire::header::BatchHeader;
use crate::wire::limits::{Budget, HEADER_COST, MESSAGE_COST, RecordLimits};
use crate::wire::message::Message;

/// How much is read from a decompressor (or the connection) at a time.
const CHUNK: usize = 64 * 1024;

/// Reads the records of one batch, one at a time.
pub(super) struct RecordReader<'h> {
    pub(super) header: &'h BatchHeader,
    pub(super) partition: Partition,
    pub(super) limits: RecordLimits,
}

/// A decoded record and what holding it costs.
pub(super) struct Decoded {
    pub(super) message: Message,
    pub(super) cost: usize,
}

/// Why reading a record stopped.
pub(super) enum Stop {
    /// The batch expands past [`MAX_EXPANSION`](crate::wire::limits::MAX_EXPANSION): give it up.
    Expands,
    /// The fetch expanded past [`MAX_EXPANSION`](crate::wire::limits::MAX_EXPANSION) over several batches: stop for now.
    FetchWork,
    /// The data ended inside a record.
    CutShort,
    Corrupt(String),
    /// The decompressor (or the connection under it) failed.
    Io(io::Error),
}

impl RecordReader<'_> {
    /// Reads the next record of the batch: `None` when it is before `next`, the position
    /// (read past, not held).
    pub(super) fn read(
        &self,
        src: &mut Source<'_>,
        budget: &mut Budget,
        next: i64,
    ) -> Result<Option<Decoded>, Stop> {
        let len = src.varint(budget)?;
        let len =
            usize::try_from(len).map_err(|_| Stop::Corrupt("negative record length".into()))?;
        if len <= self.limits.hold() {
            // The usual case: the whole record at once, fields sliced out of it.
            src.fill(len, budget)?;
            let bytes = src.take(len);
            return self.whole(bytes, src.copies, next);
        }
        let start = src.consumed;
        let _attributes = src.byte(budget)?;
        let timestamp_delta = src.varint(budget)?;
        let offset = self.header.base + src.varint(budget)?;
        let keep = offset >= next;
        let mut held = 0;
        let (key, _) = src.field(keep.then_some(self.limits), budget, &mut held)?;
        let (value, value_len) = src.field(keep.then_some(self.limits), budget, &mut held)?;
        let header_count = src.varint(budget)?;
        let mut headers = Vec::new();
        let mut header_cost = 0;
        for _ in 0..header_count.max(0) {
            let room = keep && header_cost < self.limits.hold();
            let limits = room.then_some(self.limits);
            let (name, _) = src.field(limits, budget, &mut held)?;
            let (value, _) = src.field(limits, budget, &mut held)?;
            if room {
                let name = name.unwrap_or_default();
                header_cost += name.len() + value.as_ref().map_or(0, Bytes::len) + HEADER_COST;
                headers.push((String::from_utf8_lossy(&name).into_owned(), value));
            }
        }
        if src.consumed - start != len as u64 {
            return Err(Stop::Corrupt(
                "record length does not match its fields".into(),
            ));
        }
        if !keep {
            return Ok(None);
        }
        Ok(Some(Decoded {
            cost: MESSAGE_COST + held + header_cost,
            message: self.message(offset, timestamp_delta, key, value, value_len, headers),
        }))
    }

    /// Parses one record held whole; `copied`: its bytes are held only by the messages.
    fn whole(&self, data: Bytes, copied: bool, next: i64) -> Result<Option<Decoded>, Stop> {
        let mut r = Reader { data: &data, at: 0 };
        let _attributes = r.bytes(1)?;
        let timestamp_delta = r.varint()?;
        let offset = self.header.base + r.varint()?;
        if offset < next {
            return Ok(None);
        }
        let key = r.nullable()?;
        let value = r.nullable()?;
        let header_count = r.varint()?;
        let mut headers = Vec::with_capacity(usize::try_from(header_count).unwrap_or(0).min(16));
        let mut header_cost = 0;
        for _ in 0..header_count.max(0) {
            let name = r.nullable()?.unwrap_or_default();
            let value = r.nullable()?;
            if header_cost < self.limits.hold() {
                header_cost += name.len() + value.as_ref().map_or(0, Bytes::len) + HEADER_COST;
                headers.push((String::from_utf8_lossy(&name).into_owned(), value));
            }
        }
        if r.at != data.len() {
            return Err(Stop::Corrupt(
                "record length does not match its fields".into(),
            ));
        }
        let value_len = value.as_ref().map_or(0, Bytes::len);
        let held = if copied {
            key.as_ref().map_or(0, Bytes::len) + value_len
        } else {
            0
        };
        Ok(Some(Decoded {
            cost: MESSAGE_COST + held + header_cost,
            message: self.message(offset, timestamp_delta, key, value, value_len, headers),
        }))
    }

    fn message(
        &self,
        offset: i64,
        timestamp_delta: i64,
        key: Option<Bytes>,
        value: Option<Bytes>,
        value_len: usize,
        headers: Vec<(String, Option<Bytes>)>,
    ) -> Message {
        Message {
            partition: self.partition,
            offset: Offset(offset),
            key,
            value,
            value_len,
            headers,
            timestamp_ms: if self.header.log_append_time {
                self.header.max_timestamp
            } else {
                self.header.base_timestamp + timestamp_delta
            },
            undecoded: None,
        }
    }
}

/// The records section of one batch: in memory (uncompressed, sliced without copying), or
/// read from a decompressor (or the connection) a chunk at a time.
pub(super) struct Source<'a> {
    /// Bytes read and not consumed yet.
    buf: Bytes,
    reader: Option<Box<dyn Read + 'a>>,
    /// Whether `buf` holds copies made here (so what the messages keep of it counts
    /// against the budget) rather than slices of the response.
    copies: bool,
    /// Bytes consumed so far.
    consumed: u64,
    /// Bytes taken from `reader` so far.
    pulled: u64,
    /// Where skipped bytes are read to.
    scratch: Vec<u8>,
}

impl<'a> Source<'a> {
    pub(super) fn memory(data: Bytes) -> Source<'a> {
        Source {
            buf: data,
            reader: None,
            copies: false,
            consumed: 0,
            pulled: 0,
            scratch: Vec::new(),
        }
    }

    pub(super) fn reader(reader: Box<dyn Read + 'a>) -> Source<'a> {
        Source {
            buf: Bytes::new(),
            reader: Some(reader),
            copies: true,
            consumed: 0,
            pulled: 0,
            scratch: Vec::new(),
        }
    }

    /// Makes sure `n` bytes are buffered.
    fn fill(&mut self, n: usize, budget: &mut Budget) -> Result<(), Stop> {
        if self.buf.len() >= n {
            return Ok(());
        }
        let Some(reader) = self.reader.as_mut() else {
            return Err(Stop::CutShort);
        };
        let mut next = BytesMut::with_capacity(n.max(CHUNK));
        next.extend_from_slice(&self.buf);
        let mut len = next.len();
        next.resize(next.capacity(), 0);
        while len < n {
            let got = match reader.read(&mut next[len..]) {
                Ok(0) => return Err(Stop::CutShort),
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Stop::Io(e)),
            };
            len += got;
            Self::count(&mut self.pulled, got, budget)?;
        }
        next.truncate(len);
        self.buf = next.freeze();
        Ok(())
    }

    /// Counts `n` more bytes pulled from the reader against the work bounds.
    fn count(pulled: &mut u64, n: usize, budget: &mut Budget) -> Result<(), Stop> {
        *pulled += n as u64;
        budget.expanded += n as u64;
        if *pulled > budget.max_expansion {
            Err(Stop::Expands)
        } else if budget.expanded > budget.max_expansion {
            Err(Stop::FetchWork)
        } else {
            Ok(())
        }
    }

    /// Takes `n` buffered bytes (after `fill`).
    fn take(&mut self, n: usize) -> Bytes {
        self.consumed += n as u64;
        self.buf.split_to(n)
    }

    /// Consumes `n` bytes without holding them.
    fn skip(&mut self, mut n: usize, budget: &mut Budget) -> Result<(), Stop> {
        let buffered = n.min(self.buf.len());
        self.buf.advance(buffered);
        self.consumed += buffered as u64;
        n -= buffered;
        if n == 0 {
            return Ok(());
        }
        let Some(reader) = self.reader.as_mut() else {
            return Err(Stop::CutShort);
        };
        if self.scratch.is_empty() {
            self.scratch = vec![0; CHUNK];
        }
        while n > 0 {
            let want = n.min(self.scratch.len());
            let got = match reader.read(&mut self.scratch[..want]) {
                Ok(0) => return Err(Stop::CutShort),
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Stop::Io(e)),
            };
            n -= got;
            self.consumed += got as u64;
            Self::count(&mut self.pulled, got, budget)?;
        }
        Ok(())
    }

    fn byte(&mut self, budget: &mut Budget) -> Result<u8, Stop> {
        self.fill(1, budget)?;
        self.consumed += 1;
        Ok(self.buf.get_u8())
    }

    /// A zigzag varint.
    fn varint(&mut self, budget: &mut Budget) -> Result<i64, Stop> {
        let mut raw: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte(budget)?;
            raw |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err(Stop::Corrupt("varint longer than 10 bytes".into()))
    }

    /// A varint length, then that many bytes (-1: null): held as far as `limits` allow
    /// (`None`: not held at all), the rest read past. Returns what is held and the
    /// field's true length; adds what is held to `held` when the bytes are copies.
    fn field(
        &mut self,
        limits: Option<RecordLimits>,
        budget: &mut Budget,
        held: &mut usize,
    ) -> Result<(Option<Bytes>, usize), Stop> {
        let len = self.varint(budget)?;
        let Ok(len) = usize::try_from(len) else {
            return Ok((None, 0));
        };
        let Some(limits) = limits else {
            self.skip(len, budget)?;
            return Ok((None, len));
        };
        let kept = limits.kept(len);
        self.fill(kept, budget)?;
        let bytes = self.take(kept);
        if self.copies {
            *held += kept;
        }
        self.skip(len - kept, budget)?;
        Ok((Some(bytes), len))
    }
}

/// A cursor over one record held whole, reading Kafka's zigzag varints.
struct Reader<'a> {
    data: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<i64, Stop> {
        let mut raw: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .data
                .get(self.at)
                .ok_or_else(|| Stop::Corrupt("record cut short".into()))?;
            self.at += 1;
            raw |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err(Stop::Corrupt("varint longer than 10 bytes".into()))
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, Stop> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.data.len());
        let end = end.ok_or_else(|| Stop::Corrupt("record cut short".into()))?;
        let b = self.data.slice(self.at..end);
        self.at = end;
        Ok(b)
    }

    /// A varint length, then that many bytes; negative is null.
    fn nullable(&mut self) -> Result<Option<Bytes>, Stop> {
        let len = self.varint()?;
        let Ok(n) = usize::try_from(len) else {
            return Ok(None);
        };
        self.bytes(n).map(Some)
    }
}
