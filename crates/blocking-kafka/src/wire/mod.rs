//! The wire format, pure: record batches in and out, codecs, the partitioner. No I/O of its
//! own (a batch too large to hold is decoded from any `Read` it is given). Bottom first:
//!
//! - `message`: `Message`, a decoded record as the caller sees it, and `Undecoded`.
//! - `header`: a v2 batch's framing: its fixed header, its codec, big-endian integers.
//! - `limits`: how much decoding may hold and do (`RecordLimits`, `Budget`, `MAX_EXPANSION`).
//! - `codec`: pure-Rust streaming decompression, each codec's own memory bounded.
//! - `transactions`: aborted transactions and control records (read_committed).
//! - `record`: one record, held whole or field by field within the limits.
//! - `legacy`: message sets in formats v0 and v1 (before Kafka 0.11), compressed or not.
//! - `decoder`: `PartitionDecoder`, one partition's batches into messages.
//! - `batch`: batches out: `OutRecord`, encoding with CRC-32C and gzip.
//! - `partitioner`: the Java client's murmur2 partitioner.
pub(crate) mod batch;
pub(crate) mod codec;
pub(crate) mod decoder;
pub(crate) mod header;
pub(crate) mod legacy;
pub(crate) mod limits;
pub(crate) mod message;
pub(crate) mod partitioner;
pub(crate) mod record;
pub(crate) mod transactions;
