//! The wire format, pure: record batches in and out, codecs, the partitioner. No I/O
//! of its own (a batch too large to hold is decoded from any `Read` it is given).
pub(crate) mod batch;
pub(crate) mod codec;
pub(crate) mod decoder;
pub(crate) mod partitioner;
