//! SQLite: the `provision_requests` table, the connection pool, and every state transition as
//! a named function.
//!
//! Each transition is one conditional statement (`... WHERE status IN (...)`), so a redelivered
//! or duplicated message can never move a request backwards: `completed` and `failed` are final.
//! The store never retries: a transient fault (busy, locked, I/O, disk full) comes back as an
//! error whose [`StoreError::is_transient`] is true, and the worker that called retries it with
//! backoff, where shutdown can interrupt the wait.
//!
//! Writes go through one connection, in group commit (`group.rs`): a worker calling
//! [`Store::claim`], [`Store::complete`] or [`Store::fail`] blocks until its own transition is
//! committed, but one SQLite transaction carries the transitions of every worker that was
//! waiting for the writer at the time, each with its own conditional statement and its own
//! outcome. A lone transition runs at once; nothing ever waits for company.
//!
//! Durability: connections run in WAL mode with `synchronous=NORMAL`, which writes each commit
//! to the `-wal` file without an fsync. [`Store::make_durable`] fsyncs that file, and the poller
//! calls it before it commits Kafka offsets, so one fsync covers a whole batch of completions.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};

use crate::request::ProvisionRequest;
use super::group::GroupCommit;
use checkpoint::Checkpointer;

mod checkpoint;

/// Where a request is in its life. Stored as lower-case text in `provision_requests.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Inserted by the backend; no worker has taken it yet.
    Pending,
    /// A worker has claimed it and is (or was, before a crash) provisioning.
    Provisioning,
    /// Final: provisioned; the row holds the kubeconfig.
    Completed,
    /// Final: gave up; the row holds the reason.
    Failed,
}

/// What [`Store::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The row is now `provisioning` (inserted, moved from `pending`, or re-claimed after a
    /// redelivery); the caller goes on to provision.
    Claimed,
    /// The row was already final and was left as it was; the message is a duplicate.
    AlreadyFinal(Status),
}

/// One row of `provision_requests`, as stored.
///
/// `status` stays text, so a row written by another program with a value this worker does not
/// know can still be read and shown. `Debug` is written by hand to keep the kubeconfig (it holds
/// a token) out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Row {
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

/// What the write connection has done since the store opened (see [`Store::write_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteCounts {
    /// Transactions of transitions committed.
    pub transactions: u64,
    /// Transitions (claims, completions, failures) committed in them, including those that
    /// matched no row.
    pub transitions: u64,
}

/// How to open a [`Store`]; [`Store::open`] fills in the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Connections in the pool: one per worker thread is enough. Must be at least 1.
    pub pool_size: u32,
    /// How long a statement waits for another connection's write lock before failing with a
    /// transient busy error.
    pub busy_timeout: Duration,
}

/// The database: a pool of connections to one SQLite file, shared by the worker threads
/// (`Store` is `Sync`; wrap it in an `Arc`).
#[derive(Debug)]
pub struct Store {
    /// Connections for the transitions; each already configured (WAL, synchronous, busy
    /// timeout). Lives as long as the store.
    pool: r2d2::Pool<SqliteConnectionManager>,
    /// The path as the caller gave it, for messages.
    path: PathBuf,
    /// `<canonical db path>-wal`: the file SQLite appends commits to, fsynced by `make_durable`.
    wal_path: PathBuf,
    /// The one connection every write goes through: the one that set the database up.
    ///
    /// Why one: SQLite admits one writer at a time, and a connection that finds the write
    /// lock taken sleeps in its busy handler (1 ms, 2 ms, 5 ms, ...) instead of waking when
    /// the lock frees; queueing our writers on a mutex hands the lock over at once (the busy
    /// timeout still covers other processes, such as the backend). And a connection whose
    /// last write was not its own must drop its page cache and re-read pages, so rotating
    /// writes over the pool's connections cost a re-read per transaction (seen in profiles:
    /// `pread` and cache resets), while one writer keeps its cache and its prepared
    /// statements warm.
    ///
    /// Held open for the store's life, it also keeps the `-wal` file: SQLite deletes it when
    /// the last connection closes, and a re-created one would have a directory entry nobody
    /// fsynced; while this connection is open it keeps the entry that `open` made durable.
    ///
    /// Transitions reach it through `group` (whose leader holds this lock for one batch);
    /// `insert_pending` takes the lock directly.
    writer: Mutex<Connection>,
    /// The queue of transitions waiting for the writer: group commit (see `group.rs`).
    group: GroupCommit<Transition, Result<Applied, StoreError>>,
    /// For [`Store::write_counts`].
    transactions: AtomicU64,
    transitions: AtomicU64,
    /// Copies the WAL into the database off the writer's path (see `checkpoint.rs`); told
    /// by the writer what it commits. Stopped and joined when the store is dropped.
    checkpointer: Checkpointer,
}

/// Why a store operation failed. See [`StoreError::is_transient`] for which ones to retry.
#[derive(Debug)]
pub enum StoreError {
    /// `StoreOptions::pool_size` was 0.
    ZeroPoolSize,
    /// The file could not be opened or set up at start (missing directory, not a database, ...).
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// SQLite would not switch the file to WAL mode (for instance on a network filesystem).
    NotWal { path: PathBuf, mode: String },
    /// The file opened but a write transaction could not start: a read-only file, directory or
    /// filesystem.
    NotWritable {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// Another process (the backend) held the database locked past the busy timeout during
    /// start-up: transient, the caller retries.
    Busy {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// `provision_requests` exists without some columns the worker needs.
    MissingColumns {
        path: PathBuf,
        columns: Vec<&'static str>,
    },
    /// `provision_requests` has no unique key on `request_id`, which claim's upsert needs.
    RequestIdNotUnique { path: PathBuf },
    /// A statement failed while running.
    Sqlite(rusqlite::Error),
    /// No pooled connection became free (or could be opened) within the pool timeout.
    Pool(r2d2::Error),
    /// The full path of the database file could not be resolved at start.
    Resolve { path: PathBuf, source: io::Error },
    /// An fsync (of the `-wal` file, or of the directory at start) failed.
    Sync { path: PathBuf, source: io::Error },
    /// The checkpoint thread could not be started at open.
    Thread { path: PathBuf, source: io::Error },
    /// `insert_pending` found a row with that request id.
    AlreadyExists { request_id: String },
    /// A row's status is not one this worker knows, so it cannot tell what to do with it.
    UnexpectedStatus { request_id: String, value: String },
}

/// A status text that is not one of `pending`, `provisioning`, `completed`, `failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseStatusError {
    pub value: String,
}

/// One state transition waiting for the writer. It owns what it writes: the leader that runs
/// it may be another worker's thread.
#[derive(Debug)]
enum Transition {
    Claim {
        request_id: String,
        user_id: String,
        gpu_count: i64,
        duration_hours: i64,
    },
    Complete {
        request_id: String,
        kubeconfig: String,
    },
    Fail {
        request_id: String,
        reason: String,
    },
}

/// What one transition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Claim(Claim),
    /// An update with a conditional `WHERE`: whether the row moved.
    Moved(bool),
}

/// The current time in UTC as `YYYY-MM-DD HH:MM:SS.ffffff`, the text SQLAlchemy stores for a
/// `DateTime`, so rows written by the backend and by the worker compare and sort alike.
pub fn utc_now() -> String {
    format_utc(SystemTime::now())
}

impl Status {
    /// Every status, in the order of a request's life.
    pub const ALL: [Status; 4] = [
        Status::Pending,
        Status::Provisioning,
        Status::Completed,
        Status::Failed,
    ];

