//! The metrics listener (`METRICS_ADDR`), through a real HTTP client (Python's urllib):
//! `/healthz` follows group membership and broker outages, `/metrics` counts requests by
//! final status with latencies, committed offsets, lag, dead letters and reconnects.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::proxy::broker_behind_proxy;
use common::{OutMessage, TempDb, WorkerProcess, librdkafka_produce, wait_until};

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
