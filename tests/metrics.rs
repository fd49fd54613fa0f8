//! The metrics listener (`METRICS_ADDR`), through a real HTTP client (Python's urllib):
//! `/healthz` follows group membership and broker outages, `/metrics` counts requests by
//! final status with latencies, committed offsets, lag, dead letters and reconnects.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::proxy::broker_behind_proxy;
use common::{Broker, OutMessage, TempDb, WorkerProcess, librdkafka_produce, wait_until};

const TOPIC: &str = "provision-requests";
const DLQ: &str = "provision-requests.dlq";

#[test]
fn healthz_and_metrics_follow_the_worker_through_work_and_an_outage() {
    let (broker, proxy) = broker_behind_proxy();
    broker.create_topic(TOPIC, 3);
    broker.create_topic(DLQ, 1);
    let db = TempDb::new();
    let addr = free_addr();
    let mut worker = WorkerProcess::spawn(&[
        ("DATABASE_URL", db.url().as_str()),
        ("KAFKA_BOOTSTRAP_SERVERS", proxy.addr().as_str()),
        ("METRICS_ADDR", addr.as_str()),
        ("MOCK_PROVISION_DELAY_SECONDS", "0.1"),
        ("WORKER_THREADS", "2"),
        ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_HEARTBEAT_INTERVAL_MS", "300"),
        ("COMMIT_INTERVAL_MS", "100"),
    ]);

    // The listener is up before Kafka: a join takes seconds, so the first answer is 503.
    let first = wait_until("the listener to answer", Duration::from_secs(20), || {
        get(&addr, "/healthz")
    });
    assert_eq!(first.status, 503, "{first:?}");
    assert!(
        first.body.contains("not a member of consumer group"),
        "{first:?}"
    );
    assert!(first.content_type.starts_with("text/plain"), "{first:?}");
    let healthy = wait_until("/healthz to say 200", Duration::from_secs(30), || {
        get(&addr, "/healthz").filter(|r| r.status == 200)
    });
    assert!(healthy.body.contains("database reachable"), "{healthy:?}");

    // Two valid requests and one invalid message; librdkafka stamps each with its create
    // time, which the end-to-end latency starts from.
    let valid = |id: &str, partition| OutMessage {
        partition: Some(partition),
        value: Some(
            format!(r#"{{"request_id":"{id}","user_id":"u","gpu_count":1,"duration_hours":1}}"#)
                .into_bytes(),
        ),
        ..OutMessage::default()
    };
    let invalid = OutMessage {
        partition: Some(2),
        value: Some(b"not json".to_vec()),
        ..OutMessage::default()
    };
    librdkafka_produce(
        &broker,
        TOPIC,
        "none",
        &[valid("m-1", 0), valid("m-2", 1), invalid],
    );

    let text = wait_until(
        "three jobs and a dead letter",
        Duration::from_secs(30),
        || {
            let m = get(&addr, "/metrics")?;
            let done = value(&m.body, "provision_requests_total{status=\"completed\"}")
                == Some(2.0)
                && value(&m.body, "provision_requests_total{status=\"invalid\"}") == Some(1.0)
                && value(&m.body, "provision_dead_lettered_total") == Some(1.0);
            done.then_some(m)
        },
    );
    assert!(
        text.content_type.contains("version=0.0.4"),
        "{}",
        text.content_type
    );
    let body = &text.body;
    assert_eq!(
        value(body, "provision_requests_total{status=\"failed\"}"),
        Some(0.0)
    );
    assert_eq!(value(body, "provision_processing_seconds_count"), Some(3.0));
    assert_eq!(value(body, "provision_end_to_end_seconds_count"), Some(3.0));
    assert_eq!(
        value(body, "provision_processing_seconds_bucket{le=\"+Inf\"}"),
        Some(3.0)
    );
    assert!(value(body, "provision_processing_seconds_sum").unwrap() >= 0.2);
    assert_eq!(value(body, "provision_requests_in_flight"), Some(0.0));
    assert_eq!(value(body, "provision_rebalances_total"), Some(1.0));
    assert_eq!(value(body, "provision_group_member"), Some(1.0));
    assert_eq!(db.status_of("m-1").as_deref(), Some("completed"));

    // Offsets are committed after the work; log-end offsets (for lag) come every 5 s.
    wait_until(
        "committed offsets and zero lag",
        Duration::from_secs(20),
        || {
            let m = get(&addr, "/metrics")?;
            (0..3)
                .all(|p| {
                    let labels = format!("{{topic=\"{TOPIC}\",partition=\"{p}\"}}");
                    value(&m.body, &format!("provision_committed_offset{labels}")) == Some(1.0)
                        && value(&m.body, &format!("provision_log_end_offset{labels}")) == Some(1.0)
                        && value(&m.body, &format!("provision_consumer_lag{labels}")) == Some(0.0)
                })
                .then_some(())
        },
    );

    // The broker goes away: the next heartbeat fails and /healthz says why.
    proxy.cut();
    let down = wait_until(
        "/healthz to report the outage",
        Duration::from_secs(20),
        || get(&addr, "/healthz").filter(|r| r.status == 503),
    );
    assert!(down.body.contains("heartbeat failed"), "{down:?}");
    // And it keeps saying so while the outage lasts: a pass of the poller with no heartbeat
    // due must not clear the failure (it did, so /healthz flapped back to 200 within
    // milliseconds of each failed heartbeat). Five heartbeat intervals of watching.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(1500) {
        let during = get(&addr, "/healthz").expect("/healthz during the outage");
        assert_eq!(
            during.status,
            503,
            "/healthz said healthy {:?} into a broker outage: {during:?}",
            watch.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy.restore();
    wait_until("/healthz to recover", Duration::from_secs(30), || {
        get(&addr, "/healthz").filter(|r| r.status == 200)
    });
    let after = get(&addr, "/metrics").expect("metrics after the outage");
    assert!(
        value(&after.body, "provision_kafka_reconnects_total").unwrap() >= 1.0,
        "{}",
        after.body
    );

    // Only the two routes, only GET (and HEAD).
    assert_eq!(get(&addr, "/nope").map(|r| r.status), Some(404));
    assert_eq!(
        request(&addr, "/metrics", "POST").map(|r| r.status),
        Some(405)
    );
    let head = request(&addr, "/metrics", "HEAD").expect("HEAD /metrics");
    assert_eq!((head.status, head.body.as_str()), (200, ""));

    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn a_metrics_port_in_use_stops_the_worker_with_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let db = TempDb::new();
    let mut worker = WorkerProcess::spawn(&[
        ("DATABASE_URL", db.url().as_str()),
        ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1"),
        ("METRICS_ADDR", addr.as_str()),
    ]);
    let status = worker.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let line = worker.wait_for_line("cannot serve metrics", Duration::ZERO);
    assert!(line.contains(&format!("METRICS_ADDR={addr}")), "{line}");
    assert!(line.contains("pick a free port"), "{line}");
}

#[test]
fn a_slow_client_does_not_delay_another_healthz_probe_and_is_cut_off_at_the_deadline() {
    let (_broker, _db, worker, addr) = worker_with_metrics();

    // A client that sends its request one byte every 1.5 s: every read finishes well within
    // any per-read timeout, so only a deadline on the whole request stops it.
    let slow = TcpStream::connect(&addr).expect("connect the slow client");
    let connected = Instant::now();
    let mut writer = slow.try_clone().expect("clone the slow client");
    let dripping = thread::spawn(move || {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" {
            if writer.write_all(&[*b]).is_err() {
                return; // cut off
            }
            thread::sleep(Duration::from_millis(1500));
        }
    });
    // The listener takes the slow client first.
    thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let probe = raw_get(&addr, "/healthz", Duration::from_secs(10));
    let took = started.elapsed();
    eprintln!("the second /healthz answered in {took:?}: {probe:?}");
    let (status, body) = probe.expect("the second probe gets an answer");
    assert!(
        matches!(status, 200 | 503) && (body.starts_with("ok") || body.starts_with("unhealthy")),
        "{status} {body}"
    );
    assert!(
        took <= Duration::from_secs(1),
        "a client sending a byte every 1.5 s delayed a second /healthz by {took:?}"
    );

    // The slow client itself is answered 408 and cut off once its deadline passes.
    let mut reader = slow;
    reader
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut answer = Vec::new();
    let _ = reader.read_to_end(&mut answer);
    let cut_after = connected.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "the slow client got {answer:?} after {cut_after:?}"
    );
    assert!(
        cut_after <= Duration::from_secs(4),
        "the slow client held a connection for {cut_after:?}"
    );
    dripping.join().expect("the dripping thread");
    drop(worker);
}

