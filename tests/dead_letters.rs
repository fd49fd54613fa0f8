//! Dead letters, end to end: the worker's own producer (the client crate's `Producer`) on
//! its dead-letter topic, checked from outside. librdkafka reads what the worker writes
//! (every byte, every header, the CreateTime, the partition of each key), a raw Fetch shows
//! each batch's header (codec, size, producer id and sequence), and a proxy that refuses or
//! rewrites Produce answers shows what the worker does with errors tansu never sends.
//! (The producer alone is tested in crates/blocking-kafka/tests/producer.rs.)
//!
//! Every test starts its own broker; every wait is a condition with a deadline.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blocking_kafka::partition_for_key;
use serde_json::Value;

use common::produce_faults::{
    Fault, MESSAGE_TOO_LARGE, POLICY_VIOLATION, ProduceFaults, REQUEST_TIMED_OUT,
};
use common::proxy::broker_behind_faulty_proxy;
use common::{
    Broker, OutMessage, TempDb, WorkerProcess, batch_headers, java_partitions, json_i64,
    librdkafka_committed, librdkafka_produce, librdkafka_read, produce, wait_until,
};

const TOPIC: &str = "provision-requests";
const DLQ: &str = "provision-requests.dlq";
const GROUP: &str = "producer-test-group";
/// A group join takes ~3 s on tansu; a few requests and dead letters a few more.
const JOIN_AND_WORK: Duration = Duration::from_secs(45);

// ------------------------------------------------------------------------------------
// Dead letters

