//! The shared harness for the integration tests: each test file says `mod common;`.
//!
//! - [`Broker`]: a private tansu broker on a free port, killed when dropped.
//! - [`TempDb`]: a SQLite file in a temporary directory, read and seeded with rusqlite
//!   directly, the way the backend would.
//! - [`WorkerProcess`]: the real `provision-worker` binary with a clean environment and its
//!   output captured line by line.
//! - [`produce`]: one message through rustfs-kafka; [`librdkafka_produce`],
//!   [`librdkafka_consume`] and [`librdkafka_committed`]: the independent client
//!   (tests/interop/kafka_tool.py, on confluent-kafka) for interoperability checks.
//! - [`wait_until`]: every wait in a test is a condition with a deadline, never a sleep.
//!
//! A missing broker binary or Python client fails the tests with a message saying what
//! to install; nothing here skips a test.

// Each test file compiles this module separately and uses only part of it; without this,
// every helper some file doesn't call would be a dead-code warning (an error under
// `clippy -D warnings`).
#![allow(dead_code)]

pub mod hostile_batch;
pub mod hostile_ids;
pub mod produce_faults;
pub mod proxy;
pub mod secure;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use rustfs_kafka::producer::{Headers, Producer, Record, RequiredAcks};
use serde_json::Value;

/// How often [`wait_until`] and the other waits re-check their condition.
pub const POLL: Duration = Duration::from_millis(20);

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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
    /// The broker's stdout and stderr, inside `dir`.
    log: PathBuf,
    /// Holds the log file; removed when the broker is dropped.
    dir: tempfile::TempDir,
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
                        dir,
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
// The independent client: librdkafka via tests/interop/kafka_tool.py

