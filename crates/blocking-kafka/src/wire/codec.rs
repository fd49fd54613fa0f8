//! Record-batch decompression, all in pure Rust (no C codec library), streaming and bounded.
//!
//! A decompressor is a `Read` that yields the batch's records section piece by piece; the
//! caller decides how much of it to keep (see `records`). Nothing here reads a whole
//! stream into memory: compressed data is untrusted, and a few kilobytes of it can expand
//! to gigabytes. What each codec holds for itself is bounded before it is allocated:
//!
//! - gzip (flate2's Rust backend, concatenated members accepted): a 32 KiB window and
//!   small buffers; header fields are capped by flate2 at 64 KiB.
//! - snappy, raw (librdkafka) and xerial-framed (the Java client: a magic header, then
//!   length-prefixed raw blocks): a raw block states its decompressed length up front; a
//!   block longer than [`MAX_CODEC_BUFFER`] is refused before anything is allocated.
//! - lz4 (lz4_flex, frame format): blocks are at most 4 MiB by the format, and the decoder
//!   holds at most three of them and a 64 KiB window (12 MiB; Kafka's clients write 64 KiB
//!   blocks, for about 200 KiB).
//! - zstd (ruzstd): the frame header states the window the decoder keeps; a window larger
//!   than [`MAX_CODEC_BUFFER`] is refused before ruzstd allocates it. (Kafka clients stay
//!   far below: librdkafka and the Java client at their default level use 2 MiB at most,
//!   and level 19 uses 8 MiB.)
//!
//! A refusal is a [`PastBound`] error inside the `io::Error`: the batch cannot be decoded
//! within the client's memory bounds, as opposed to corrupt data.
use std::fmt;
use std::io::{self, Read};

use bytes::Bytes;
use kafka_protocol::records::Compression;

/// The most a decompressor may hold for itself: a zstd window, a snappy block.
pub const MAX_CODEC_BUFFER: usize = 8 * 1024 * 1024;

const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const ZSTD_MAGIC: u32 = 0xFD2F_B528;

/// Compressed data: in memory (a batch of a response held whole) or still on its way
/// from the broker (a batch too large to hold).
pub enum Compressed<'a> {
    Memory(Bytes),
    Stream(&'a mut dyn Read),
}

/// A decompressor refused to hold more than its bound (inside an `io::Error`).
#[derive(Debug)]
pub struct PastBound(pub String);

impl fmt::Display for PastBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PastBound {}

/// The codec's name, for messages.
pub fn name(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "uncompressed",
        Compression::Gzip => "gzip",
        Compression::Snappy => "snappy",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
    }
}

/// A reader of the decompressed records section. Errors: `InvalidData` for corrupt
/// data, a [`PastBound`] for data that would exceed the bounds, and whatever the stream
/// itself fails with.
pub fn decompressor<'a>(
    compression: Compression,
    input: Compressed<'a>,
) -> io::Result<Box<dyn Read + 'a>> {
    let input: Box<dyn Read + 'a> = match input {
        Compressed::Memory(data) => {
            if compression == Compression::Snappy && !data.starts_with(XERIAL_MAGIC) {
                // Raw snappy is one block: decoded straight from the slice, no copy.
                return raw_snappy_block(&data).map(|b| Box::new(io::Cursor::new(b)) as _);
            }
            Box::new(io::Cursor::new(data))
        }
        Compressed::Stream(r) => Box::new(r),
    };
    Ok(match compression {
        Compression::None => input,
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(input)),
        Compression::Snappy => snappy(input)?,
        Compression::Zstd => zstd(input)?,
    })
}

/// Whether `e` is a decompressor's refusal to exceed its bound, and why.
pub fn past_bound(e: &io::Error) -> Option<&str> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<PastBound>())
        .map(|p| p.0.as_str())
}

fn bound(detail: String) -> io::Error {
    io::Error::other(PastBound(detail))
}

fn corrupt(detail: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail.into())
}

