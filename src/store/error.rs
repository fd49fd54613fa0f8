//! Why a store operation failed, and the one place that sorts database errors by what the
//! caller does about them: [`StoreError::fault`].
//!
//! - **Transient**: the fault may clear by itself (busy, locked, I/O, a full disk, a read-only
//!   remount, no connection in time): the caller retries with backoff, never turns the request
//!   into `failed`, and its offset stays uncommitted meanwhile.
//! - **Permanent**: the database refuses this statement and will again (a constraint, a
//!   trigger's `RAISE`, a column or table that is missing, a status this worker does not own):
//!   the caller tries a bounded number of times, then ends the request's handling.
//! - **Fatal**: durability is lost (an fsync failed, the write-ahead log vanished): nothing may
//!   be committed to Kafka any more, and the worker stops.
//!
//! PostgreSQL's errors are sorted here too, by SQLSTATE (the client's `Class`, with two
//! changes, below): a lost connection, a server restarting (57P01, 57P03), a serialization
//! failure (40001), a deadlock (40P01), too many connections (53300), a lock the backend
//! holds past `lock_timeout` (55P03) are transient; a constraint or a trigger's `RAISE
//! EXCEPTION` (class 23, P0001), a missing column or privilege (class 42) permanent. Nothing
//! PostgreSQL says is fatal: a commit it acknowledged is in its WAL, and a server that cannot
//! flush its WAL stops itself (PANIC) and recovers from it.
use std::fmt;
use std::io;
use std::path::PathBuf;

use rusqlite::ffi;

/// How the caller handles a [`StoreError`] (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// May clear by itself: retry with backoff; never `failed`.
    Transient,
    /// The database refuses this and will again: bounded tries, then give up on the request.
    Permanent,
    /// Durability is lost: commit nothing more to Kafka, stop the worker.
    Fatal,
}

/// Why a store operation failed. [`StoreError::fault`] says what to do about it.
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
    /// An fsync (of the database or its `-wal` file, or of the directory at start) failed:
    /// the pages it was to write may be lost, and a later fsync that succeeds proves nothing
    /// (Linux marks them clean). Every sync after the first failure fails with it again.
    Sync { path: PathBuf, source: io::Error },
    /// The database file or its `-wal` file was removed or replaced while the store had it
    /// open: what SQLite writes goes to a file nobody will read again.
    Vanished { path: PathBuf },
    /// The database is in WAL mode but SQLite has no `-wal` file open for it, so there is
    /// nothing to make commits durable through.
    WalNotOpen { path: PathBuf },
    /// The thread that syncs the database is gone (it panicked): nothing can be made durable.
    SyncThreadGone,
    /// The durability thread could not be started at open.
    Thread { path: PathBuf, source: io::Error },
    /// `insert_pending` found a row with that request id.
    AlreadyExists { request_id: String },
    /// A row's status is not one this worker owns (the backend's own, such as `cancelled`):
    /// the worker leaves such a row as it is.
    ForeignStatus { request_id: String, status: String },
    /// A completion moved no row although the row is `provisioning`: the database ignored the
    /// update without an error (a trigger's `RAISE(IGNORE)`).
    Ignored { request_id: String },
    /// PostgreSQL: a statement failed while running (or its connection did).
    Postgres(blocking_postgres::Error),
    /// PostgreSQL: connecting or setting up at start failed (the server, TLS, the password,
    /// the session).
    PgConnect {
        server: String,
        source: blocking_postgres::Error,
    },
    /// PostgreSQL: no pooled connection within the pool timeout; `reason` is the last
    /// connection error.
    PgPool { server: String, reason: String },
    /// PostgreSQL: the table is missing (where the caller would not create it), lacks
    /// columns, has a column of a type the worker cannot write, no unique key on
    /// `request_id`, or this user cannot write it. `problem` follows "database at SERVER".
    PgSchema { server: String, problem: String },
    /// PostgreSQL: `DATABASE_PASSWORD_FILE` cannot be read at start.
    PgPasswordFile { path: PathBuf, reason: String },
    /// PostgreSQL: the row changed under each of a claim's rounds (inserted, deleted, moved
    /// back by the backend): tried again later.
    PgClaimRaced { request_id: String },
}

