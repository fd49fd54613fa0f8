//! The body of one answer, read with the wire format's primitives: held in memory (a small
//! answer, its parts sliced out without copying) or read as it arrives from the connection
//! (a large one, never held whole). Errors name the broker and the request.
use std::io::{self, BufReader, Read};
use std::time::Duration;

use bytes::{Buf, Bytes};

use crate::error::{KafkaError, io_error};

/// The read buffer of an answer read as it arrives.
const BODY_BUFFER: usize = 64 * 1024;

/// The body of an answer: held in memory (a small one), or read as it arrives (a buffered
/// reader that stops at the body's end). Either way, the wire format's primitives, and
/// errors that name the broker.
pub struct Body<'a> {
    source: BodySource<'a>,
    broker: &'a str,
    what: &'static str,
    timeout: Duration,
}

enum BodySource<'a> {
    /// What is left of a body read whole.
    Memory(Bytes),
    Stream(BufReader<io::Take<&'a mut dyn Read>>),
}

impl<'a> Body<'a> {
    /// A body held whole.
    pub(crate) fn memory(
        data: Bytes,
        broker: &'a str,
        what: &'static str,
        timeout: Duration,
    ) -> Body<'a> {
        Body {
            source: BodySource::Memory(data),
            broker,
            what,
            timeout,
        }
    }

    /// A body of `len` bytes still to come from `source`.
    pub(crate) fn stream(
        source: &'a mut dyn Read,
        len: u64,
        broker: &'a str,
        what: &'static str,
        timeout: Duration,
    ) -> Body<'a> {
        Body {
            source: BodySource::Stream(BufReader::with_capacity(BODY_BUFFER, source.take(len))),
            broker,
            what,
            timeout,
        }
    }

    /// The error for a failed read: the answer ending early is the broker's fault (a
    /// protocol error), anything else the connection's.
    pub fn fail(&self, source: io::Error) -> KafkaError {
        let at_end = match &self.source {
            BodySource::Memory(_) => true,
            BodySource::Stream(r) => r.get_ref().limit() == 0,
        };
        if source.kind() == io::ErrorKind::UnexpectedEof && at_end {
            return self.ends_early();
        }
        io_error(self.broker, self.what, self.timeout, source)
    }

    pub fn protocol(&self, detail: String) -> KafkaError {
        KafkaError::Protocol {
            broker: self.broker.to_owned(),
            detail,
        }
    }

    fn ends_early(&self) -> KafkaError {
        self.protocol(format!("{} answer ends early", self.what))
    }

    pub fn exact(&mut self, buf: &mut [u8]) -> Result<(), KafkaError> {
        match &mut self.source {
            BodySource::Memory(data) if data.len() >= buf.len() => {
                data.copy_to_slice(buf);
                Ok(())
            }
            BodySource::Memory(_) => Err(self.ends_early()),
            BodySource::Stream(r) => r.read_exact(buf).map_err(|e| self.fail(e)),
        }
    }

    pub fn i16(&mut self) -> Result<i16, KafkaError> {
        let mut b = [0u8; 2];
        self.exact(&mut b)?;
        Ok(i16::from_be_bytes(b))
    }

    pub fn i32(&mut self) -> Result<i32, KafkaError> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(i32::from_be_bytes(b))
    }

    pub fn i64(&mut self) -> Result<i64, KafkaError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(i64::from_be_bytes(b))
    }

    /// An unsigned varint (flexible versions' lengths and tags).
    pub fn uvarint(&mut self) -> Result<u64, KafkaError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let mut b = [0u8; 1];
            self.exact(&mut b)?;
            value |= u64::from(b[0] & 0x7f) << shift;
            if b[0] & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.protocol(format!(
            "{} answer holds a varint of more than 10 bytes",
            self.what
        )))
    }

    /// `n` bytes: a slice of a body held whole, else read into memory.
    pub fn bytes(&mut self, n: usize) -> Result<Bytes, KafkaError> {
        if let BodySource::Memory(data) = &mut self.source {
            if data.len() < n {
                return Err(self.ends_early());
            }
            return Ok(data.split_to(n));
        }
        let mut buf = vec![0u8; n];
        self.exact(&mut buf)?;
        Ok(Bytes::from(buf))
    }

    /// Reads past `n` bytes without keeping them.
    pub fn skip(&mut self, n: u64) -> Result<(), KafkaError> {
        let skipped = match &mut self.source {
            BodySource::Memory(data) => {
                let k = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
                data.advance(k);
                k as u64
            }
            BodySource::Stream(r) => {
                io::copy(&mut r.take(n), &mut io::sink()).map_err(|e| self.fail(e))?
            }
        };
        if skipped < n {
            return Err(self.ends_early());
        }
        Ok(())
    }

    /// The tagged fields of a flexible version: none of them is needed here.
    pub fn skip_tagged_fields(&mut self) -> Result<(), KafkaError> {
        for _ in 0..self.uvarint()? {
            let _tag = self.uvarint()?;
            let size = self.uvarint()?;
            self.skip(size)?;
        }
        Ok(())
    }

    /// Reads and drops whatever is left.
    pub(crate) fn drain(&mut self) -> Result<(), KafkaError> {
        match &mut self.source {
            BodySource::Memory(data) => data.clear(),
            BodySource::Stream(r) => {
                io::copy(r, &mut io::sink()).map_err(|e| self.fail(e))?;
            }
        }
        Ok(())
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.source {
            BodySource::Memory(data) => {
                let n = buf.len().min(data.len());
                data.copy_to_slice(&mut buf[..n]);
                Ok(n)
            }
            BodySource::Stream(r) => r.read(buf),
        }
    }
}