fn zstd<'a>(mut input: Box<dyn Read + 'a>) -> io::Result<Box<dyn Read + 'a>> {
    // ruzstd reserves the window the header asks for as soon as it reads the header (and
    // in 0.8 does not apply its own 100 MiB cap on first use), so the header is read and
    // checked here first, then handed back in front of the rest.
    let mut header = [0u8; 18];
    input.read_exact(&mut header[..5])?;
    if u32::from_le_bytes([header[0], header[1], header[2], header[3]]) != ZSTD_MAGIC {
        return Err(corrupt("not a zstd frame (bad magic number)"));
    }
    let descriptor = header[4];
    let single_segment = descriptor & 0x20 != 0;
    let content_size_len = match descriptor >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let dict_id_len = match descriptor & 0x3 {
        0 => 0,
        1 => 1,
        2 => 2,
        _ => 4,
    };
    let len = 5 + usize::from(!single_segment) + dict_id_len + content_size_len;
    input.read_exact(&mut header[5..len])?;
    let window = if single_segment {
        // The whole content is the window.
        let fcs = &header[len - content_size_len..len];
        let mut size = fcs
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        if content_size_len == 2 {
            size += 256;
        }
        size
    } else {
        let exponent = u64::from(header[5] >> 3);
        let mantissa = u64::from(header[5] & 0x7);
        let base = 1u64 << (10 + exponent);
        base + base / 8 * mantissa
    };
    if window > MAX_CODEC_BUFFER as u64 {
        return Err(bound(format!(
            "zstd frame needs a {window}-byte window, more than the {MAX_CODEC_BUFFER}-byte limit"
        )));
    }
    let source = io::Cursor::new(header[..len].to_vec()).chain(input);
    let decoder = ruzstd::decoding::StreamingDecoder::new(source)
        .map_err(|e| corrupt(format!("zstd frame header: {e}")))?;
    Ok(Box::new(decoder))
}

fn snappy<'a>(mut input: Box<dyn Read + 'a>) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 8];
    let got = read_up_to(&mut input, &mut magic)?;
    if magic[..got] == XERIAL_MAGIC[..] {
        // Two 4-byte versions follow the magic; blocks after them.
        let mut versions = [0u8; 8];
        input
            .read_exact(&mut versions)
            .map_err(|_| corrupt("snappy: truncated xerial header"))?;
        return Ok(Box::new(Xerial {
            input,
            block: io::Cursor::new(Vec::new()),
        }));
    }
    // Raw snappy coming from the connection: read the compressed block into memory, bounded
    // by what a block within the limit can take.
    let limit = snap::raw::max_compress_len(MAX_CODEC_BUFFER) as u64 + 1;
    let mut compressed = magic[..got].to_vec();
    (&mut input).take(limit).read_to_end(&mut compressed)?;
    if compressed.len() as u64 >= limit {
        return Err(bound(format!(
            "snappy block of more than {limit} compressed bytes"
        )));
    }
    let block = raw_snappy_block(&compressed)?;
    Ok(Box::new(io::Cursor::new(block)))
}

/// Decodes one raw snappy block after checking the length it states.
fn raw_snappy_block(compressed: &[u8]) -> io::Result<Vec<u8>> {
    let len = snap::raw::decompress_len(compressed).map_err(|e| corrupt(format!("snappy: {e}")))?;
    if len > MAX_CODEC_BUFFER {
        return Err(bound(format!(
            "snappy block of {len} bytes, more than the {MAX_CODEC_BUFFER}-byte limit"
        )));
    }
    snap::raw::Decoder::new()
        .decompress_vec(compressed)
        .map_err(|e| corrupt(format!("snappy: {e}")))
}

/// The xerial framing: blocks of a 4-byte big-endian length and that many bytes of raw
/// snappy, decoded one at a time.
struct Xerial<'a> {
    input: Box<dyn Read + 'a>,
    /// The current block, decoded.
    block: io::Cursor<Vec<u8>>,
}

