//! Bounded memory under hostile input, through the client's public API alone: a consumer
//! process of its own (src/bin/consume.rs) reads a partition holding one compressed batch
//! of a few kilobytes whose middle record expands to 300 MiB, between valid records, and the
//! same with an uncompressed batch of 48 MiB (larger than the records a fetch answer may
//! hold in memory, and sent whole by the broker all the same: KIP-74). tansu stores any
//! batch it is given.
//!
//! Every record must arrive in order, the huge one as a prefix of the record limit with its
//! true length, and the consumer's peak resident set (the kernel's `VmHWM`) must stay within
//! 16 MiB: half the 32 MiB the worker is held to with everything else it does (its own
//! test, the repository's tests/memory.rs, checks the dead letter and the database too).
//! Measured: 7 to 9 MiB.

use std::process::Command;
use std::time::Instant;

use kafka_testkit::hostile_batch::{Codec, Piece, batch, huge_value, produce_raw, record};
use kafka_testkit::{Broker, produce};

/// The huge value's length in a compressed batch: 300 MiB.
const HUGE: usize = 300 * 1024 * 1024;
/// The huge value's length in an uncompressed batch (written out by the test, so smaller).
const HUGE_UNCOMPRESSED: usize = 48 * 1024 * 1024;
/// Half the worker's bar (DESIGN invariant 9): the client leaves the worker room for the rest.
const MAX_PEAK_RSS_KIB: u64 = 16 * 1024;
/// The record limits the worker uses: requests up to 64 KiB whole, a 1 MB prefix of larger
/// ones (what its dead letter keeps).
const WHOLE: usize = 64 * 1024;
const PREFIX: usize = 1_000_000;

#[test]
fn a_zstd_record_expanding_to_300_mib_arrives_as_a_prefix_within_16_mib() {
    huge_record_arrives_cut_within_bounds(Codec::Zstd, "zstd", HUGE);
}

#[test]
fn a_gzip_record_expanding_to_300_mib_arrives_as_a_prefix_within_16_mib() {
    huge_record_arrives_cut_within_bounds(Codec::Gzip, "gzip", HUGE);
}

#[test]
fn an_uncompressed_48_mib_batch_is_read_off_the_wire_within_16_mib() {
    huge_record_arrives_cut_within_bounds(Codec::None, "none", HUGE_UNCOMPRESSED);
}

fn huge_record_arrives_cut_within_bounds(codec: Codec, name: &str, huge: usize) {
    let t0 = Instant::now();
    let topic = format!("memory-{name}");
    let broker = Broker::start();
    broker.create_topic(&topic, 1);

    let small = |text: &str| text.as_bytes().to_vec();
    let (_, first) = produce(&broker, &topic, Some(0), None, &small("before"), &[]);
    let hostile = batch(
        codec,
        &[
            record(0, vec![Piece::Bytes(small("inside-before"))]),
            record(1, huge_value(b"{\"pad\":\"", b'a', huge - 10, b"\"}")),
            record(2, vec![Piece::Bytes(small("inside-after"))]),
        ],
    );
    let compressed = hostile.len();
    let base = produce_raw(&broker.addr(), &topic, 0, hostile);
    let (_, last) = produce(&broker, &topic, Some(0), None, &small("after"), &[]);
    assert_eq!((first, base, last), (0, 1, 4), "where the records landed");
    eprintln!(
        "{name}: a {compressed}-byte batch holding a {huge}-byte value produced after {:?}",
        t0.elapsed()
    );

    let out = Command::new(env!("CARGO_BIN_EXE_blocking-kafka-consume"))
        .args(["--bootstrap", &broker.addr(), "--topic", &topic])
        .args(["--group", "memory", "--count", "5"])
        .args([
            "--whole",
            &WHOLE.to_string(),
            "--prefix",
            &PREFIX.to_string(),
        ])
        .args(["--timeout", "120", "--report-peak-rss"])
        .output()
        .expect("run blocking-kafka-consume");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "{name}: consumer exited {} after {:?}:\n{stdout}{}",
        out.status,
        t0.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the consumer failed");

    // partition offset value_len held_len, one line per record, then the peak.
    let records: Vec<Vec<u64>> = stdout
        .lines()
        .filter(|l| !l.starts_with("peak_rss_kib"))
        .map(|l| {
            l.split(' ')
                .map(|n| n.parse().unwrap_or_else(|_| panic!("a record line: {l}")))
                .collect()
        })
        .collect();
    let huge = huge as u64;
    let prefix = PREFIX as u64;
    assert_eq!(
        records,
        vec![
            vec![0, 0, 6, 6],
            vec![0, 1, 13, 13],
            vec![0, 2, huge, prefix],
            vec![0, 3, 12, 12],
            vec![0, 4, 5, 5],
        ],
        "every record in order, the huge one held as a prefix with its true length"
    );
    let peak: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib "))
        .and_then(|v| v.parse().ok())
        .expect("the consumer reports its peak RSS");
    eprintln!("{name}: consumer peak RSS {:.1} MiB", peak as f64 / 1024.0);
    assert!(
        peak <= MAX_PEAK_RSS_KIB,
        "{name}: consumer peak RSS {:.1} MiB, more than {} MiB",
        peak as f64 / 1024.0,
        MAX_PEAK_RSS_KIB / 1024
    );
}