#[test]
fn dead_letters_carry_every_header_and_create_time_are_gzipped_and_land_on_their_keys_java_partition()
 {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 2);
    broker.create_topic(DLQ, 3);
    broker.create_topic("java", 3);
    let db = TempDb::new();
    let bad: Vec<OutMessage> = (0..8)
        .map(|i| OutMessage {
            partition: Some(i % 2),
            key: Some(format!("bad-{i}").into_bytes()),
            // Valid JSON without gpu_count, padded so gzip has something to do.
            value: Some(
                format!(
                    r#"{{"request_id":"bad-{i}","user_id":"u","duration_hours":1,"note":"{}"}}"#,
                    "padding ".repeat(100)
                )
                .into_bytes(),
            ),
            ..OutMessage::default()
        })
        .collect();
    let placed = librdkafka_produce(&broker, TOPIC, "none", &bad);
    let before = now_ms();
    let mut worker = spawn_worker(&broker.addr(), &db, &[]);
    wait_until("every dead letter", JOIN_AND_WORK, || {
        (worker.count_lines(&format!("to {DLQ}: ")) == bad.len()).then_some(())
    });
    let after = now_ms();

    let read = librdkafka_read(&broker.addr(), "dlq-readers", DLQ, bad.len());
    let java = java_partitions(
        &broker,
        "java",
        &bad.iter()
            .map(|m| m.key.as_deref().unwrap())
            .collect::<Vec<_>>(),
    );
    for (i, (m, (partition, offset))) in bad.iter().zip(&placed).enumerate() {
        let d = read
            .iter()
            .find(|r| r.key == m.key)
            .unwrap_or_else(|| panic!("no dead letter for bad-{i}"));
        assert_eq!(d.value, m.value, "the original bytes, whole");
        assert_eq!(d.partition, java[i], "bad-{i} on its key's Java partition");
        let headers: Vec<(&str, &[u8])> = d
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(
            headers,
            [
                ("x-dlq-reason", &b"missing field \"gpu_count\""[..]),
                ("x-original-topic", TOPIC.as_bytes()),
                ("x-original-partition", partition.to_string().as_bytes()),
                ("x-original-offset", offset.to_string().as_bytes()),
            ]
        );
        assert_eq!(d.timestamp_type, 1, "CreateTime");
        assert!(
            (before..=after).contains(&d.timestamp),
            "timestamp {} is not the time of dead-lettering ({before}..{after})",
            d.timestamp
        );
    }
    for b in batch_headers(&broker.addr(), DLQ) {
        assert_eq!(b["codec"], "gzip", "{b}");
        assert!(json_i64(&b, "producer_id") >= 0, "idempotent: {b}");
    }
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn a_dead_letter_of_a_large_original_is_cut_to_the_size_limit_with_headers_saying_so() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    broker.create_topic(DLQ, 1);
    let db = TempDb::new();
    // 1.5 MB that neither parses nor compresses much: the default KAFKA_DLQ_MAX_BYTES
    // (1,000,000, the default max.message.bytes of a real broker) applies.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let original: Vec<u8> = (0..1_500_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as u8
        })
        .collect();
    let (_, offset) = produce(&broker, TOPIC, Some(0), Some(b"huge"), &original, &[]);
    let mut worker = spawn_worker(&broker.addr(), &db, &[]);
    let line = worker.wait_for_line(&format!("to {DLQ} (cut to "), JOIN_AND_WORK);
    assert!(line.contains("of 1500000 bytes"), "{line}");

    let batches = batch_headers(&broker.addr(), DLQ);
    assert_eq!(batches.len(), 1, "{batches:?}");
    let size = json_i64(&batches[0], "size");
    assert!(
        (990_000..=1_000_000).contains(&size),
        "the dead letter's batch is {size} bytes: at most the limit, and not far below it"
    );
    let read = librdkafka_read(&broker.addr(), "dlq-readers", DLQ, 1);
    let d = &read[0];
    let value = d.value.as_deref().expect("a value");
    assert!(
        original.starts_with(value),
        "the value is the original's beginning"
    );
    assert!(value.len() > 990_000, "{}", value.len());
    let header = |name: &str| {
        d.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
            .map(|v| String::from_utf8(v).expect("UTF-8 header"))
            .unwrap_or_else(|| panic!("no header {name}: {:?}", d.headers))
    };
    assert_eq!(header("x-dlq-truncated"), "true");
    assert_eq!(header("x-original-size"), "1500000");
    assert_eq!(header("x-original-offset"), offset.to_string());
    assert!(header("x-dlq-reason").contains("more than the limit"));
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn a_dead_letter_refused_for_good_is_retried_cut_down_then_logged_counted_and_skipped() {
    let faults = ProduceFaults::new(DLQ);
    let (broker, proxy) = broker_behind_faulty_proxy(&faults);
    broker.create_topic(TOPIC, 1);
    broker.create_topic(DLQ, 1);
    let db = TempDb::new();
    // Offsets 0..4 of partition 0: a message that is not JSON (and starts like a forged
    // log line), a valid request, and two more invalid messages.
    let bad = |id: &str, filler: &str| {
        format!(
            r#"{{"request_id":"{id}","user_id":"u","duration_hours":1,"note":"{}"}}"#,
            filler.repeat(2000)
        )
        .into_bytes()
    };
    let values = [
        format!("\n- ERROR - forged line\x1b[0m {}", "x".repeat(20_000)).into_bytes(),
        br#"{"request_id":"ok","user_id":"u","gpu_count":1,"duration_hours":1}"#.to_vec(),
        bad("refused-once", "yyyyyyyyyy"),
        bad("accepted", "z"),
    ];
    let messages: Vec<OutMessage> = values
        .iter()
        .map(|v| OutMessage {
            partition: Some(0),
            value: Some(v.clone()),
            ..OutMessage::default()
        })
        .collect();
    librdkafka_produce(&broker, TOPIC, "none", &messages);
    faults.plan(&[
        Fault::Refuse(MESSAGE_TOO_LARGE),
        Fault::Refuse(MESSAGE_TOO_LARGE),
        Fault::Refuse(MESSAGE_TOO_LARGE),
    ]);
    let metrics = free_addr();
    let mut worker = spawn_worker(
        &proxy.addr(),
        &db,
        &[("WORKER_THREADS", "1"), ("METRICS_ADDR", &metrics)],
    );

    // The full form refused: a clear error, then the cut-down form.
    let first = worker.wait_for_line(
        "Kafka refused the dead letter of partition 0 offset 0",
        JOIN_AND_WORK,
    );
    assert!(
        first.contains("MESSAGE_TOO_LARGE (error code 10)"),
        "{first}"
    );
    assert!(first.contains("cut to 4096 bytes"), "{first}");
    // The cut-down form refused too: logged with partition, offset, reason and escaped
    // first bytes, counted, skipped.
    let gave_up = worker.wait_for_line(
        "Giving up on the dead letter of partition 0 offset 0",
        JOIN_AND_WORK,
    );
    assert!(
        gave_up.contains("the message was invalid (message is not valid JSON"),
        "{gave_up}"
    );
    assert!(
        gave_up.contains(r#"its value starts "\n- ERROR - forged line\x1b[0m xxx"#),
        "{gave_up}"
    );
    assert!(gave_up.contains("(20027 bytes)"), "{gave_up}");
    assert!(
        !worker
            .lines()
            .iter()
            .any(|l| l.starts_with("- ERROR - forged")),
        "a dead letter's bytes forged a log line"
    );
    // The second one goes in its cut-down form, the third whole.
    worker.wait_for_line(
        &format!("Dead-lettered invalid message at partition 0 offset 2 to {DLQ} (cut to 4096 of"),
        JOIN_AND_WORK,
    );
    worker.wait_for_line(
        &format!("Dead-lettered invalid message at partition 0 offset 3 to {DLQ}: "),
        JOIN_AND_WORK,
    );
    let seen = faults.seen();
    assert_eq!(
        seen.iter().map(|(f, _)| *f).collect::<Vec<_>>(),
        [
            Fault::Refuse(MESSAGE_TOO_LARGE),
            Fault::Refuse(MESSAGE_TOO_LARGE),
            Fault::Refuse(MESSAGE_TOO_LARGE),
            Fault::Pass,
            Fault::Pass,
        ],
        "full, cut-down; full, cut-down (taken); full (taken)"
    );
    assert!(
        seen[1].1 < 4096 + 512,
        "the cut-down form is small: {seen:?}"
    );

    // Nothing stalls: the partition commits past all four.
    wait_until("the partition committed to its end", JOIN_AND_WORK, || {
        (librdkafka_committed(&broker, GROUP, TOPIC).get(&0) == Some(&Some(4))).then_some(())
    });
    let body = http_get(&metrics, "/metrics").expect("/metrics answers").1;
    assert_eq!(
        metric(&body, "provision_dead_letters_dropped_total"),
        Some(1.0)
    );
    assert_eq!(metric(&body, "provision_dead_lettered_total"), Some(2.0));

    // What reached the dead-letter topic: the cut-down form of the second, the third whole.
    let read = librdkafka_read(&proxy.addr(), "dlq-readers", DLQ, 2);
    let offsets: Vec<Vec<u8>> = read.iter().map(|r| r.header("x-original-offset")).collect();
    assert_eq!(offsets, [b"2".to_vec(), b"3".to_vec()]);
    let cut = &read[0];
    assert_eq!(cut.value.as_deref(), Some(&values[2][..4096]));
    assert_eq!(cut.header("x-dlq-truncated"), b"true");
    assert_eq!(
        cut.header("x-original-size"),
        values[2].len().to_string().into_bytes()
    );
    assert_eq!(read[1].value.as_deref(), Some(&values[3][..]));
    let codecs: Vec<Value> = batch_headers(&proxy.addr(), DLQ)
        .iter()
        .map(|b| b["codec"].clone())
        .collect();
    assert_eq!(
        codecs,
        ["none", "gzip"],
        "the cut-down form goes uncompressed"
    );
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn a_dead_letter_refused_policy_violation_with_a_throttle_time_is_retried_not_dropped() {
    // Azure Event Hubs over its quota answers POLICY_VIOLATION with a throttle time: the
    // dead letter waits and goes again; it is neither cut down nor given up on.
    let faults = ProduceFaults::new(DLQ);
    let (broker, proxy) = broker_behind_faulty_proxy(&faults);
    broker.create_topic(TOPIC, 1);
    broker.create_topic(DLQ, 1);
    let db = TempDb::new();
    librdkafka_produce(
        &broker,
        TOPIC,
        "none",
        &[OutMessage {
            partition: Some(0),
            value: Some(b"not json".to_vec()),
            ..OutMessage::default()
        }],
    );
    faults.plan(&[
        Fault::RefuseThrottled(POLICY_VIOLATION, 1_000),
        Fault::RefuseThrottled(POLICY_VIOLATION, 1_000),
    ]);
    let mut worker = spawn_worker(&proxy.addr(), &db, &[]);
    let failed = worker.wait_for_line("Could not dead-letter the message", JOIN_AND_WORK);
    assert!(failed.contains("POLICY_VIOLATION"), "{failed}");
    assert!(failed.contains("its offset stays uncommitted"), "{failed}");
    worker.wait_for_line(
        &format!("Dead-lettered invalid message at partition 0 offset 0 to {DLQ}: "),
        JOIN_AND_WORK,
    );
    wait_until("the offset committed past it", JOIN_AND_WORK, || {
        (librdkafka_committed(&broker, GROUP, TOPIC).get(&0) == Some(&Some(1))).then_some(())
    });
    assert_eq!(
        faults.seen().iter().map(|(f, _)| *f).collect::<Vec<_>>(),
        [
            Fault::RefuseThrottled(POLICY_VIOLATION, 1_000),
            Fault::RefuseThrottled(POLICY_VIOLATION, 1_000),
            Fault::Pass,
        ],
        "refused twice over the quota, then taken whole"
    );
    assert_eq!(worker.count_lines("Giving up on the dead letter"), 0);
    assert_eq!(
        worker.count_lines("for good"),
        0,
        "never taken for a refusal"
    );
    let read = librdkafka_read(&proxy.addr(), "dlq-readers", DLQ, 1);
    assert_eq!(read[0].value.as_deref(), Some(&b"not json"[..]));
    assert_eq!(
        batch_headers(&proxy.addr(), DLQ).len(),
        1,
        "one dead letter"
    );
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn an_acknowledgement_lost_after_the_write_holds_the_offset_and_leaves_one_dead_letter() {
    let faults = ProduceFaults::new(DLQ);
    let (broker, proxy) = broker_behind_faulty_proxy(&faults);
    broker.create_topic(TOPIC, 1);
    broker.create_topic(DLQ, 1);
    let db = TempDb::new();
    librdkafka_produce(
        &broker,
        TOPIC,
        "none",
        &[OutMessage {
            partition: Some(0),
            value: Some(b"not json".to_vec()),
            ..OutMessage::default()
        }],
    );
    // The broker writes the dead letter, and its answer arrives as REQUEST_TIMED_OUT.
    faults.plan(&[Fault::RewriteAnswer(REQUEST_TIMED_OUT)]);
    let mut worker = spawn_worker(&proxy.addr(), &db, &[]);
    let failed = worker.wait_for_line("Could not dead-letter the message", JOIN_AND_WORK);
    assert!(failed.contains("REQUEST_TIMED_OUT"), "{failed}");
    assert!(failed.contains("its offset stays uncommitted"), "{failed}");
    worker.wait_for_line(
        &format!("Dead-lettered invalid message at partition 0 offset 0 to {DLQ}"),
        JOIN_AND_WORK,
    );
    wait_until("the offset committed past it", JOIN_AND_WORK, || {
        (librdkafka_committed(&broker, GROUP, TOPIC).get(&0) == Some(&Some(1))).then_some(())
    });
    // The retry resent the same batch; the broker knew it (same producer id and
    // sequence), so the dead-letter topic holds it once.
    assert_eq!(faults.seen().len(), 2, "{:?}", faults.seen());
    let batches = batch_headers(&proxy.addr(), DLQ);
    assert_eq!(batches.len(), 1, "one dead letter, not two: {batches:?}");
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn a_missing_dead_letter_topic_is_warned_at_start_named_by_healthz_and_waited_for() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let db = TempDb::new();
    let metrics = free_addr();
    let mut worker = spawn_worker(&broker.addr(), &db, &[("METRICS_ADDR", &metrics)]);
    let warning = worker.wait_for_line(
        &format!("Dead-letter topic {DLQ} does not exist"),
        JOIN_AND_WORK,
    );
    assert!(warning.contains("WARNING"), "{warning}");
    assert!(
        warning.contains(&format!("--create --topic {DLQ}")),
        "{warning}"
    );
    assert!(warning.contains("KAFKA_DLQ_TOPIC"), "{warning}");
    worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);

    librdkafka_produce(
        &broker,
        TOPIC,
        "none",
        &[OutMessage {
            partition: Some(0),
            value: Some(b"not json".to_vec()),
            ..OutMessage::default()
        }],
    );
    let unhealthy = wait_until(
        "/healthz to name the waiting dead letter",
        JOIN_AND_WORK,
        || http_get(&metrics, "/healthz").filter(|(status, _)| *status == 503),
    );
    assert!(
        unhealthy.1.contains(&format!(
            "dead letter for partition 0 offset 0 waiting: topic {DLQ} does not exist"
        )),
        "{unhealthy:?}"
    );
    // The offset is held while the dead letter waits.
    assert_eq!(
        librdkafka_committed(&broker, GROUP, TOPIC).get(&0),
        Some(&Some(0)),
        "committed past a dead letter that was not sent"
    );

    broker.create_topic(DLQ, 1);
    wait_until("/healthz to be fine again", JOIN_AND_WORK, || {
        http_get(&metrics, "/healthz").filter(|(status, _)| *status == 200)
    });
    worker.wait_for_line(
        &format!("Dead-lettered invalid message at partition 0 offset 0 to {DLQ}"),
        Duration::ZERO,
    );
    wait_until("the offset committed past it", JOIN_AND_WORK, || {
        (librdkafka_committed(&broker, GROUP, TOPIC).get(&0) == Some(&Some(1))).then_some(())
    });
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).success());
}

