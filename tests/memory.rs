//! Bounded memory under hostile input (issue 10, item 1; DESIGN invariant 9): the real
//! worker binary against tansu, which stores any batch it is given. One compressed batch of
//! a few kilobytes holds a 300 MiB JSON value between two valid requests; more valid
//! requests come before and after it in the same partition. The worker must stay within
//! 32 MiB of peak RSS, dead-letter the huge record (its dead letter readable by librdkafka)
//! with a reason naming its true size, commit past it, and complete every valid request.
//! The same for an uncompressed batch of 48 MiB: larger than the records a fetch answer may
//! hold in memory, and sent whole by the broker all the same (KIP-74).
//!
//! Peak RSS is the kernel's high-water mark (`VmHWM` in /proc/PID/status), read while the
//! worker still runs, after everything is processed.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::hostile_batch::{Codec, batch, huge_value, produce_raw, record};
use common::{Broker, TempDb, WorkerProcess, librdkafka_consume, produce, wait_until};
use rustfs_kafka::client::KafkaClient;

/// The huge value's length in a compressed batch: 300 MiB.
const HUGE: usize = 300 * 1024 * 1024;
/// The huge value's length in an uncompressed batch (written out by the test, so smaller,
/// but still far above the 32 MiB bar).
const HUGE_UNCOMPRESSED: usize = 48 * 1024 * 1024;
/// The bar of issue 10.
const MAX_PEAK_RSS_KIB: u64 = 32 * 1024;
/// The dead letter's size limit (`KAFKA_DLQ_MAX_BYTES`, default).
const DLQ_MAX_BYTES: usize = 1_000_000;
const GROUP: &str = "memory";

#[test]
fn a_zstd_batch_expanding_to_300_mib_is_dead_lettered_within_32_mib() {
    huge_record_is_dead_lettered_within_bounds(Codec::Zstd, "zstd", HUGE);
}

#[test]
fn a_gzip_batch_expanding_to_300_mib_is_dead_lettered_within_32_mib() {
    huge_record_is_dead_lettered_within_bounds(Codec::Gzip, "gzip", HUGE);
}

#[test]
fn an_uncompressed_48_mib_batch_is_read_off_the_wire_within_32_mib() {
    huge_record_is_dead_lettered_within_bounds(Codec::None, "none", HUGE_UNCOMPRESSED);
}

