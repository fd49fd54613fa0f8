//! The durability thread: makes commits durable before the poller commits offsets, and
//! checkpoints the WAL off the writer's path. It has a connection of its own, and works on
//! SQLite's own file handles of that connection.
//!
//! **Syncs.** With `synchronous=NORMAL` a commit is written to the `-wal` file without an
//! fsync. [`Durability::sync`] asks this thread to fsync, through SQLite's own handles (the
//! `sqlite3_file`s of its connection, `xSync`), the `-wal` file and then the database file,
//! and answers every request that was waiting when it began. Both, because a commit may sit in
//! either: a checkpoint copies the WAL into the database file and lets the WAL be rewound, and
//! a checkpoint by a connection under `synchronous=OFF` (common in web backends) does so
//! without syncing anything, so the pages of earlier completions may be dirty in the page
//! cache of the database file while the WAL frames that held them are overwritten. The
//! handles stay open for the store's life: an fsync reports a writeback error to every
//! descriptor opened before it (once each), so one opened now and closed after would miss an
//! error that happened before it opened; and closing any descriptor of the database file
//! drops this process's POSIX locks on it, so only SQLite may close those.
//!
//! **Failure is final** (PostgreSQL's "fsyncgate", 2018): after a failed fsync Linux may mark
//! the unwritten pages clean, so a retry that succeeds proves nothing. The first failure is
//! kept in a [`Latch`] and every later sync fails with it; the same latch takes a failed
//! fsync of SQLite's own (a checkpoint's, `SQLITE_IOERR_FSYNC`). A `-wal` or database file
//! that is no longer the one SQLite has open (deleted, replaced) fails the sync too.
//!
//! **Checkpoints.** SQLite checkpoints on the committing connection by default, once the WAL
//! holds 1,000 pages: the transaction that crosses the mark then copies every page back and
//! fsyncs the WAL and the database before it returns. With one write connection, that stalls
//! every writer for the length of two fsyncs (profiles of the benchmark: the leader in `fsync`
//! a third of the time at full load). Here the writer only counts what it commits; past
//! [`EVERY`] transitions it wakes this thread, which runs a PASSIVE checkpoint on its own
//! connection while the writer goes on (WAL mode lets one checkpointer run beside one
//! writer). The writer keeps SQLite's automatic checkpoint as a safety net, at a mark far
//! enough away that it only fires when this thread falls behind. A sync waiting while a
//! checkpoint runs is answered after it (the checkpoint has fsynced both files by then).
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::raw::c_int;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;

use rusqlite::{Connection, ffi};

use super::super::{Fault, StoreError, SyncAnswer, Syncing};

/// Transitions committed between two checkpoints. Each writes at least one page to the WAL
/// and a completion often two or three, so this is about SQLite's default of 1,000 pages or
/// a little more.
pub const EVERY: u64 = 1_000;

/// The writer's own automatic checkpoint, in pages (SQLite's default is 1,000): reached only
/// if this thread cannot keep up, and then the writer checkpoints as SQLite always would.
pub const WRITER_AUTOCHECKPOINT: u32 = 10_000;

/// Owns the durability thread; dropping it stops and joins the thread.
pub struct Durability {
    shared: Arc<Shared>,
    /// The thread; taken and joined by `drop`.
    thread: Option<JoinHandle<()>>,
}

/// The first durability failure of a store, kept for good: once set, no sync succeeds.
#[derive(Debug, Default)]
pub struct Latch {
    failure: OnceLock<Failure>,
}

/// What the latch keeps of the error that set it (a `StoreError` is not `Clone`).
#[derive(Debug)]
enum Failure {
    Sync {
        path: PathBuf,
        os_error: Option<i32>,
        message: String,
    },
    Vanished {
        path: PathBuf,
    },
    Other {
        message: String,
    },
}

struct Shared {
    /// Transitions committed since the last checkpoint began.
    written: AtomicU64,
    /// Requests and the stop flag; guards the sleeping thread's check of them (and of
    /// `written`), so a wake-up between its check and its wait is not lost.
    state: Mutex<State>,
    wake: Condvar,
    latch: Arc<Latch>,
}

#[derive(Default)]
struct State {
    stop: bool,
    /// Callers waiting for the next sync to begin and end.
    waiting: Vec<SyncAnswer>,
}

/// The connection this thread works through, and SQLite's handles of its two files.
struct Files {
    conn: Connection,
    wal: Handle,
    db: Handle,
}

