//! The framing of a v2 record batch: its fixed 61-byte header ([`BatchHeader`], from the
//! base offset to the record count), the codec its attributes name, and the big-endian
//! integers it is made of. Shared by the decoder and by the fetch answer's reader, which
//! frames batches off the connection.
//!
//! ```text
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 (2) | crc u32 |
//! attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//! producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32 | records
//! ```
use kafka_protocol::records::Compression;

use crate::error::KafkaError;
use crate::types::Partition;

/// The fixed part of a v2 record batch: base offset to record count.
pub(crate) const BATCH_HEADER_LEN: usize = 61;

/// The fixed header of a v2 batch.
pub(super) struct BatchHeader {
    pub(super) base: i64,
    /// The whole batch, length prefix included.
    pub(super) total: usize,
    pub(super) magic: i8,
    pub(super) crc: u32,
    pub(super) attributes: i16,
    pub(super) last: i64,
    pub(super) base_timestamp: i64,
    pub(super) max_timestamp: i64,
    pub(super) producer_id: i64,
    pub(super) count: i32,
    pub(super) transactional: bool,
    pub(super) control: bool,
    pub(super) log_append_time: bool,
}

impl BatchHeader {
    /// Reads the header from its first [`BATCH_HEADER_LEN`] bytes.
    pub(super) fn parse(b: &[u8]) -> BatchHeader {
        let base = be_i64(&b[0..8]);
        let attributes = be_i16(&b[21..23]);
        BatchHeader {
            base,
            total: usize::try_from(be_i32(&b[8..12])).unwrap_or(0) + 12,
            magic: b[16] as i8,
            crc: u32::from_be_bytes([b[17], b[18], b[19], b[20]]),
            attributes,
            last: base + i64::from(be_i32(&b[23..27])),
            base_timestamp: be_i64(&b[27..35]),
            max_timestamp: be_i64(&b[35..43]),
            producer_id: be_i64(&b[43..51]),
            count: be_i32(&b[57..61]),
            transactional: attributes & (1 << 4) != 0,
            control: attributes & (1 << 5) != 0,
            log_append_time: attributes & (1 << 3) != 0,
        }
    }

    pub(super) fn compression(&self, partition: Partition) -> Result<Compression, KafkaError> {
        match self.attributes & 0x7 {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(KafkaError::Codec {
                codec: "unknown",
                detail: format!("compression type {other} in partition {partition}"),
            }),
        }
    }
}

pub(crate) fn corrupt(partition: Partition, detail: String) -> KafkaError {
    KafkaError::Protocol {
        broker: String::new(),
        detail: format!("cannot decode a record batch of partition {partition}: {detail}"),
    }
}

pub(super) fn be_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_be_bytes(a)
}

pub(crate) fn be_i32(b: &[u8]) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    i32::from_be_bytes(a)
}

pub(super) fn be_i16(b: &[u8]) -> i16 {
    i16::from_be_bytes([b[0], b[1]])
}
