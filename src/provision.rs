//! What a worker does with one request: claim the row, simulate the work, write the mock
//! kubeconfig, complete (or fail) the row.
//!
//! Every database step is retried as its error's [`Fault`] says (`store/error.rs` sorts
//! them):
//! - transient (busy, read-only, disk full): with backoff until it succeeds or shutdown
//!   aborts it; it delays a request, never fails it, and its offset stays uncommitted;
//! - permanent (the database refuses the step: a constraint, a trigger, a status this worker
//!   does not own): [`PERMANENT_TRIES`] tries in all, then the request's handling ends. A
//!   refused claim or completion becomes `failed` with the database's reason (the transition
//!   a backend that refuses a completion still allows); a row in a status the worker does not
//!   own is left as it is. Either way the job ends [`Outcome::Refused`], logged once here,
//!   and the poller dead-letters the message and commits past it: one row the worker cannot
//!   finish never stalls its partition (DESIGN invariant 13);
//! - fatal (durability is lost: a failed fsync of SQLite's own, say): never retried, since
//!   nothing written from now on can be made durable. The job ends
//!   [`Outcome::StorageFailed`], its row as it is and its offset uncommitted, and the poller
//!   stops the worker (exit code 1; DESIGN invariant 12) without waiting for its next sync.
use std::time::Duration;

use blocking_kafka::printable;
use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::kubeconfig;
use crate::metrics::Metrics;
use crate::request::ProvisionRequest;
use crate::store::{Claim, Fault, Status, Store, StoreError};

/// How one job ended, as the poller needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The row is `completed`.
    Completed,
    /// The row is `failed` (or there was no row to fail): done.
    Failed,
    /// The row was already `completed` or `failed`: nothing changed, the message is done.
    AlreadyFinal(Status),
    /// The database will not let the request finish: the poller dead-letters the message
    /// with the reason and commits past it.
    Refused(Refusal),
    /// Shutdown interrupted the work: the row stays `provisioning`, the offset uncommitted.
    Aborted,
    /// The database's storage failed (the error, in words): nothing more can be made
    /// durable. The row stays as it is, the offset uncommitted, and the poller stops the
    /// worker.
    StorageFailed(String),
}

/// Why the database will not let a request finish, and what became of its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// For the dead letter (`x-dlq-reason`): the request, the step, the database's words
    /// and what became of the row.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// A step refused for good (a constraint, a trigger, a missing column): the row is
    /// `failed` with the reason, or as it was if even that was refused.
    Refused,
    /// The row is in a status this worker does not own (the backend's `cancelled`, say):
    /// left as it is.
    ForeignStatus,
}

/// How far [`Provisioner::start`] got. `Debug` is written by hand: the rendered kubeconfig
/// holds a bearer token.
pub enum Started {
    /// Claimed, waited and rendered: the kubeconfig to complete the request with.
    Rendered(String),
    /// Nothing more to do: the request was already final, refused, or shutdown interrupted
    /// it.
    Finished(Outcome),
}

/// What a worker needs, shared by all workers.
pub struct Provisioner {
    pub store: std::sync::Arc<Store>,
    pub delay: Duration,
    /// Never sent on: it is disconnected (its sender dropped) when shutdown's deadline
    /// passes, which wakes every delay and backoff at once.
    pub abort: Receiver<()>,
    /// Counts jobs and database retries; shared with the poller and the metrics listener.
    pub metrics: std::sync::Arc<Metrics>,
}

/// Tries of a step the database refuses for good before the worker gives up on it. More
/// than one, because a refusal may hang on what another transaction was doing at that
/// moment (a trigger reading a quota the backend is updating); three, 50 ms and 100 ms
/// apart, cost nothing next to a request.
pub const PERMANENT_TRIES: u32 = 3;

/// Longest wait between two attempts of a failing database step.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a step with retries ended.
enum Tried<T> {
    Done(T),
    /// Shutdown aborted the retries.
    Aborted,
    /// Refused [`PERMANENT_TRIES`] times: the last error.
    GaveUp(StoreError),
    /// Durability is lost (a fatal fault): the error, in words.
    Fatal(String),
}

/// Why [`Provisioner::failed_try`] says not to try again.
enum Stop {
    Aborted,
    GaveUp(StoreError),
    Fatal(String),
}