/// One file as SQLite has it open.
struct Handle {
    /// Where SQLite says the file is (full path, symlinks resolved).
    path: PathBuf,
    /// Device and inode of the file when the store opened, to notice a file deleted or
    /// replaced under SQLite (whose open descriptor would then write to a file nobody reads).
    id: (u64, u64),
    /// SQLite's `sqlite3_file` for it, from `sqlite3_file_control`.
    file: *mut ffi::sqlite3_file,
}

// SAFETY: the `sqlite3_file` pointers belong to the pager of `Files::conn`, which moves with
// them; they stay valid while that connection is open (its WAL stays open while the database
// is in WAL mode, which it cannot leave while the store's connections are open). `Files` is
// used by one thread at a time: built on the opening thread, then moved into the durability
// thread, which alone uses it.
unsafe impl Send for Files {}

impl Durability {
    /// Takes SQLite's handles of the database and `-wal` files from `conn` (a connection of
    /// its own, in WAL mode), syncs both once (which also syncs their directory entries), and
    /// starts the thread. A database whose `-wal` file SQLite does not have open fails.
    pub fn start(conn: Connection, latch: Arc<Latch>) -> Result<Durability, StoreError> {
        let files = Files::of(conn)?;
        files.sync(&latch)?;
        let path = files.db.path.clone();
        let shared = Arc::new(Shared {
            written: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            latch,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("db-durability".into())
                .spawn(move || run(&files, &shared))
                .map_err(|source| StoreError::Thread { path, source })?
        };
        Ok(Durability {
            shared,
            thread: Some(thread),
        })
    }

    /// The writer committed `transitions` more; wakes the thread when a checkpoint is due.
    pub fn committed(&self, transitions: u64) {
        let before = self
            .shared
            .written
            .fetch_add(transitions, Ordering::Relaxed);
        if before < EVERY && before + transitions >= EVERY {
            // Under the lock, so the thread is either before its check or waiting.
            let _guard = self.shared.lock();
            self.shared.wake.notify_one();
        }
    }

    /// Asks for a sync of everything committed so far; the result arrives on the returned
    /// [`Syncing`]. After a failure, at once and always the same failure.
    pub fn sync(&self) -> Syncing {
        let (answer, syncing) = Syncing::start();
        if let Some(error) = self.shared.latch.error() {
            answer.answer(Err(error));
        } else {
            self.shared.lock().waiting.push(answer);
            self.shared.wake.notify_one();
        }
        syncing
    }
}

impl Drop for Durability {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the database durability thread panicked");
        }
    }
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("written", &self.shared.written.load(Ordering::Relaxed))
            .field("failed", &self.shared.latch.failure.get().is_some())
            .finish()
    }
}

impl Latch {
    /// Keeps `error` if it is fatal and the first; later ones add nothing (the first is the
    /// one that matters, and the worker stops on it).
    pub fn set(&self, error: &StoreError) {
        if error.fault() != Fault::Fatal {
            return;
        }
        let failure = match error {
            StoreError::Sync { path, source } => Failure::Sync {
                path: path.clone(),
                os_error: source.raw_os_error(),
                message: source.to_string(),
            },
            StoreError::Vanished { path } => Failure::Vanished { path: path.clone() },
            other => Failure::Other {
                message: other.to_string(),
            },
        };
        let _ = self.failure.set(failure);
    }