fn huge_record_is_dead_lettered_within_bounds(codec: Codec, name: &str, huge: usize) {
    let t0 = Instant::now();
    let topic = format!("memory-{name}");
    let dlq = format!("{topic}.dlq");
    let broker = Broker::start();
    broker.create_topic(&topic, 1);
    broker.create_topic(&dlq, 1);
    let db = TempDb::new();

    let request = |id: &str| {
        format!(r#"{{"request_id":"{id}","user_id":"u-{id}","gpu_count":1,"duration_hours":1}}"#)
            .into_bytes()
    };
    let huge_prefix =
        br#"{"request_id":"huge","user_id":"mallory","gpu_count":1,"duration_hours":1,"pad":""#;
    let huge_suffix = br#""}"#;
    let fill = huge - huge_prefix.len() - huge_suffix.len();
    let ids = ["before", "inside-before", "inside-after", "after"];

    let (_, first) = produce(&broker, &topic, Some(0), None, &request(ids[0]), &[]);
    let hostile = batch(
        codec,
        &[
            record(
                0,
                vec![common::hostile_batch::Piece::Bytes(request(ids[1]))],
            ),
            record(1, huge_value(huge_prefix, b'a', fill, huge_suffix)),
            record(
                2,
                vec![common::hostile_batch::Piece::Bytes(request(ids[2]))],
            ),
        ],
    );
    let compressed = hostile.len();
    let base = produce_raw(&broker.addr(), &topic, 0, hostile);
    let (_, last) = produce(&broker, &topic, Some(0), None, &request(ids[3]), &[]);
    assert_eq!((first, base, last), (0, 1, 4), "where the records landed");
    let huge_offset = base + 1;
    eprintln!(
        "{name}: a {compressed}-byte batch holding a {huge}-byte value produced after {:?}",
        t0.elapsed()
    );

    let url = db.url();
    let mut w = WorkerProcess::spawn(&[
        ("KAFKA_BOOTSTRAP_SERVERS", &broker.addr()),
        ("KAFKA_TOPIC", &topic),
        ("KAFKA_GROUP_ID", GROUP),
        ("KAFKA_DLQ_TOPIC", &dlq),
        ("DATABASE_URL", &url),
        ("MOCK_PROVISION_DELAY_SECONDS", "0"),
        ("WORKER_THREADS", "2"),
        ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_HEARTBEAT_INTERVAL_MS", "1000"),
        ("COMMIT_INTERVAL_MS", "200"),
        ("LOG_LEVEL", "INFO"),
    ]);
    let mut committed = CommittedReader::new(&broker.addr(), &topic);
    wait_until(
        "every valid request completed and the partition committed to its end",
        Duration::from_secs(120),
        || {
            let done = ids
                .iter()
                .all(|id| db.status_of(id).as_deref() == Some("completed"));
            (done && committed.offset(0) == Some(last + 1)).then_some(())
        },
    );
    let peak = peak_rss_kib(w.pid());
    eprintln!(
        "{name}: all processed and committed after {:?}; worker peak RSS {:.1} MiB",
        t0.elapsed(),
        peak as f64 / 1024.0
    );

    let dead = librdkafka_consume(
        &broker,
        "memory-dlq-reader",
        &dlq,
        1,
        Duration::from_secs(60),
    );
    let dead = &dead[0];
    let header = |name: &str| {
        dead.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_else(|| panic!("dead letter without header {name}: {:?}", dead.headers))
    };
    assert_eq!(header("x-original-offset"), huge_offset.to_string());
    let reason = header("x-dlq-reason");
    assert!(
        reason.contains(&huge.to_string()) && reason.contains("65536"),
        "the reason names the true size and the limit: {reason}"
    );
    let value = dead.value.as_deref().unwrap_or_default();
    assert!(
        value.len() <= DLQ_MAX_BYTES && value.starts_with(huge_prefix),
        "the dead letter holds the record's first bytes ({} bytes, starts {:?})",
        value.len(),
        String::from_utf8_lossy(&value[..value.len().min(40)])
    );
    let line = format!("offset {huge_offset}");
    assert!(
        w.lines()
            .iter()
            .any(|l| l.contains("Dead-lettered") && l.contains(&line)),
        "the worker logs the dead letter"
    );

    assert!(
        peak <= MAX_PEAK_RSS_KIB,
        "{name}: worker peak RSS {:.1} MiB, more than {} MiB",
        peak as f64 / 1024.0,
        MAX_PEAK_RSS_KIB / 1024
    );
    w.signal("TERM");
    assert!(w.wait_exit(Duration::from_secs(30)).success());
    eprintln!("{name}: done after {:?}", t0.elapsed());
}

/// The worker's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status:\n{status}"))
}

/// The group's committed offsets, read with rustfs-kafka's OffsetFetch: cheap to poll, and
/// independent of the worker's own group code.
struct CommittedReader {
    client: KafkaClient,
    topic: String,
}

impl CommittedReader {
    fn new(bootstrap: &str, topic: &str) -> CommittedReader {
        CommittedReader {
            client: KafkaClient::new(vec![bootstrap.to_owned()]),
            topic: topic.to_owned(),
        }
    }

    fn offset(&mut self, partition: i32) -> Option<i64> {
        if self.client.topics().partitions(&self.topic).is_none() {
            self.client.load_metadata(&[&self.topic]).ok()?;
        }
        let offsets: BTreeMap<i32, i64> = self
            .client
            .fetch_group_topic_offset(GROUP, &self.topic)
            .ok()?
            .into_iter()
            .filter(|o| o.offset >= 0)
            .map(|o| (o.partition, o.offset))
            .collect();
        offsets.get(&partition).copied()
    }
}
