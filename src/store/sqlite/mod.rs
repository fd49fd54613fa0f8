//! The SQLite backend, the default: one file shared with the backend, in WAL mode.
//!
//! Writes go through one connection, in group commit (`../group.rs`): a worker calling
//! [`Store::claim`](super::Store::claim), `complete` or `fail` blocks until its own transition
//! is committed, but one SQLite transaction carries the transitions of every worker that was
//! waiting for the writer at the time, each with its own conditional statement and its own
//! outcome (`transitions.rs`). A lone transition runs at once; nothing ever waits for company.
//! Reads (the health check, start-up reports, the operator commands) use a small pool.
//!
//! Durability: connections run in WAL mode with `synchronous=NORMAL`, which writes each commit
//! to the `-wal` file without an fsync; a sync on the durability thread (`durability.rs`)
//! fsyncs the `-wal` and the database file before the poller commits Kafka offsets, so one
//! sync covers a whole batch of completions.
//!
//! - `schema.rs`: opening, setting up and checking the file and the table.
//! - `transitions.rs`: the SQL of each transition; the batches group commit runs.
//! - `durability.rs`: the thread that syncs and checkpoints, through SQLite's own handles.
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OptionalExtension, params};

use super::group::GroupCommit;
use super::utc::{format_utc, utc_now};
use super::{Applied, Backend, Row, StoreError, Syncing, Transition, WriteCounts};
use crate::request::ProvisionRequest;
use durability::{Durability, Latch};
use transitions::Writer;

mod durability;
mod schema;
#[cfg(test)]
mod testing;
mod transitions;

/// How to open the SQLite store; [`Store::open`](super::Store::open) fills in the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Connections in the pool: one per worker thread is enough. Must be at least 1.
    pub pool_size: u32,
    /// How long a statement waits for another connection's write lock before failing with a
    /// transient busy error.
    pub busy_timeout: Duration,
}

/// The SQLite backend: a pool of connections to one file, and the one write connection.
#[derive(Debug)]
pub(super) struct Sqlite {
    /// Connections for the transitions; each already configured (WAL, synchronous, busy
    /// timeout). Lives as long as the store.
    pool: r2d2::Pool<SqliteConnectionManager>,
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
    /// fsynced; while the store's connections are open it keeps the entry that `open` made
    /// durable.
    ///
    /// Transitions reach it through `group` (whose leader holds this lock for one batch);
    /// `insert_pending` takes the lock directly.
    writer: Mutex<Writer>,
    /// The queue of transitions waiting for the writer: group commit (see `group.rs`).
    group: GroupCommit<Transition, Result<Applied, StoreError>>,
    /// For [`Store::write_counts`](super::Store::write_counts).
    transactions: AtomicU64,
    transitions: AtomicU64,
    /// Syncs before offsets are committed, and copies the WAL into the database off the
    /// writer's path (see `durability.rs`); told by the writer what it commits. Stopped and
    /// joined when the store is dropped.
    durability: Durability,
    /// The first durability failure, shared with `durability`: set also by a transition that
    /// met a failed fsync of SQLite's own, so that no later sync succeeds.
    latch: Arc<Latch>,
}

/// Long enough for one writer to finish a transaction (each is a single short statement), short
/// enough that a stuck lock surfaces as a retryable error within seconds.
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `pool.get()` waits for a free connection. The pool has one connection per worker,
/// so waiting means a connection could not be (re)opened; 30 s rides out a brief outage of the
/// file before the worker sees a transient error.
pub(super) const POOL_TIMEOUT: Duration = Duration::from_secs(30);

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

impl StoreOptions {
    /// `pool_size` connections with the default busy timeout.
    pub fn new(pool_size: u32) -> StoreOptions {
        StoreOptions {
            pool_size,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
        }
    }
}

impl Sqlite {
    /// Opens (creating if needed) the database file, applies `sql/schema.sql` and checks it
    /// (see `schema.rs`), then opens the pool of readers and starts the checkpoint thread.
    pub(super) fn open(path: &Path, options: StoreOptions) -> Result<Sqlite, StoreError> {
        if options.pool_size == 0 {
            return Err(StoreError::ZeroPoolSize);
        }
        let busy_timeout = options.busy_timeout;
        let writer = schema::open_writer(path, busy_timeout)?;
        let manager = SqliteConnectionManager::file(path)
            .with_flags(schema::open_flags())
            .with_init(move |conn| schema::configure(conn, busy_timeout).map(drop));
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size)
            .connection_timeout(POOL_TIMEOUT)
            // Connections to a local file do not go stale; keeping them keeps their prepared
            // statements.
            .idle_timeout(None)
            .max_lifetime(None)
            .build(manager)
            .map_err(StoreError::Pool)?;
        let latch = Arc::new(Latch::default());
        let durability = start_durability(path, busy_timeout, &writer, latch.clone())?;
        log::info!(
            "database {} ready (wal, pool of {})",
            path.display(),
            options.pool_size
        );
        Ok(Sqlite {
            pool,
            writer: Mutex::new(Writer::new(writer).map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?),
            group: GroupCommit::new(),
            transactions: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            durability,
            latch,
        })
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<SqliteConnectionManager>, StoreError> {
        self.pool.get().map_err(StoreError::Pool)
    }