    /// The text stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Provisioning => "provisioning",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    /// `completed` and `failed` never change again.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed)
    }

    /// Whether a row in `self` may be moved to `next`. The SQL `WHERE` clauses of the
    /// transitions encode the same table (a test checks they agree).
    ///
    /// `provisioning -> provisioning` is allowed because a worker that crashed after claiming
    /// leaves the row there, and the redelivered message must be able to claim it again.
    pub fn can_move_to(self, next: Status) -> bool {
        matches!(
            (self, next),
            (Status::Pending, Status::Provisioning)
                | (Status::Provisioning, Status::Provisioning)
                | (Status::Provisioning, Status::Completed)
                | (Status::Pending | Status::Provisioning, Status::Failed)
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = ParseStatusError;

    fn from_str(s: &str) -> Result<Status, ParseStatusError> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| ParseStatusError {
                value: s.to_owned(),
            })
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The kubeconfig holds a bearer token: show only whether it is there and its size.
        let kubeconfig = self
            .kubeconfig
            .as_ref()
            .map(|k| format!("<redacted, {} bytes>", k.len()));
        f.debug_struct("Row")
            .field("request_id", &self.request_id)
            .field("user_id", &self.user_id)
            .field("gpu_count", &self.gpu_count)
            .field("duration_hours", &self.duration_hours)
            .field("status", &self.status)
            .field("kubeconfig", &kubeconfig)
            .field("error_message", &self.error_message)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

impl StoreOptions {
    /// `pool_size` connections with the default busy timeout.
    pub fn new(pool_size: u32) -> StoreOptions {
        StoreOptions {
            pool_size,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
        }
    }
}

impl Store {
    /// Opens (creating if needed) the database file with the default busy timeout (5 s).
    /// See [`Store::open_with`].
    pub fn open(path: &Path, pool_size: u32) -> Result<Store, StoreError> {
        Store::open_with(path, StoreOptions::new(pool_size))
    }

    /// Opens (creating if needed) the database file, applies `sql/schema.sql`, and checks at
    /// start what would otherwise fail on the first message: that the table has every column
    /// and a unique `request_id`, and that the file is writable. A missing directory is an
    /// error naming the path: creating directories is the deployment's job, and a typo in
    /// `DATABASE_URL` should not silently start an empty database somewhere new.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        if options.pool_size == 0 {
            return Err(StoreError::ZeroPoolSize);
        }
        let busy_timeout = options.busy_timeout;
        let open_error = |source: rusqlite::Error| {
            if is_busy(&source) {
                StoreError::Busy {
                    path: path.to_owned(),
                    source,
                }
            } else {
                StoreError::Open {
                    path: path.to_owned(),
                    source,
                }
            }
        };

        create_private(path);
        // Set up on a plain connection first, so a bad path fails at once with SQLite's own
        // error; a pool would retry the connection until its 30 s timeout and report only a
        // message.
        let mut setup = Connection::open_with_flags(path, open_flags()).map_err(open_error)?;
        let mode = configure(&mut setup, busy_timeout).map_err(|e| setup_error(path, e))?;
        // This connection becomes the one writer: give it SQLite's default 2 MiB of cache,
        // the readers keep their small one.
        setup
            .pragma_update(None, "cache_size", -2048)
            .map_err(|e| setup_error(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal {
                path: path.to_owned(),
                mode,
            });
        }
        setup
            .execute_batch(SCHEMA)
            .map_err(|e| setup_error(path, e))?;
        let missing = missing_columns(&setup).map_err(open_error)?;
        if !missing.is_empty() {
            return Err(StoreError::MissingColumns {
                path: path.to_owned(),
                columns: missing,
            });
        }
        if !request_id_is_unique(&setup).map_err(open_error)? {
            return Err(StoreError::RequestIdNotUnique {
                path: path.to_owned(),
            });
        }
        // `CREATE TABLE IF NOT EXISTS` writes nothing when the table exists, so a read-only
        // file would pass everything above and fail on the first claim. A write statement that
        // matches no row fails now instead. Not `BEGIN IMMEDIATE; COMMIT`: once SQLite knows a
        // file is read-only it quietly turns BEGIN IMMEDIATE into a read transaction, which
        // succeeds (seen with a read-only header and with `chattr +i`).
        setup
            .execute_batch("UPDATE provision_requests SET status = status WHERE 0")
            .map_err(|source| {
                if is_busy(&source) {
                    StoreError::Busy {
                        path: path.to_owned(),
                        source,
                    }
                } else {
                    StoreError::NotWritable {
                        path: path.to_owned(),
                        source,
                    }
                }
            })?;

        // SQLite names the WAL after the full path with symlinks resolved; do the same.
        let canonical = std::fs::canonicalize(path).map_err(|source| StoreError::Resolve {
            path: path.to_owned(),
            source,
        })?;
        let wal_path = sidecar(&canonical, "-wal");
        // The database and `-wal` files may have just been created: fsync their directory once
        // so their entries survive a power cut. Later fsyncs of the `-wal` file then suffice.
        let dir = canonical.parent().unwrap_or(Path::new("/"));
        sync_path(dir)?;

        let manager = SqliteConnectionManager::file(path)
            .with_flags(open_flags())
            .with_init(move |conn| configure(conn, busy_timeout).map(drop));
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size)
            .connection_timeout(POOL_TIMEOUT)
            // Connections to a local file do not go stale; keeping them keeps their prepared
            // statements.
            .idle_timeout(None)
            .max_lifetime(None)
            .build(manager)
            .map_err(StoreError::Pool)?;

        warn_if_others_can_read(path);
        let checkpointer = start_checkpointer(path, busy_timeout, &setup)?;
        log::info!(
            "database {} ready (wal, pool of {})",
            path.display(),
            options.pool_size
        );
        Ok(Store {
            pool,
            path: path.to_owned(),
            wal_path,
            writer: Mutex::new(setup),
            group: GroupCommit::new(),
            transactions: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            checkpointer,
        })
    }

    /// Takes a request for provisioning: a missing row is inserted from the request as
    /// `provisioning`; a `pending` or `provisioning` row becomes `provisioning` (a
    /// `provisioning` row is a redelivery after a crash); a final row is left as it was and
    /// reported as [`Claim::AlreadyFinal`]. Returns once committed.
    pub fn claim(&self, req: &ProvisionRequest) -> Result<Claim, StoreError> {
        self.write(claim_of(req)).map(Applied::claim)
    }

    /// `provisioning -> completed`, storing the kubeconfig. `Ok(false)` if no row moved: the
    /// row is missing, still `pending`, or already final. Returns once committed.
    pub fn complete(&self, request_id: &str, kubeconfig: &str) -> Result<bool, StoreError> {
        self.write(Transition::Complete {
            request_id: request_id.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
        })
        .map(|applied| applied.moved())
    }

    /// `pending | provisioning -> failed`, storing the reason. `Ok(false)` if no row moved: the
    /// row is missing or already final. Returns once committed.
    pub fn fail(&self, request_id: &str, reason: &str) -> Result<bool, StoreError> {
        self.write(Transition::Fail {
            request_id: request_id.to_owned(),
            reason: reason.to_owned(),
        })
        .map(|applied| applied.moved())
    }

    /// [`Store::complete`] of one request and [`Store::claim`] of the next, written in the same
    /// transaction, each with its own outcome (one can fail while the other is committed). A
    /// worker that finishes a request while the next one is already waiting for it saves a
    /// round trip to the writer, and the transaction carries both.
    pub fn complete_and_claim(
        &self,
        request_id: &str,
        kubeconfig: &str,
        next: &ProvisionRequest,
    ) -> (Result<bool, StoreError>, Result<Claim, StoreError>) {
        let transitions = vec![
            Transition::Complete {
                request_id: request_id.to_owned(),
                kubeconfig: kubeconfig.to_owned(),
            },
            claim_of(next),
        ];
        let mut outcomes = self
            .group
            .submit_all(transitions, |batch| self.run_batch(batch))
            .into_iter();
        let (Some(completed), Some(claimed)) = (outcomes.next(), outcomes.next()) else {
            unreachable!("group commit answers each transition")
        };
        (completed.map(Applied::moved), claimed.map(Applied::claim))
    }

    /// Transactions and transitions the writer has committed since the store opened; their
    /// ratio is the mean batch of group commit.
    pub fn write_counts(&self) -> WriteCounts {
        WriteCounts {
            transactions: self.transactions.load(Ordering::Relaxed),
            transitions: self.transitions.load(Ordering::Relaxed),
        }
    }

    /// Makes every transaction committed so far durable by fsyncing the `-wal` file; does
    /// nothing if that file does not exist. The poller calls this before it commits Kafka
    /// offsets.
    ///
    /// Why this is enough: with WAL and `synchronous=NORMAL` a commit is written to the `-wal`
    /// file but not fsynced; a checkpoint fsyncs the WAL before copying it into the database
    /// and the database after, and SQLite deletes the WAL only after such a checkpoint. So a
    /// committed transaction is either in the `-wal` file (which this fsyncs) or already
    /// durable in the database file.
    ///
    /// A failed fsync is not transient: after one, Linux may mark the unwritten pages clean, so
    /// a retry that succeeds would prove nothing. The caller must not commit offsets.
    pub fn make_durable(&self) -> Result<(), StoreError> {
        sync_wal(&self.wal_path)
    }

    /// For the demo backend: inserts a `pending` row. Fails with
    /// [`StoreError::AlreadyExists`] if the request id is taken.
    pub fn insert_pending(&self, req: &ProvisionRequest) -> Result<(), StoreError> {
        let conn = self.writer();
        let now = utc_now();
        let result = conn.prepare_cached(INSERT_PENDING_SQL)?.execute(params![
            req.request_id,
            req.user_id,
            i64::from(req.gpu_count),
            i64::from(req.duration_hours),
            now,
        ]);
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_key_conflict(&e) => Err(StoreError::AlreadyExists {
                request_id: req.request_id.clone(),
            }),
            Err(e) => Err(StoreError::Sqlite(e)),
        }
    }

    /// The row for `request_id`, if there is one.
    pub fn get(&self, request_id: &str) -> Result<Option<Row>, StoreError> {
        let conn = self.conn()?;
        let row = conn
            .prepare_cached(GET_SQL)?
            .query_row(params![request_id], row_from_sql)
            .optional()?;
        Ok(row)
    }

    /// Rows still `provisioning` whose `updated_at` is older than `older_than`, oldest first:
    /// requests a worker claimed and never finished (a crash, or a message now on another
    /// consumer), for the start-up report.
    pub fn stale_provisioning(&self, older_than: Duration) -> Result<Vec<Row>, StoreError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(UNIX_EPOCH);
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(STALE_SQL)?;
        let rows = stmt
            .query_map(params![format_utc(cutoff)], row_from_sql)?
            .collect::<Result<Vec<Row>, rusqlite::Error>>()?;
        Ok(rows)
    }

    /// The database path, as given to `open`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<SqliteConnectionManager>, StoreError> {
        self.pool.get().map_err(StoreError::Pool)
    }

    /// Queues one transition for the writer and waits until its batch has run.
    fn write(&self, transition: Transition) -> Result<Applied, StoreError> {
        self.group.submit(transition, |batch| self.run_batch(batch))
    }

    /// Runs a batch of transitions in one write transaction, each with its own statement and
    /// outcome, and commits it. Called by the leader of group commit.
    ///
    /// Each transition's outcome is its own:
    /// - A statement that fails for its own reasons (a constraint or trigger of the backend's
    ///   table refuses it, an unknown status) gets that error; SQLite has undone just that
    ///   statement, and the others go on. If the failure took the whole transaction with it
    ///   (a trigger's `RAISE(ROLLBACK)`), the others run again, without it, in a new one.
    /// - A transient fault (busy past the busy timeout, I/O, a full disk) means the
    ///   transaction cannot commit: every transition of the batch gets it and its worker
    ///   retries, so another process holding the lock delays the batch and fails nothing.
    /// - Only a committed transition reports success.
    fn run_batch(&self, batch: &[&Transition]) -> Vec<Result<Applied, StoreError>> {
        let conn = self.writer();
        // A leader that panicked mid-batch (its thread unwound) may have left a transaction
        // open on this connection.
        rollback(&conn);
        if let [transition] = batch
            && let Some(outcome) = self.run_alone(&conn, transition)
        {
            return vec![outcome];
        }
        let mut outcomes: Vec<Option<Result<Applied, StoreError>>> =
            batch.iter().map(|_| None).collect();
        // Each pass settles at least one transition, so this ends.
        while outcomes.iter().any(Option::is_none) {
            if let Err(e) = run_cached(&conn, "BEGIN IMMEDIATE") {
                settle_all(&mut outcomes, &StoreError::Sqlite(e));
                break;
            }
            let now = utc_now();
            let mut applied: Vec<(usize, Applied)> = Vec::with_capacity(batch.len());
            let mut lost_transaction = false;
            for (i, transition) in batch.iter().enumerate() {
                if outcomes[i].is_some() {
                    continue;
                }
                match apply(&conn, transition, &now) {
                    Ok(a) => applied.push((i, a)),
                    Err(e) if e.is_transient() => {
                        settle_all(&mut outcomes, &e);
                        outcomes[i] = Some(Err(e));
                        break;
                    }
                    Err(e) => {
                        outcomes[i] = Some(Err(e));
                        if conn.is_autocommit() {
                            lost_transaction = true;
                            break;
                        }
                    }
                }
            }
            if lost_transaction || outcomes.iter().all(Option::is_some) {
                // Nothing of this transaction is reported as done: undo what it still holds.
                rollback(&conn);
                continue;
            }
            match run_cached(&conn, "COMMIT") {
                Ok(()) => {
                    self.transactions.fetch_add(1, Ordering::Relaxed);
                    self.transitions
                        .fetch_add(applied.len() as u64, Ordering::Relaxed);
                    self.checkpointer.committed(applied.len() as u64);
                    for (i, a) in applied {
                        outcomes[i] = Some(Ok(a));
                    }
                }
                Err(e) => {
                    rollback(&conn);
                    settle_all(&mut outcomes, &StoreError::Sqlite(e));
                }
            }
        }
        // Every outcome is settled here: the loop runs until none is missing.
        outcomes.into_iter().flatten().collect()
    }

    /// A batch of one, when it is a single statement, runs as that statement alone: SQLite
    /// wraps it in a transaction of its own, which costs less than an explicit BEGIN and
    /// COMMIT around it (two more statements to run). That is every completion and failure,
    /// and the claim of an existing `pending` or `provisioning` row. `None` when the claim
    /// needs more than its UPDATE (a missing or final row): then it runs as a batch, in an
    /// explicit transaction, so its steps see one state of the row.
    fn run_alone(
        &self,
        conn: &Connection,
        transition: &Transition,
    ) -> Option<Result<Applied, StoreError>> {
        let now = utc_now();
        let outcome = match transition {
            Transition::Claim { request_id, .. } => {
                match conn
                    .prepare_cached(CLAIM_SQL)
                    .and_then(|mut stmt| stmt.execute(params![request_id, now]))
                {
                    Ok(0) => return None,
                    Ok(_) => Ok(Applied::Claim(Claim::Claimed)),
                    Err(e) => Err(StoreError::Sqlite(e)),
                }
            }
            Transition::Complete { .. } | Transition::Fail { .. } => apply(conn, transition, &now),
        };
        if outcome.is_ok() {
            self.transactions.fetch_add(1, Ordering::Relaxed);
            self.transitions.fetch_add(1, Ordering::Relaxed);
            self.checkpointer.committed(1);
        }
        Some(outcome)
    }

    /// The write connection (see `writer`). A writer that panicked left nothing half-done
    /// behind the lock (SQLite rolls its open transaction back), so poisoning is ignored.
    fn writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Applied {
    /// The outcome of a claim.
    fn claim(self) -> Claim {
        match self {
            Applied::Claim(claim) => claim,
            // `apply` answers a claim with `Applied::Claim`, always.
            Applied::Moved(_) => unreachable!("a claim was answered as an update"),
        }
    }

    fn moved(self) -> bool {
        match self {
            Applied::Moved(moved) => moved,
            Applied::Claim(claim) => claim == Claim::Claimed,
        }
    }
}