/// Runs `tests/interop/kafka_tool.py ARGS` with `stdin` and returns its stdout.
///
/// Panics with the tool's stderr if it fails (including when confluent-kafka isn't
/// installed: `python3 -m pip install -r tests/requirements.txt`).
pub fn python_tool(args: &[&str], stdin: &[u8]) -> String {
    let script = repo_root().join("tests/interop/kafka_tool.py");
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
    let addr = broker.addr();
    let count = count.to_string();
    let timeout = timeout.as_secs_f64().to_string();
    let args = [
        "consume",
        "--bootstrap",
        &addr,
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
            Consumed {
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
            }
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

// ------------------------------------------------------------------------------------
// The database

/// A SQLite database file (`poc.db`) in its own temporary directory, removed on drop.
pub struct TempDb {
    dir: tempfile::TempDir,
}

/// One row of `provision_requests`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRow {
    pub request_id: String,
    pub user_id: String,
    pub gpu_count: i64,
    pub duration_hours: i64,
    pub status: String,
    pub kubeconfig: Option<String>,
    pub error_message: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// The columns of [`RequestRow`], in the order `RequestRow::from_sql` reads them.
const ROW_COLUMNS: &str = "request_id, user_id, gpu_count, duration_hours, status, kubeconfig, \
                           error_message, created_at, updated_at";

impl RequestRow {
    fn from_sql(row: &rusqlite::Row<'_>) -> rusqlite::Result<RequestRow> {
        Ok(RequestRow {
            request_id: row.get(0)?,
            user_id: row.get(1)?,
            gpu_count: row.get(2)?,
            duration_hours: row.get(3)?,
            status: row.get(4)?,
            kubeconfig: row.get(5)?,
            error_message: row.get(6)?,
            created_at: row.get(7)?,
            updated_at: row.get(8)?,
        })
    }
}

impl TempDb {
    /// A new, empty directory; the database file doesn't exist until someone writes it.
    pub fn new() -> TempDb {
        let dir = tempfile::Builder::new()
            .prefix("provision-db-")
            .tempdir()
            .expect("create a temporary directory for the database");
        TempDb { dir }
    }

    /// The database file's absolute path.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("poc.db")
    }

    /// `sqlite:///` followed by the absolute path, so four slashes in all (the
    /// SQLAlchemy form of an absolute path, as the backend writes DATABASE_URL).
    pub fn url(&self) -> String {
        format!("sqlite:///{}", self.path().display())
    }

    /// A connection for ad-hoc queries (creates the file if needed; 5 s busy timeout).
    pub fn conn(&self) -> Connection {
        let conn = Connection::open(self.path()).expect("open the test database");
        conn.busy_timeout(Duration::from_secs(5))
            .expect("set the busy timeout");
        conn
    }

    /// Inserts a pending request exactly as the backend does (status 'pending',
    /// timestamps 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC), creating the table from
    /// `sql/schema.sql` first if it doesn't exist.
    pub fn insert_pending(&self, id: &str, user: &str, gpus: i64, hours: i64) {
        let conn = self.conn();
        self.ensure_schema(&conn);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970");
        let secs = now.as_secs() as i64;
        let micros = i64::from(now.subsec_micros());
        conn.execute(
            "INSERT INTO provision_requests
                 (request_id, user_id, gpu_count, duration_hours, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'pending',
                     strftime('%Y-%m-%d %H:%M:%S', ?5, 'unixepoch') || printf('.%06d', ?6),
                     strftime('%Y-%m-%d %H:%M:%S', ?5, 'unixepoch') || printf('.%06d', ?6))",
            params![id, user, gpus, hours, secs, micros],
        )
        .unwrap_or_else(|e| panic!("insert pending request {id}: {e}"));
    }

    /// Every row, by request id (empty when there is no table yet).
    pub fn all_rows(&self) -> HashMap<String, RequestRow> {
        let Some(conn) = self.existing_conn() else {
            return HashMap::new();
        };
        let mut stmt = conn
            .prepare(&format!("SELECT {ROW_COLUMNS} FROM provision_requests"))
            .expect("prepare the rows query");
        stmt.query_map([], RequestRow::from_sql)
            .and_then(|rows| rows.map(|r| r.map(|r| (r.request_id.clone(), r))).collect())
            .expect("read every row")
    }

    /// The status of request `id`, or `None` if there is no such row (or no table yet).
    pub fn status_of(&self, id: &str) -> Option<String> {
        let conn = self.existing_conn()?;
        conn.query_row(
            "SELECT status FROM provision_requests WHERE request_id = ?1",
            [id],
            |row| row.get(0),
        )
        .optional()
        .unwrap_or_else(|e| panic!("read the status of {id}: {e}"))
    }

    /// The whole row of request `id`, if any.
    pub fn row(&self, id: &str) -> Option<RequestRow> {
        let conn = self.existing_conn()?;
        conn.query_row(
            &format!("SELECT {ROW_COLUMNS} FROM provision_requests WHERE request_id = ?1"),
            [id],
            RequestRow::from_sql,
        )
        .optional()
        .unwrap_or_else(|e| panic!("read request {id}: {e}"))
    }

    /// The number of requests in each status (empty before the table exists).
    pub fn count_by_status(&self) -> HashMap<String, i64> {
        let Some(conn) = self.existing_conn() else {
            return HashMap::new();
        };
        let mut stmt = conn
            .prepare("SELECT status, COUNT(*) FROM provision_requests GROUP BY status")
            .expect("prepare the status count");
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .and_then(|rows| rows.collect())
            .unwrap_or_else(|e| panic!("count requests by status: {e}"))
    }

    /// A connection to the database if the file and the table exist. Never creates the
    /// file, so polling before the worker starts doesn't race its schema setup.
    fn existing_conn(&self) -> Option<Connection> {
        if !self.path().exists() {
            return None;
        }
        let conn = Connection::open_with_flags(self.path(), OpenFlags::SQLITE_OPEN_READ_WRITE)
            .expect("open the test database");
        conn.busy_timeout(Duration::from_secs(5))
            .expect("set the busy timeout");
        table_exists(&conn).then_some(conn)
    }

    fn ensure_schema(&self, conn: &Connection) {
        if table_exists(conn) {
            return;
        }
        let schema = std::fs::read_to_string(repo_root().join("sql/schema.sql"))
            .expect("read sql/schema.sql, the worker's own schema");
        // The worker may be creating the same table right now; losing that race is fine.
        if let Err(e) = conn.execute_batch(&schema) {
            assert!(table_exists(conn), "create the schema: {e}");
        }
    }
}

impl Default for TempDb {
    fn default() -> Self {
        TempDb::new()
    }
}

fn table_exists(conn: &Connection) -> bool {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'provision_requests'",
        [],
        |_| Ok(()),
    )
    .optional()
    .expect("query sqlite_master")
    .is_some()
}

// ------------------------------------------------------------------------------------
// The worker process

/// How to start a [`WorkerProcess`]: arguments, environment and an optional `.env`.
#[derive(Default)]
pub struct WorkerCommand {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    dotenv: Option<String>,
}

impl WorkerCommand {
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn envs(mut self, envs: &[(&str, &str)]) -> Self {
        for (k, v) in envs {
            self = self.env(k, v);
        }
        self
    }

    /// Writes `contents` to `.env` in the worker's working directory before it starts.
    pub fn dotenv(mut self, contents: &str) -> Self {
        self.dotenv = Some(contents.to_owned());
        self
    }

    /// Starts the worker.
    pub fn spawn(self) -> WorkerProcess {
        let dir = tempfile::Builder::new()
            .prefix("provision-worker-")
            .tempdir()
            .expect("create the worker's working directory");
        if let Some(contents) = &self.dotenv {
            std::fs::write(dir.path().join(".env"), contents).expect("write .env");
        }
        let bin = env!("CARGO_BIN_EXE_provision-worker");
        let mut cmd = Command::new(bin);
        let mut child = clean_env(&mut cmd)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {bin}: {e}"));
        let pid = child.id();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            capture(
                child.stdout.take().expect("stdout is piped"),
                &lines,
                format!("[worker {pid} out]"),
            ),
            capture(
                child.stderr.take().expect("stderr is piped"),
                &lines,
                format!("[worker {pid} err]"),
            ),
        ];
        WorkerProcess {
            child,
            pid,
            lines,
            readers,
            status: None,
            dir,
        }
    }
}

