//! The transitions in SQL, and the batches group commit hands the writer: each transition
//! one conditional statement (a claim of a missing row two), each with its own outcome, one
//! transaction per batch; and [`Writer`], the write connection with the two statements every
//! transaction runs prepared once.
use std::ffi::CStr;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use rusqlite::{Connection, ffi, params};

use super::super::utc::utc_now;
use super::super::{Applied, Claim, Fault, Status, StoreError, Transition};
use super::Sqlite;

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

/// The one write connection, with `BEGIN IMMEDIATE` and `COMMIT` prepared once. Every
/// transaction runs both (a lone transition too, see `run_batch`); through rusqlite's
/// statement cache each cost a lookup and a re-insertion, about 850 instructions (callgrind),
/// as much as a fifth of a lone transition. Derefs to the connection for everything else.
pub(super) struct Writer {
    conn: Connection,
    begin: Prepared,
    commit: Prepared,
}

/// A statement of the writer's connection, prepared once and finalized with the `Writer`.
struct Prepared(NonNull<ffi::sqlite3_stmt>);

// SAFETY: the statements belong to `Writer::conn` and are only used with it: through `&Writer`,
// which the store hands out only under its mutex, so one thread at a time uses the connection
// and its statements, as SQLite's multi-thread mode (SQLITE_OPEN_NO_MUTEX) requires.
unsafe impl Send for Writer {}

impl Writer {
    pub(super) fn new(conn: Connection) -> rusqlite::Result<Writer> {
        let begin = Prepared::new(&conn, c"BEGIN IMMEDIATE")?;
        let commit = Prepared::new(&conn, c"COMMIT")?;
        Ok(Writer {
            conn,
            begin,
            commit,
        })
    }

    fn begin(&self) -> rusqlite::Result<()> {
        self.begin.run(&self.conn)
    }

    fn commit(&self) -> rusqlite::Result<()> {
        self.commit.run(&self.conn)
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("conn", &self.conn).finish()
    }
}

impl Deref for Writer {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Before the connection closes (its field is dropped after this): SQLite will not
        // close a connection with statements left.
        // SAFETY: both were prepared on `conn`, which is still open, and are not used again.
        unsafe {
            ffi::sqlite3_finalize(self.begin.0.as_ptr());
            ffi::sqlite3_finalize(self.commit.0.as_ptr());
        }
    }
}

impl Prepared {
    fn new(conn: &Connection, sql: &CStr) -> rusqlite::Result<Prepared> {
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `conn` is open; `sql` is NUL-terminated; SQLite writes the statement (or
        // null) into `stmt`.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                conn.handle(),
                sql.as_ptr(),
                -1,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &raw mut stmt,
                std::ptr::null_mut(),
            )
        };
        match NonNull::new(stmt) {
            Some(stmt) if rc == ffi::SQLITE_OK => Ok(Prepared(stmt)),
            _ => Err(last_error(conn, rc)),
        }
    }

    /// Runs the statement (it returns no rows) and resets it.
    fn run(&self, conn: &Connection) -> rusqlite::Result<()> {
        // SAFETY: the statement is live and belongs to `conn` (see `Writer`), whose caller
        // holds the store's lock.
        let rc = unsafe { ffi::sqlite3_step(self.0.as_ptr()) };
        let result = if rc == ffi::SQLITE_DONE {
            Ok(())
        } else {
            Err(last_error(conn, rc))
        };
        // SAFETY: as above. Its return repeats the step's error, already taken.
        unsafe { ffi::sqlite3_reset(self.0.as_ptr()) };
        result
    }
}

/// The connection's last error (extended code and message), as rusqlite reports errors.
#[cold]
#[inline(never)]
fn last_error(conn: &Connection, rc: i32) -> rusqlite::Error {
    // SAFETY: `conn` is open; the message is a NUL-terminated string SQLite owns until the
    // next call on the connection, copied here at once.
    let (code, message) = unsafe {
        let db = conn.handle();
        let message = ffi::sqlite3_errmsg(db);
        let message =
            (!message.is_null()).then(|| CStr::from_ptr(message).to_string_lossy().into_owned());
        (ffi::sqlite3_extended_errcode(db), message)
    };
    let code = if code == ffi::SQLITE_OK { rc } else { code };
    rusqlite::Error::SqliteFailure(ffi::Error::new(code), message)
}