impl StoreError {
    /// True for faults that may clear by themselves and must be retried, never turned into
    /// `failed`: SQLite busy or locked, I/O errors, a full disk, a read-only or unopenable file
    /// (a remount, a moved file), and no pooled connection in time.
    ///
    /// Errors from `open` are never transient: they are found at start and need an operator.
    /// A failed fsync is not transient either (see [`Store::make_durable`]).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlite(e) => is_transient_sqlite(e),
            StoreError::Pool(_) | StoreError::Busy { .. } => true,
            StoreError::ZeroPoolSize
            | StoreError::Open { .. }
            | StoreError::NotWal { .. }
            | StoreError::NotWritable { .. }
            | StoreError::MissingColumns { .. }
            | StoreError::RequestIdNotUnique { .. }
            | StoreError::Resolve { .. }
            | StoreError::Sync { .. }
            | StoreError::Thread { .. }
            | StoreError::AlreadyExists { .. }
            | StoreError::UnexpectedStatus { .. } => false,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::ZeroPoolSize => {
                write!(f, "the database pool size is 0; set it to at least 1")
            }
            StoreError::Open { path, source } => write!(
                f,
                "cannot open database {}: {source}; check that its directory exists and that it \
                 is a SQLite file this user can read and write",
                path.display()
            ),
            StoreError::NotWal { path, mode } => write!(
                f,
                "database {} stays in journal mode {mode:?} instead of wal; put it on a local \
                 filesystem (network filesystems lack the shared memory wal needs)",
                path.display()
            ),
            StoreError::Busy { path, source } => write!(
                f,
                "database {} is locked by another process ({source}); retrying until it is free",
                path.display()
            ),
            StoreError::NotWritable { path, source } => write!(
                f,
                "database {} is not writable: {source}; give this user write access to the file \
                 and its directory, or point DATABASE_URL at a writable place",
                path.display()
            ),
            StoreError::MissingColumns { path, columns } => write!(
                f,
                "table provision_requests in {} lacks column(s) {}; migrate the table or add \
                 them as in sql/schema.sql",
                path.display(),
                columns.join(", ")
            ),
            StoreError::RequestIdNotUnique { path } => write!(
                f,
                "table provision_requests in {} has no unique key on request_id; add one with \
                 CREATE UNIQUE INDEX provision_requests_request_id ON \
                 provision_requests(request_id)",
                path.display()
            ),
            StoreError::Sqlite(e) if is_transient_sqlite(e) => write!(
                f,
                "database temporarily unavailable: {e}; retry, and if it persists look for a \
                 process holding a long write transaction, a full disk or failing storage"
            ),
            StoreError::Sqlite(e) => write!(
                f,
                "database statement failed: {e}; check that provision_requests matches \
                 sql/schema.sql"
            ),
            StoreError::Pool(e) => write!(
                f,
                "no database connection within {} s: {e}; retry, and if it persists check that \
                 the database file is still there and readable",
                POOL_TIMEOUT.as_secs()
            ),
            StoreError::Resolve { path, source } => write!(
                f,
                "cannot resolve the full path of database {}: {source}; check that nothing moves \
                 or removes the file while the worker starts",
                path.display()
            ),
            StoreError::Sync { path, source } => write!(
                f,
                "cannot flush {} to disk: {source}; recent commits may not be durable, so check \
                 the storage before going on",
                path.display()
            ),
            StoreError::Thread { path, source } => write!(
                f,
                "cannot start the checkpoint thread of database {}: {source}; the system is out \
                 of threads or memory, so raise the limit on processes (ulimit -u, TasksMax) or \
                 free memory",
                path.display()
            ),
            StoreError::AlreadyExists { request_id } => write!(
                f,
                "request {request_id:?} already exists; use a new request id"
            ),
            StoreError::UnexpectedStatus { request_id, value } => write!(
                f,
                "request {request_id:?} has status {value:?}, which this worker does not know; \
                 set it to pending, provisioning, completed or failed by hand"
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Open { source, .. }
            | StoreError::NotWritable { source, .. }
            | StoreError::Busy { source, .. } => Some(source),
            StoreError::Sqlite(e) => Some(e),
            StoreError::Pool(e) => Some(e),
            StoreError::Resolve { source, .. }
            | StoreError::Sync { source, .. }
            | StoreError::Thread { source, .. } => Some(source),
            StoreError::ZeroPoolSize
            | StoreError::NotWal { .. }
            | StoreError::MissingColumns { .. }
            | StoreError::RequestIdNotUnique { .. }
            | StoreError::AlreadyExists { .. }
            | StoreError::UnexpectedStatus { .. } => None,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(e)
    }
}

impl fmt::Display for ParseStatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown status {:?}; expected pending, provisioning, completed or failed",
            self.value
        )
    }
}

impl std::error::Error for ParseStatusError {}

const SCHEMA: &str = include_str!("../../../sql/schema.sql");

/// Long enough for one writer to finish a transaction (each is a single short statement), short
/// enough that a stuck lock surfaces as a retryable error within seconds.
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `pool.get()` waits for a free connection. The pool has one connection per worker,
/// so waiting means a connection could not be (re)opened; 30 s rides out a brief outage of the
/// file before the worker sees a transient error.
const POOL_TIMEOUT: Duration = Duration::from_secs(30);

/// The columns the worker reads or writes. The backend's table may have more.
const REQUIRED_COLUMNS: [&str; 9] = [
    "request_id",
    "user_id",
    "gpu_count",
    "duration_hours",
    "status",
    "kubeconfig",
    "error_message",
    "created_at",
    "updated_at",
];

// The status literals below are `Status::as_str` values, and each WHERE clause is the set of
// statuses that `Status::can_move_to` allows into the target; `sql_transitions_follow_can_move_to`
// checks both.

/// `claim`, first step: the usual case, a row the backend inserted as `pending` (or one left
/// `provisioning` by a crash). A plain UPDATE: cheaper than an upsert, which tries the insert
/// first and falls back to the update.
const CLAIM_SQL: &str = "\
UPDATE provision_requests SET status = 'provisioning', updated_at = ?2
WHERE request_id = ?1 AND status IN ('pending', 'provisioning')";

/// `claim`, second step, when no row moved: a missing row is inserted as `provisioning`. A row
/// that exists (final, or with a status we do not know) is a conflict on the unique
/// `request_id` and is left alone; only that conflict, not, say, a NOT NULL column the backend
/// added, which must fail loudly.
const CLAIM_INSERT_SQL: &str = "\
INSERT INTO provision_requests
  (request_id, user_id, gpu_count, duration_hours, status, created_at, updated_at)
VALUES (?1, ?2, ?3, ?4, 'provisioning', ?5, ?5)
ON CONFLICT(request_id) DO NOTHING";

const STATUS_SQL: &str = "SELECT status FROM provision_requests WHERE request_id = ?1";

const COMPLETE_SQL: &str = "\
UPDATE provision_requests SET status = 'completed', kubeconfig = ?2, updated_at = ?3
WHERE request_id = ?1 AND status = 'provisioning'";