/// A running `provision-worker`, with stdout and stderr collected as lines.
///
/// It starts with an empty environment except PATH and HOME (plus what the test
/// passes), in a fresh temporary working directory, so neither the host's environment
/// nor a stray `.env` can change what a test sees. Dropping it kills the process.
pub struct WorkerProcess {
    /// The process; killed and reaped in `Drop` unless it has exited.
    child: Child,
    pid: u32,
    /// Every line of output so far, stdout and stderr interleaved in arrival order.
    lines: Arc<Mutex<Vec<String>>>,
    /// The threads filling `lines`; they end when the process closes its output.
    readers: Vec<JoinHandle<()>>,
    /// Set once the process has been reaped.
    status: Option<ExitStatus>,
    /// The working directory; removed on drop.
    dir: tempfile::TempDir,
}

impl WorkerProcess {
    /// A builder, for arguments or a `.env` file.
    pub fn command() -> WorkerCommand {
        WorkerCommand::default()
    }

    /// Starts the worker with these environment variables and no arguments.
    pub fn spawn(envs: &[(&str, &str)]) -> WorkerProcess {
        WorkerProcess::command().envs(envs).spawn()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The worker's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits for an output line containing `substr` and returns it.
    ///
    /// Panics, showing the output, on timeout or if the process exits without one.
    pub fn wait_for_line(&mut self, substr: &str, deadline: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(substr)) {
                return line;
            }
            if self.try_status().is_some() {
                // The process is gone and its output fully read: one last look.
                if let Some(line) = self.lines().into_iter().find(|l| l.contains(substr)) {
                    return line;
                }
                panic!(
                    "the worker exited ({}) without printing a line containing {substr:?}; \
                     its output:\n{}",
                    self.status.expect("set by try_status"),
                    self.lines().join("\n")
                );
            }
            if start.elapsed() >= deadline {
                panic!(
                    "no worker line containing {substr:?} within {deadline:?}; its output:\n{}",
                    self.lines().join("\n")
                );
            }
            thread::sleep(POLL);
        }
    }

    /// All output lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("output lines lock").clone()
    }

    /// How many output lines so far contain `substr`.
    pub fn count_lines(&self, substr: &str) -> usize {
        let lines = self.lines.lock().expect("output lines lock");
        lines.iter().filter(|l| l.contains(substr)).count()
    }

    /// Sends a signal by name ("TERM", "INT", "HUP", ... with or without "SIG").
    pub fn signal(&self, sig: &str) {
        let sig = sig.strip_prefix("SIG").unwrap_or(sig);
        let status = Command::new("kill")
            .args(["-s", sig, &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -s {sig} {} failed: {status}",
            self.pid
        );
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill9(&mut self) -> ExitStatus {
        if self.try_status().is_none() {
            let _ = self.child.kill();
        }
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits for the process to exit; afterwards all of its output is in `lines()`.
    ///
    /// Panics, showing the output, if it is still running after `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            if start.elapsed() >= deadline {
                panic!(
                    "the worker did not exit within {deadline:?}; its output:\n{}",
                    self.lines().join("\n")
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The exit status if the process has exited; then also waits for the reader threads
    /// so that its last lines are in `lines`.
    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            let status = self.child.try_wait().expect("poll the worker process")?;
            self.status = Some(status);
            for reader in self.readers.drain(..) {
                reader.join().expect("output reader thread");
            }
        }
        self.status
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The readers end at end of output, which normally comes with the exit. A child
        // of the worker still holding the pipes would keep them open: wait briefly and
        // then leave them rather than hang the test.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            thread::sleep(POLL);
        }
    }
}

// ------------------------------------------------------------------------------------
// Helpers

/// Clears the environment of `cmd` except PATH and HOME, so the host's settings (Kafka
/// addresses, DATABASE_URL, RUST_LOG, ...) never leak into a process under test.
fn clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear();
    for key in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd
}

/// A port that was free a moment ago: bind port 0 and let the kernel choose.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

/// Reads `source` line by line (lossy UTF-8) into `lines`, echoing each to the test's
/// stderr (shown when the test fails, or with `--nocapture`).
fn capture(
    source: impl Read + Send + 'static,
    lines: &Arc<Mutex<Vec<String>>>,
    prefix: String,
) -> JoinHandle<()> {
    let lines = Arc::clone(lines);
    thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned();
                    eprintln!("{prefix} {line}");
                    lines.lock().expect("output lines lock").push(line);
                }
            }
        }
    })
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn parse_json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("kafka_tool.py printed {line:?}: {e}"))
}

fn json_i64(v: &Value, field: &str) -> i64 {
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