impl Sqlite {
    /// Runs a batch of transitions in one write transaction, each with its own statement and
    /// outcome, and commits it. Called by the leader of group commit.
    ///
    /// Each transition's outcome is its own:
    /// - A statement the database refuses for good (a constraint or trigger of the backend's
    ///   table, a status this worker does not own) gets that error, and the transaction is
    ///   rolled back and run again without it: so the refused transition is undone alone,
    ///   whatever its conflict mode. `RAISE(ABORT)` undoes its statement, but `RAISE(FAIL)`
    ///   and `OR FAIL` keep what the statement (and its triggers) changed before the error,
    ///   and `RAISE(ROLLBACK)` ends the transaction; a rollback is right for all three. Why
    ///   not a savepoint around each transition: two more statements for every transition
    ///   of every batch, where the rollback costs one more transaction only when a refusal
    ///   happens, which is rare.
    /// - A transient fault (busy past the busy timeout, I/O, a full disk) means the
    ///   transaction cannot commit: every transition of the batch gets it and its worker
    ///   retries, so another process holding the lock delays the batch and fails nothing.
    /// - Only a committed transition reports success.
    ///
    /// A batch of one runs in an explicit transaction too: SQLite's implicit one, around a
    /// lone statement, commits what a `RAISE(FAIL)` kept.
    pub(super) fn run_batch(&self, batch: &[&Transition]) -> Vec<Result<Applied, StoreError>> {
        let conn = self.writer();
        // A leader that panicked mid-batch (its thread unwound) may have left a transaction
        // open on this connection.
        rollback(&conn);
        if let [transition] = batch {
            return vec![self.run_one(&conn, transition)];
        }
        let mut outcomes: Vec<Option<Result<Applied, StoreError>>> =
            batch.iter().map(|_| None).collect();
        // Each pass settles at least one transition, so this ends.
        while outcomes.iter().any(Option::is_none) {
            if let Err(e) = conn.begin() {
                settle_all(&mut outcomes, &StoreError::Sqlite(e));
                break;
            }
            let now = utc_now();
            let mut applied: Vec<(usize, Applied)> = Vec::with_capacity(batch.len());
            let mut refused = false;
            for (i, transition) in batch.iter().enumerate() {
                if outcomes[i].is_some() {
                    continue;
                }
                match apply(&conn, transition, &now) {
                    Ok(a) => applied.push((i, a)),
                    Err(e) if e.fault() == Fault::Permanent => {
                        outcomes[i] = Some(Err(e));
                        refused = true;
                        break;
                    }
                    Err(e) => {
                        settle_all(&mut outcomes, &e);
                        outcomes[i] = Some(Err(e));
                        break;
                    }
                }
            }
            if refused || outcomes.iter().all(Option::is_some) {
                // Nothing of this transaction is reported as done: undo what it holds, and
                // run what is left (if anything) again.
                rollback(&conn);
                continue;
            }
            match conn.commit() {
                Ok(()) => {
                    self.transactions.fetch_add(1, Ordering::Relaxed);
                    self.transitions
                        .fetch_add(applied.len() as u64, Ordering::Relaxed);
                    self.durability.committed(applied.len() as u64);
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

    /// A batch of one (most transitions when the load is light): the same as `run_batch`
    /// without its bookkeeping, since a lone transition commits or fails and nothing is run
    /// again.
    fn run_one(&self, conn: &Writer, transition: &Transition) -> Result<Applied, StoreError> {
        conn.begin()?;
        let applied = match apply(conn, transition, &utc_now()) {
            Ok(applied) => applied,
            Err(e) => {
                rollback(conn);
                return Err(e);
            }
        };
        if let Err(e) = conn.commit() {
            rollback(conn);
            return Err(StoreError::Sqlite(e));
        }
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.transitions.fetch_add(1, Ordering::Relaxed);
        self.durability.committed(1);
        Ok(applied)
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
                _ => Err(StoreError::ForeignStatus {
                    request_id: request_id.clone(),
                    status: value,
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::super::StoreOptions;
    use super::super::testing::*;
    use super::*;
    use crate::store::Store;

    #[test]
    fn claim_inserts_a_missing_row_as_provisioning() {
        let store = open_temp();
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
        let store = open_temp();
        store.insert_pending(&req("r1")).unwrap();
        force(&store, "r1", "pending");
        assert_eq!(store.claim(&req("r1")).unwrap(), Claim::Claimed);
        let row = store.get("r1").unwrap().unwrap();
        assert_eq!(row.status, "provisioning");
        assert!(row.updated_at.as_str() > OLD, "{row:?}");
    }

    #[test]
    fn claim_keeps_the_backend_fields_of_an_existing_row() {
        let store = open_temp();
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
        let store = open_temp();
        assert_eq!(store.claim(&req("r1")).unwrap(), Claim::Claimed);
        force(&store, "r1", "provisioning");
        assert_eq!(store.claim(&req("r1")).unwrap(), Claim::Claimed);
        assert!(store.get("r1").unwrap().unwrap().updated_at.as_str() > OLD);
    }

    #[test]
    fn claim_on_a_final_row_returns_already_final_and_changes_nothing() {
        for (status, expected) in [("completed", Status::Completed), ("failed", Status::Failed)] {
            let store = open_temp();
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
        let store = open_temp();
        store.claim(&req("r1")).unwrap();
        force(&store, "r1", "PENDING");
        let before = store.get("r1").unwrap().unwrap();
        let err = store.claim(&req("r1")).unwrap_err();
        assert!(
            matches!(&err, StoreError::ForeignStatus { status, .. } if status == "PENDING"),
            "{err:?}"
        );
        assert!(!err.is_transient());
        assert_eq!(store.get("r1").unwrap().unwrap(), before);
    }

    #[test]
    fn complete_moves_only_a_provisioning_row() {
        let store = open_temp();
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
        let store = open_temp();
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
        let store = open_temp();
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
        store: &'s Temp,
        ops: Vec<Box<dyn FnOnce(&'s Store) -> T + Send + 's>>,
    ) -> Vec<T> {
        let before = store.write_counts();
        let n = ops.len();
        let held = store.sqlite.writer();
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

    #[test]
    fn a_batch_commits_once_and_each_transition_gets_its_own_outcome() {
        let store = open_temp();
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
        let store = open_temp();
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

    /// A backend trigger that refuses completing the row `bad`, in each conflict mode, and
    /// a note it writes first (a trigger's earlier work, which FAIL does not undo).
    /// ABORT undoes its statement; ROLLBACK the whole transaction; FAIL (raised, or the
    /// `OR FAIL` of a statement in the trigger) keeps what the statement did before the
    /// error: the row's own change, since these triggers run after it.
    const REFUSALS: [(&str, &str); 4] = [
        (
            "RAISE(ABORT)",
            "CREATE TRIGGER refuse BEFORE UPDATE ON provision_requests
             WHEN NEW.request_id = 'bad' AND NEW.status = 'completed' BEGIN
               INSERT INTO notes VALUES ('refusing ' || NEW.request_id);
               SELECT RAISE(ABORT, 'refused by the backend'); END;",
        ),
        (
            "RAISE(ROLLBACK)",
            "CREATE TRIGGER refuse BEFORE UPDATE ON provision_requests
             WHEN NEW.request_id = 'bad' AND NEW.status = 'completed' BEGIN
               INSERT INTO notes VALUES ('refusing ' || NEW.request_id);
               SELECT RAISE(ROLLBACK, 'refused by the backend'); END;",
        ),
        (
            "RAISE(FAIL)",
            "CREATE TRIGGER refuse AFTER UPDATE ON provision_requests
             WHEN NEW.request_id = 'bad' AND NEW.status = 'completed' BEGIN
               INSERT INTO notes VALUES ('refusing ' || NEW.request_id);
               SELECT RAISE(FAIL, 'refused by the backend'); END;",
        ),
        (
            "OR FAIL",
            "INSERT INTO notes VALUES ('taken');
             CREATE UNIQUE INDEX one_note ON notes(note);
             CREATE TRIGGER refuse AFTER UPDATE ON provision_requests
             WHEN NEW.request_id = 'bad' AND NEW.status = 'completed' BEGIN
               INSERT INTO notes VALUES ('refusing ' || NEW.request_id);
               INSERT OR FAIL INTO notes VALUES ('taken'); END;",
        ),
    ];

    /// Adds the `notes` table and the refusing trigger of `mode` (see [`REFUSALS`]).
    fn add_refusal(store: &Temp, trigger: &str) {
        raw(store)
            .execute_batch(&format!("CREATE TABLE notes (note TEXT); {trigger}"))
            .unwrap();
    }

    /// The trigger's notes about refusing `bad`: none may survive its refusal.
    fn notes_about_bad(store: &Temp) -> i64 {
        raw(store)
            .query_row(
                "SELECT count(*) FROM notes WHERE note = 'refusing bad'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[test]
    fn a_statement_refused_in_a_batch_is_undone_alone_whatever_its_conflict_mode() {
        for (mode, trigger) in REFUSALS {
            let store = open_temp();
            add_audit(&store);
            for id in ["good-1", "bad", "good-2"] {
                store.claim(&req(id)).unwrap();
            }
            add_refusal(&store, trigger);
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
                "{mode}: {results:?}"
            );
            assert!(
                matches!(results[2], Ok(Applied::Moved(true))),
                "{mode}: {results:?}"
            );
            let err = results[1].as_ref().unwrap_err();
            assert_eq!(err.fault(), Fault::Permanent, "{mode}: {err:?}");
            let row = store.get("bad").unwrap().unwrap();
            assert_eq!(
                (row.status.as_str(), row.kubeconfig),
                ("provisioning", None),
                "{mode}: the refused completion is undone"
            );
            assert_eq!(completions_of(&store, "bad"), 0, "{mode}");
            assert_eq!(
                notes_about_bad(&store),
                0,
                "{mode}: the trigger's own work too"
            );
            for (id, kubeconfig) in [("good-1", "k1"), ("good-2", "k2")] {
                let row = store.get(id).unwrap().unwrap();
                assert_eq!(row.status, "completed", "{mode}");
                assert_eq!(row.kubeconfig.as_deref(), Some(kubeconfig));
                // Applied once, even when the transaction had to run again without `bad`.
                let completions = completions_of(&store, id);
                assert_eq!(completions, 1, "{mode}: {id}");
            }
        }
    }

    #[test]
    fn a_lone_statement_refused_leaves_nothing_behind_whatever_its_conflict_mode() {
        for (mode, trigger) in REFUSALS {
            let store = open_temp();
            add_audit(&store);
            store.claim(&req("bad")).unwrap();
            add_refusal(&store, trigger);
            let before = store.write_counts();
            let err = store.complete("bad", "k").unwrap_err();
            assert_eq!(err.fault(), Fault::Permanent, "{mode}: {err:?}");
            assert!(err.reason().contains("refused by the backend") || mode == "OR FAIL");
            let row = store.get("bad").unwrap().unwrap();
            assert_eq!(row.status, "provisioning", "{mode}");
            assert_eq!(completions_of(&store, "bad"), 0, "{mode}");
            assert_eq!(notes_about_bad(&store), 0, "{mode}");
            assert_eq!(store.write_counts(), before, "{mode}: nothing committed");
            // The failure the worker writes next is allowed.
            assert!(store.fail("bad", &err.reason()).unwrap(), "{mode}");
        }
    }

    #[test]
    fn a_batch_waits_while_another_process_holds_the_lock_and_fails_nothing() {
        let store = open_temp();
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
        let store = open_temp_with(StoreOptions {
            pool_size: 1,
            busy_timeout: Duration::from_millis(100),
        });
        for id in ["a", "b"] {
            store.claim(&req(id)).unwrap();
        }
        let other = raw(&store);
        let results = {
            let held = store.sqlite.writer();
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
        let store = open_temp();
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
        let store = open_temp_with(StoreOptions {
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Checks every operation against a model built from `can_move_to`, and that no status
        /// ever moves backwards or out of a final state.
        #[test]
        fn status_never_moves_backwards(ops in prop::collection::vec((0..4u8, 0..3usize), 1..40)) {
            let store = open_temp_with(StoreOptions::new(1));
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
    }

    fn rank(status: Status) -> u8 {
        match status {
            Status::Pending => 0,
            Status::Provisioning => 1,
            Status::Completed | Status::Failed => 2,
        }
    }
}