impl StoreError {
    /// How to handle this error: the one place that sorts store errors.
    ///
    /// Errors from `open` are permanent (found at start, they need an operator), except a
    /// database another process holds locked, which is waited for.
    pub fn fault(&self) -> Fault {
        match self {
            StoreError::Sqlite(e) => sqlite_fault(e),
            StoreError::Postgres(e) => postgres_fault(e),
            // At start: a server that is down or restarting is waited for; a refused
            // password or certificate, a bad setting, is not.
            StoreError::PgConnect { source, .. } => match source.class() {
                blocking_postgres::Class::Transient => Fault::Transient,
                blocking_postgres::Class::Permanent => Fault::Permanent,
            },
            StoreError::Pool(_)
            | StoreError::Busy { .. }
            | StoreError::PgPool { .. }
            | StoreError::PgClaimRaced { .. } => Fault::Transient,
            StoreError::Sync { .. } | StoreError::Vanished { .. } | StoreError::SyncThreadGone => {
                Fault::Fatal
            }
            StoreError::ZeroPoolSize
            | StoreError::Open { .. }
            | StoreError::NotWal { .. }
            | StoreError::NotWritable { .. }
            | StoreError::MissingColumns { .. }
            | StoreError::RequestIdNotUnique { .. }
            | StoreError::Resolve { .. }
            | StoreError::Thread { .. }
            | StoreError::WalNotOpen { .. }
            | StoreError::AlreadyExists { .. }
            | StoreError::ForeignStatus { .. }
            | StoreError::Ignored { .. }
            | StoreError::PgSchema { .. }
            | StoreError::PgPasswordFile { .. } => Fault::Permanent,
        }
    }

    /// Whether the fault may clear by itself ([`Fault::Transient`]).
    pub fn is_transient(&self) -> bool {
        self.fault() == Fault::Transient
    }

    /// Another connection held what this one needed (for the metrics): SQLite said busy or
    /// locked; PostgreSQL's `lock_timeout` passed (55P03), or a deadlock (40P01) or
    /// serialization failure (40001) ended the transaction.
    pub fn is_busy(&self) -> bool {
        matches!(self, StoreError::Busy { .. })
            || matches!(self, StoreError::Sqlite(e) if is_busy(e))
            || matches!(self, StoreError::Postgres(e)
                if matches!(e.code(), Some("55P03" | "40P01" | "40001")))
    }

