//! Record-batch decompression, all in pure Rust, so the binary links no C codec library.
//!
//! Kafka's snappy comes in two shapes: raw snappy (librdkafka, most clients) and the
//! "xerial" framing the Java client writes (a magic header, then length-prefixed blocks).
//! Both are accepted. LZ4 is the LZ4 frame format; zstd is a standard zstd frame.
use std::io::Read;

use bytes::Bytes;
use kafka_protocol::records::Compression;

use super::KafkaError;

const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";

/// Decompresses the records section of one batch.
pub fn decompress(data: &Bytes, compression: Compression) -> Result<Bytes, KafkaError> {
    match compression {
        Compression::None => Ok(data.clone()),
        Compression::Gzip => read_all("gzip", flate2::read::MultiGzDecoder::new(&data[..])),
        Compression::Snappy => snappy(data),
        Compression::Lz4 => read_all("lz4", lz4_flex::frame::FrameDecoder::new(&data[..])),
        Compression::Zstd => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(&data[..]).map_err(|e| {
                KafkaError::Codec {
                    codec: "zstd",
                    detail: e.to_string(),
                }
            })?;
            read_all("zstd", decoder)
        }
    }
}

fn read_all(codec: &'static str, mut reader: impl Read) -> Result<Bytes, KafkaError> {
    let mut out = Vec::new();
    reader
        .read_to_end(&mut out)
        .map_err(|e| KafkaError::Codec {
            codec,
            detail: e.to_string(),
        })?;
    Ok(Bytes::from(out))
}

fn snappy(data: &[u8]) -> Result<Bytes, KafkaError> {
    let err = |detail: String| KafkaError::Codec {
        codec: "snappy",
        detail,
    };
    let raw = |block: &[u8]| {
        snap::raw::Decoder::new()
            .decompress_vec(block)
            .map_err(|e| err(e.to_string()))
    };
    if !data.starts_with(XERIAL_MAGIC) {
        return raw(data).map(Bytes::from);
    }
    // Xerial framing: 8-byte magic, 4-byte version, 4-byte compatible version, then blocks
    // of a 4-byte big-endian length and that many bytes of raw snappy.
    let mut rest = data
        .get(16..)
        .ok_or_else(|| err("truncated header".into()))?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| err("truncated block length".into()))?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let block = rest
            .get(4..4 + len)
            .ok_or_else(|| err("truncated block".into()))?;
        out.extend_from_slice(&raw(block)?);
        rest = &rest[4 + len..];
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TEXT: &[u8] = b"{\"request_id\":\"abc\",\"user_id\":\"alice\",\"gpu_count\":4}";

    #[test]
    fn gzip_roundtrips() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(TEXT).unwrap();
        let data = Bytes::from(enc.finish().unwrap());
        assert_eq!(decompress(&data, Compression::Gzip).unwrap(), TEXT);
    }

    #[test]
    fn raw_and_xerial_snappy_both_decode() {
        let raw = snap::raw::Encoder::new().compress_vec(TEXT).unwrap();
        assert_eq!(
            decompress(&Bytes::from(raw.clone()), Compression::Snappy).unwrap(),
            TEXT
        );
        let mut framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        framed.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        framed.extend_from_slice(&raw);
        assert_eq!(
            decompress(&Bytes::from(framed), Compression::Snappy).unwrap(),
            TEXT
        );
    }

    #[test]
    fn lz4_frame_decodes() {
        let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
        enc.write_all(TEXT).unwrap();
        let data = Bytes::from(enc.finish().unwrap());
        assert_eq!(decompress(&data, Compression::Lz4).unwrap(), TEXT);
    }

    #[test]
    fn zstd_frame_decodes() {
        let data =
            ruzstd::encoding::compress_to_vec(TEXT, ruzstd::encoding::CompressionLevel::Fastest);
        assert_eq!(
            decompress(&Bytes::from(data), Compression::Zstd).unwrap(),
            TEXT
        );
    }

    #[test]
    fn corrupt_data_names_the_codec() {
        let err = decompress(&Bytes::from_static(b"not gzip"), Compression::Gzip).unwrap_err();
        assert!(err.to_string().contains("gzip"), "{err}");
        let err =
            decompress(&Bytes::from_static(b"\xff\xff\xff"), Compression::Snappy).unwrap_err();
        assert!(err.to_string().contains("snappy"), "{err}");
    }
}
