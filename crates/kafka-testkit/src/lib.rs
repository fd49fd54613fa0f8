//! The test harness the worker's tests and the Kafka client's tests share.
//!
//! - [`Broker`]: a private tansu broker on a free port, killed when dropped.
//! - [`produce`]: one message through rustfs-kafka; [`librdkafka_produce`],
//!   [`librdkafka_consume`], [`librdkafka_read`] and [`librdkafka_committed`]: the independent
//!   client (`interop/kafka_tool.py`, on confluent-kafka) for interoperability checks;
//!   [`java_partitions`] (where the Java client puts keys) and [`batch_headers`] (each
//!   stored batch's header, `interop/batch_headers.py`).
//! - [`proxy`]: TCP proxies that cut, freeze or refuse connections, and one that reads Kafka
//!   frames to refuse or rewrite Produce answers ([`produce_faults`]).
//! - [`cluster`]: one tansu presented as a cluster of N brokers (a Kafka-aware proxy on N
//!   ports rewriting Metadata and FindCoordinator, refusing requests at the wrong broker),
//!   with per-broker cut, freeze, delay and throttle, leader and coordinator moves; with
//!   [`cluster::Cluster::start_with_kafka_groups`] it also keeps consumer groups by
//!   Kafka's rules where tansu's differ (`cluster/groups.rs`).
//! - [`legacy`]: message sets in format v0/v1, which the cluster serves in Fetch answers.
//! - [`member`]: a long-lived librdkafka group member (`kafka_tool.py member`) that reports
//!   its assignments, revocations and the messages it processed.
//! - [`raw`]: one typed request on a bare connection, to read one answer's exact fields.
//! - [`secure`]: certificates made at test time, stunnel (TLS, mutual TLS) and a SASL front
//!   (`interop/sasl_front.py`, SCRAM by Python's scramp) in front of tansu.
//! - [`hostile_batch`]: record batches that expand to hundreds of megabytes.
//! - [`wait_until`]: every wait in a test is a condition with a deadline, never a sleep.
//!
//! A missing broker binary, Python package or stunnel fails the tests with a message saying
//! what to install; nothing here skips a test. The Python packages are listed in the
//! repository's `tests/requirements.txt` (`scripts/test.sh` installs them). The crate's
//! README.md is the map, and the reference for the fake cluster.
pub mod cluster;
pub mod hostile_batch;
pub mod latency;
pub mod legacy;
pub mod member;
pub mod produce_faults;
pub mod proxy;
pub mod raw;
pub mod secure;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rustfs_kafka::producer::{Headers, Producer, Record, RequiredAcks};
use serde_json::Value;

/// How often [`wait_until`] and the other waits re-check their condition.
pub const POLL: Duration = Duration::from_millis(20);

/// The repository root (the workspace's `Cargo.toml`, `scripts/`, `tests/`).
pub fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        // This crate lives in <root>/crates/kafka-testkit.
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        here.ancestors()
            .nth(2)
            .unwrap_or_else(|| panic!("{} has no grandparent", here.display()))
            .to_path_buf()
    })
}

/// One of the Python programs in this crate's `interop/` directory.
pub fn interop_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(name)
}

/// Polls `f` every [`POLL`] until it returns `Some`, and returns that value.
///
/// Panics with `what` if `deadline` passes first.
pub fn wait_until<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = f() {
            return value;
        }
        if start.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        thread::sleep(POLL);
    }
}

// ------------------------------------------------------------------------------------
// The broker

/// The tansu binary: `$TANSU_BIN`, or whatever `scripts/kafka-up.sh --path` provides
/// (the cached download, fetched on first use).
///
/// Panics if neither works: a test that needs a broker must fail without one.
pub fn tansu_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("TANSU_BIN").filter(|b| !b.is_empty()) {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "TANSU_BIN={} is not a file; point it at a tansu binary or unset it \
                 so that scripts/kafka-up.sh --path downloads one",
                bin.display()
            );
            return bin;
        }
        let script = repo_root().join("scripts/kafka-up.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("--path")
            .output()
            .unwrap_or_else(|e| panic!("could not run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} --path failed ({}), so there is no broker for the tests; fix the error \
             below or set TANSU_BIN to a tansu binary:\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        PathBuf::from(path)
    })
    .clone()
}