    /// The database's own words for a refusal, as a backend's user should read them: a
    /// trigger's `RAISE` message, a constraint's "CHECK constraint failed: ...", or for
    /// anything else this error's message.
    pub fn reason(&self) -> String {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(_, Some(message))) => message.clone(),
            StoreError::Postgres(e) if e.as_db().is_some() => {
                e.as_db().map(|db| db.message.clone()).unwrap_or_default()
            }
            StoreError::ForeignStatus { status, .. } => {
                format!("status {status:?} is not one this worker owns")
            }
            StoreError::Ignored { .. } => "it left the row provisioning without an error (a \
                 trigger that ignores the update?)"
                .to_owned(),
            other => other.to_string(),
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
            StoreError::Sqlite(e) => match sqlite_fault(e) {
                Fault::Transient => write!(
                    f,
                    "database temporarily unavailable: {e}; retry, and if it persists look for \
                     a process holding a long write transaction, a full disk or failing storage"
                ),
                Fault::Fatal => write!(
                    f,
                    "the database could not flush its files to disk: {e}; recent commits may \
                     be lost, so nothing more is acknowledged to Kafka: check the storage \
                     (dmesg), then restart the worker to recover from what is on disk"
                ),
                Fault::Permanent if is_constraint(e) => write!(
                    f,
                    "the database refused the statement: {e}; a constraint or trigger of \
                     provision_requests does not allow it"
                ),
                Fault::Permanent => write!(
                    f,
                    "database statement failed: {e}; check that provision_requests matches \
                     sql/schema.sql"
                ),
            },
            StoreError::Pool(e) => write!(
                f,
                "no database connection within {} s: {e}; retry, and if it persists check that \
                 the database file is still there and readable",
                super::sqlite::POOL_TIMEOUT.as_secs()
            ),
            StoreError::Resolve { path, source } => write!(
                f,
                "cannot resolve the full path of database {}: {source}; check that nothing moves \
                 or removes the file while the worker starts",
                path.display()
            ),
            StoreError::Sync { path, source } => write!(
                f,
                "cannot flush {} to disk: {source}; writes since the last flush may be lost \
                 and a later flush would prove nothing, so nothing more is acknowledged to \
                 Kafka: check the storage (dmesg), then restart the worker to recover from what \
                 is on disk",
                path.display()
            ),
            StoreError::Vanished { path } => write!(
                f,
                "file {} was removed or replaced while the database was open, so commits go to a \
                 file nobody will read; find what removed it, restore the database if needed, \
                 and restart the worker",
                path.display()
            ),
            StoreError::WalNotOpen { path } => write!(
                f,
                "no write-ahead log is open at {} although the database is in wal \
                 mode; check that nothing deletes the -wal file, and report this if it \
                 persists",
                path.display()
            ),
            StoreError::SyncThreadGone => write!(
                f,
                "the database sync thread stopped (it panicked); recent commits may not be \
                 durable: restart the worker"
            ),
            StoreError::Thread { path, source } => write!(
                f,
                "cannot start the durability thread of database {}: {source}; the system is out \
                 of threads or memory, so raise the limit on processes (ulimit -u, TasksMax) or \
                 free memory",
                path.display()
            ),
            StoreError::AlreadyExists { request_id } => write!(
                f,
                "request {request_id:?} already exists; use a new request id"
            ),
            StoreError::ForeignStatus { request_id, status } => write!(
                f,
                "request {request_id:?} has status {status:?}, which this worker does not own \
                 (it moves only pending and provisioning rows) and leaves as it is; to have it \
                 processed, set the row back to pending and replay its dead letter"
            ),
            StoreError::Ignored { request_id } => write!(
                f,
                "the database ignored the completion of request {request_id:?} without an \
                 error (the row is still provisioning); look for a trigger on \
                 provision_requests that uses RAISE(IGNORE) (SQLite) or returns NULL \
                 (PostgreSQL)"
            ),
            StoreError::Postgres(e) => match postgres_fault(e) {
                Fault::Transient => write!(
                    f,
                    "database temporarily unavailable: {e}; if it persists look at the \
                     server's log, its connection limit, or a session holding rows locked \
                     (pg_locks)"
                ),
                Fault::Permanent if is_pg_refusal(e) => write!(
                    f,
                    "the database refused the statement: {e}; a constraint or trigger of \
                     provision_requests does not allow it"
                ),
                // Nothing of PostgreSQL's is fatal (see `postgres_fault`).
                Fault::Permanent | Fault::Fatal => write!(
                    f,
                    "database statement failed: {e}; check that provision_requests matches \
                     sql/schema-postgresql.sql"
                ),
            },
            StoreError::PgConnect { server, source } if source.is_transient() => write!(
                f,
                "cannot use PostgreSQL at {server}: {source}; check that the server is up \
                 and reachable (the worker waits for it for KAFKA_STARTUP_TIMEOUT_SECONDS at \
                 start)"
            ),
            StoreError::PgConnect { server, source } => write!(
                f,
                "cannot use PostgreSQL at {server}: {source}; fix DATABASE_URL (or \
                 DATABASE_PASSWORD_FILE) or the server's settings for this user"
            ),
            StoreError::PgPool { server, reason } => write!(
                f,
                "no connection to PostgreSQL at {server} within {} s ({reason}); if it \
                 persists check that the server is up and accepts this user",
                super::postgres::POOL_TIMEOUT.as_secs()
            ),
            StoreError::PgSchema { server, problem } => {
                write!(f, "the database at {server} {problem}")
            }
            StoreError::PgPasswordFile { path, reason } => write!(
                f,
                "cannot read DATABASE_PASSWORD_FILE {}: {reason}; make it readable by the \
                 worker's user",
                path.display()
            ),
            StoreError::PgClaimRaced { request_id } => write!(
                f,
                "the row of request {request_id:?} changed under each of three tries to claim \
                 it; if it persists look for a process rewriting it"
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
            StoreError::Postgres(e) | StoreError::PgConnect { source: e, .. } => Some(e),
            StoreError::ZeroPoolSize
            | StoreError::SyncThreadGone
            | StoreError::Vanished { .. }
            | StoreError::WalNotOpen { .. }
            | StoreError::NotWal { .. }
            | StoreError::MissingColumns { .. }
            | StoreError::RequestIdNotUnique { .. }
            | StoreError::AlreadyExists { .. }
            | StoreError::ForeignStatus { .. }
            | StoreError::Ignored { .. }
            | StoreError::PgPool { .. }
            | StoreError::PgSchema { .. }
            | StoreError::PgPasswordFile { .. }
            | StoreError::PgClaimRaced { .. } => None,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(e)
    }
}

