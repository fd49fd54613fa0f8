//! Why a store operation failed, and the one place that sorts database errors by what the
//! caller does about them ([`StoreError::fault`]).
use std::fmt;
use std::io;
use std::path::PathBuf;

use rusqlite::ErrorCode;

/// How the caller handles a [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// May clear by itself: retried with backoff, never turned into `failed`.
    Transient,
    /// Will not clear by retrying.
    Permanent,
}

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
    /// The thread that syncs the database is gone (it panicked): nothing can be made durable.
    SyncThreadGone,
    /// The checkpoint thread could not be started at open.
    Thread { path: PathBuf, source: io::Error },
    /// `insert_pending` found a row with that request id.
    AlreadyExists { request_id: String },
    /// A row's status is not one this worker knows, so it cannot tell what to do with it.
    UnexpectedStatus { request_id: String, value: String },
}

impl StoreError {
    /// How to handle this error: the one place that sorts them.
    pub fn fault(&self) -> Fault {
        if self.is_transient() {
            Fault::Transient
        } else {
            Fault::Permanent
        }
    }

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
            | StoreError::SyncThreadGone
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
                "cannot flush {} to disk: {source}; recent commits may not be durable, so check \
                 the storage before going on",
                path.display()
            ),
            StoreError::SyncThreadGone => write!(
                f,
                "the database sync thread stopped (it panicked); recent commits may not be \
                 durable: restart the worker"
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
            | StoreError::SyncThreadGone
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

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
}