/// A private tansu broker (in-memory storage) listening on 127.0.0.1:`port`.
///
/// Every test starts its own, so tests never see each other's topics, messages or
/// consumer groups. Dropping it kills the process; when a test panics, the last lines
/// of the broker's log are printed first.
pub struct Broker {
    pub port: u16,
    /// The broker process; killed and reaped in `Drop`.
    child: Child,
    /// The broker's stdout and stderr, inside `_dir`.
    log: PathBuf,
    /// Holds the log file; removed when the broker is dropped.
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker on a free port and returns once it accepts connections.
    ///
    /// Panics, showing the broker's log, if it isn't ready within 30 seconds.
    pub fn start() -> Broker {
        Broker::launch(None)
    }

    /// Like [`Broker::start`], but the broker tells clients (in metadata and coordinator
    /// answers) to connect to 127.0.0.1:`port` instead of its own port: put a
    /// [`proxy::Proxy`] there and every connection after bootstrap goes through it.
    pub fn start_advertising(port: u16) -> Broker {
        Broker::launch(Some(port))
    }

    fn launch(advertised_port: Option<u16>) -> Broker {
        // Within one test binary, starts are serialized: between dropping the probe
        // listener that found a free port and tansu binding it, another test could pick
        // the same port. Starting takes ~10 ms, so this costs nothing. (Across processes
        // the same race is caught below: the loser exits with "Address in use" and is
        // retried on another port.)
        static START: Mutex<()> = Mutex::new(());
        let _serial = START
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());

        let bin = tansu_bin();
        let dir = tempfile::Builder::new()
            .prefix("tansu-")
            .tempdir()
            .expect("create a temporary directory for the broker log");
        let log = dir.path().join("broker.log");
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let port = free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let advertised = format!("tcp://127.0.0.1:{}", advertised_port.unwrap_or(port));
            let log_file = File::create(&log).expect("create the broker log");
            let mut cmd = Command::new(&bin);
            cmd.args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "memory://tansu/"]);
            let mut child = clean_env(&mut cmd)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("clone the broker log handle"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("could not start {}: {e}", bin.display()));

            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait().expect("poll the broker process") {
                    let text = read_lossy(&log);
                    if attempt < ATTEMPTS && text.contains("Address in use") {
                        break; // Lost the port race: try another port.
                    }
                    panic!("tansu exited during start-up ({status}); its log:\n{text}");
                }
                // "ready in" is printed once the listener is bound. Checking for it as
                // well as the connect makes sure the connect reached *this* broker and
                // not another one that won a race for the same port.
                if TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && read_lossy(&log).contains("ready in")
                {
                    return Broker {
                        port,
                        child,
                        log,
                        _dir: dir,
                    };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "tansu did not answer on 127.0.0.1:{port} within 30s; its log:\n{}",
                        read_lossy(&log)
                    );
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
        unreachable!("every attempt either returns, retries or panics")
    }

    /// "127.0.0.1:PORT": the bootstrap address for clients.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `name` with `partitions` partitions; panics if tansu refuses.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let mut cmd = Command::new(tansu_bin());
        cmd.args(["topic", "create", name, "--partitions"])
            .arg(partitions.to_string())
            .arg("--broker")
            .arg(format!("tcp://{}", self.addr()));
        let out = clean_env(&mut cmd)
            .env("NO_COLOR", "1")
            .output()
            .expect("run tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Everything the broker has logged so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- last lines of the broker log ({}):\n{}",
                self.addr(),
                tail(&self.log(), 40)
            );
        }
    }
}

// ------------------------------------------------------------------------------------
// Producing with rustfs-kafka

/// Produces one message with rustfs-kafka (acks=all) and returns where it landed:
/// (partition, offset).
///
/// `partition: None` lets the default partitioner choose (by key hash when there is a
/// key). Note rustfs-kafka sends an empty key or value as null, and refuses two headers
/// with the same name.
pub fn produce(
    broker: &Broker,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&str, &[u8])],
) -> (i32, i64) {
    let mut producer = Producer::from_hosts(vec![broker.addr()])
        .with_required_acks(RequiredAcks::All)
        .with_ack_timeout(Duration::from_secs(10))
        .with_client_id("test-harness".to_owned())
        .create()
        .unwrap_or_else(|e| panic!("create a rustfs-kafka producer for {}: {e}", broker.addr()));
    let mut hdrs = Headers::new();
    for (name, value) in headers {
        hdrs.insert(*name, value);
    }
    let record = Record {
        key: key.unwrap_or_default(),
        value,
        topic,
        partition: partition.unwrap_or(-1),
        headers: hdrs,
    };
    let confirms = producer
        .send_all(std::slice::from_ref(&record))
        .unwrap_or_else(|e| panic!("produce to {topic} on {}: {e}", broker.addr()));
    let confirm = confirms
        .iter()
        .flat_map(|t| &t.partition_confirms)
        .next()
        .unwrap_or_else(|| panic!("produce to {topic}: the broker sent no acknowledgement"));
    match confirm.offset {
        Ok(offset) => (confirm.partition, offset),
        Err(code) => panic!(
            "produce to {topic} partition {}: broker error {code:?}",
            confirm.partition
        ),
    }
}

