//! What the SQLite tests share: a store in a temporary directory, with its backend at hand,
//! and ways to reach the file as the backend would.
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tempfile::TempDir;

use super::{Sqlite, StoreOptions};
use crate::request::ProvisionRequest;
use crate::store::Store;

/// A store on a fresh `poc.db` in its own directory; derefs to the [`Store`].
pub struct Temp {
    pub dir: TempDir,
    pub store: Store,
    /// The same backend the store writes through, for what only SQLite has.
    pub sqlite: Arc<Sqlite>,
}

impl Deref for Temp {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

pub fn req(request_id: &str) -> ProvisionRequest {
    ProvisionRequest {
        request_id: request_id.to_owned(),
        user_id: "alice".to_owned(),
        gpu_count: 4,
        duration_hours: 2,
    }
}

/// A store with a pool of two.
pub fn open_temp() -> Temp {
    open_temp_with(StoreOptions::new(2))
}

pub fn open_temp_with(options: StoreOptions) -> Temp {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(Sqlite::open(&dir.path().join("poc.db"), options).unwrap());
    Temp {
        dir,
        store: Store::on_sqlite(sqlite.clone()),
        sqlite,
    }
}

/// A second, independent connection, as the backend would have.
pub fn raw(store: &Temp) -> Connection {
    Connection::open(store.dir.path().join("poc.db")).unwrap()
}

/// Forces a row into `status` with an old `updated_at`, as if it had been there for a while.
pub fn force(store: &Temp, request_id: &str, status: &str) {
    let conn = raw(store);
    let changed = conn
        .execute(
            "UPDATE provision_requests SET status = ?2, updated_at = ?3 WHERE request_id = ?1",
            params![request_id, status, OLD],
        )
        .unwrap();
    assert_eq!(changed, 1);
}

pub fn status_of(store: &Store, request_id: &str) -> Option<String> {
    store.get(request_id).unwrap().map(|row| row.status)
}

pub const OLD: &str = "2000-01-01 00:00:00.000000";

pub fn wait_for_queue(store: &Temp, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.sqlite.group.waiting() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} queued",
            store.sqlite.group.waiting()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An audit of every insert and status change, written by triggers inside the
/// transitions' own transactions.
pub fn add_audit(store: &Temp) {
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
pub fn audit_of(store: &Temp, request_id: &str) -> Vec<(Option<String>, String)> {
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
pub fn completions_of(store: &Temp, request_id: &str) -> usize {
    audit_of(store, request_id)
        .into_iter()
        .filter(|(_, new)| new == "completed")
        .count()
}
