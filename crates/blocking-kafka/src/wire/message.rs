//! A decoded record as the caller sees it ([`Message`]), and the stand-in for records given
//! up undecoded within the memory bounds ([`Undecoded`]).
use bytes::Bytes;

use crate::types::{Offset, Partition};

/// One record as the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The partition it was read from.
    pub partition: Partition,
    /// Its offset (for an undecoded stand-in: the first offset it stands for).
    pub offset: Offset,
    /// The key (`None`: null), held up to the record limits.
    pub key: Option<Bytes>,
    /// The value (`None`: null), held up to the record limits.
    pub value: Option<Bytes>,
    /// The value's length in the log. Equal to `value`'s length, except for a record too
    /// large to hold, whose `value` is only its first bytes (`RecordLimits::prefix`).
    pub value_len: usize,
    /// Headers in order, names repeated as they came; held up to the record limits.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// CreateTime, or LogAppendTime when the topic says so (milliseconds since 1970).
    pub timestamp_ms: i64,
    /// Set when records could not be decoded within the memory bounds: this message has no
    /// key or value and stands for every offset from its own to `last`. The caller must
    /// reject it (the worker dead-letters it with the reason), never skip it silently; the
    /// position is already past `last`.
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