#[test]
fn a_connection_flood_keeps_the_listener_bounded_and_it_answers_once_the_deadline_passes() {
    let (_broker, _db, worker, addr) = worker_with_metrics();
    // Membership first: the worker starts no thread after that, so its count is a baseline.
    wait_until("/healthz to say 200", Duration::from_secs(30), || {
        raw_get(&addr, "/healthz", Duration::from_secs(5)).filter(|(s, _)| *s == 200)
    });
    let (threads_before, rss_before) = threads_and_rss_kib(worker.pid());

    // 200 clients that connect and send nothing, and stay.
    let flood_started = Instant::now();
    let flood: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert!(flood.len() >= 150, "only {} connections", flood.len());
    thread::sleep(Duration::from_millis(500));
    let (threads_during, rss_during) = threads_and_rss_kib(worker.pid());
    eprintln!(
        "threads {threads_before} -> {threads_during}, RSS {rss_before} -> {rss_during} KiB, {} connections",
        flood.len()
    );
    assert!(
        threads_during <= threads_before,
        "the flood started threads: {threads_before} -> {threads_during}"
    );
    assert!(
        rss_during <= rss_before + 4096,
        "the flood grew the worker by {} KiB",
        rss_during - rss_before
    );

    // Past the per-request deadline, with the flood's connections still open, a probe is
    // answered at once.
    thread::sleep(Duration::from_millis(2500).saturating_sub(flood_started.elapsed()));
    let started = Instant::now();
    let probe = raw_get(&addr, "/healthz", Duration::from_secs(10));
    let took = started.elapsed();
    eprintln!("/healthz during the flood answered in {took:?}: {probe:?}");
    assert_eq!(probe.map(|(s, _)| s), Some(200));
    assert!(took <= Duration::from_secs(1), "took {took:?}");
    drop(flood);
    drop(worker);
}