impl From<blocking_postgres::Error> for StoreError {
    fn from(e: blocking_postgres::Error) -> StoreError {
        StoreError::Postgres(e)
    }
}

/// PostgreSQL's errors mid-run, sorted: the client's `Class` (by SQLSTATE: connection
/// exceptions, 40001, 40P01, class 53, 55P03, 57P01/57P03, ... transient; the rest
/// permanent), with two changes for a long-running worker:
/// - a refused password or certificate (a rotated secret, a renewed certificate) is an
///   outage until it is put right, as for Kafka: transient, never a `failed` request;
/// - damaged data or index pages (XX001, XX002) are not the request's fault: it waits for an
///   operator to repair them, as with a damaged SQLite file.
fn postgres_fault(e: &blocking_postgres::Error) -> Fault {
    if e.is_security() || matches!(e.code(), Some("XX001" | "XX002")) {
        return Fault::Transient;
    }
    match e.class() {
        blocking_postgres::Class::Transient => Fault::Transient,
        blocking_postgres::Class::Permanent => Fault::Permanent,
    }
}

/// A constraint (class 23) or a trigger's `RAISE EXCEPTION` (P0001) refused the statement.
fn is_pg_refusal(e: &blocking_postgres::Error) -> bool {
    e.code()
        .is_some_and(|code| code.starts_with("23") || code == "P0001")
}

