//! The background checkpointer: copies the WAL back into the database file off the writer's
//! path.
//!
//! SQLite checkpoints on the committing connection by default, once the WAL holds 1,000
//! pages: the transaction that crosses the mark then copies every page back and fsyncs the
//! WAL and the database before it returns. With one write connection, that stalls every
//! writer for the length of two fsyncs (profiles of the benchmark: the leader in `fsync` a
//! third of the time at full load). Here the writer only counts what it commits; past
//! [`EVERY`] transitions it wakes this thread, which runs a PASSIVE checkpoint on its own
//! connection while the writer goes on (WAL mode lets one checkpointer run beside one
//! writer). The writer keeps SQLite's automatic checkpoint as a safety net, at a mark far
//! enough away that it only fires when this thread falls behind.
//!
//! Durability is unchanged: a checkpoint fsyncs the WAL before copying and the database
//! after, whoever runs it, and the WAL is only reused after a complete checkpoint.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use rusqlite::Connection;

/// Transitions committed between two checkpoints. Each writes at least one page to the WAL
/// and a completion often two or three, so this is about SQLite's default of 1,000 pages or
/// a little more.
pub const EVERY: u64 = 1_000;

/// The writer's own automatic checkpoint, in pages (SQLite's default is 1,000): reached only
/// if this thread cannot keep up, and then the writer checkpoints as SQLite always would.
pub const WRITER_AUTOCHECKPOINT: u32 = 10_000;

/// Owns the checkpointer thread; dropping it stops and joins the thread.
pub struct Checkpointer {
    shared: Arc<Shared>,
    /// The thread; taken and joined by `drop`.
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// Transitions committed since the last checkpoint began.
    written: AtomicU64,
    /// Guards the sleeping thread's check of `written` and `stop`, so a wake-up between its
    /// check and its wait is not lost.
    stop: Mutex<bool>,
    wake: Condvar,
}

impl Checkpointer {
    /// Starts the thread, which checkpoints through `conn`.
    pub fn start(conn: Connection) -> std::io::Result<Checkpointer> {
        let shared = Arc::new(Shared {
            written: AtomicU64::new(0),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("db-checkpoint".into())
                .spawn(move || run(&conn, &shared))?
        };
        Ok(Checkpointer {
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
            let _guard = self
                .shared
                .stop
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *self
            .shared
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the database checkpoint thread panicked");
        }
    }
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("written", &self.shared.written.load(Ordering::Relaxed))
            .finish()
    }
}

fn run(conn: &Connection, shared: &Shared) {
    loop {
        {
            let mut stop = shared.stop.lock().unwrap_or_else(PoisonError::into_inner);
            while !*stop && shared.written.load(Ordering::Relaxed) < EVERY {
                stop = shared
                    .wake
                    .wait(stop)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if *stop {
                return;
            }
        }
        shared.written.store(0, Ordering::Relaxed);
        // PASSIVE: copies what no reader still needs and never waits for a lock. A failure
        // (a full disk, say) loses nothing: the pages stay in the WAL for the next try, and
        // the writer's own automatic checkpoint is still there.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            log::debug!("background checkpoint failed ({e}); the next one will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_checkpoints_once_enough_is_committed_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let writer = Connection::open(&path).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        // Switching to WAL wrote the header page; the table goes to the WAL only, until a
        // checkpoint copies it into the database file.
        let pages = || std::fs::metadata(&path).unwrap().len() / 4096;
        writer
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
            .unwrap();
        assert_eq!(pages(), 1);
        let checkpointer = Checkpointer::start(Connection::open(&path).unwrap()).unwrap();
        checkpointer.committed(EVERY - 1);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(pages(), 1, "checkpointed before the mark");
        checkpointer.committed(1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pages() < 2 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(checkpointer.shared.written.load(Ordering::Relaxed), 0);
        // Dropping joins the thread (a hang here fails the test by timeout).
        drop(checkpointer);
    }
}