impl Provisioner {
    /// Carries a valid request from `pending` to `completed`.
    pub fn provision(&self, req: &ProvisionRequest) -> Outcome {
        match self.start(req, None) {
            Started::Finished(outcome) => outcome,
            Started::Rendered(kubeconfig) => self.finish(req, &kubeconfig, None),
        }
    }

    /// The first part of [`Provisioner::provision`]: claims the row, simulates the work and
    /// renders the kubeconfig. `claimed` is the outcome of a claim already written (with the
    /// completion of the request before, see [`Provisioner::finish_and_claim`]); a failed one
    /// is retried here like any other.
    pub fn start(
        &self,
        req: &ProvisionRequest,
        claimed: Option<Result<Claim, StoreError>>,
    ) -> Started {
        log::info!(
            "Processing provision request: {} (user={}, gpus={}, duration={}h)",
            req.request_id,
            printable(&req.user_id),
            req.gpu_count,
            req.duration_hours
        );
        match self.attempt("claim", &req.request_id, claimed, || self.store.claim(req)) {
            Tried::Aborted => return Started::Finished(Outcome::Aborted),
            Tried::Fatal(e) => return Started::Finished(Outcome::StorageFailed(e)),
            Tried::GaveUp(e) => {
                return Started::Finished(self.refused(&req.request_id, "claim", &e));
            }
            Tried::Done(Claim::AlreadyFinal(status)) => {
                log::info!(
                    "Request {} is already {}; leaving it unchanged",
                    req.request_id,
                    status.as_str()
                );
                return Started::Finished(Outcome::AlreadyFinal(status));
            }
            Tried::Done(Claim::Claimed) => {
                log::info!("Updated request {} to status: provisioning", req.request_id);
            }
        }

        log::info!(
            "Simulating provisioning work for {} seconds...",
            format_seconds(self.delay)
        );
        if self.wait(self.delay) {
            log::warn!(
                "Shutdown interrupted request {}; it stays provisioning and will be redelivered",
                req.request_id
            );
            return Started::Finished(Outcome::Aborted);
        }

        let token = kubeconfig::new_token();
        Started::Rendered(kubeconfig::render(req, &token))
    }

    /// The last part of [`Provisioner::provision`]: completes the row with the kubeconfig.
    /// `completed` is the outcome of a completion already written (by `finish_and_claim`); a
    /// failed one is retried here like any other.
    pub fn finish(
        &self,
        req: &ProvisionRequest,
        kubeconfig: &str,
        completed: Option<Result<bool, StoreError>>,
    ) -> Outcome {
        match self.attempt("complete", &req.request_id, completed, || {
            self.store.complete(&req.request_id, kubeconfig)
        }) {
            Tried::Aborted => Outcome::Aborted,
            Tried::Fatal(e) => Outcome::StorageFailed(e),
            Tried::GaveUp(e) => self.refused(&req.request_id, "completion", &e),
            Tried::Done(true) => self.completed(req),
            Tried::Done(false) => self.not_completed(req, kubeconfig),
        }
    }

    fn completed(&self, req: &ProvisionRequest) -> Outcome {
        log::info!("Updated request {} to status: completed", req.request_id);
        log::info!(
            "\u{2705} Successfully provisioned request {} for user {}",
            req.request_id,
            printable(&req.user_id)
        );
        Outcome::Completed
    }

    /// [`Provisioner::finish`] for `req` and the claim of `next`, the request the worker
    /// takes up next, written together (see [`Store::complete_and_claim`]). Returns the
    /// completion's outcome and the claim's, for [`Provisioner::start`] of `next`.
    pub fn finish_and_claim(
        &self,
        req: &ProvisionRequest,
        kubeconfig: &str,
        next: &ProvisionRequest,
    ) -> (Outcome, Result<Claim, StoreError>) {
        let (completed, claimed) = self
            .store
            .complete_and_claim(&req.request_id, kubeconfig, next);
        (self.finish(req, kubeconfig, Some(completed)), claimed)
    }