// ------------------------------------------------------------------------------------
// The operator commands

#[test]
fn check_fails_on_a_missing_dead_letter_topic_alone() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 3);
    let db = TempDb::new();
    let out = tool(&broker.addr(), &db, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failed.len(), 1, "{stdout}");
    assert!(
        failed[0].starts_with(&format!(
            "FAIL dead-letter topic: topic {DLQ} does not exist; create it"
        )),
        "{stdout}"
    );
    assert!(
        failed[0].contains("holds its partition's offset"),
        "{stdout}"
    );
}

#[test]
fn send_publishes_keyed_by_request_id_stamped_now_and_gzipped_and_the_latency_is_measured() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 3);
    broker.create_topic(DLQ, 1);
    broker.create_topic("java", 3);
    let db = TempDb::new();
    let metrics = free_addr();
    let mut worker = spawn_worker(&broker.addr(), &db, &[("METRICS_ADDR", &metrics)]);
    worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);

    let before = now_ms();
    // A long, repetitive user id gives gzip something to shrink.
    let user = "gpu-user-".repeat(25);
    let out = tool(
        &broker.addr(),
        &db,
        &["send", "--user", &user, "--gpus", "2", "--hours", "1"],
    );
    let after = now_ms();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    wait_until("the sent request completed", JOIN_AND_WORK, || {
        (db.status_of(&id).as_deref() == Some("completed")).then_some(())
    });
    // Its end-to-end latency is measured from the time `send` stamped on it.
    let body = wait_until("its end-to-end latency", Duration::from_secs(10), || {
        let body = http_get(&metrics, "/metrics")?.1;
        (metric(&body, "provision_end_to_end_seconds_count") == Some(1.0)).then_some(body)
    });
    assert_eq!(
        metric(&body, "provision_end_to_end_seconds_bucket{le=\"60\"}"),
        Some(1.0),
        "{body}"
    );

    let read = librdkafka_read(&broker.addr(), "send-readers", TOPIC, 1);
    let m = &read[0];
    assert_eq!(m.key.as_deref(), Some(id.as_bytes()), "keyed by request id");
    let java = java_partitions(&broker, "java", &[id.as_bytes()]);
    assert_eq!(m.partition, java[0], "on the request id's Java partition");
    assert_eq!(
        m.partition,
        partition_for_key(id.as_bytes(), 3).0,
        "and on ours"
    );
    assert_eq!(m.timestamp_type, 1, "CreateTime");
    assert!(
        (before..=after).contains(&m.timestamp),
        "{} not in {before}..{after}",
        m.timestamp
    );
    let batches = batch_headers(&broker.addr(), TOPIC);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0]["codec"], "gzip", "{}", batches[0]);
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).success());
}