const FAIL_SQL: &str = "\
UPDATE provision_requests SET status = 'failed', error_message = ?2, updated_at = ?3
WHERE request_id = ?1 AND status IN ('pending', 'provisioning')";

const INSERT_PENDING_SQL: &str = "\
INSERT INTO provision_requests
  (request_id, user_id, gpu_count, duration_hours, status, created_at, updated_at)
VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)";

const GET_SQL: &str = "\
SELECT request_id, user_id, gpu_count, duration_hours, status, kubeconfig, error_message,
       created_at, updated_at
FROM provision_requests WHERE request_id = ?1";

const STALE_SQL: &str = "\
SELECT request_id, user_id, gpu_count, duration_hours, status, kubeconfig, error_message,
       created_at, updated_at
FROM provision_requests WHERE status = 'provisioning' AND updated_at < ?1
ORDER BY updated_at";

/// The claim of `req`, as the writer takes it.
fn claim_of(req: &ProvisionRequest) -> Transition {
    Transition::Claim {
        request_id: req.request_id.clone(),
        user_id: req.user_id.clone(),
        gpu_count: i64::from(req.gpu_count),
        duration_hours: i64::from(req.duration_hours),
    }
}

/// Runs one transition inside the batch's transaction.
fn apply(conn: &Connection, transition: &Transition, now: &str) -> Result<Applied, StoreError> {
    match transition {
        Transition::Claim {
            request_id,
            user_id,
            gpu_count,
            duration_hours,
        } => {
            let moved = conn
                .prepare_cached(CLAIM_SQL)?
                .execute(params![request_id, now])?;
            if moved > 0 {
                return Ok(Applied::Claim(Claim::Claimed));
            }
            let inserted = conn.prepare_cached(CLAIM_INSERT_SQL)?.execute(params![
                request_id,
                user_id,
                gpu_count,
                duration_hours,
                now,
            ])?;
            if inserted > 0 {
                return Ok(Applied::Claim(Claim::Claimed));
            }
            // Neither moved nor inserted: the row exists with a status outside
            // pending/provisioning. Reading it in the same transaction sees the same row.
            let value: String = conn
                .prepare_cached(STATUS_SQL)?
                .query_row(params![request_id], |r| r.get(0))?;
            match value.parse::<Status>() {
                Ok(status) if status.is_final() => Ok(Applied::Claim(Claim::AlreadyFinal(status))),
                _ => Err(StoreError::UnexpectedStatus {
                    request_id: request_id.clone(),
                    value,
                }),
            }
        }
        Transition::Complete {
            request_id,
            kubeconfig,
        } => {
            let changed = conn
                .prepare_cached(COMPLETE_SQL)?
                .execute(params![request_id, kubeconfig, now])?;
            Ok(Applied::Moved(changed > 0))
        }
        Transition::Fail { request_id, reason } => {
            let changed = conn
                .prepare_cached(FAIL_SQL)?
                .execute(params![request_id, reason, now])?;
            Ok(Applied::Moved(changed > 0))
        }
    }
}

/// Runs a statement without parameters or rows (BEGIN, COMMIT, ROLLBACK) from the statement
/// cache: `execute_batch` would parse it again each time, which cost as much as a tenth of a
/// transition (callgrind).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Rolls back the open transaction, if any. Its error is of no use: a failed ROLLBACK leaves
/// no transaction either (SQLite has rolled it back already, or the connection is unusable
/// and the next BEGIN says so).
fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = run_cached(conn, "ROLLBACK");
    }
}

/// Gives every transition not yet settled its own copy of `error`: the batch's transaction
/// failed as a whole, so none of them is committed.
fn settle_all(outcomes: &mut [Option<Result<Applied, StoreError>>], error: &StoreError) {
    for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
        *outcome = Some(Err(copy_of(error)));
    }
}

/// A copy of a transaction-wide error for each transition it failed. SQLite's own errors
/// copy exactly (code, extended code, message), so `is_transient` answers alike for every
/// copy; the others (not expected here) keep their message as a generic SQLite error.
fn copy_of(error: &StoreError) -> StoreError {
    let sqlite = match error {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(code, message)) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    };
    StoreError::Sqlite(sqlite)
}

/// Without `SQLITE_OPEN_URI` (which rusqlite sets by default), so a path that happens to start
/// with `file:` is still a path.
fn open_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// Sets up one connection, pooled or not, and returns the journal mode SQLite settled on.
/// The busy timeout comes first so that switching to WAL waits for other connections.
fn configure(conn: &mut Connection, busy_timeout: Duration) -> rusqlite::Result<String> {
    conn.busy_timeout(busy_timeout)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    // NORMAL instead of FULL: commits skip the fsync, and `make_durable` fsyncs once per batch
    // of offsets instead of once per request.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // 512 KiB of page cache per connection instead of SQLite's 2 MiB: the worker touches each
    // row a few times by primary key, so the interior pages of the index are what matters,
    // and one connection per worker thread at 2 MiB each would dominate the footprint.
    conn.pragma_update(None, "cache_size", -512)?;
    Ok(mode)
}

/// Hands checkpoints to a thread of their own (see `checkpoint.rs`): the writer's automatic
/// checkpoint moves far out, to a safety net, and the thread gets a connection of its own.
fn start_checkpointer(
    path: &Path,
    busy_timeout: Duration,
    writer: &Connection,
) -> Result<Checkpointer, StoreError> {
    let open = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    writer
        .pragma_update(
            None,
            "wal_autocheckpoint",
            checkpoint::WRITER_AUTOCHECKPOINT,
        )
        .map_err(open)?;
    let mut conn = Connection::open_with_flags(path, open_flags()).map_err(open)?;
    configure(&mut conn, busy_timeout).map_err(open)?;
    Checkpointer::start(conn).map_err(|source| StoreError::Thread {
        path: path.to_owned(),
        source,
    })
}

/// A read-only file shows up during set-up as SQLITE_READONLY (from switching to WAL or
/// creating the table); name it as such.
fn setup_error(path: &Path, source: rusqlite::Error) -> StoreError {
    if is_busy(&source) {
        StoreError::Busy {
            path: path.to_owned(),
            source,
        }
    } else if source.sqlite_error_code() == Some(ErrorCode::ReadOnly) {
        StoreError::NotWritable {
            path: path.to_owned(),
            source,
        }
    } else {
        StoreError::Open {
            path: path.to_owned(),
            source,
        }
    }
}

/// The required columns the table lacks. SQLite column names are case-insensitive.
fn missing_columns(conn: &Connection) -> rusqlite::Result<Vec<&'static str>> {
    let mut stmt =
        conn.prepare("SELECT lower(name) FROM pragma_table_info('provision_requests')")?;
    let present = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(REQUIRED_COLUMNS
        .into_iter()
        .filter(|column| !present.iter().any(|p| p == column))
        .collect())
}

/// Whether `request_id` alone carries a unique, non-partial index (a primary key or a UNIQUE
/// constraint or index), as the `ON CONFLICT(request_id)` of claim requires.
fn request_id_is_unique(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (
           SELECT 1 FROM pragma_index_list('provision_requests') AS il
           WHERE il.\"unique\" = 1 AND il.partial = 0
             AND (SELECT count(*) FROM pragma_index_info(il.name)) = 1
             AND (SELECT lower(name) FROM pragma_index_info(il.name)) = 'request_id')",
        [],
        |r| r.get(0),
    )
}

fn row_from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        request_id: r.get(0)?,
        user_id: r.get(1)?,
        gpu_count: r.get(2)?,
        duration_hours: r.get(3)?,
        status: r.get(4)?,
        kubeconfig: r.get(5)?,
        error_message: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

fn is_transient_sqlite(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::ReadOnly
                | ErrorCode::CannotOpen
        )
    )
}

/// Another connection holds the lock we need (past the busy timeout).
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// A primary-key or unique violation, as opposed to, say, a NOT NULL column the backend added.
fn is_key_conflict(e: &rusqlite::Error) -> bool {
    e.sqlite_error().is_some_and(|err| {
        err.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            || err.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    })
}