/// A broker with the topic, a database, and the worker serving metrics on the returned
/// address, once the listener answers.
fn worker_with_metrics() -> (Broker, TempDb, WorkerProcess, String) {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    broker.create_topic(DLQ, 1);
    let db = TempDb::new();
    let addr = free_addr();
    let worker = WorkerProcess::spawn(&[
        ("DATABASE_URL", db.url().as_str()),
        ("KAFKA_BOOTSTRAP_SERVERS", broker.addr().as_str()),
        ("METRICS_ADDR", addr.as_str()),
        ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_HEARTBEAT_INTERVAL_MS", "300"),
    ]);
    wait_until("the listener to answer", Duration::from_secs(20), || {
        raw_get(&addr, "/healthz", Duration::from_secs(5))
    });
    (broker, db, worker, addr)
}

/// GET `path` over a plain socket, with `timeout` for the whole answer: (status, body).
fn raw_get(addr: &str, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// The process's thread count and resident memory (KiB), from /proc.
fn threads_and_rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("Threads:"), field("VmRSS:"))
}

/// One HTTP answer.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: String,
    body: String,
}

fn get(addr: &str, path: &str) -> Option<Response> {
    request(addr, path, "GET")
}

/// Sends one request with Python's urllib; `None` when nothing answered (not listening yet).
fn request(addr: &str, path: &str, method: &str) -> Option<Response> {
    const CLIENT: &str = r#"
import sys, urllib.request, urllib.error
req = urllib.request.Request("http://" + sys.argv[1] + sys.argv[2], method=sys.argv[3])
try:
    r = urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    r = e
except OSError as e:
    print("unreachable:", e, file=sys.stderr)
    sys.exit(3)
sys.stdout.write("%d\n%s\n" % (r.status, r.headers.get("Content-Type", "")))
sys.stdout.write(r.read().decode())
"#;
    let out = Command::new("python3")
        .args(["-c", CLIENT, addr, path, method])
        .output()
        .expect("run python3");
    if out.status.code() == Some(3) {
        return None;
    }
    assert!(
        out.status.success(),
        "the HTTP client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 answer");
    let mut parts = text.splitn(3, '\n');
    let status = parts.next()?.parse().expect("a status code");
    let content_type = parts.next()?.to_owned();
    let body = parts.next().unwrap_or_default().to_owned();
    Some(Response {
        status,
        content_type,
        body,
    })
}

/// The value of the sample named exactly `series` (name plus labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.parse().ok()
    })
}

/// "127.0.0.1:PORT" for a port that was free a moment ago.
fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("its address").to_string()
}
