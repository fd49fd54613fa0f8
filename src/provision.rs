//! What a worker does with one request: claim the row, simulate the work, write the mock
//! kubeconfig, complete (or fail) the row.
//!
//! Every database step is retried with backoff until it succeeds or shutdown aborts it: a
//! fault of the database (busy, read-only, disk full) must delay a request, never fail it,
//! and never let its offset be committed. The only way to `failed` is a request that can
//! never succeed (an invalid message).
use std::time::Duration;

use blocking_kafka::printable;
use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::kubeconfig;
use crate::metrics::Metrics;
use crate::request::ProvisionRequest;
use crate::store::{Claim, Status, Store, StoreError};

/// How one job ended, as the poller needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The row is `completed`.
    Completed,
    /// The row is `failed` (or there was no row to fail): done.
    Failed,
    /// The row was already `completed` or `failed`: nothing changed, the message is done.
    AlreadyFinal(Status),
    /// Shutdown interrupted the work: the row stays `provisioning`, the offset uncommitted.
    Aborted,
}

/// How far [`Provisioner::start`] got.
#[derive(Debug)]
pub enum Started {
    /// Claimed, waited and rendered: the kubeconfig to complete the request with.
    Rendered(String),
    /// Nothing more to do: the request was already final, or shutdown interrupted it.
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

/// Longest wait between two attempts of a failing database step.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
        match self.retry("claim", &req.request_id, claimed, || self.store.claim(req)) {
            None => return Started::Finished(Outcome::Aborted),
            Some(Claim::AlreadyFinal(status)) => {
                log::info!(
                    "Request {} is already {}; leaving it unchanged",
                    req.request_id,
                    status.as_str()
                );
                return Started::Finished(Outcome::AlreadyFinal(status));
            }
            Some(Claim::Claimed) => {
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
        match self.retry("complete", &req.request_id, completed, || {
            self.store.complete(&req.request_id, kubeconfig)
        }) {
            None => Outcome::Aborted,
            Some(true) => {
                log::info!("Updated request {} to status: completed", req.request_id);
                log::info!(
                    "\u{2705} Successfully provisioned request {} for user {}",
                    req.request_id,
                    printable(&req.user_id)
                );
                Outcome::Completed
            }
            Some(false) => {
                // Someone else moved the row out of `provisioning` meanwhile (e.g. the
                // backend cancelled it); its state is final, so nothing more to do.
                log::warn!(
                    "Request {} left provisioning while we worked on it; not marking it completed",
                    req.request_id
                );
                Outcome::AlreadyFinal(Status::Failed)
            }
        }
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
        match request_id {
            Some(id) => self.fail(id, reason),
            None => Outcome::Failed,
        }
    }

    fn fail(&self, request_id: &str, reason: &str) -> Outcome {
        match self.retry("fail", request_id, None, || {
            self.store.fail(request_id, reason)
        }) {
            None => Outcome::Aborted,
            Some(true) => {
                log::info!("Updated request {request_id} to status: failed ({reason})");
                Outcome::Failed
            }
            Some(false) => Outcome::Failed,
        }
    }

    /// Runs a database step until it succeeds; `None` when shutdown aborted the retries.
    /// `first` is the result of a first attempt already made, if there was one.
    fn retry<T>(
        &self,
        step: &str,
        request_id: &str,
        first: Option<Result<T, StoreError>>,
        mut f: impl FnMut() -> Result<T, StoreError>,
    ) -> Option<T> {
        let mut backoff = Duration::from_millis(50);
        let mut attempt = first;
        loop {
            match attempt.take().unwrap_or_else(&mut f) {
                Ok(v) => return Some(v),
                Err(e) => {
                    self.metrics.db_retry(is_busy(&e));
                    if e.is_transient() {
                        log::warn!(
                            "Database unavailable during {step} of request {request_id}: {e}; retrying in {backoff:?}"
                        );
                    } else {
                        log::error!(
                            "Database error during {step} of request {request_id}: {e}; retrying in {backoff:?}"
                        );
                    }
                    if self.wait(backoff) {
                        return None;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Waits `d`; true when shutdown aborted the wait.
    fn wait(&self, d: Duration) -> bool {
        if d.is_zero() {
            return false;
        }
        !matches!(self.abort.recv_timeout(d), Err(RecvTimeoutError::Timeout))
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

/// SQLite said busy or locked: another writer held the database (for the metrics).
fn is_busy(e: &StoreError) -> bool {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    matches!(e, StoreError::Sqlite(s) if matches!(s.sqlite_error_code(), Some(DatabaseBusy | DatabaseLocked)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_read_like_the_python_worker() {
        assert_eq!(format_seconds(Duration::from_secs(5)), "5");
        assert_eq!(format_seconds(Duration::from_millis(500)), "0.5");
        assert_eq!(format_seconds(Duration::from_millis(1250)), "1.25");
        assert_eq!(format_seconds(Duration::ZERO), "0");
    }
}