/// SQLite's result codes (<https://www.sqlite.org/rescode.html>), sorted.
fn sqlite_fault(e: &rusqlite::Error) -> Fault {
    let rusqlite::Error::SqliteFailure(err, _) = e else {
        // rusqlite's own errors (a value of another type in a column, a row that is not
        // there): the table does not hold what the worker reads.
        return Fault::Permanent;
    };
    if matches!(
        err.extended_code,
        ffi::SQLITE_IOERR_FSYNC | ffi::SQLITE_IOERR_DIR_FSYNC
    ) {
        // SQLite's own fsync failed (a checkpoint, say): as fatal as one of ours.
        return Fault::Fatal;
    }
    match err.extended_code & 0xff {
        // Another connection holds a lock; the storage (I/O, a full disk, a read-only
        // remount, a moved or unreadable file); the moment (memory, an interrupt, a
        // statement aborted by a rollback, the WAL index being rebuilt, a schema change
        // under a prepared statement).
        ffi::SQLITE_BUSY
        | ffi::SQLITE_LOCKED
        | ffi::SQLITE_IOERR
        | ffi::SQLITE_FULL
        | ffi::SQLITE_READONLY
        | ffi::SQLITE_CANTOPEN
        | ffi::SQLITE_PERM
        | ffi::SQLITE_NOLFS
        | ffi::SQLITE_NOMEM
        | ffi::SQLITE_INTERRUPT
        | ffi::SQLITE_ABORT
        | ffi::SQLITE_PROTOCOL
        | ffi::SQLITE_SCHEMA
        // A damaged file is not the request's fault: the request waits for an operator to
        // restore it rather than fail.
        | ffi::SQLITE_CORRUPT
        | ffi::SQLITE_NOTADB => Fault::Transient,
        // SQLITE_CONSTRAINT (a constraint, or a trigger's RAISE with ABORT, FAIL or
        // ROLLBACK), SQLITE_ERROR (an SQL error: a column or table the statement needs is
        // gone), SQLITE_MISMATCH, SQLITE_TOOBIG, SQLITE_AUTH, SQLITE_RANGE, SQLITE_MISUSE,
        // SQLITE_INTERNAL, SQLITE_NOTFOUND, SQLITE_FORMAT: this statement is refused, and
        // the same statement would be refused again.
        _ => Fault::Permanent,
    }
}

/// Another connection holds the lock we need (past the busy timeout).
fn is_busy(e: &rusqlite::Error) -> bool {
    e.sqlite_error().is_some_and(|err| {
        matches!(
            err.extended_code & 0xff,
            ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED
        )
    })
}