// ------------------------------------------------------------------------------------
// The independent client: librdkafka via interop/kafka_tool.py

/// Runs `interop/kafka_tool.py ARGS` with `stdin` and returns its stdout.
///
/// Panics with the tool's stderr if it fails (including when confluent-kafka isn't
/// installed: `python3 -m pip install -r tests/requirements.txt`).
pub fn python_tool(args: &[&str], stdin: &[u8]) -> String {
    let script = interop_script("kafka_tool.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut child = Command::new(&python)
        .arg(&script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {python} {}: {e}", script.display()));
    // Writes stdin from its own thread so a large input can't deadlock against a full
    // stdout pipe.
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    let writer = thread::spawn(move || pipe.write_all(&input));
    let out = child.wait_with_output().expect("wait for kafka_tool.py");
    let written = writer.join().expect("stdin writer thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kafka_tool.py {} failed ({}):\n{stderr}\n(if confluent_kafka is missing: \
         python3 -m pip install -r tests/requirements.txt)",
        args.join(" "),
        out.status
    );
    written.expect("write kafka_tool.py's stdin");
    for line in stderr.lines() {
        eprintln!("[kafka_tool] {line}");
    }
    String::from_utf8(out.stdout).expect("kafka_tool.py prints UTF-8")
}

/// A message for [`librdkafka_produce`].
#[derive(Clone, Debug, Default)]
pub struct OutMessage {
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// A message as a librdkafka consumer received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Produces `messages` with librdkafka (acks=all) using `compression` ("none", "gzip",
/// "snappy", "lz4" or "zstd"); returns each message's (partition, offset), in order.
pub fn librdkafka_produce(
    broker: &Broker,
    topic: &str,
    compression: &str,
    messages: &[OutMessage],
) -> Vec<(i32, i64)> {
    let mut input = String::new();
    for m in messages {
        let headers: Vec<Value> = m
            .headers
            .iter()
            .map(|(name, value)| serde_json::json!([name, value.as_deref().map(b64_encode)]))
            .collect();
        let mut line = serde_json::json!({
            "key": m.key.as_deref().map(b64_encode),
            "value": m.value.as_deref().map(b64_encode),
            "headers": headers,
        });
        if let Some(p) = m.partition {
            line["partition"] = p.into();
        }
        input.push_str(&line.to_string());
        input.push('\n');
    }
    let addr = broker.addr();
    let args = [
        "produce",
        "--bootstrap",
        &addr,
        "--topic",
        topic,
        "--compression",
        compression,
    ];
    python_tool(&args, input.as_bytes())
        .lines()
        .map(|line| {
            let v = parse_json(line);
            (json_i64(&v, "partition") as i32, json_i64(&v, "offset"))
        })
        .collect()
}

/// Joins consumer group `group` with librdkafka, reads exactly `count` messages of
/// `topic` (from the earliest offset where the group has committed none), commits, and
/// leaves the group. Panics if they don't all arrive within `timeout`.
///
/// Joining a group takes about 3 s on tansu (half the 6 s session timeout).
pub fn librdkafka_consume(
    broker: &Broker,
    group: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    librdkafka_read_within(&broker.addr(), group, topic, count, timeout)
        .into_iter()
        .map(|r| Consumed {
            partition: r.partition,
            offset: r.offset,
            key: r.key,
            value: r.value,
            headers: r.headers,
        })
        .collect()
}

/// The offsets `group` has committed for `topic`, by partition (`None`: nothing
/// committed), as librdkafka reads them.
pub fn librdkafka_committed(
    broker: &Broker,
    group: &str,
    topic: &str,
) -> BTreeMap<i32, Option<i64>> {
    let addr = broker.addr();
    let args = [
        "committed",
        "--bootstrap",
        &addr,
        "--group",
        group,
        "--topic",
        topic,
    ];
    let out = python_tool(&args, b"");
    let v = parse_json(out.trim());
    v.as_object()
        .expect("committed prints an object")
        .iter()
        .map(|(p, o)| (p.parse().expect("partition number"), o.as_i64()))
        .collect()
}

/// A record as librdkafka received it, with its timestamp.
#[derive(Debug)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: i64,
    /// 1: CreateTime, 2: LogAppendTime.
    pub timestamp_type: i64,
}

impl Received {
    /// The value of the first header called `name`; panics if there is none (or it is null).
    pub fn header(&self, name: &str) -> Vec<u8> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no header {name}: {self:?}"))
    }
}

/// Reads `count` records of `topic` from the start with a librdkafka consumer of `group`
/// (as [`librdkafka_consume`], with their timestamps), within a minute.
pub fn librdkafka_read(bootstrap: &str, group: &str, topic: &str, count: usize) -> Vec<Received> {
    librdkafka_read_within(bootstrap, group, topic, count, Duration::from_secs(60))
}

fn librdkafka_read_within(
    bootstrap: &str,
    group: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Received> {
    let count = count.to_string();
    let timeout = timeout.as_secs_f64().to_string();
    let args = [
        "consume",
        "--bootstrap",
        bootstrap,
        "--group",
        group,
        "--topic",
        topic,
        "--count",
        &count,
        "--timeout",
        &timeout,
    ];
    python_tool(&args, b"")
        .lines()
        .map(|line| {
            let v = parse_json(line);
            Received {
                partition: json_i64(&v, "partition") as i32,
                offset: json_i64(&v, "offset"),
                key: json_bytes(&v["key"]),
                value: json_bytes(&v["value"]),
                headers: v["headers"]
                    .as_array()
                    .expect("headers is an array")
                    .iter()
                    .map(|h| {
                        let name = h[0].as_str().expect("header name").to_owned();
                        (name, json_bytes(&h[1]))
                    })
                    .collect(),
                timestamp: json_i64(&v, "timestamp"),
                timestamp_type: json_i64(&v, "timestamp_type"),
            }
        })
        .collect()
}

/// `topic` and the brokers as librdkafka's `list_topics` sees them through `bootstrap`
/// (`kafka_tool.py metadata`): `{"brokers": {"1": "host:port"}, "controller": id,
/// "partitions": {"0": {"leader": id, "replicas": [..], "isrs": [..]}}}`.
pub fn librdkafka_metadata(bootstrap: &str, topic: &str) -> Value {
    let args = ["metadata", "--bootstrap", bootstrap, "--topic", topic];
    parse_json(python_tool(&args, b"").trim())
}

/// Where the Java client puts each key in `topic`: librdkafka produces them with its
/// Java-compatible partitioner (`murmur2_random`) and says where they landed.
pub fn java_partitions(broker: &Broker, topic: &str, keys: &[&[u8]]) -> Vec<i32> {
    let input: String = keys
        .iter()
        .map(|k| {
            format!(
                "{}\n",
                serde_json::json!({"key": b64_encode(k), "value": null})
            )
        })
        .collect();
    let addr = broker.addr();
    let args = [
        "produce",
        "--bootstrap",
        &addr,
        "--topic",
        topic,
        "-X",
        "partitioner=murmur2_random",
    ];
    python_tool(&args, input.as_bytes())
        .lines()
        .map(|line| json_i64(&parse_json(line), "partition") as i32)
        .collect()
}

/// Every batch of `topic` as the broker stores it (`interop/batch_headers.py`): one JSON
/// object per batch (partition, base offset, codec, magic, timestamp type, producer id,
/// base sequence, ...).
pub fn batch_headers(bootstrap: &str, topic: &str) -> Vec<Value> {
    let script = interop_script("batch_headers.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let out = Command::new(&python)
        .arg(&script)
        .args(["--bootstrap", bootstrap, "--topic", topic])
        .output()
        .unwrap_or_else(|e| panic!("could not run {python} {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "batch_headers.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(parse_json)
        .collect()
}

// ------------------------------------------------------------------------------------
// Helpers

/// Clears the environment of `cmd` except PATH and HOME, so the host's settings (Kafka
/// addresses, DATABASE_URL, RUST_LOG, ...) never leak into a process under test.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear();
    for key in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd
}

/// A port that was free a moment ago: bind port 0 and let the kernel choose.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One line of JSON a Python tool printed.
pub fn parse_json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("kafka_tool.py printed {line:?}: {e}"))
}

/// `v[field]` as an integer; panics naming the field if it is not one.
pub fn json_i64(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} is not an integer in {v}"))
}

fn json_bytes(v: &Value) -> Option<Vec<u8>> {
    v.as_str().map(b64_decode)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (the harness's only need for it is kafka_tool.py's JSON,
/// which doesn't justify a dependency).
pub fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn b64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = B64
            .iter()
            .position(|&x| x == c)
            .unwrap_or_else(|| panic!("invalid base64 {text:?}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
