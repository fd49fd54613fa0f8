//! Record batches built by hand, for the memory tests: a compressed batch whose records
//! expand to hundreds of megabytes, written without ever holding them uncompressed, and
//! produced with one raw Produce request (tansu stores any batch as it comes).
//!
//! A record's bytes are described as [`Piece`]s, so a 300 MB run of one byte costs
//! nothing to describe. The codecs then write that run compactly by hand: zstd as RLE
//! blocks (four bytes per 128 KiB), gzip as one member of a compressed MiB repeated
//! (concatenated gzip members are one gzip stream, RFC 1952 section 2.2).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
    produce_request::{PartitionProduceData, TopicProduceData},
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

/// Part of a record's uncompressed bytes.
#[derive(Clone, Debug)]
pub enum Piece {
    Bytes(Vec<u8>),
    /// `len` copies of `byte`.
    Fill {
        byte: u8,
        len: usize,
    },
}

/// The codecs [`batch`] can write.
#[derive(Clone, Copy, Debug)]
pub enum Codec {
    /// Uncompressed: the records are written out (so keep them to tens of MB).
    None,
    Gzip,
    Zstd,
}

impl Piece {
    fn len(&self) -> usize {
        match self {
            Piece::Bytes(b) => b.len(),
            Piece::Fill { len, .. } => *len,
        }
    }
}

/// A value of `prefix`, then `fill` copies of `byte`, then `suffix`: e.g. a JSON object
/// with one huge string field.
pub fn huge_value(prefix: &[u8], byte: u8, fill: usize, suffix: &[u8]) -> Vec<Piece> {
    vec![
        Piece::Bytes(prefix.to_vec()),
        Piece::Fill { byte, len: fill },
        Piece::Bytes(suffix.to_vec()),
    ]
}

/// The pieces of one v2 record: no key, no headers, timestamp delta 0.
pub fn record(offset_delta: i64, value: Vec<Piece>) -> Vec<Piece> {
    let value_len: usize = value.iter().map(Piece::len).sum();
    let mut body = vec![0u8]; // attributes
    varint(&mut body, 0); // timestamp delta
    varint(&mut body, offset_delta);
    varint(&mut body, -1); // null key
    varint(&mut body, value_len as i64);
    let trailer = {
        let mut t = Vec::new();
        varint(&mut t, 0); // no headers
        t
    };
    let len = body.len() + value_len + trailer.len();
    let mut head = Vec::new();
    varint(&mut head, len as i64);
    head.extend_from_slice(&body);
    let mut out = vec![Piece::Bytes(head)];
    out.extend(value);
    out.push(Piece::Bytes(trailer));
    out
}

/// A complete v2 record batch at base offset 0 holding `records` (each from [`record`],
/// with offset deltas 0, 1, ...), compressed with `codec`.
pub fn batch(codec: Codec, records: &[Vec<Piece>]) -> Bytes {
    let pieces: Vec<Piece> = records.iter().flatten().cloned().collect();
    let (attributes, payload) = match codec {
        Codec::None => (0i16, materialize(&pieces)),
        Codec::Gzip => (1i16, gzip(&pieces)),
        Codec::Zstd => (4i16, zstd(&pieces)),
    };
    let count = records.len() as i32;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    // Everything the CRC covers: attributes to the end.
    let mut tail = Vec::new();
    tail.extend_from_slice(&attributes.to_be_bytes());
    tail.extend_from_slice(&(count - 1).to_be_bytes()); // last offset delta
    tail.extend_from_slice(&now.to_be_bytes()); // base timestamp
    tail.extend_from_slice(&now.to_be_bytes()); // max timestamp
    tail.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    tail.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    tail.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    tail.extend_from_slice(&count.to_be_bytes());
    tail.extend_from_slice(&payload);
    let mut out = BytesMut::new();
    out.extend_from_slice(&0i64.to_be_bytes()); // base offset
    let length = 4 + 1 + 4 + tail.len(); // leader epoch, magic, crc, then the tail
    out.extend_from_slice(&(length as i32).to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    out.extend_from_slice(&[2]); // magic
    out.extend_from_slice(&crc32c::crc32c(&tail).to_be_bytes());
    out.extend_from_slice(&tail);
    out.freeze()
}

/// Produces `batch` to `topic`/`partition` at `addr` (acks=all) in one raw Produce v7
/// request; returns the base offset the broker gave it.
pub fn produce_raw(addr: &str, topic: &str, partition: i32, batch: Bytes) -> i64 {
    const VERSION: i16 = 7;
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(batch)),
                ]),
        ]);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(VERSION)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("hostile-batch")));
    let mut frame = BytesMut::new();
    frame.extend_from_slice(&[0; 4]);
    header
        .encode(&mut frame, ProduceRequest::header_version(VERSION))
        .expect("encode the request header");
    request
        .encode(&mut frame, VERSION)
        .expect("encode the Produce request");
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());

    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("set a read timeout");
    stream.write_all(&frame).expect("send the Produce request");
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .expect("read the Produce answer");
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    stream
        .read_exact(&mut body)
        .expect("read the Produce answer");
    let mut body = Bytes::from(body);
    ResponseHeader::decode(&mut body, ProduceResponse::header_version(VERSION))
        .expect("decode the Produce answer's header");
    let response = ProduceResponse::decode(&mut body, VERSION).expect("decode the Produce answer");
    let p = &response.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0, "the broker refused the hand-built batch");
    p.base_offset
}

fn materialize(pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Bytes(b) => out.extend_from_slice(b),
            Piece::Fill { byte, len } => out.resize(out.len() + len, *byte),
        }
    }
    out
}

fn zstd(pieces: &[Piece]) -> Vec<u8> {
    const BLOCK: usize = 128 * 1024;
    let mut out = vec![0x28, 0xB5, 0x2F, 0xFD]; // magic, little-endian
    // No content size, not single-segment, no checksum, no dictionary; a 128 KiB
    // window (exponent 7: 2^(10+7)), the largest block size.
    out.extend_from_slice(&[0x00, 7 << 3]);
    let mut blocks: Vec<(u8, Vec<u8>, usize)> = Vec::new(); // (type, content, size)
    for piece in pieces {
        match piece {
            Piece::Bytes(b) => {
                for chunk in b.chunks(BLOCK) {
                    blocks.push((0, chunk.to_vec(), chunk.len()));
                }
            }
            Piece::Fill { byte, len } => {
                let mut left = *len;
                while left > 0 {
                    let n = left.min(BLOCK);
                    blocks.push((1, vec![*byte], n));
                    left -= n;
                }
            }
        }
    }
    let last = blocks.len() - 1;
    for (i, (kind, content, size)) in blocks.into_iter().enumerate() {
        let header = u32::from(i == last) | u32::from(kind) << 1 | (size as u32) << 3;
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(&content);
    }
    out
}

fn gzip(pieces: &[Piece]) -> Vec<u8> {
    const MIB: usize = 1024 * 1024;
    let member = |data: &[u8]| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).expect("gzip into memory");
        enc.finish().expect("gzip into memory")
    };
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Bytes(b) => out.extend(member(b)),
            Piece::Fill { byte, len } => {
                let whole = member(&vec![*byte; MIB]);
                for _ in 0..len / MIB {
                    out.extend_from_slice(&whole);
                }
                out.extend(member(&vec![*byte; len % MIB]));
            }
        }
    }
    out
}

/// Kafka's zigzag varint.
fn varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
