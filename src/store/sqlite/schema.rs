//! Opening the SQLite file and checking it at start: the file is created private, switched to
//! WAL, given the schema (`sql/schema.sql`), and checked for what would otherwise fail on the
//! first message (every column, a unique `request_id`, a writable file).
use std::fs::File;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::super::StoreError;

/// The schema applied at start ("create tables if needed").
pub(super) const SCHEMA: &str = include_str!("../../../sql/schema.sql");

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

/// Opens, sets up and checks the database at `path`; returns the connection that becomes the
/// one writer.
///
/// A missing directory is an error naming the path: creating directories is the deployment's
/// job, and a typo in `DATABASE_URL` should not silently start an empty database somewhere
/// new.
pub(super) fn open_writer(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
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

    // SQLite names the WAL after the full path with symlinks resolved; so does the directory
    // synced below.
    let canonical = std::fs::canonicalize(path).map_err(|source| StoreError::Resolve {
        path: path.to_owned(),
        source,
    })?;
    // The database and `-wal` files may have just been created: fsync their directory once
    // so their entries survive a power cut. Later syncs of the files then suffice.
    let dir = canonical.parent().unwrap_or(Path::new("/"));
    sync_path(dir)?;
    warn_if_others_can_read(path);
    Ok(setup)
}

/// Without `SQLITE_OPEN_URI` (which rusqlite sets by default), so a path that happens to start
/// with `file:` is still a path.
pub(super) fn open_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// Sets up one connection, pooled or not, and returns the journal mode SQLite settled on.
/// The busy timeout comes first so that switching to WAL waits for other connections.
pub(super) fn configure(conn: &mut Connection, busy_timeout: Duration) -> rusqlite::Result<String> {
    conn.busy_timeout(busy_timeout)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    // NORMAL instead of FULL: commits skip the fsync, and the durability thread syncs once per batch
    // of offsets instead of once per request.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // 512 KiB of page cache per connection instead of SQLite's 2 MiB: the worker touches each
    // row a few times by primary key, so the interior pages of the index are what matters,
    // and one connection per worker thread at 2 MiB each would dominate the footprint.
    conn.pragma_update(None, "cache_size", -512)?;
    Ok(mode)
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
pub(super) fn missing_columns(conn: &Connection) -> rusqlite::Result<Vec<&'static str>> {
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
pub(super) fn request_id_is_unique(conn: &Connection) -> rusqlite::Result<bool> {
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

/// Another connection holds the lock we need (past the busy timeout).
pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::Connection;

    use super::super::testing::*;
    use super::*;
    use crate::store::{Claim, Store};

    #[test]
    fn open_creates_table_with_every_required_column() {
        let store = open_temp();
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
    fn a_new_database_and_its_wal_and_shm_files_give_others_no_access() {
        use std::os::unix::fs::PermissionsExt;
        let store = open_temp();
        let dir = &store.dir;
        store.claim(&req("r1")).unwrap();
        for name in ["poc.db", "poc.db-wal", "poc.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{name} has mode {mode:o}");
        }
    }

    fn check_open_fails_naming(path: &Path) {
        let err = Store::open(path, 1).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(!err.is_transient());
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
}