impl Read for Xerial<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.block.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let mut len = [0u8; 4];
            match read_up_to(&mut self.input, &mut len)? {
                0 => return Ok(0),
                4 => {}
                _ => return Err(corrupt("snappy: truncated xerial block length")),
            }
            let len = u32::from_be_bytes(len) as usize;
            if len > snap::raw::max_compress_len(MAX_CODEC_BUFFER) {
                return Err(bound(format!(
                    "xerial snappy block of {len} compressed bytes, more than a block within the {MAX_CODEC_BUFFER}-byte limit can take"
                )));
            }
            let mut compressed = vec![0u8; len];
            self.input
                .read_exact(&mut compressed)
                .map_err(|_| corrupt("snappy: truncated xerial block"))?;
            self.block = io::Cursor::new(raw_snappy_block(&compressed)?);
        }
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_up_to(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A test-only allocator that counts what each thread holds, so a test can assert how much
/// memory one decode needed at its peak (each test runs on its own thread).
#[cfg(test)]
pub(crate) mod peak {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    #[global_allocator]
    static COUNTING: Counting = Counting;

    thread_local! {
        static HELD: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn track(delta: isize) {
        // `try_with`: a thread being torn down has no counters any more; nothing to count.
        let _ = HELD.try_with(|held| {
            let now = held.get() + delta;
            held.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    // SAFETY: every call is forwarded to the system allocator unchanged; the counters are
    // const-initialised thread-locals, which never allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                track(layout.size() as isize);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                track(layout.size() as isize);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) };
            track(-(layout.size() as isize));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                track(new_size as isize - layout.size() as isize);
            }
            p
        }
    }

    /// Runs `f` and returns its result with the most this thread held meanwhile beyond
    /// what it held before (bytes).
    pub(crate) fn during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let start = HELD.with(Cell::get);
        PEAK.with(|p| p.set(start));
        let out = f();
        let peak = PEAK.with(Cell::get);
        (out, usize::try_from(peak - start).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TEXT: &[u8] = b"{\"request_id\":\"abc\",\"user_id\":\"alice\",\"gpu_count\":4}";
    /// How far a bomb is read in these tests: past every bound, far short of the bomb.
    const PROBE: u64 = 32 * 1024 * 1024;
    /// The most a streaming decompressor may hold in these tests (their windows and
    /// blocks are small; the bounds themselves are tested separately).
    const SMALL: usize = 1024 * 1024;

    /// Reads all of `data` (in memory) with `compression`.
    fn decode(data: Vec<u8>, compression: Compression) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decompressor(compression, Compressed::Memory(Bytes::from(data)))?.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Reads the first `PROBE` bytes of `data` arriving as a stream, and reports how many
    /// came out (or the error), and the most the decompressor held meanwhile.
    fn probe_stream(data: &[u8], compression: Compression) -> (io::Result<u64>, usize) {
        peak::during(|| {
            let mut input = data;
            let reader = decompressor(compression, Compressed::Stream(&mut input))?;
            io::copy(&mut reader.take(PROBE), &mut io::sink())
        })
    }

    fn assert_streams_small(bomb: &[u8], compression: Compression) {
        let (read, held) = probe_stream(bomb, compression);
        assert_eq!(read.unwrap(), PROBE, "{}", name(compression));
        assert!(
            held < SMALL,
            "{} held {held} bytes while streaming",
            name(compression)
        );
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// An lz4 frame of `block`-sized blocks (Kafka's clients write 64 KiB blocks).
    fn lz4_with(data: &[u8], block: lz4_flex::frame::BlockSize, linked: bool) -> Vec<u8> {
        use lz4_flex::frame::{BlockMode, FrameEncoder, FrameInfo};
        let mode = if linked {
            BlockMode::Linked
        } else {
            BlockMode::Independent
        };
        let info = FrameInfo::new().block_size(block).block_mode(mode);
        let mut enc = FrameEncoder::with_frame_info(info, Vec::new());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn lz4(data: &[u8]) -> Vec<u8> {
        lz4_with(data, lz4_flex::frame::BlockSize::Max64KB, false)
    }

    fn xerial(blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        for raw in blocks {
            framed.extend_from_slice(&(raw.len() as u32).to_be_bytes());
            framed.extend_from_slice(raw);
        }
        framed
    }

    /// A zstd frame of `blocks` RLE blocks of 128 KiB each, with window descriptor `wd`.
    fn zstd_rle(wd: u8, blocks: usize) -> Vec<u8> {
        let mut out = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, wd];
        for i in 0..blocks {
            let last = u32::from(i + 1 == blocks);
            let header = last | 1 << 1 | (128 * 1024) << 3;
            out.extend_from_slice(&header.to_le_bytes()[..3]);
            out.push(b'a');
        }
        out
    }

    #[test]
    fn gzip_roundtrips_including_concatenated_members() {
        let mut data = gzip(TEXT);
        assert_eq!(decode(data.clone(), Compression::Gzip).unwrap(), TEXT);
        data.extend(gzip(TEXT));
        assert_eq!(
            decode(data, Compression::Gzip).unwrap(),
            [TEXT, TEXT].concat()
        );
    }

    #[test]
    fn raw_and_xerial_snappy_both_decode_from_memory_and_streams() {
        let raw = snap::raw::Encoder::new().compress_vec(TEXT).unwrap();
        assert_eq!(decode(raw.clone(), Compression::Snappy).unwrap(), TEXT);
        let framed = xerial(&[raw.clone(), raw.clone()]);
        assert_eq!(
            decode(framed.clone(), Compression::Snappy).unwrap(),
            [TEXT, TEXT].concat()
        );
        for data in [raw, framed] {
            let mut input = &data[..];
            let mut out = Vec::new();
            decompressor(Compression::Snappy, Compressed::Stream(&mut input))
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert!(out.starts_with(TEXT));
        }
    }

    #[test]
    fn lz4_frame_decodes() {
        assert_eq!(decode(lz4(TEXT), Compression::Lz4).unwrap(), TEXT);
    }

    #[test]
    fn zstd_frame_decodes() {
        let data =
            ruzstd::encoding::compress_to_vec(TEXT, ruzstd::encoding::CompressionLevel::Fastest);
        assert_eq!(decode(data, Compression::Zstd).unwrap(), TEXT);
    }

    #[test]
    fn corrupt_data_is_invalid_data_not_a_bound() {
        for (data, compression) in [
            (b"not gzip".to_vec(), Compression::Gzip),
            (b"\xff\xff\xff".to_vec(), Compression::Snappy),
            (b"not zstd at all".to_vec(), Compression::Zstd),
            (b"not lz4 at all".to_vec(), Compression::Lz4),
        ] {
            let err = decode(data, compression).unwrap_err();
            assert!(past_bound(&err).is_none(), "{}: {err}", name(compression));
        }
    }

    // Bombs: each codec streams a huge expansion without holding it, so the caller can stop
    // wherever it likes; what a codec would have to hold is refused up front.

    #[test]
    fn a_gzip_bomb_streams_without_being_held() {
        // 4 MiB of zeros compress to ~4 KiB; 256 such members expand to 1 GiB.
        let member = gzip(&vec![0u8; 4 * 1024 * 1024]);
        let bomb: Vec<u8> = (0..256).flat_map(|_| member.clone()).collect();
        assert!(bomb.len() < 2 * 1024 * 1024);
        assert_streams_small(&bomb, Compression::Gzip);
    }

    #[test]
    fn an_lz4_bomb_streams_without_being_held() {
        let bomb = lz4(&vec![0u8; 64 * 1024 * 1024]);
        assert!(bomb.len() < 2 * 1024 * 1024);
        assert_streams_small(&bomb, Compression::Lz4);
    }

    #[test]
    fn an_lz4_frame_of_the_largest_blocks_holds_at_most_three_of_them() {
        // The format's largest block is 4 MiB; linked blocks keep two and a 64 KiB window
        // for output, one for input.
        let bomb = lz4_with(
            &vec![0u8; 48 * 1024 * 1024],
            lz4_flex::frame::BlockSize::Max4MB,
            true,
        );
        let (read, held) = probe_stream(&bomb, Compression::Lz4);
        assert_eq!(read.unwrap(), PROBE);
        assert!(held <= 12 * 1024 * 1024 + 128 * 1024, "held {held} bytes");
    }

    #[test]
    fn a_zstd_bomb_with_a_small_window_streams() {
        // 4096 RLE blocks: 512 MiB from 16 KiB, window 128 KiB.
        assert_streams_small(&zstd_rle(7 << 3, 4096), Compression::Zstd);
        let mut out = Vec::new();
        decompressor(
            Compression::Zstd,
            Compressed::Memory(Bytes::from(zstd_rle(7 << 3, 2))),
        )
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
        assert_eq!(out.len(), 256 * 1024, "valid frames still decode whole");
    }

    #[test]
    fn a_zstd_frame_asking_for_a_huge_window_is_refused_before_allocating() {
        // Exponent 20: a 1 GiB window (ruzstd would reserve it on reading the header).
        let (result, held) = probe_stream(&zstd_rle(20 << 3, 1), Compression::Zstd);
        let err = result.unwrap_err();
        let why = past_bound(&err).expect("a bound, not corruption");
        assert!(why.contains("1073741824-byte window"), "{why}");
        assert!(held < SMALL, "held {held} bytes before refusing");
        // Single-segment: the window is the content size (here 2^40 bytes).
        let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD, 0xE0];
        frame.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = probe_stream(&frame, Compression::Zstd).0.unwrap_err();
        assert!(past_bound(&err).is_some(), "{err}");
    }

    #[test]
    fn a_raw_snappy_block_stating_a_huge_length_is_refused_before_allocating() {
        // A raw block starts with its decompressed length as a varint: here 2^32 - 1.
        let bomb = vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        let err = decode(bomb.clone(), Compression::Snappy).unwrap_err();
        assert!(
            past_bound(&err).is_some_and(|w| w.contains("4294967295")),
            "{err}"
        );
        let (result, held) = probe_stream(&bomb, Compression::Snappy);
        assert!(past_bound(&result.unwrap_err()).is_some());
        assert!(held < SMALL, "held {held} bytes before refusing");
    }

    #[test]
    fn xerial_snappy_checks_every_block_and_streams_many_small_ones() {
        // A block stating 16 MiB of output is refused, even after valid blocks.
        let fine = snap::raw::Encoder::new().compress_vec(TEXT).unwrap();
        let mut huge = Vec::new();
        let n = 16 * 1024 * 1024u32;
        let mut v = n;
        while v >= 0x80 {
            huge.push((v as u8) | 0x80);
            v >>= 7;
        }
        huge.push(v as u8);
        huge.push(0);
        let (result, held) = probe_stream(&xerial(&[fine, huge]), Compression::Snappy);
        assert!(past_bound(&result.unwrap_err()).is_some());
        assert!(held < SMALL, "held {held} bytes before refusing");
        // 1,000 blocks of 64 KiB each: 62.5 MiB out, one block held at a time.
        let block = snap::raw::Encoder::new()
            .compress_vec(&vec![b'a'; 64 * 1024])
            .unwrap();
        assert_streams_small(&xerial(&vec![block; 1000]), Compression::Snappy);
    }
}