    /// Marks the row of an invalid message `failed` with the reason, when it exists.
    pub fn reject(&self, request_id: Option<&str>, reason: &str) -> Outcome {
        let Some(request_id) = request_id else {
            return Outcome::Failed;
        };
        match self.attempt("fail", request_id, None, || {
            self.store.fail(request_id, reason)
        }) {
            Tried::Aborted => Outcome::Aborted,
            Tried::Fatal(e) => Outcome::StorageFailed(e),
            Tried::Done(true) => {
                log::info!("Updated request {request_id} to status: failed ({reason})");
                Outcome::Failed
            }
            Tried::Done(false) => Outcome::Failed,
            Tried::GaveUp(e) => {
                // The message is dead-lettered as invalid all the same.
                log::error!(
                    "Database refused to mark invalid request {request_id} failed: {}; leaving the row as it is",
                    printable(&e.reason())
                );
                Outcome::Failed
            }
        }
    }

    /// A completion that moved no row: the row left `provisioning` while the worker had it,
    /// or the database ignored the update without an error (a trigger's `RAISE(IGNORE)`);
    /// or it is our own completion, retried after the connection was lost during its COMMIT
    /// (PostgreSQL: the outcome of that COMMIT was unknown, and it had committed).
    #[cold]
    fn not_completed(&self, req: &ProvisionRequest, kubeconfig: &str) -> Outcome {
        let request_id = req.request_id.as_str();
        let row = match self.attempt("read", request_id, None, || self.store.get(request_id)) {
            Tried::Aborted => return Outcome::Aborted,
            Tried::Fatal(e) => return Outcome::StorageFailed(e),
            Tried::Done(row) => row,
            Tried::GaveUp(_) => None,
        };
        if let Some(row) = &row
            && row.status == Status::Completed.as_str()
            && row.kubeconfig.as_deref() == Some(kubeconfig)
        {
            // Our kubeconfig holds a fresh random token: no one else wrote it.
            return self.completed(req);
        }
        let status = row.map(|r| r.status);
        match status.as_deref().map(str::parse::<Status>) {
            Some(Ok(Status::Provisioning)) => {
                let ignored = StoreError::Ignored {
                    request_id: request_id.to_owned(),
                };
                self.refused(request_id, "completion", &ignored)
            }
            Some(Err(_)) => {
                let foreign = StoreError::ForeignStatus {
                    request_id: request_id.to_owned(),
                    status: status.unwrap_or_default(),
                };
                self.refused(request_id, "completion", &foreign)
            }
            Some(Ok(s)) => {
                log::warn!(
                    "Request {request_id} left provisioning while we worked on it (it is {s} now); not marking it completed"
                );
                Outcome::AlreadyFinal(if s.is_final() { s } else { Status::Failed })
            }
            None => {
                log::warn!(
                    "Request {request_id} left provisioning while we worked on it (its row is gone); not marking it completed"
                );
                Outcome::AlreadyFinal(Status::Failed)
            }
        }
    }

    /// The database refused `step` of the request for good (`e`): a row in a status the
    /// worker does not own is left as it is; any other refusal becomes `failed` with the
    /// database's reason. Logged once, here.
    #[cold]
    fn refused(&self, request_id: &str, step: &str, e: &StoreError) -> Outcome {
        if let StoreError::ForeignStatus { status, .. } = e {
            let status = printable(status);
            log::warn!(
                "Request {request_id} has status {status:?}, which this worker does not own; leaving the row unchanged and dead-lettering the message"
            );
            return Outcome::Refused(Refusal {
                kind: RefusalKind::ForeignStatus,
                reason: format!(
                    "request {request_id} has status {status:?}, which this worker does not own; the row is left unchanged"
                ),
            });
        }
        let why = e.reason();
        let error_message = format!("refused by the database: {why}");
        let failed = self.attempt("fail", request_id, None, || {
            self.store.fail(request_id, &error_message)
        });
        let (done, row) = match failed {
            Tried::Aborted => return Outcome::Aborted,
            Tried::Fatal(e) => return Outcome::StorageFailed(e),
            Tried::Done(true) => (
                "marked it failed with that reason".to_owned(),
                "the row is failed with that reason".to_owned(),
            ),
            Tried::Done(false) => (
                "its row had moved on meanwhile, so it is left as it is".to_owned(),
                "the row is left as it was".to_owned(),
            ),
            Tried::GaveUp(e) => (
                format!(
                    "marking it failed was refused too ({}), so the row is left as it is",
                    printable(&e.reason())
                ),
                "the row is left as it was".to_owned(),
            ),
        };
        let why = printable(&why);
        log::error!(
            "Database refused the {step} of request {request_id}: {why}; {done}, and dead-lettering the message"
        );
        Outcome::Refused(Refusal {
            kind: RefusalKind::Refused,
            reason: format!(
                "the database refused the {step} of request {request_id}: {why}; {row}"
            ),
        })
    }