    /// The kept failure, as a fresh error, if there was one.
    pub fn error(&self) -> Option<StoreError> {
        Some(match self.failure.get()? {
            Failure::Sync {
                path,
                os_error,
                message,
            } => StoreError::Sync {
                path: path.clone(),
                source: match os_error {
                    Some(code) => io::Error::from_raw_os_error(*code),
                    None => io::Error::other(message.clone()),
                },
            },
            Failure::Vanished { path } => StoreError::Vanished { path: path.clone() },
            Failure::Other { message } => StoreError::Sync {
                path: PathBuf::from("the database"),
                source: io::Error::other(message.clone()),
            },
        })
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update under this lock is a single push, take or assignment: a holder that
        // panicked left it consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Files {
    fn of(conn: Connection) -> Result<Files, StoreError> {
        // A read transaction makes the pager open the WAL of a WAL-mode database (and keep
        // it open); reading the header's schema cookie is one that parses no schema.
        conn.query_row("PRAGMA schema_version", [], |_| Ok(()))?;
        // SAFETY: `handle` is the open connection's; the calls below only read from it, on
        // the thread that owns it.
        let (db_path, wal_path, db_file, wal_file) = unsafe {
            let db = conn.handle();
            let name = ffi::sqlite3_db_filename(db, c"main".as_ptr());
            if name.is_null() {
                return Err(StoreError::WalNotOpen {
                    path: PathBuf::from("(no file name)"),
                });
            }
            let wal = ffi::sqlite3_filename_wal(name);
            (
                path_of(name),
                path_of(wal),
                file_pointer(&conn, ffi::SQLITE_FCNTL_FILE_POINTER),
                file_pointer(&conn, ffi::SQLITE_FCNTL_JOURNAL_POINTER),
            )
        };
        let (Some(db_file), Some(wal_file)) = (db_file, wal_file) else {
            return Err(StoreError::WalNotOpen { path: wal_path });
        };
        let id = |path: &Path| {
            identity(path).map_err(|_| StoreError::Vanished {
                path: path.to_owned(),
            })
        };
        Ok(Files {
            wal: Handle {
                id: id(&wal_path)?,
                path: wal_path,
                file: wal_file,
            },
            db: Handle {
                id: id(&db_path)?,
                path: db_path,
                file: db_file,
            },
            conn,
        })
    }

    /// Syncs the `-wal` file, then the database file; latches a failure.
    fn sync(&self, latch: &Latch) -> Result<(), StoreError> {
        if let Some(error) = latch.error() {
            return Err(error);
        }
        let result = self.wal.sync().and_then(|()| self.db.sync());
        if let Err(e) = &result {
            latch.set(e);
        }
        result
    }
}

impl Handle {
    /// fsyncs the file through SQLite's handle, after checking that the path still names the
    /// file SQLite has open (a missing `-wal` file in WAL mode is an error, not "nothing to
    /// sync").
    fn sync(&self) -> Result<(), StoreError> {
        if identity(&self.path).ok() != Some(self.id) {
            return Err(StoreError::Vanished {
                path: self.path.clone(),
            });
        }
        // SAFETY: `file` is a live `sqlite3_file` of the connection in `Files` (see the
        // `Send` impl), used only by this thread. SQLite's unix `xSync` reads the descriptor
        // and flags and calls fdatasync (or fsync).
        let rc = unsafe {
            match (*(*self.file).pMethods).xSync {
                Some(x_sync) => x_sync(self.file, ffi::SQLITE_SYNC_NORMAL),
                None => ffi::SQLITE_MISUSE,
            }
        };
        if rc == ffi::SQLITE_OK {
            return Ok(());
        }
        // SQLite keeps errno from the failed fsync (and records it on the file); it is the
        // cause worth naming.
        let os = io::Error::last_os_error();
        let source = match os.raw_os_error() {
            Some(code) if code != 0 => os,
            _ => io::Error::other(format!("SQLite's sync failed with code {rc}")),
        };
        Err(StoreError::Sync {
            path: self.path.clone(),
            source,
        })
    }
}

fn run(files: &Files, shared: &Shared) {
    loop {
        let waiting = {
            let mut state = shared.lock();
            while !state.stop
                && state.waiting.is_empty()
                && shared.written.load(Ordering::Relaxed) < EVERY
            {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.stop {
                // The store is being dropped: whoever still waits sees its sync end unanswered.
                return;
            }
            std::mem::take(&mut state.waiting)
        };
        if !waiting.is_empty() {
            let result = files.sync(&shared.latch);
            for w in waiting {
                w.answer(match &result {
                    Ok(()) => Ok(()),
                    Err(_) => Err(shared.latch.error().unwrap_or(StoreError::SyncThreadGone)),
                });
            }
        }
        if shared.written.load(Ordering::Relaxed) >= EVERY {
            shared.written.store(0, Ordering::Relaxed);
            // PASSIVE: copies what no reader still needs and never waits for a lock. A failure
            // (a full disk, say) loses nothing: the pages stay in the WAL for the next try, and
            // the writer's own automatic checkpoint is still there. A failed fsync in it is
            // the exception: it is as fatal as one of ours, and on these same descriptors it
            // would not be reported again.
            if let Err(e) = files
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            {
                let e = StoreError::Sqlite(e);
                if e.fault() == Fault::Fatal {
                    log::error!("Background checkpoint failed: {e}");
                    shared.latch.set(&e);
                } else {
                    log::debug!("background checkpoint failed ({e}); the next one will retry");
                }
            }
        }
    }
}

/// The `sqlite3_file` of the main database (`FILE_POINTER`) or of its journal, the WAL in WAL
/// mode (`JOURNAL_POINTER`); `None` if SQLite has none open.
///
/// # Safety
/// `conn` must be open and used by this thread only while this runs.
unsafe fn file_pointer(conn: &Connection, op: c_int) -> Option<*mut ffi::sqlite3_file> {
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: per the function's contract; `file` outlives the call, and SQLite writes a
    // pointer into it for these two opcodes.
    let rc = unsafe {
        ffi::sqlite3_file_control(conn.handle(), c"main".as_ptr(), op, (&raw mut file).cast())
    };
    // SAFETY: a non-null `file` from SQLite points to a `sqlite3_file`.
    let open = rc == ffi::SQLITE_OK && !file.is_null() && unsafe { !(*file).pMethods.is_null() };
    open.then_some(file)
}

/// A path SQLite gave as a C string.
///
/// # Safety
/// `name` must be null or a NUL-terminated string that lives while this runs.
unsafe fn path_of(name: *const std::os::raw::c_char) -> PathBuf {
    if name.is_null() {
        return PathBuf::new();
    }
    // SAFETY: per the function's contract.
    let bytes = unsafe { CStr::from_ptr(name) }.to_bytes();
    PathBuf::from(OsStr::from_bytes(bytes))
}

/// Device and inode of the file at `path`.
fn identity(path: &Path) -> io::Result<(u64, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn wal_db(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn
    }

    #[test]
    fn the_thread_checkpoints_once_enough_is_committed_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let writer = wal_db(&path);
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        // Switching to WAL wrote the header page; the table goes to the WAL only, until a
        // checkpoint copies it into the database file.
        let pages = || std::fs::metadata(&path).unwrap().len() / 4096;
        writer
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
            .unwrap();
        assert_eq!(pages(), 1);
        let durability =
            Durability::start(Connection::open(&path).unwrap(), Arc::default()).unwrap();
        durability.committed(EVERY - 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(pages(), 1, "checkpointed before the mark");
        durability.committed(1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pages() < 2 {
            assert!(Instant::now() < deadline, "no checkpoint");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(durability.shared.written.load(Ordering::Relaxed), 0);
        // Dropping joins the thread (a hang here fails the test by timeout).
        drop(durability);
    }

    #[test]
    fn a_sync_answers_each_caller_and_names_the_files_sqlite_has_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let writer = wal_db(&path);
        writer.execute_batch("CREATE TABLE t (x)").unwrap();
        let files = Files::of(Connection::open(&path).unwrap()).unwrap();
        let canonical = std::fs::canonicalize(&path).unwrap();
        assert_eq!(files.db.path, canonical);
        assert_eq!(
            files.wal.path,
            PathBuf::from(format!("{}-wal", canonical.display()))
        );
        drop(files);
        let durability =
            Durability::start(Connection::open(&path).unwrap(), Arc::default()).unwrap();
        let first = durability.sync();
        let second = durability.sync();
        writer.execute_batch("INSERT INTO t VALUES (1)").unwrap();
        first.wait().unwrap();
        second.wait().unwrap();
    }

    #[test]
    fn a_missing_wal_fails_the_sync_and_every_sync_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let writer = wal_db(&path);
        writer.execute_batch("CREATE TABLE t (x)").unwrap();
        let latch = Arc::new(Latch::default());
        let durability =
            Durability::start(Connection::open(&path).unwrap(), latch.clone()).unwrap();
        durability.sync().wait().unwrap();
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        std::fs::remove_file(&wal).unwrap();
        let err = durability.sync().wait().unwrap_err();
        assert!(matches!(err, StoreError::Vanished { .. }), "{err:?}");
        assert_eq!(err.fault(), Fault::Fatal);
        assert!(err.to_string().contains("m.db-wal"), "{err}");
        // Putting a file back proves nothing: the failure is kept.
        std::fs::write(&wal, b"").unwrap();
        let again = durability.sync().wait().unwrap_err();
        assert!(matches!(again, StoreError::Vanished { .. }), "{again:?}");
        assert!(latch.error().is_some());
    }

    #[test]
    fn the_latch_keeps_the_first_fatal_error_only() {
        let latch = Latch::default();
        latch.set(&StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_BUSY),
            None,
        )));
        assert!(latch.error().is_none(), "a transient error is not kept");
        latch.set(&StoreError::Sync {
            path: PathBuf::from("/data/poc.db-wal"),
            source: io::Error::from_raw_os_error(5),
        });
        latch.set(&StoreError::Vanished {
            path: PathBuf::from("/data/poc.db"),
        });
        let kept = latch.error().unwrap();
        match &kept {
            StoreError::Sync { path, source } => {
                assert_eq!(path, Path::new("/data/poc.db-wal"));
                assert_eq!(source.raw_os_error(), Some(5));
            }
            other => panic!("expected the first error, got {other:?}"),
        }
        assert_eq!(kept.fault(), Fault::Fatal);
    }
}