/// `path` with `suffix` appended to its last component, as SQLite names `-wal` and `-shm`.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// fdatasyncs the `-wal` file at `path` if it exists.
fn sync_wal(path: &Path) -> Result<(), StoreError> {
    // Opening and closing our own descriptor is safe for the `-wal` file only: SQLite keeps its
    // POSIX locks on the database and `-shm` files, and closing any descriptor of a file drops
    // all of this process's locks on it. Never do this to the database file.
    match File::open(path) {
        // fdatasync is what SQLite itself uses: it also flushes the size of a grown file.
        Ok(file) => file.sync_data().map_err(|source| StoreError::Sync {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Sync {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates the database file, if it does not exist yet, with access for its owner only: it
/// will hold every kubeconfig token, and SQLite would create it under the process umask
/// (usually world-readable). SQLite gives the `-wal` and `-shm` files the database's mode.
/// Any failure (a missing directory, no permission) is left for SQLite's own open to report.
fn create_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
    }
}

/// Warns at start when other users may read (or write) an existing database file.
fn warn_if_others_can_read(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o006 != 0 {
            let p = path.display();
            log::warn!(
                "Database {p} is accessible to other users (mode {mode:04o}) and holds every kubeconfig token; restrict it with `chmod o-rwx {p} {p}-wal {p}-shm`"
            );
        }
    }
}

/// fsyncs a file or directory (its entries, for a directory).
fn sync_path(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| StoreError::Sync {
            path: path.to_owned(),
            source,
        })
}

fn format_utc(t: SystemTime) -> String {
    // Before 1970 only with a badly set clock; the epoch is as good an answer as any.
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let in_day = secs % 86_400;
    if year > 9999 {
        // Past what the fixed width holds (a clock set absurdly far ahead): keep every digit.
        return format!(
            "{year}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:06}",
            in_day / 3600,
            in_day % 3600 / 60,
            in_day % 60,
            since.subsec_micros()
        );
    }
    // Digit by digit rather than `format!`: this runs for every write transaction, and the
    // formatting machinery cost ten times as much (measured with callgrind).
    let mut out = String::with_capacity(26);
    for (value, width, then) in [
        (year, 4, '-'),
        (month, 2, '-'),
        (day, 2, ' '),
        (in_day / 3600, 2, ':'),
        (in_day % 3600 / 60, 2, ':'),
        (in_day % 60, 2, '.'),
        (u64::from(since.subsec_micros()), 6, '\0'),
    ] {
        push_digits(&mut out, value, width);
        if then != '\0' {
            out.push(then);
        }
    }
    out
}

/// Appends the last `width` decimal digits of `value`, zero-padded.
fn push_digits(out: &mut String, value: u64, width: u32) {
    for place in (0..width).rev() {
        let digit = value / 10u64.pow(place) % 10;
        // A digit is below 10, so it fits a u8.
        out.push(char::from(b'0' + digit as u8));
    }
}

/// Year, month, day of the `days`-th day after 1970-01-01 in the proleptic Gregorian calendar.
/// Howard Hinnant's `civil_from_days`, restricted to days on or after the epoch so it stays in
/// unsigned arithmetic: shift to an era starting 0000-03-01, so the leap day ends each year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Instant;

    use proptest::prelude::*;
    use tempfile::TempDir;

    use super::*;

    fn req(request_id: &str) -> ProvisionRequest {
        ProvisionRequest {
            request_id: request_id.to_owned(),
            user_id: "alice".to_owned(),
            gpu_count: 4,
            duration_hours: 2,
        }
    }

    fn open_temp() -> (TempDir, Store) {
        open_temp_with(StoreOptions::new(2))
    }

    fn open_temp_with(options: StoreOptions) -> (TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(&dir.path().join("poc.db"), options).unwrap();
        (dir, store)
    }

    /// A second, independent connection, as the backend would have.
    fn raw(store: &Store) -> Connection {
        Connection::open(store.path()).unwrap()
    }

    /// Forces a row into `status` with an old `updated_at`, as if it had been there for a while.
    fn force(store: &Store, request_id: &str, status: &str) {
        let conn = raw(store);
        let changed = conn
            .execute(
                "UPDATE provision_requests SET status = ?2, updated_at = ?3 WHERE request_id = ?1",
                params![request_id, status, OLD],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }

    fn status_of(store: &Store, request_id: &str) -> Option<String> {
        store.get(request_id).unwrap().map(|row| row.status)
    }

    const OLD: &str = "2000-01-01 00:00:00.000000";

    #[test]
    fn open_creates_table_with_every_required_column() {
        let (_dir, store) = open_temp();
        let conn = raw(&store);
        assert_eq!(missing_columns(&conn).unwrap(), Vec::<&str>::new());
        assert!(request_id_is_unique(&conn).unwrap());
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn open_twice_keeps_existing_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("poc.db");
        {
            let store = Store::open(&path, 1).unwrap();
            store.insert_pending(&req("r1")).unwrap();
        }
        let store = Store::open(&path, 1).unwrap();
        assert_eq!(status_of(&store, "r1").as_deref(), Some("pending"));
    }

    #[test]
    fn open_accepts_backend_table_with_extra_columns_and_other_types() {
        // Roughly what SQLAlchemy emits for the backend's model: a surrogate key, VARCHAR and
        // DATETIME declared types, and a column the worker does not know.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("poc.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE provision_requests (
                   id INTEGER NOT NULL PRIMARY KEY,
                   request_id VARCHAR(36) NOT NULL UNIQUE,
                   user_id VARCHAR(255) NOT NULL,
                   gpu_count INTEGER NOT NULL,
                   duration_hours INTEGER NOT NULL,
                   status VARCHAR(12) NOT NULL,
                   kubeconfig TEXT,
                   error_message TEXT,
                   region VARCHAR(32) DEFAULT 'eu-west',
                   created_at DATETIME NOT NULL,
                   updated_at DATETIME NOT NULL)",
            )
            .unwrap();
        let store = Store::open(&path, 1).unwrap();
        assert_eq!(store.claim(&req("r1")).unwrap(), Claim::Claimed);
        assert!(store.complete("r1", "kubeconfig").unwrap());
        assert_eq!(status_of(&store, "r1").as_deref(), Some("completed"));
    }

    #[test]
    fn open_rejects_table_lacking_columns_and_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("poc.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE provision_requests (
                   request_id TEXT PRIMARY KEY, USER_ID TEXT, gpu_count INTEGER,
                   duration_hours INTEGER, status TEXT, created_at TEXT)",
            )
            .unwrap();
        let err = Store::open(&path, 1).unwrap_err();
        match &err {
            StoreError::MissingColumns { columns, .. } => {
                assert_eq!(columns, &["kubeconfig", "error_message", "updated_at"]);
            }
            other => panic!("expected MissingColumns, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("kubeconfig, error_message, updated_at"),
            "{message}"
        );
        assert!(message.contains("migrate"), "{message}");
        assert!(!err.is_transient());
    }

    #[test]
    fn open_rejects_table_without_unique_request_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("poc.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE provision_requests (
                   id INTEGER PRIMARY KEY, request_id TEXT, user_id TEXT, gpu_count INTEGER,
                   duration_hours INTEGER, status TEXT, kubeconfig TEXT, error_message TEXT,
                   created_at TEXT, updated_at TEXT);
                 CREATE UNIQUE INDEX pair ON provision_requests(request_id, user_id);",
            )
            .unwrap();
        let err = Store::open(&path, 1).unwrap_err();
        assert!(
            matches!(err, StoreError::RequestIdNotUnique { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("CREATE UNIQUE INDEX"), "{err}");
    }

    // Tests and CI run as root, and permission bits do not stop root, so the unwritable cases
    // below use places that fail for root too.

    #[test]
    fn open_fails_naming_the_path_when_its_directory_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("poc.db");
        check_open_fails_naming(&path);
        assert!(!dir.path().join("no-such-dir").exists());
    }

    #[test]
    fn open_fails_naming_the_path_when_its_parent_is_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "not a directory").unwrap();
        check_open_fails_naming(&dir.path().join("file").join("poc.db"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn open_fails_naming_the_path_in_a_directory_where_root_cannot_create_files() {
        // procfs refuses new files to everyone, root included.
        check_open_fails_naming(Path::new("/proc/provision-worker-store-test.db"));
    }

    #[test]
    fn open_fails_with_not_writable_on_a_read_only_database() {
        // A header "write version" above 2 makes SQLite treat the file as read-only
        // (https://www.sqlite.org/fileformat2.html, offset 18): the same SQLITE_READONLY a
        // read-only file or mount gives, and one root cannot override.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("poc.db");
        // A plain connection, not a `Store`: r2d2 may close pooled connections on a background
        // thread after the pool is dropped, and until the last one closes, page 1 may still be
        // in the `-wal` file rather than in the bytes patched below.
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.close().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[18..20], &[2, 2], "a wal database");
        bytes[18] = 3;
        std::fs::write(&path, bytes).unwrap();

        let err = Store::open(&path, 1).unwrap_err();
        assert!(matches!(err, StoreError::NotWritable { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("not writable"), "{message}");
    }

    #[test]
    fn open_rejects_a_pool_of_zero() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(&dir.path().join("poc.db"), 0).unwrap_err();
        assert!(matches!(err, StoreError::ZeroPoolSize), "{err:?}");
    }

    #[test]
    fn claim_inserts_a_missing_row_as_provisioning() {
        let (_dir, store) = open_temp();
        assert_eq!(store.claim(&req("r1")).unwrap(), Claim::Claimed);
        let row = store.get("r1").unwrap().unwrap();
        assert_eq!(row.user_id, "alice");
        assert_eq!((row.gpu_count, row.duration_hours), (4, 2));
        assert_eq!(row.status, "provisioning");
        assert_eq!(row.created_at, row.updated_at);
        assert_eq!((row.kubeconfig, row.error_message), (None, None));
    }

    #[test]
    fn claim_moves_pending_to_provisioning_and_bumps_updated_at() {
        let (_dir, store) = open_temp();
        store.insert_pending(&req("r1")).unwrap();
        force(&store, "r1", "pending");
        assert_eq!(store.claim(&req("r1")).unwrap(), Claim::Claimed);
        let row = store.get("r1").unwrap().unwrap();
        assert_eq!(row.status, "provisioning");
        assert!(row.updated_at.as_str() > OLD, "{row:?}");
    }

    #[test]
    fn claim_keeps_the_backend_fields_of_an_existing_row() {
        let (_dir, store) = open_temp();
        store.insert_pending(&req("r1")).unwrap();
        let mut other = req("r1");
        other.user_id = "mallory".to_owned();
        other.gpu_count = 64;
        assert_eq!(store.claim(&other).unwrap(), Claim::Claimed);
        let row = store.get("r1").unwrap().unwrap();
        assert_eq!((row.user_id.as_str(), row.gpu_count), ("alice", 4));
    }

    #[test]
    fn claim_again_after_a_crash_reclaims_a_provisioning_row() {
        let (_dir, store) = open_temp();
        assert_eq!(store.claim(&req("r1")).unwrap(), Claim::Claimed);
        force(&store, "r1", "provisioning");
        assert_eq!(store.claim(&req("r1")).unwrap(), Claim::Claimed);
        assert!(store.get("r1").unwrap().unwrap().updated_at.as_str() > OLD);
    }

    #[test]
    fn claim_on_a_final_row_returns_already_final_and_changes_nothing() {
        for (status, expected) in [("completed", Status::Completed), ("failed", Status::Failed)] {
            let (_dir, store) = open_temp();
            store.claim(&req("r1")).unwrap();
            force(&store, "r1", status);
            let before = store.get("r1").unwrap().unwrap();
            assert_eq!(
                store.claim(&req("r1")).unwrap(),
                Claim::AlreadyFinal(expected)
            );
            assert_eq!(store.get("r1").unwrap().unwrap(), before);
        }
    }

    #[test]
    fn claim_on_an_unknown_status_is_an_error_and_changes_nothing() {
        let (_dir, store) = open_temp();
        store.claim(&req("r1")).unwrap();
        force(&store, "r1", "PENDING");
        let before = store.get("r1").unwrap().unwrap();
        let err = store.claim(&req("r1")).unwrap_err();
        assert!(
            matches!(&err, StoreError::UnexpectedStatus { value, .. } if value == "PENDING"),
            "{err:?}"
        );
        assert!(!err.is_transient());
        assert_eq!(store.get("r1").unwrap().unwrap(), before);
    }

    #[test]
    fn complete_moves_only_a_provisioning_row() {
        let (_dir, store) = open_temp();
        assert!(!store.complete("missing", "k").unwrap());
        assert_eq!(store.get("missing").unwrap(), None);

        store.insert_pending(&req("r1")).unwrap();
        assert!(!store.complete("r1", "k").unwrap());
        assert_eq!(status_of(&store, "r1").as_deref(), Some("pending"));

        store.claim(&req("r1")).unwrap();
        assert!(store.complete("r1", "first").unwrap());
        assert!(!store.complete("r1", "second").unwrap());
        let row = store.get("r1").unwrap().unwrap();
        assert_eq!(row.status, "completed");
        assert_eq!(row.kubeconfig.as_deref(), Some("first"));
    }

    #[test]
    fn fail_moves_pending_and_provisioning_rows_but_not_final_ones() {
        let (_dir, store) = open_temp();
        assert!(!store.fail("missing", "why").unwrap());

        store.insert_pending(&req("pending")).unwrap();
        assert!(store.fail("pending", "bad message").unwrap());
        let row = store.get("pending").unwrap().unwrap();
        assert_eq!(row.status, "failed");
        assert_eq!(row.error_message.as_deref(), Some("bad message"));

        store.claim(&req("provisioning")).unwrap();
        assert!(store.fail("provisioning", "quota").unwrap());
        assert_eq!(status_of(&store, "provisioning").as_deref(), Some("failed"));

        store.claim(&req("completed")).unwrap();
        store.complete("completed", "k").unwrap();
        assert!(!store.fail("completed", "late").unwrap());
        let row = store.get("completed").unwrap().unwrap();
        assert_eq!(
            (row.status.as_str(), row.error_message),
            ("completed", None)
        );

        assert!(!store.fail("pending", "again").unwrap());
        let row = store.get("pending").unwrap().unwrap();
        assert_eq!(row.error_message.as_deref(), Some("bad message"));
    }

    #[test]
    fn sql_transitions_follow_can_move_to() {
        type Op = fn(&Store, &str) -> bool;
        let ops: [(Status, Op); 3] = [
            (Status::Provisioning, |s, id| {
                s.claim(&req(id)).unwrap() == Claim::Claimed
            }),
            (Status::Completed, |s, id| s.complete(id, "k").unwrap()),
            (Status::Failed, |s, id| s.fail(id, "why").unwrap()),
        ];
        let (_dir, store) = open_temp();
        for from in Status::ALL {
            for (to, op) in ops {
                let id = format!("{from}-{to}");
                store.claim(&req(&id)).unwrap();
                force(&store, &id, from.as_str());
                let moved = op(&store, &id);
                assert_eq!(moved, from.can_move_to(to), "{from} -> {to}");
                let now = status_of(&store, &id).unwrap();
                let expected = if moved { to } else { from };
                assert_eq!(now, expected.as_str(), "{from} -> {to}");
            }
        }
    }

    /// Runs each of `ops` on its own thread, all in one batch of group commit, in the order
    /// given: a first claim leads a batch of its own and is held at the writer until every op
    /// is queued behind it. Returns their results in order, and checks that it took exactly
    /// two transactions.
    fn in_one_batch<'s, T: Send>(
        store: &'s Store,
        ops: Vec<Box<dyn FnOnce(&'s Store) -> T + Send + 's>>,
    ) -> Vec<T> {
        let before = store.write_counts();
        let n = ops.len();
        let held = store.writer();
        let results = std::thread::scope(|s| {
            let blocker = s.spawn(|| store.claim(&req("blocker")));
            wait_for_queue(store, 1);
            // One at a time, so they queue (and run) in the order given.
            let handles: Vec<_> = ops
                .into_iter()
                .enumerate()
                .map(|(i, op)| {
                    let handle = s.spawn(move || op(store));
                    wait_for_queue(store, 2 + i);
                    handle
                })
                .collect();
            wait_for_queue(store, 1 + n);
            drop(held);
            assert_eq!(blocker.join().unwrap().unwrap(), Claim::Claimed);
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<T>>()
        });
        let after = store.write_counts();
        assert_eq!(
            after.transactions - before.transactions,
            2,
            "the blocker's transaction and one for the batch: {before:?} -> {after:?}"
        );
        results
    }

    fn wait_for_queue(store: &Store, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.group.waiting() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} queued",
                store.group.waiting()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    type Op<'s> = Box<dyn FnOnce(&'s Store) -> Result<Applied, StoreError> + Send + 's>;

    fn claim_op<'s>(id: &'static str) -> Op<'s> {
        Box::new(move |s: &Store| s.claim(&req(id)).map(Applied::Claim))
    }

    fn complete_op<'s>(id: &'static str, kubeconfig: &'static str) -> Op<'s> {
        Box::new(move |s: &Store| s.complete(id, kubeconfig).map(Applied::Moved))
    }

    fn fail_op<'s>(id: &'static str) -> Op<'s> {
        Box::new(move |s: &Store| s.fail(id, "quota").map(Applied::Moved))
    }

    /// An audit of every insert and status change, written by triggers inside the
    /// transitions' own transactions.
    fn add_audit(store: &Store) {
        raw(store)
            .execute_batch(
                "CREATE TABLE audit (request_id TEXT, old TEXT, new TEXT);
                 CREATE TRIGGER audit_insert AFTER INSERT ON provision_requests BEGIN
                   INSERT INTO audit VALUES (NEW.request_id, NULL, NEW.status); END;
                 CREATE TRIGGER audit_update AFTER UPDATE OF status ON provision_requests BEGIN
                   INSERT INTO audit VALUES (NEW.request_id, OLD.status, NEW.status); END;",
            )
            .unwrap();
    }

    /// `(old, new)` of each audited change of `request_id`, in order.
    fn audit_of(store: &Store, request_id: &str) -> Vec<(Option<String>, String)> {
        let conn = raw(store);
        let mut stmt = conn
            .prepare("SELECT old, new FROM audit WHERE request_id = ?1 ORDER BY rowid")
            .unwrap();
        stmt.query_map(params![request_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// How many times the audit saw `request_id` become `completed`.
    fn completions_of(store: &Store, request_id: &str) -> usize {
        audit_of(store, request_id)
            .into_iter()
            .filter(|(_, new)| new == "completed")
            .count()
    }

    #[test]
    fn a_batch_commits_once_and_each_transition_gets_its_own_outcome() {
        let (_dir, store) = open_temp();
        for id in ["provisioning", "moved", "final"] {
            store.claim(&req(id)).unwrap();
        }
        store.insert_pending(&req("pending")).unwrap();
        // The backend moved one row while we worked; another is already final.
        force(&store, "moved", "failed");
        assert!(store.complete("final", "first").unwrap());

        let results = in_one_batch(
            &store,
            vec![
                complete_op("provisioning", "k"),
                complete_op("moved", "k"),
                claim_op("final"),
                claim_op("fresh"),
                fail_op("pending"),
                complete_op("missing", "k"),
                claim_op("provisioning"),
            ],
        );
        let results: Vec<Applied> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            results,
            [
                Applied::Moved(true),
                Applied::Moved(false),
                Applied::Claim(Claim::AlreadyFinal(Status::Completed)),
                Applied::Claim(Claim::Claimed),
                Applied::Moved(true),
                Applied::Moved(false),
                // In arrival order: the completion above already ran, so the row is final.
                Applied::Claim(Claim::AlreadyFinal(Status::Completed)),
            ]
        );
        for (id, status) in [
            ("provisioning", "completed"),
            ("moved", "failed"),
            ("final", "completed"),
            ("fresh", "provisioning"),
            ("pending", "failed"),
        ] {
            assert_eq!(status_of(&store, id).as_deref(), Some(status), "{id}");
        }
        assert_eq!(status_of(&store, "missing"), None);
        let kept = store.get("final").unwrap().unwrap().kubeconfig;
        assert_eq!(kept.as_deref(), Some("first"));
    }

    #[test]
    fn complete_and_claim_write_both_in_one_transaction_each_with_its_own_outcome() {
        let (_dir, store) = open_temp();
        add_audit(&store);
        for id in ["a", "moved", "final"] {
            store.claim(&req(id)).unwrap();
        }
        force(&store, "moved", "failed");
        assert!(store.complete("final", "k").unwrap());
        let before = store.write_counts();
        let outcomes = store.complete_and_claim("a", "ka", &req("b"));
        assert!(
            matches!(outcomes, (Ok(true), Ok(Claim::Claimed))),
            "{outcomes:?}"
        );
        let after = store.write_counts();
        assert_eq!(after.transactions - before.transactions, 1);
        assert_eq!(after.transitions - before.transitions, 2);
        // A completion that finds its row moved and a claim of a final row: each reports its
        // own outcome, neither changes anything.
        let outcomes = store.complete_and_claim("moved", "k", &req("final"));
        assert!(matches!(outcomes.0, Ok(false)), "{outcomes:?}");
        assert!(
            matches!(outcomes.1, Ok(Claim::AlreadyFinal(Status::Completed))),
            "{outcomes:?}"
        );
        assert_eq!(status_of(&store, "a").as_deref(), Some("completed"));
        assert_eq!(status_of(&store, "b").as_deref(), Some("provisioning"));
        assert_eq!(status_of(&store, "moved").as_deref(), Some("failed"));
        // One refused by the backend, the other committed.
        raw(&store)
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE UPDATE ON provision_requests
                 WHEN NEW.request_id = 'b' AND NEW.status = 'completed'
                 BEGIN SELECT RAISE(ABORT, 'refused by the backend'); END;",
            )
            .unwrap();
        let (completed, claimed) = store.complete_and_claim("b", "kb", &req("c"));
        assert!(!completed.unwrap_err().is_transient());
        assert_eq!(claimed.unwrap(), Claim::Claimed);
        assert_eq!(status_of(&store, "b").as_deref(), Some("provisioning"));
        assert_eq!(status_of(&store, "c").as_deref(), Some("provisioning"));
        let completions = completions_of(&store, "a");
        assert_eq!(completions, 1);
    }

    #[test]
    fn a_statement_refused_in_a_batch_fails_alone() {
        for raise in ["ABORT", "ROLLBACK"] {
            let (_dir, store) = open_temp();
            add_audit(&store);
            for id in ["good-1", "bad", "good-2"] {
                store.claim(&req(id)).unwrap();
            }
            // A trigger of the backend refuses one row: ABORT undoes that statement alone,
            // ROLLBACK the whole transaction it ran in.
            raw(&store)
                .execute_batch(&format!(
                    "CREATE TRIGGER refuse BEFORE UPDATE ON provision_requests
                     WHEN NEW.request_id = 'bad' AND NEW.status = 'completed'
                     BEGIN SELECT RAISE({raise}, 'refused by the backend'); END;"
                ))
                .unwrap();
            let results = in_one_batch(
                &store,
                vec![
                    complete_op("good-1", "k1"),
                    complete_op("bad", "k"),
                    complete_op("good-2", "k2"),
                ],
            );
            assert!(
                matches!(results[0], Ok(Applied::Moved(true))),
                "{raise}: {results:?}"
            );
            assert!(
                matches!(results[2], Ok(Applied::Moved(true))),
                "{raise}: {results:?}"
            );
            let err = results[1].as_ref().unwrap_err();
            assert!(!err.is_transient(), "{raise}: {err:?}");
            assert!(err.to_string().contains("refused by the backend"), "{err}");
            assert_eq!(status_of(&store, "bad").as_deref(), Some("provisioning"));
            for (id, kubeconfig) in [("good-1", "k1"), ("good-2", "k2")] {
                let row = store.get(id).unwrap().unwrap();
                assert_eq!(row.status, "completed", "{raise}");
                assert_eq!(row.kubeconfig.as_deref(), Some(kubeconfig));
                // Applied once, even when the transaction had to run again without `bad`.
                let completions = completions_of(&store, id);
                assert_eq!(completions, 1, "{raise}: {id}");
            }
        }
    }

    #[test]
    fn a_batch_waits_while_another_process_holds_the_lock_and_fails_nothing() {
        let (_dir, store) = open_temp();
        for id in ["a", "b", "c"] {
            store.claim(&req(id)).unwrap();
        }
        let other = raw(&store);
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let before = store.write_counts();
        let results = std::thread::scope(|s| {
            let handles: Vec<_> = [("a", true), ("b", true), ("c", false)]
                .into_iter()
                .map(|(id, complete)| {
                    let store = &store;
                    s.spawn(move || {
                        if complete {
                            store.complete(id, "k")
                        } else {
                            store.fail(id, "why")
                        }
                    })
                })
                .collect();
            wait_for_queue(&store, 3);
            // All three wait: one leads and sits in SQLite's busy handler, two follow.
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(
                store.write_counts(),
                before,
                "nothing committed while locked"
            );
            other.execute_batch("COMMIT").unwrap();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        for result in results {
            assert!(result.unwrap(), "every transition moved its row");
        }
        assert_eq!(status_of(&store, "a").as_deref(), Some("completed"));
        assert_eq!(status_of(&store, "c").as_deref(), Some("failed"));
    }

    #[test]
    fn a_lock_held_past_the_busy_timeout_fails_every_transition_of_the_batch_transiently() {
        let (_dir, store) = open_temp_with(StoreOptions {
            pool_size: 1,
            busy_timeout: Duration::from_millis(100),
        });
        for id in ["a", "b"] {
            store.claim(&req(id)).unwrap();
        }
        let other = raw(&store);
        let results = {
            let held = store.writer();
            other.execute_batch("BEGIN IMMEDIATE").unwrap();
            std::thread::scope(|s| {
                let handles: Vec<_> = ["a", "b", "c"]
                    .into_iter()
                    .map(|id| {
                        let store = &store;
                        s.spawn(move || store.complete(id, "k"))
                    })
                    .collect();
                wait_for_queue(&store, 3);
                drop(held);
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            })
        };
        other.execute_batch("ROLLBACK").unwrap();
        for result in results {
            let err = result.unwrap_err();
            assert!(err.is_transient(), "{err:?}");
        }
        assert_eq!(status_of(&store, "a").as_deref(), Some("provisioning"));
        assert!(
            store.complete("a", "k").unwrap(),
            "works once the lock is free"
        );
    }

    #[test]
    fn many_threads_each_transition_applies_exactly_once_with_its_own_outcome() {
        const THREADS: usize = 12;
        const OWN: usize = 60;
        const SHARED: usize = 24;
        let (_dir, store) = open_temp();
        add_audit(&store);
        let shared: Vec<String> = (0..SHARED).map(|i| format!("shared-{i}")).collect();
        for id in &shared {
            store.claim(&req(id)).unwrap();
        }
        let before = store.write_counts();
        let wins: Vec<Vec<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (store, shared) = (&store, &shared);
                    s.spawn(move || {
                        let mine = format!("by-{t}");
                        let mut won = Vec::new();
                        for i in 0..OWN {
                            let id = format!("own-{t}-{i}");
                            let request = req(&id);
                            assert_eq!(store.claim(&request).unwrap(), Claim::Claimed);
                            let final_status = if i % 2 == 0 {
                                assert!(store.complete(&id, &mine).unwrap(), "{id}");
                                Status::Completed
                            } else {
                                assert!(store.fail(&id, &mine).unwrap(), "{id}");
                                Status::Failed
                            };
                            assert_eq!(
                                store.claim(&request).unwrap(),
                                Claim::AlreadyFinal(final_status)
                            );
                            assert!(!store.complete(&id, "late").unwrap(), "{id}");
                            // Every thread races for each shared row; one completes it.
                            let shared_id = &shared[(i + t) % SHARED];
                            if store.complete(shared_id, &mine).unwrap() {
                                won.push(shared_id.clone());
                            }
                        }
                        won
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for t in 0..THREADS {
            for i in 0..OWN {
                let id = format!("own-{t}-{i}");
                let end = if i % 2 == 0 { "completed" } else { "failed" };
                let expected = [
                    (None, "provisioning".to_owned()),
                    (Some("provisioning".to_owned()), end.to_owned()),
                ];
                assert_eq!(audit_of(&store, &id), expected, "{id}");
            }
        }
        for id in &shared {
            let winners: Vec<usize> = (0..THREADS).filter(|t| wins[*t].contains(id)).collect();
            assert_eq!(winners.len(), 1, "{id} completed by {winners:?}");
            let row = store.get(id).unwrap().unwrap();
            assert_eq!(row.kubeconfig, Some(format!("by-{}", winners[0])), "{id}");
            let completions = completions_of(&store, id);
            assert_eq!(completions, 1, "{id}");
        }
        let counts = store.write_counts();
        let transitions = counts.transitions - before.transitions;
        let transactions = counts.transactions - before.transactions;
        assert_eq!(transitions, (THREADS * OWN * 5) as u64);
        // Twelve threads writing back to back: batches form.
        assert!(
            transactions < transitions,
            "{transitions} transitions in {transactions} transactions"
        );
    }

    #[test]
    fn a_held_write_lock_makes_transitions_fail_transiently_after_the_busy_timeout() {
        let busy_timeout = Duration::from_millis(200);
        let (_dir, store) = open_temp_with(StoreOptions {
            pool_size: 1,
            busy_timeout,
        });
        store.claim(&req("r1")).unwrap();
        let other = raw(&store);
        other.execute_batch("BEGIN IMMEDIATE").unwrap();

        let started = Instant::now();
        let err = store.claim(&req("r2")).unwrap_err();
        // Half, not all: SQLite's busy handler sleeps in steps and may stop a little short.
        assert!(
            started.elapsed() >= busy_timeout / 2,
            "{:?}",
            started.elapsed()
        );
        assert!(err.is_transient(), "{err:?}");
        assert!(err.to_string().contains("retry"), "{err}");
        assert!(store.complete("r1", "k").unwrap_err().is_transient());
        assert!(store.fail("r1", "why").unwrap_err().is_transient());

        other.execute_batch("ROLLBACK").unwrap();
        assert_eq!(store.claim(&req("r2")).unwrap(), Claim::Claimed);
        assert!(store.complete("r1", "k").unwrap());
    }

    #[test]
    fn awkward_text_is_stored_byte_exact() {
        let (_dir, store) = open_temp();
        let awkward = "O'Brien \"quoted\" '); DROP TABLE provision_requests; --\nline\r\n\
                       tab\tnul\0after 🚀 Ünïcödé 日本語 \u{202e}rtl";
        let mut request = req("r\0'\"\n🚀");
        request.user_id = awkward.to_owned();
        store.insert_pending(&request).unwrap();
        assert_eq!(store.claim(&request).unwrap(), Claim::Claimed);
        assert!(store.fail(&request.request_id, awkward).unwrap());
        let row = store.get(&request.request_id).unwrap().unwrap();
        assert_eq!(row.request_id.as_bytes(), request.request_id.as_bytes());
        assert_eq!(row.user_id.as_bytes(), awkward.as_bytes());
        assert_eq!(
            row.error_message.as_deref().map(str::as_bytes),
            Some(awkward.as_bytes())
        );
        // A prefix up to the NUL must not alias the full id.
        assert_eq!(store.get("r").unwrap(), None);
    }

    #[test]
    fn insert_pending_refuses_an_existing_request_id() {
        let (_dir, store) = open_temp();
        store.insert_pending(&req("r1")).unwrap();
        let err = store.insert_pending(&req("r1")).unwrap_err();
        assert!(
            matches!(&err, StoreError::AlreadyExists { request_id } if request_id == "r1"),
            "{err:?}"
        );
        assert!(!err.is_transient());
        assert_eq!(status_of(&store, "r1").as_deref(), Some("pending"));
    }

    #[test]
    fn stale_provisioning_lists_only_old_provisioning_rows_oldest_first() {
        let (_dir, store) = open_temp();
        for id in ["fresh", "old", "older", "old-completed", "old-pending"] {
            store.claim(&req(id)).unwrap();
        }
        let conn = raw(&store);
        for (id, status, updated_at) in [
            ("old", "provisioning", "2024-02-29 23:59:59.000001"),
            ("older", "provisioning", "2024-02-29 23:59:58.999999"),
            ("old-completed", "completed", OLD),
            ("old-pending", "pending", OLD),
        ] {
            conn.execute(
                "UPDATE provision_requests SET status = ?2, updated_at = ?3 WHERE request_id = ?1",
                params![id, status, updated_at],
            )
            .unwrap();
        }
        let stale = store.stale_provisioning(Duration::from_secs(600)).unwrap();
        let ids: Vec<&str> = stale.iter().map(|row| row.request_id.as_str()).collect();
        assert_eq!(ids, ["older", "old"]);
        assert!(store.stale_provisioning(Duration::MAX).unwrap().is_empty());
    }

    #[test]
    fn make_durable_syncs_the_wal_that_commits_go_to() {
        let (_dir, store) = open_temp();
        store.claim(&req("r1")).unwrap();
        assert!(store.wal_path.exists(), "{}", store.wal_path.display());
        assert_eq!(
            store.wal_path,
            sidecar(&std::fs::canonicalize(store.path()).unwrap(), "-wal")
        );
        store.make_durable().unwrap();
    }

    #[test]
    fn sync_wal_does_nothing_when_there_is_no_wal() {
        let dir = tempfile::tempdir().unwrap();
        sync_wal(&dir.path().join("poc.db-wal")).unwrap();
    }

    #[test]
    fn a_new_database_and_its_wal_and_shm_files_give_others_no_access() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, store) = open_temp();
        store.claim(&req("r1")).unwrap();
        for name in ["poc.db", "poc.db-wal", "poc.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{name} has mode {mode:o}");
        }
    }

    #[test]
    fn row_debug_hides_the_kubeconfig() {
        let (_dir, store) = open_temp();
        store.claim(&req("r1")).unwrap();
        store.complete("r1", "token: s3cr3t-t0ken").unwrap();
        let shown = format!("{:?}", store.get("r1").unwrap().unwrap());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn status_text_round_trips_and_rejects_other_spellings() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
            assert_eq!(status.to_string(), status.as_str());
        }
        for bad in ["", "Pending", "PENDING", "done", " pending"] {
            let err = bad.parse::<Status>().unwrap_err();
            assert_eq!(err.value, bad);
            assert!(err.to_string().starts_with("unknown status"));
        }
    }

    #[test]
    fn can_move_to_allows_exactly_the_legal_transitions() {
        use Status::*;
        let legal = [
            (Pending, Provisioning),
            (Provisioning, Provisioning),
            (Provisioning, Completed),
            (Pending, Failed),
            (Provisioning, Failed),
        ];
        for from in Status::ALL {
            for to in Status::ALL {
                assert_eq!(
                    from.can_move_to(to),
                    legal.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
            assert_eq!(from.is_final(), matches!(from, Completed | Failed));
        }
    }

    #[test]
    fn is_transient_covers_the_faults_that_clear_by_themselves() {
        let sqlite = |code| {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
        };
        for code in [
            rusqlite::ffi::SQLITE_BUSY,
            rusqlite::ffi::SQLITE_LOCKED,
            rusqlite::ffi::SQLITE_IOERR,
            rusqlite::ffi::SQLITE_IOERR_FSYNC,
            rusqlite::ffi::SQLITE_FULL,
            rusqlite::ffi::SQLITE_READONLY,
            rusqlite::ffi::SQLITE_CANTOPEN,
        ] {
            assert!(sqlite(code).is_transient(), "{code}");
        }
        for code in [
            rusqlite::ffi::SQLITE_CONSTRAINT,
            rusqlite::ffi::SQLITE_CORRUPT,
            rusqlite::ffi::SQLITE_ERROR,
        ] {
            assert!(!sqlite(code).is_transient(), "{code}");
        }
        let at_start = StoreError::Open {
            path: PathBuf::from("poc.db"),
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                None,
            ),
        };
        assert!(!at_start.is_transient());
        let fsync = StoreError::Sync {
            path: PathBuf::from("poc.db-wal"),
            source: io::Error::other("EIO"),
        };
        assert!(!fsync.is_transient());
    }

    #[test]
    fn error_messages_are_lower_case_without_a_trailing_period() {
        let failure = || {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            )
        };
        let path = PathBuf::from("/data/poc.db");
        let errors = [
            StoreError::ZeroPoolSize,
            StoreError::Open {
                path: path.clone(),
                source: failure(),
            },
            StoreError::NotWal {
                path: path.clone(),
                mode: "delete".to_owned(),
            },
            StoreError::NotWritable {
                path: path.clone(),
                source: failure(),
            },
            StoreError::MissingColumns {
                path: path.clone(),
                columns: vec!["status"],
            },
            StoreError::RequestIdNotUnique { path: path.clone() },
            StoreError::Sqlite(failure()),
            StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows),
            StoreError::Resolve {
                path: path.clone(),
                source: io::Error::other("ENOENT"),
            },
            StoreError::Sync {
                path: path.clone(),
                source: io::Error::other("EIO"),
            },
            StoreError::Thread {
                path,
                source: io::Error::other("EAGAIN"),
            },
            StoreError::AlreadyExists {
                request_id: "r1".to_owned(),
            },
            StoreError::UnexpectedStatus {
                request_id: "r1".to_owned(),
                value: "x".to_owned(),
            },
        ];
        for err in errors {
            let message = err.to_string();
            let first = message.chars().next().unwrap();
            assert!(first.is_lowercase(), "{message}");
            assert!(!message.ends_with('.'), "{message}");
            assert!(message.contains("; "), "says what to do: {message}");
        }
    }

    #[test]
    fn utc_now_has_the_sqlalchemy_datetime_shape() {
        let before = format_utc(SystemTime::now());
        let now = utc_now();
        let after = format_utc(SystemTime::now());
        assert!(before <= now && now <= after, "{before} {now} {after}");
        assert_eq!(now.len(), 26, "{now}");
        for (i, c) in now.char_indices() {
            match i {
                4 | 7 => assert_eq!(c, '-', "{now}"),
                10 => assert_eq!(c, ' ', "{now}"),
                13 | 16 => assert_eq!(c, ':', "{now}"),
                19 => assert_eq!(c, '.', "{now}"),
                _ => assert!(c.is_ascii_digit(), "{now}"),
            }
        }
    }

    #[test]
    fn format_utc_matches_known_instants() {
        check_utc(0, 0, "1970-01-01 00:00:00.000000");
        check_utc(951_782_400, 0, "2000-02-29 00:00:00.000000");
        check_utc(951_868_799, 999_999_999, "2000-02-29 23:59:59.999999");
        check_utc(1_000_000_000, 123_456_000, "2001-09-09 01:46:40.123456");
        check_utc(1_709_251_199, 1_000, "2024-02-29 23:59:59.000001");
        check_utc(4_102_444_800, 0, "2100-01-01 00:00:00.000000");
        check_utc(4_107_542_400, 0, "2100-03-01 00:00:00.000000");
        check_utc(253_402_300_799, 0, "9999-12-31 23:59:59.000000");
        let before_epoch = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(format_utc(before_epoch), "1970-01-01 00:00:00.000000");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Checks every operation against a model built from `can_move_to`, and that no status
        /// ever moves backwards or out of a final state.
        #[test]
        fn status_never_moves_backwards(ops in prop::collection::vec((0..4u8, 0..3usize), 1..40)) {
            let (_dir, store) = open_temp_with(StoreOptions::new(1));
            let ids = ["a", "b", "c"];
            let mut model: HashMap<&str, Status> = HashMap::new();
            for (op, which) in ops {
                let id = ids[which];
                let before = model.get(id).copied();
                match op {
                    0 => {
                        let expected = match before {
                            Some(s) if s.is_final() => Claim::AlreadyFinal(s),
                            _ => Claim::Claimed,
                        };
                        prop_assert_eq!(store.claim(&req(id)).unwrap(), expected);
                        if expected == Claim::Claimed {
                            model.insert(id, Status::Provisioning);
                        }
                    }
                    1 | 2 => {
                        let (to, moved) = if op == 1 {
                            (Status::Completed, store.complete(id, "k").unwrap())
                        } else {
                            (Status::Failed, store.fail(id, "why").unwrap())
                        };
                        prop_assert_eq!(moved, before.is_some_and(|s| s.can_move_to(to)));
                        if moved {
                            model.insert(id, to);
                        }
                    }
                    _ => {
                        let result = store.insert_pending(&req(id));
                        prop_assert_eq!(result.is_ok(), before.is_none());
                        if before.is_none() {
                            model.insert(id, Status::Pending);
                        }
                    }
                }
                for id in ids {
                    let stored = status_of(&store, id).map(|s| s.parse::<Status>().unwrap());
                    prop_assert_eq!(stored, model.get(id).copied());
                }
                let after = model.get(id).copied();
                if let (Some(b), Some(a)) = (before, after) {
                    prop_assert!(rank(a) >= rank(b), "{} moved back to {}", b, a);
                    prop_assert!(!b.is_final() || a == b, "final {} moved to {}", b, a);
                }
            }
        }

        /// `stale_provisioning` compares `updated_at` as text, which must order like time.
        #[test]
        fn format_utc_text_order_is_time_order(
            a in 0..253_402_300_800u64, b in 0..253_402_300_800u64,
            na in 0..1_000_000_000u32, nb in 0..1_000_000_000u32,
        ) {
            let ta = UNIX_EPOCH + Duration::new(a, na);
            let tb = UNIX_EPOCH + Duration::new(b, nb);
            let (fa, fb) = (format_utc(ta), format_utc(tb));
            // Equal at microsecond precision is the only way the texts may tie.
            let (ma, mb) = (u128::from(a) * 1_000_000 + u128::from(na / 1000),
                            u128::from(b) * 1_000_000 + u128::from(nb / 1000));
            prop_assert_eq!(fa.cmp(&fb), ma.cmp(&mb), "{} vs {}", fa, fb);
        }
    }

    fn rank(status: Status) -> u8 {
        match status {
            Status::Pending => 0,
            Status::Provisioning => 1,
            Status::Completed | Status::Failed => 2,
        }
    }

    fn check_open_fails_naming(path: &Path) {
        let err = Store::open(path, 1).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(!err.is_transient());
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    fn check_utc(secs: u64, nanos: u32, expected: &str) {
        assert_eq!(
            format_utc(UNIX_EPOCH + Duration::new(secs, nanos)),
            expected,
            "{secs}.{nanos:09}"
        );
    }
}