    /// Runs a database step as its error's [`Fault`] says (see the module documentation).
    /// `first` is the result of a first attempt already made, if there was one.
    fn attempt<T>(
        &self,
        step: &str,
        request_id: &str,
        first: Option<Result<T, StoreError>>,
        mut f: impl FnMut() -> Result<T, StoreError>,
    ) -> Tried<T> {
        let mut backoff = Duration::from_millis(50);
        let mut attempt = first;
        let mut refusals = 0;
        loop {
            let e = match attempt.take().unwrap_or_else(&mut f) {
                Ok(v) => return Tried::Done(v),
                Err(e) => e,
            };
            match self.failed_try(step, request_id, e, &mut refusals, backoff) {
                Ok(()) => backoff = (backoff * 2).min(MAX_BACKOFF),
                Err(Stop::GaveUp(e)) => return Tried::GaveUp(e),
                Err(Stop::Fatal(e)) => return Tried::Fatal(e),
                Err(Stop::Aborted) => return Tried::Aborted,
            }
        }
    }

    /// A try of `step` failed with `e`: counts and logs it and waits `backoff`. `Ok` to try
    /// again; `Err` when the database refused it [`PERMANENT_TRIES`] times, when durability
    /// is lost, or when shutdown aborted the wait. Apart from `attempt` (and cold) so that
    /// each of its instances stays small on the path every request takes.
    #[cold]
    #[inline(never)]
    fn failed_try(
        &self,
        step: &str,
        request_id: &str,
        e: StoreError,
        refusals: &mut u32,
        backoff: Duration,
    ) -> Result<(), Stop> {
        match e.fault() {
            Fault::Permanent => {
                *refusals += 1;
                if *refusals >= PERMANENT_TRIES {
                    self.metrics.db_gave_up();
                    return Err(Stop::GaveUp(e));
                }
                self.metrics.db_retry(false);
                log::debug!(
                    "Database refused the {step} of request {request_id} (try {refusals} of {PERMANENT_TRIES}): {e}; trying again in {backoff:?}"
                );
            }
            Fault::Transient => {
                self.metrics.db_retry(e.is_busy());
                log::warn!(
                    "Database unavailable during {step} of request {request_id}: {e}; retrying in {backoff:?}"
                );
            }
            Fault::Fatal => {
                // No retry: a later try that succeeds would prove nothing (a failed fsync is
                // reported once), and the worker is stopping.
                log::error!(
                    "Database storage failed during {step} of request {request_id}: {e}; leaving the request as it is (its offset stays uncommitted) and stopping"
                );
                return Err(Stop::Fatal(e.to_string()));
            }
        }
        if self.wait(backoff) {
            return Err(Stop::Aborted);
        }
        Ok(())
    }

    /// Waits `d`; true when shutdown aborted the wait.
    fn wait(&self, d: Duration) -> bool {
        if d.is_zero() {
            return false;
        }
        !matches!(self.abort.recv_timeout(d), Err(RecvTimeoutError::Timeout))
    }
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The kubeconfig holds a bearer token: its size only.
            Started::Rendered(kubeconfig) => f
                .debug_tuple("Rendered")
                .field(&format_args!("<redacted, {} bytes>", kubeconfig.len()))
                .finish(),
            Started::Finished(outcome) => f.debug_tuple("Finished").field(outcome).finish(),
        }
    }
}

