//! Proves the test harness itself: the broker starts and takes topics, rustfs-kafka and
//! librdkafka (the independent client) both talk to it byte-exactly, with every
//! compression codec, and the database and process helpers do what they say.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{
    Broker, Consumed, OutMessage, TempDb, WorkerProcess, b64_decode, b64_encode,
    librdkafka_committed, librdkafka_consume, librdkafka_produce, produce, wait_until,
};
use rustfs_kafka::client::KafkaClient;

/// One message for `produce`: (partition, key, value, headers).
type Case<'a> = (
    Option<i32>,
    Option<&'a [u8]>,
    &'a [u8],
    &'a [(&'a str, &'a [u8])],
);

/// Generous: a librdkafka group join alone takes ~3 s on tansu.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn broker_starts_and_creates_a_topic_with_three_partitions() {
    let started = Instant::now();
    let broker = Broker::start();
    eprintln!(
        "broker ready on {} after {:?}",
        broker.addr(),
        started.elapsed()
    );
    broker.create_topic("provision-requests", 3);

    let mut client = KafkaClient::new(vec![broker.addr()]);
    let partitions = wait_until("the topic in the metadata", Duration::from_secs(10), || {
        client.load_metadata(&["provision-requests"]).ok()?;
        let topics = client.topics();
        Some(topics.partitions("provision-requests")?.len())
    });
    assert_eq!(partitions, 3);
}

#[test]
fn messages_produced_with_rustfs_kafka_are_consumed_byte_exact_by_librdkafka() {
    let broker = Broker::start();
    broker.create_topic("exact", 3);
    // (partition, key, value, headers); `None` lets the partitioner choose.
    let all_bytes: Vec<u8> = (0..=255).collect();
    let unicode = "gpu \u{1F680}".as_bytes();
    let large = vec![b'x'; 10_000];
    let cases: &[Case] = &[
        (Some(0), Some(b"key-0"), br#"{"request_id":"r-0"}"#, &[]),
        (Some(1), None, &all_bytes, &[("trace", b"\x00\xff\x01")]),
        (
            Some(2),
            Some(&[0, 159, 146, 150]),
            unicode,
            &[("a", b"1"), ("b", b"")],
        ),
        (Some(1), Some(b"k"), &large, &[]),
        (None, Some(b"by-key"), b"partitioner picks", &[]),
    ];
    let mut want: Vec<Consumed> = cases
        .iter()
        .map(|&(partition, key, value, headers)| {
            let (partition, offset) = produce(&broker, "exact", partition, key, value, headers);
            Consumed {
                partition,
                offset,
                key: key.map(<[u8]>::to_vec),
                value: Some(value.to_vec()),
                headers: headers
                    .iter()
                    .map(|&(name, v)| (name.to_owned(), Some(v.to_vec())))
                    .collect(),
            }
        })
        .collect();

    let started = Instant::now();
    let mut consumed = librdkafka_consume(&broker, "smoke", "exact", want.len(), CONSUME_TIMEOUT);
    eprintln!(
        "librdkafka joined, consumed {} and committed in {:?}",
        consumed.len(),
        started.elapsed()
    );
    consumed.sort_by_key(|m| (m.partition, m.offset));
    want.sort_by_key(|m| (m.partition, m.offset));
    assert_eq!(consumed, want);

    // The consumer committed the position after everything it read.
    let mut next = BTreeMap::new();
    for m in &consumed {
        let e = next.entry(m.partition).or_insert(0);
        *e = (*e).max(m.offset + 1);
    }
    let committed = librdkafka_committed(&broker, "smoke", "exact");
    for p in 0..3 {
        assert_eq!(
            committed[&p],
            next.get(&p).copied(),
            "committed offset of partition {p}"
        );
    }
}

#[test]
fn librdkafka_round_trips_every_compression_codec_through_tansu() {
    let broker = Broker::start();
    broker.create_topic("codecs", 3);
    // One produce call per codec, so each codec gets its own record batches; one
    // consumer group then reads them all (a group join costs ~3 s, so once, not 5 times).
    let mut want = Vec::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let sent: Vec<OutMessage> = (0..20u8)
            .map(|i| OutMessage {
                partition: Some(i32::from(i % 3)),
                key: Some(vec![i]),
                // Compressible and not: repeated text plus every byte value.
                value: Some([codec.repeat(50).into_bytes(), (0..=255).collect(), vec![i]].concat()),
                headers: vec![("codec".into(), Some(codec.into())), ("none".into(), None)],
            })
            .collect();
        let placed = librdkafka_produce(&broker, "codecs", codec, &sent);
        assert_eq!(placed.len(), sent.len(), "acknowledgements for {codec}");
        want.extend(
            sent.into_iter()
                .zip(placed)
                .map(|(m, (partition, offset))| Consumed {
                    partition,
                    offset,
                    key: m.key,
                    value: m.value,
                    headers: m.headers,
                }),
        );
    }

    let mut got = librdkafka_consume(&broker, "codecs", "codecs", want.len(), CONSUME_TIMEOUT);
    got.sort_by_key(|m| (m.partition, m.offset));
    want.sort_by_key(|m| (m.partition, m.offset));
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        let codec =
            String::from_utf8_lossy(w.headers[0].1.as_deref().unwrap_or_default()).into_owned();
        assert_eq!(
            g, w,
            "message at {}/{} produced with {codec}",
            w.partition, w.offset
        );
    }
}

#[test]
fn temp_db_inserts_pending_rows_like_the_backend() {
    let db = TempDb::new();
    assert_eq!(db.status_of("r-1"), None, "no file yet");
    assert!(db.count_by_status().is_empty());
    assert!(db.url().starts_with("sqlite:////"), "{}", db.url());

    db.insert_pending("r-1", "alice", 2, 4);
    db.insert_pending("r-2", "bob", 8, 1);
    assert_eq!(db.status_of("r-1").as_deref(), Some("pending"));
    assert_eq!(db.count_by_status().get("pending"), Some(&2));

    let row = db.row("r-2").expect("row r-2");
    assert_eq!(
        (row.user_id.as_str(), row.gpu_count, row.duration_hours),
        ("bob", 8, 1)
    );
    assert_eq!((row.kubeconfig, row.error_message), (None, None));
    // 'YYYY-MM-DD HH:MM:SS.ffffff'
    let shape: String = row
        .created_at
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999-99-99 99:99:99.999999", "{}", row.created_at);
    assert_eq!(row.created_at, row.updated_at);
}

#[test]
fn worker_process_captures_output_and_exit_status() {
    let mut worker = WorkerProcess::command().arg("--version").spawn();
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "--version exited with {status}: {:?}",
        worker.lines()
    );
}

#[test]
fn wait_until_returns_the_first_value_the_condition_yields() {
    let mut calls = 0;
    let value = wait_until("the third call", Duration::from_secs(5), || {
        calls += 1;
        (calls == 3).then_some(calls * 10)
    });
    assert_eq!(value, 30);
}

#[test]
#[should_panic(expected = "timed out after 50ms waiting for something that never happens")]
fn wait_until_panics_with_what_it_waited_for() {
    wait_until(
        "something that never happens",
        Duration::from_millis(50),
        || None::<()>,
    );
}

#[test]
fn base64_round_trips_every_length() {
    let data: Vec<u8> = (0..=255).collect();
    for len in 0..data.len() {
        assert_eq!(b64_decode(&b64_encode(&data[..len])), &data[..len]);
    }
    assert_eq!(b64_encode(b"hello"), "aGVsbG8=");
}
