//! The worker's test harness: each test file says `mod common;`.
//!
//! Everything about Kafka (a private tansu broker, proxies, TLS and SASL fronts, hostile
//! batches, librdkafka as the independent client, [`wait_until`]) comes from the shared
//! `kafka-testkit` crate (crates/kafka-testkit), re-exported here. What is the worker's own:
//!
//! - [`TempDb`]: a SQLite file in a temporary directory, read and seeded with rusqlite
//!   directly, the way the backend would.
//! - [`WorkerProcess`]: the real `provision-worker` binary with a clean environment and its
//!   output captured line by line.
//! - [`hostile_ids`]: user ids that YAML, SQL, logs and terminals all read differently.
//!
//! A missing broker binary or Python client fails the tests with a message saying what
//! to install; nothing here skips a test.

// Each test file compiles this module separately and uses only part of it; without this,
// every helper some file doesn't call would be a dead-code warning (an error under
// `clippy -D warnings`).
#![allow(dead_code)]

pub mod hostile_ids;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use kafka_testkit::*;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

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

    /// The same, in memory-backed storage (`/dev/shm`, where there is one), for tests that
    /// time Kafka: there SQLite's fsync costs nothing, so the disk of a shared machine
    /// (whose fsync may take seconds under other load, the poller waiting in it) does not
    /// show in a measurement of brokers. Still a real SQLite file, WAL and all.
    pub fn on_tmpfs() -> TempDb {
        let shm = Path::new("/dev/shm");
        let mut builder = tempfile::Builder::new();
        builder.prefix("provision-db-");
        let dir = if shm.is_dir() {
            builder.tempdir_in(shm)
        } else {
            builder.tempdir()
        }
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
        // PROVISION_WORKER_BIN runs another build of the worker through the same test (a
        // release build, or the one before a change, for scripts/cluster-scenarios.sh);
        // by default the one cargo built for the tests.
        let bin = std::env::var("PROVISION_WORKER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_provision-worker").to_owned());
        let mut cmd = Command::new(&bin);
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