/// A constraint or a trigger refused the statement.
fn is_constraint(e: &rusqlite::Error) -> bool {
    e.sqlite_error()
        .is_some_and(|err| err.extended_code & 0xff == ffi::SQLITE_CONSTRAINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32, message: Option<&str>) -> StoreError {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            ffi::Error::new(code),
            message.map(str::to_owned),
        ))
    }

    #[test]
    fn every_sqlite_result_code_is_sorted_by_what_the_caller_does() {
        use Fault::*;
        let table = [
            (ffi::SQLITE_BUSY, Transient),
            (ffi::SQLITE_BUSY_SNAPSHOT, Transient),
            (ffi::SQLITE_LOCKED, Transient),
            (ffi::SQLITE_IOERR, Transient),
            (ffi::SQLITE_IOERR_WRITE, Transient),
            (ffi::SQLITE_IOERR_SHORT_READ, Transient),
            (ffi::SQLITE_FULL, Transient),
            (ffi::SQLITE_READONLY, Transient),
            (ffi::SQLITE_READONLY_DBMOVED, Transient),
            (ffi::SQLITE_CANTOPEN, Transient),
            (ffi::SQLITE_PERM, Transient),
            (ffi::SQLITE_NOMEM, Transient),
            (ffi::SQLITE_INTERRUPT, Transient),
            (ffi::SQLITE_ABORT, Transient),
            (ffi::SQLITE_PROTOCOL, Transient),
            (ffi::SQLITE_SCHEMA, Transient),
            (ffi::SQLITE_CORRUPT, Transient),
            (ffi::SQLITE_NOTADB, Transient),
            (ffi::SQLITE_IOERR_FSYNC, Fatal),
            (ffi::SQLITE_IOERR_DIR_FSYNC, Fatal),
            (ffi::SQLITE_CONSTRAINT, Permanent),
            (ffi::SQLITE_CONSTRAINT_TRIGGER, Permanent),
            (ffi::SQLITE_CONSTRAINT_CHECK, Permanent),
            (ffi::SQLITE_CONSTRAINT_NOTNULL, Permanent),
            (ffi::SQLITE_CONSTRAINT_UNIQUE, Permanent),
            (ffi::SQLITE_ERROR, Permanent),
            (ffi::SQLITE_MISMATCH, Permanent),
            (ffi::SQLITE_TOOBIG, Permanent),
            (ffi::SQLITE_AUTH, Permanent),
            (ffi::SQLITE_RANGE, Permanent),
            (ffi::SQLITE_MISUSE, Permanent),
        ];
        for (code, fault) in table {
            let err = sqlite(code, None);
            assert_eq!(err.fault(), fault, "code {code}: {err}");
            assert_eq!(err.is_transient(), fault == Transient, "code {code}");
        }
        assert!(sqlite(ffi::SQLITE_BUSY, None).is_busy());
        assert!(sqlite(ffi::SQLITE_LOCKED_SHAREDCACHE, None).is_busy());
        assert!(!sqlite(ffi::SQLITE_IOERR, None).is_busy());
        let wrong_type = StoreError::Sqlite(rusqlite::Error::InvalidColumnType(
            4,
            "status".to_owned(),
            rusqlite::types::Type::Null,
        ));
        assert_eq!(wrong_type.fault(), Permanent);
    }

    #[test]
    fn errors_of_the_store_itself_are_sorted_too() {
        let path = || PathBuf::from("poc.db");
        let at_start = StoreError::Open {
            path: path(),
            source: rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_CANTOPEN), None),
        };
        assert_eq!(at_start.fault(), Fault::Permanent);
        let locked_at_start = StoreError::Busy {
            path: path(),
            source: rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_BUSY), None),
        };
        assert_eq!(locked_at_start.fault(), Fault::Transient);
        assert!(locked_at_start.is_busy());
        let fsync = StoreError::Sync {
            path: PathBuf::from("poc.db-wal"),
            source: io::Error::other("EIO"),
        };
        assert_eq!(fsync.fault(), Fault::Fatal);
        assert_eq!(StoreError::SyncThreadGone.fault(), Fault::Fatal);
        assert_eq!(StoreError::Vanished { path: path() }.fault(), Fault::Fatal);
        let foreign = StoreError::ForeignStatus {
            request_id: "r1".to_owned(),
            status: "cancelled".to_owned(),
        };
        assert_eq!(foreign.fault(), Fault::Permanent);
    }

    #[test]
    fn the_reason_of_a_refusal_is_the_databases_own_words() {
        let raised = sqlite(
            ffi::SQLITE_CONSTRAINT_TRIGGER,
            Some("gpu quota exceeded for bob"),
        );
        assert_eq!(raised.reason(), "gpu quota exceeded for bob");
        assert!(raised.to_string().contains("refused"), "{raised}");
        let foreign = StoreError::ForeignStatus {
            request_id: "r1".to_owned(),
            status: "cancelled".to_owned(),
        };
        assert!(
            foreign.reason().contains("\"cancelled\""),
            "{}",
            foreign.reason()
        );
    }

    fn pg(code: &str, message: &str) -> blocking_postgres::Error {
        blocking_postgres::Error::Db(Box::new(blocking_postgres::DbError {
            severity: "ERROR".to_owned(),
            code: code.to_owned(),
            message: message.to_owned(),
            detail: None,
            hint: None,
            schema: None,
            table: None,
            column: None,
            constraint: None,
            context: None,
        }))
    }

    #[test]
    fn postgresql_errors_are_sorted_as_the_issue_lists_them() {
        use Fault::*;
        let table = [
            ("57P01", Transient), // admin shutdown (pg_ctl restart -m fast, pg_terminate_backend)
            ("57P03", Transient), // the server is starting
            ("40001", Transient), // serialization failure
            ("40P01", Transient), // deadlock
            ("53300", Transient), // too many connections
            ("55P03", Transient), // lock_timeout: the backend holds the row
            ("57014", Transient), // statement_timeout
            ("25006", Transient), // a read-only server (a standby)
            ("53100", Transient), // disk full
            ("XX001", Transient), // data corrupted: wait for an operator
            ("28P01", Transient), // a password rotated under the worker: an outage
            ("23505", Permanent),
            ("23514", Permanent),
            ("P0001", Permanent), // a trigger's RAISE EXCEPTION
            ("42703", Permanent), // a column is gone
            ("42501", Permanent), // privileges
            ("22001", Permanent), // a value too long for its column
            ("XX000", Permanent),
        ];
        for (code, fault) in table {
            let err = StoreError::Postgres(pg(code, "m"));
            assert_eq!(err.fault(), fault, "{code}: {err}");
        }
        let lost = StoreError::Postgres(blocking_postgres::Error::Io {
            addr: "db:5432".to_owned(),
            what: "a query",
            source: io::Error::from(io::ErrorKind::ConnectionReset),
        });
        assert_eq!(lost.fault(), Fault::Transient);
        assert_eq!(
            StoreError::Postgres(blocking_postgres::Error::Closed).fault(),
            Transient
        );
        for busy in ["55P03", "40P01", "40001"] {
            assert!(StoreError::Postgres(pg(busy, "m")).is_busy(), "{busy}");
        }
        assert!(!StoreError::Postgres(pg("57P01", "m")).is_busy());
        // At start a refused password is not waited for; a server that is down is.
        let refused = StoreError::PgConnect {
            server: "db:5432".to_owned(),
            source: pg("28P01", "password authentication failed for user \"app\""),
        };
        assert_eq!(refused.fault(), Permanent);
        let starting = StoreError::PgConnect {
            server: "db:5432".to_owned(),
            source: pg("57P03", "the database system is starting up"),
        };
        assert_eq!(starting.fault(), Transient);
        assert_eq!(
            StoreError::PgPool {
                server: "db:5432".to_owned(),
                reason: "timed out".to_owned()
            }
            .fault(),
            Transient
        );
    }

    #[test]
    fn the_reason_of_a_postgresql_refusal_is_the_triggers_own_words() {
        let raised = StoreError::Postgres(pg("P0001", "gpu quota exceeded for bob"));
        assert_eq!(raised.reason(), "gpu quota exceeded for bob");
        assert!(raised.to_string().contains("refused"), "{raised}");
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
            StoreError::Vanished { path: path.clone() },
            StoreError::WalNotOpen { path: path.clone() },
            StoreError::SyncThreadGone,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_IOERR_FSYNC),
                None,
            )),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_CONSTRAINT_TRIGGER),
                Some("quota".to_owned()),
            )),
            StoreError::Thread {
                path,
                source: io::Error::other("EAGAIN"),
            },
            StoreError::AlreadyExists {
                request_id: "r1".to_owned(),
            },
            StoreError::ForeignStatus {
                request_id: "r1".to_owned(),
                status: "x".to_owned(),
            },
            StoreError::Ignored {
                request_id: "r1".to_owned(),
            },
            StoreError::Postgres(pg("55P03", "could not obtain lock")),
            StoreError::Postgres(pg("P0001", "quota")),
            StoreError::Postgres(pg("42703", "column x does not exist")),
            StoreError::PgConnect {
                server: "db:5432".to_owned(),
                source: pg("28P01", "password authentication failed"),
            },
            StoreError::PgConnect {
                server: "db:5432".to_owned(),
                source: pg("57P03", "starting up"),
            },
            StoreError::PgPool {
                server: "db:5432".to_owned(),
                reason: "timed out".to_owned(),
            },
            StoreError::PgSchema {
                server: "db:5432".to_owned(),
                problem: "has no table provision_requests; create it".to_owned(),
            },
            StoreError::PgPasswordFile {
                path: PathBuf::from("/run/pw"),
                reason: "denied".to_owned(),
            },
            StoreError::PgClaimRaced {
                request_id: "r1".to_owned(),
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
}