    /// The write connection (see `writer`). A writer that panicked left nothing half-done
    /// behind the lock (SQLite rolls its open transaction back), so poisoning is ignored.
    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Backend for Sqlite {
    fn write(&self, transitions: Vec<Transition>) -> Vec<Result<Applied, StoreError>> {
        let outcomes = self
            .group
            .submit_all(transitions, |batch| self.run_batch(batch));
        for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
            // A failed fsync of SQLite's own (the writer's safety-net checkpoint): no later
            // sync may succeed.
            self.latch.set(e);
        }
        outcomes
    }

    fn start_sync(&self) -> Syncing {
        self.durability.sync()
    }

    fn write_counts(&self) -> WriteCounts {
        WriteCounts {
            transactions: self.transactions.load(Ordering::Relaxed),
            transitions: self.transitions.load(Ordering::Relaxed),
        }
    }

    fn insert_pending(&self, req: &ProvisionRequest) -> Result<(), StoreError> {
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

    fn get(&self, request_id: &str) -> Result<Option<Row>, StoreError> {
        let conn = self.conn()?;
        let row = conn
            .prepare_cached(GET_SQL)?
            .query_row(params![request_id], row_from_sql)
            .optional()?;
        Ok(row)
    }

    fn provisioning_before(&self, cutoff: SystemTime) -> Result<Vec<Row>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(STALE_SQL)?;
        let rows = stmt
            .query_map(params![format_utc(cutoff)], row_from_sql)?
            .collect::<Result<Vec<Row>, rusqlite::Error>>()?;
        Ok(rows)
    }
}

/// Starts the durability thread (see `durability.rs`) on a connection of its own; the
/// writer's automatic checkpoint moves far out, to a safety net.
fn start_durability(
    path: &Path,
    busy_timeout: Duration,
    writer: &Connection,
    latch: Arc<Latch>,
) -> Result<Durability, StoreError> {
    let open = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    writer
        .pragma_update(
            None,
            "wal_autocheckpoint",
            durability::WRITER_AUTOCHECKPOINT,
        )
        .map_err(open)?;
    let mut conn = Connection::open_with_flags(path, schema::open_flags()).map_err(open)?;
    schema::configure(&mut conn, busy_timeout).map_err(open)?;
    Durability::start(conn, latch)
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

/// A primary-key or unique violation, as opposed to, say, a NOT NULL column the backend added.
fn is_key_conflict(e: &rusqlite::Error) -> bool {
    e.sqlite_error().is_some_and(|err| {
        err.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            || err.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rusqlite::params;

    use super::testing::*;
    use super::*;
    use crate::store::Claim;

    #[test]
    fn awkward_text_is_stored_byte_exact() {
        let store = open_temp();
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
        let store = open_temp();
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
        let store = open_temp();
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
    fn make_durable_succeeds_until_the_wal_is_removed_and_never_after() {
        let store = open_temp();
        store.claim(&req("r1")).unwrap();
        store.make_durable().unwrap();
        let wal = store.dir.path().join("poc.db-wal");
        std::fs::remove_file(&wal).unwrap();
        // SQLite goes on writing to the removed file's descriptor: the commit succeeds, but
        // nothing it writes can be found again.
        assert!(store.complete("r1", "k").unwrap());
        let err = store.make_durable().unwrap_err();
        assert_eq!(err.fault(), crate::store::Fault::Fatal, "{err:?}");
        assert!(err.to_string().contains("poc.db-wal"), "{err}");
        assert!(store.make_durable().is_err(), "the failure is kept");
    }

    #[test]
    fn row_debug_hides_the_kubeconfig() {
        let store = open_temp();
        store.claim(&req("r1")).unwrap();
        store.complete("r1", "token: s3cr3t-t0ken").unwrap();
        let shown = format!("{:?}", store.get("r1").unwrap().unwrap());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}
