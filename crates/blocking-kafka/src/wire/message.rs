//! A decoded record as the caller sees it ([`Message`]), and the stand-in for records given
//! up undecoded within the memory bounds ([`Undecoded`]).
use bytes::Bytes;

use crate::types::{Offset, Partition};

/// One record as the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub partition: Partition,
    pub offset: Offset,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// The value's length in the log. Equal to `value`'s length, except for a record too
    /// large to hold, whose `value` is only its first bytes (`RecordLimits::prefix`).
    pub value_len: usize,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp_ms: i64,
    /// Set when records could not be decoded within the memory bounds: this message has no
    /// key or value and stands for every offset from its own to `last`. The caller must
    /// reject it (dead-letter it with the reason); the position is already past `last`.
    pub undecoded: Option<Box<Undecoded>>,
}

/// Records given up undecoded (see `Message::undecoded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecoded {
    /// The last offset the message stands for.
    pub last: Offset,
    /// Which offsets, and why: for the dead letter.
    pub reason: String,
}