/// "5", "0.5", "1.25": seconds as a person writes them (and as the Python worker printed).
pub fn format_seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        let text = format!("{s:.3}");
        text.trim_end_matches('0').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A provisioner on a fresh database with no delay; the sender keeps `abort` open.
    struct Fixture {
        dir: tempfile::TempDir,
        provisioner: Provisioner,
        _abort: crossbeam_channel::Sender<()>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("poc.db"), 1).unwrap();
        let (abort_tx, abort) = crossbeam_channel::bounded(0);
        Fixture {
            provisioner: Provisioner {
                store: Arc::new(store),
                delay: Duration::ZERO,
                abort,
                metrics: Arc::new(Metrics::new("t", "g", Duration::from_secs(10))),
            },
            dir,
            _abort: abort_tx,
        }
    }

    impl Fixture {
        /// Runs `sql` on a connection of its own, as the backend would.
        fn backend(&self, sql: &str) {
            rusqlite::Connection::open(self.dir.path().join("poc.db"))
                .unwrap()
                .execute_batch(sql)
                .unwrap();
        }

        fn row(&self, id: &str) -> crate::store::Row {
            self.provisioner.store.get(id).unwrap().unwrap()
        }

        fn metric(&self, line: &str) -> bool {
            self.provisioner.metrics.render().lines().any(|l| l == line)
        }
    }

    fn request(id: &str, user: &str) -> ProvisionRequest {
        ProvisionRequest {
            request_id: id.to_owned(),
            user_id: user.to_owned(),
            gpu_count: 2,
            duration_hours: 1,
        }
    }

    /// A completion whose COMMIT's answer was lost (a PostgreSQL connection cut at that
    /// moment) is retried and moves nothing: the row is completed with our own kubeconfig,
    /// so the request is completed, not "left provisioning while we worked on it".
    #[test]
    fn a_retried_completion_that_finds_its_own_kubeconfig_is_completed() {
        let f = fixture();
        let req = request("r-lost-commit", "alice");
        assert_eq!(f.provisioner.store.claim(&req).unwrap(), Claim::Claimed);
        assert!(
            f.provisioner
                .store
                .complete(&req.request_id, "ours")
                .unwrap()
        );
        // The retry of that completion finds nothing left to move.
        let outcome = f.provisioner.finish(&req, "ours", Some(Ok(false)));
        assert_eq!(outcome, Outcome::Completed);
        // Someone else's completion stays someone else's.
        let outcome = f.provisioner.finish(&req, "another", Some(Ok(false)));
        assert_eq!(outcome, Outcome::AlreadyFinal(Status::Completed));
    }

    #[test]
    fn a_completion_the_database_refuses_ends_failed_with_its_reason_after_three_tries() {
        let f = fixture();
        f.backend(
            "CREATE TRIGGER quota BEFORE UPDATE OF status ON provision_requests
             WHEN NEW.status = 'completed' AND NEW.user_id = 'bob'
             BEGIN SELECT RAISE(ABORT, 'gpu quota exceeded for bob'); END;",
        );
        let outcome = f.provisioner.provision(&request("r-bob", "bob"));
        let Outcome::Refused(refusal) = outcome else {
            panic!("expected a refusal, got {outcome:?}");
        };
        assert_eq!(refusal.kind, RefusalKind::Refused);
        assert!(
            refusal
                .reason
                .contains("refused the completion of request r-bob")
                && refusal.reason.contains("gpu quota exceeded for bob")
                && refusal
                    .reason
                    .ends_with("the row is failed with that reason"),
            "{}",
            refusal.reason
        );
        let row = f.row("r-bob");
        assert_eq!(row.status, "failed");
        assert_eq!(
            row.error_message.as_deref(),
            Some("refused by the database: gpu quota exceeded for bob")
        );
        assert!(f.metric("provision_db_refusals_total 1"));
        assert!(
            f.metric("provision_db_retries_other_total 2"),
            "three tries"
        );
        // Anyone else's completion goes through.
        assert_eq!(
            f.provisioner.provision(&request("r-amy", "amy")),
            Outcome::Completed
        );
    }

    #[test]
    fn a_row_in_a_status_the_worker_does_not_own_is_left_as_it_is() {
        let f = fixture();
        f.provisioner
            .store
            .insert_pending(&request("r1", "alice"))
            .unwrap();
        f.backend("UPDATE provision_requests SET status = 'cancelled' WHERE request_id = 'r1'");
        let before = f.row("r1");
        let outcome = f.provisioner.provision(&request("r1", "alice"));
        let Outcome::Refused(refusal) = outcome else {
            panic!("expected a refusal, got {outcome:?}");
        };
        assert_eq!(refusal.kind, RefusalKind::ForeignStatus);
        assert!(
            refusal.reason.contains("\"cancelled\""),
            "{}",
            refusal.reason
        );
        assert_eq!(f.row("r1"), before, "untouched");
    }

    #[test]
    fn a_row_the_backend_cancels_while_the_worker_has_it_is_left_as_it_is() {
        let f = fixture();
        let req = request("r1", "alice");
        let Started::Rendered(kubeconfig) = f.provisioner.start(&req, None) else {
            panic!("not claimed");
        };
        f.backend("UPDATE provision_requests SET status = 'cancelled' WHERE request_id = 'r1'");
        let before = f.row("r1");
        let outcome = f.provisioner.finish(&req, &kubeconfig, None);
        assert!(
            matches!(&outcome, Outcome::Refused(r) if r.kind == RefusalKind::ForeignStatus),
            "{outcome:?}"
        );
        assert_eq!(f.row("r1"), before, "untouched");
    }

    #[test]
    fn a_completion_the_database_ignores_without_an_error_is_a_refusal() {
        let f = fixture();
        f.backend(
            "CREATE TRIGGER ignore_it BEFORE UPDATE OF status ON provision_requests
             WHEN NEW.status = 'completed' BEGIN SELECT RAISE(IGNORE); END;",
        );
        let outcome = f.provisioner.provision(&request("r1", "alice"));
        assert!(
            matches!(&outcome, Outcome::Refused(r) if r.kind == RefusalKind::Refused),
            "{outcome:?}"
        );
        let row = f.row("r1");
        assert_eq!(row.status, "failed");
        assert!(
            row.error_message.unwrap().contains("without an error"),
            "says what happened"
        );
    }

    #[test]
    fn a_fatal_storage_fault_is_not_retried_and_ends_the_job_as_storage_failed() {
        let f = fixture();
        let req = request("r1", "alice");
        let Started::Rendered(kubeconfig) = f.provisioner.start(&req, None) else {
            panic!("not claimed");
        };
        // What a completion reports when the writer's own checkpoint failed its fsync.
        let fsync_failed = StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
            Some("disk I/O error".to_owned()),
        ));
        assert_eq!(fsync_failed.fault(), Fault::Fatal);
        let outcome = f
            .provisioner
            .finish(&req, &kubeconfig, Some(Err(fsync_failed)));
        let Outcome::StorageFailed(reason) = &outcome else {
            panic!("expected a storage failure, got {outcome:?}");
        };
        assert!(reason.contains("disk I/O error"), "{reason}");
        // Not tried again: a try that succeeds after a failed fsync proves nothing.
        assert_eq!(f.row("r1").status, "provisioning");
        assert!(f.metric("provision_db_retries_other_total 0"));
        assert!(f.metric("provision_db_refusals_total 0"));
        // The same for a claim and for the row of an invalid message.
        let lost = || {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
                None,
            ))
        };
        let started = f
            .provisioner
            .start(&request("r2", "alice"), Some(Err(lost())));
        assert!(
            matches!(started, Started::Finished(Outcome::StorageFailed(_))),
            "{started:?}"
        );
        assert!(f.provisioner.store.get("r2").unwrap().is_none());
    }

    #[test]
    fn started_debug_shows_no_kubeconfig() {
        let f = fixture();
        let started = f.provisioner.start(&request("r1", "alice"), None);
        let Started::Rendered(kubeconfig) = &started else {
            panic!("not claimed: {started:?}");
        };
        let token = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("token: "))
            .unwrap()
            .trim_matches('"');
        assert_eq!(token.len(), kubeconfig::TOKEN_CHARS, "{token}");
        let shown = format!("{started:?}");
        assert!(!shown.contains(token), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn seconds_read_like_the_python_worker() {
        assert_eq!(format_seconds(Duration::from_secs(5)), "5");
        assert_eq!(format_seconds(Duration::from_millis(500)), "0.5");
        assert_eq!(format_seconds(Duration::from_millis(1250)), "1.25");
        assert_eq!(format_seconds(Duration::ZERO), "0");
    }
}