// ------------------------------------------------------------------------------------
// Helpers

/// The worker against `bootstrap` with the dead-letter topic on and test-sized timings;
/// `extra` adds or overrides variables.
fn spawn_worker(bootstrap: &str, db: &TempDb, extra: &[(&str, &str)]) -> WorkerProcess {
    let url = db.url();
    let mut cmd = WorkerProcess::command().envs(&[
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap),
        ("KAFKA_TOPIC", TOPIC),
        ("KAFKA_DLQ_TOPIC", DLQ),
        ("KAFKA_GROUP_ID", GROUP),
        ("DATABASE_URL", &url),
        ("MOCK_PROVISION_DELAY_SECONDS", "0.1"),
        ("WORKER_THREADS", "2"),
        ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_HEARTBEAT_INTERVAL_MS", "500"),
        ("COMMIT_INTERVAL_MS", "100"),
        ("KAFKA_STARTUP_TIMEOUT_SECONDS", "20"),
        ("SHUTDOWN_TIMEOUT_SECONDS", "10"),
    ]);
    for (k, v) in extra {
        cmd = cmd.env(k, v);
    }
    cmd.spawn()
}

/// Runs `provision-worker ARGS` to completion against `bootstrap` and `db`.
fn tool(bootstrap: &str, db: &TempDb, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("a working directory");
    let out = Command::new(env!("CARGO_BIN_EXE_provision-worker"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", db.url())
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("KAFKA_STARTUP_TIMEOUT_SECONDS", "2")
        .args(args)
        .current_dir(dir.path())
        .output()
        .expect("run provision-worker");
    eprintln!(
        "$ provision-worker {}\n{}{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `GET path` on the metrics listener: (status, body); `None` while nothing answers.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The value of the sample named exactly `series` (name and labels).
fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("its address").to_string()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}
