//! The fixed pool of worker threads.
//!
//! Architecture Invariant: workers never touch Kafka. They take jobs from the bounded job
//! channel, do the database work and the delay, and report every job back exactly once on
//! the done channel: finished, or dropped because its partition was revoked meanwhile.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use blocking_kafka::{Offset, Partition};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use crate::metrics::{Final, JobTimer};
use crate::provision::{Outcome, Provisioner, Refusal, RefusalKind, Started};
use crate::request::ProvisionRequest;
use crate::store::{Claim, StoreError};

/// One fetched message, on its way to a worker.
#[derive(Debug)]
pub struct Job {
    pub partition: Partition,
    pub offset: Offset,
    /// The assignment epoch the job was fetched in; a job from an older epoch is dropped.
    pub epoch: u64,
    /// The message's Kafka timestamp (ms since the Unix epoch), for the end-to-end latency.
    pub produced_ms: i64,
    pub work: Work,
}

#[derive(Debug)]
pub enum Work {
    Provision(ProvisionRequest),
    /// An invalid message: fail its row (if named and present), then dead-letter it.
    Reject {
        request_id: Option<String>,
        reason: String,
        key: Option<Bytes>,
        value: Bytes,
        /// The value's length in the log (`value` may be only its first bytes).
        original_len: usize,
    },
}

/// A job's report back to the poller.
#[derive(Debug)]
pub struct Done {
    pub partition: Partition,
    pub offset: Offset,
    pub epoch: u64,
    pub result: JobResult,
}

#[derive(Debug)]
pub enum JobResult {
    /// The database work is done.
    Finished(Outcome),
    /// The row of an invalid message is handled; the poller still dead-letters it.
    Rejected {
        reason: String,
        key: Option<Bytes>,
        value: Bytes,
        original_len: usize,
    },
    /// The database will not let the request finish (its row is `failed` with the reason,
    /// or left as it is); the poller dead-letters `value`, the request as read.
    Refused { refusal: Refusal, value: Bytes },
    /// Not done by us (revoked before it started, or aborted by shutdown).
    Dropped,
    /// The database's storage failed (the error, in words): the job is left undone, its
    /// offset uncommitted, and the poller stops the worker.
    StorageFailed(String),
}

/// The stack of each worker thread: 256 KiB instead of Rust's default of 2 MiB.
///
/// Why: a worker's deepest path is SQLite preparing and running a batch as the leader of
/// group commit. At full load the most any thread of the release worker touched was 72 KiB
/// (the workers 8-20 KiB; the Rss of each stack mapping in /proc/PID/smaps during the
/// benchmark's scenario 1), and the test below, which runs that path with a backend's
/// trigger, overflows 32 KiB and passes on 64 KiB even in a debug build. Memory in use is
/// the same either way (a stack counts in RSS only as far as it is touched, about 10 KiB per
/// idle worker), but every stack is reserved in full: with WORKER_THREADS=1024 that is 2 GiB
/// of address space at 2 MiB each, which a host with strict overcommit
/// (vm.overcommit_memory=2) or a `ulimit -v` refuses, and 256 MiB at this size.
const WORKER_STACK_BYTES: usize = 256 * 1024;

/// Owns the worker threads. Dropping every job sender tells them to finish; `join` waits.
pub struct WorkerPool {
    handles: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    pub fn start(
        threads: usize,
        provisioner: Arc<Provisioner>,
        jobs: Receiver<Job>,
        done: Sender<Done>,
        epoch: Arc<AtomicU64>,
    ) -> std::io::Result<WorkerPool> {
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let (provisioner, jobs, done, epoch) = (
                provisioner.clone(),
                jobs.clone(),
                done.clone(),
                epoch.clone(),
            );
            let handle = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || work(&provisioner, &jobs, &done, &epoch))?;
            handles.push(handle);
        }
        Ok(WorkerPool { handles })
    }

    /// Waits for every worker to finish (after the job senders are gone).
    pub fn join(self) {
        for h in self.handles {
            if h.join().is_err() {
                log::error!("a worker thread panicked");
            }
        }
    }
}

fn work(provisioner: &Provisioner, jobs: &Receiver<Job>, done: &Sender<Done>, epoch: &AtomicU64) {
    // The job in hand: taken from the channel here, or by `run_job` while it finished the one
    // before.
    let mut in_hand: Option<Taken<'_>> = None;
    loop {
        if in_hand.is_none() {
            // Every sender gone: the poller has finished.
            let Some(job) = next_job(jobs) else { return };
            in_hand = Some(Taken {
                job,
                timer: provisioner.metrics.job_started(),
                claimed: None,
            });
        }
        if !run_job(provisioner, &mut in_hand, jobs, done, epoch) {
            // The poller is gone: nobody can commit anything any more.
            return;
        }
    }
}

/// The next job; `None` once every sender is gone. Out of line, like [`run_job`] and
/// [`report`], so that the worker's loop keeps a small frame (see [`run_job`]).
#[inline(never)]
fn next_job(jobs: &Receiver<Job>) -> Option<Job> {
    jobs.recv().ok()
}

/// Sends a job's report to the poller; false if the poller is gone.
#[inline(never)]
fn report(done: &Sender<Done>, d: Done) -> bool {
    done.send(d).is_ok()
}

/// Does the job in `in_hand` and reports it to the poller; leaves in `in_hand` the next job
/// when it took it while finishing this one (see `finish`). False if the poller is gone.
///
/// Out of line on purpose, as are the channel calls around it: everything a job does is
/// inlined into this function, which gives it a frame of a few KiB, and an idle worker
/// waiting for its next job should not hold that frame's pages; while a job runs, the
/// worker's loop below it should add little. All inlined into `work`, one frame of 3.4 KiB
/// made each idle worker touch one more 4 KiB page of stack (the benchmark's scenario 6:
/// 10.1 -> 14.0 KiB of RSS per idle worker thread); the job out of line but the channels
/// inlined left a loop frame of 2.4 KiB under it, and 64 busy workers used 0.3 MiB more
/// (scenario 3).
#[inline(never)]
fn run_job<'m>(
    provisioner: &'m Provisioner,
    in_hand: &mut Option<Taken<'m>>,
    jobs: &Receiver<Job>,
    done: &Sender<Done>,
    epoch: &AtomicU64,
) -> bool {
    let Some(Taken {
        job,
        timer,
        claimed,
    }) = in_hand.take()
    else {
        return true;
    };
    // Acquire pairs with the poller's release when it bumps the epoch at revocation, so
    // a job fetched before the revocation is never started after it. A job whose claim
    // is written was started when it was taken (the epoch checked then) and is carried
    // through like any job in progress.
    let result = if claimed.is_none() && job.epoch != epoch.load(Ordering::Acquire) {
        JobResult::Dropped
    } else {
        match job.work {
            Work::Provision(req) => {
                let outcome = match provisioner.start(&req, claimed) {
                    Started::Finished(outcome) => outcome,
                    Started::Rendered(kubeconfig) => {
                        let (outcome, next) = finish(provisioner, &req, &kubeconfig, jobs, epoch);
                        *in_hand = next;
                        outcome
                    }
                };
                match outcome {
                    Outcome::Aborted => JobResult::Dropped,
                    Outcome::StorageFailed(e) => JobResult::StorageFailed(e),
                    Outcome::Refused(refusal) => refused(refusal, &req),
                    outcome => JobResult::Finished(outcome),
                }
            }
            Work::Reject {
                request_id,
                reason,
                key,
                value,
                original_len,
            } => match provisioner.reject(request_id.as_deref(), &reason) {
                Outcome::Aborted => JobResult::Dropped,
                Outcome::StorageFailed(e) => JobResult::StorageFailed(e),
                _ => JobResult::Rejected {
                    reason,
                    key,
                    value,
                    original_len,
                },
            },
        }
    };
    if let Some(outcome) = final_of(&result) {
        timer.finish(outcome, job.produced_ms);
    }
    report(
        done,
        Done {
            partition: job.partition,
            offset: job.offset,
            epoch: job.epoch,
            result,
        },
    )
}

/// Completes `req`. When the next job is already waiting in the channel (the usual case
/// under load), it is taken now and, if it is a request of the current assignment, its
/// claim is written in the same transaction as this completion: one trip to the writer
/// instead of two (see `Store::complete_and_claim`). Returns the completion's outcome and
/// the job taken, if any, for the worker to go on with.
fn finish<'m>(
    provisioner: &'m Provisioner,
    req: &ProvisionRequest,
    kubeconfig: &str,
    jobs: &Receiver<Job>,
    epoch: &AtomicU64,
) -> (Outcome, Option<Taken<'m>>) {
    let Ok(job) = jobs.try_recv() else {
        return (provisioner.finish(req, kubeconfig, None), None);
    };
    let timer = provisioner.metrics.job_started();
    match &job.work {
        Work::Provision(next) if job.epoch == epoch.load(Ordering::Acquire) => {
            let (outcome, claimed) = provisioner.finish_and_claim(req, kubeconfig, next);
            let taken = Taken {
                job,
                timer,
                claimed: Some(claimed),
            };
            (outcome, Some(taken))
        }
        // An invalid message, or one from before a revocation: it goes the usual way.
        _ => {
            let taken = Taken {
                job,
                timer,
                claimed: None,
            };
            (provisioner.finish(req, kubeconfig, None), Some(taken))
        }
    }
}

/// A job a worker took while it was finishing the one before.
struct Taken<'m> {
    job: Job,
    /// Started when the job was taken.
    timer: JobTimer<'m>,
    /// The outcome of its claim, when that was written with the completion before.
    claimed: Option<Result<Claim, StoreError>>,
}

/// The report of a request the database refused: the poller dead-letters the request as
/// read, re-encoded (replayable as it is). Why not the original bytes: keeping them for
/// every fetched job (thousands wait in the poller's buffer under a backlog) measured 2 MiB
/// more peak RSS in the benchmark, for a rare case; the dead letter's headers name the
/// original's place in the topic.
#[cold]
fn refused(refusal: Refusal, req: &ProvisionRequest) -> JobResult {
    // Serializing a struct of strings and integers cannot fail.
    let value = Bytes::from(serde_json::to_vec(req).unwrap_or_default());
    JobResult::Refused { refusal, value }
}

/// How a job's result counts in the metrics; `None` for a job we did not do.
fn final_of(result: &JobResult) -> Option<Final> {
    match result {
        JobResult::Finished(Outcome::Completed) => Some(Final::Completed),
        JobResult::Finished(Outcome::Failed) => Some(Final::Failed),
        JobResult::Finished(Outcome::AlreadyFinal(_)) => Some(Final::AlreadyFinal),
        JobResult::Rejected { .. } => Some(Final::Invalid),
        JobResult::Refused { refusal, .. } => Some(match refusal.kind {
            RefusalKind::Refused => Final::Refused,
            RefusalKind::ForeignStatus => Final::ForeignStatus,
        }),
        // `work` turns these into `Dropped`, `Refused` and `StorageFailed`.
        JobResult::Finished(Outcome::Aborted | Outcome::Refused(_) | Outcome::StorageFailed(_))
        | JobResult::Dropped
        | JobResult::StorageFailed(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Claim, Store};

    /// The deepest work a worker does, on a stack of a worker's size: SQLite preparing and
    /// running the transitions (as a group-commit leader) against a table with a backend's
    /// trigger compiled into them, and rendering a kubeconfig for the longest user id.
    #[test]
    fn a_worker_stack_holds_the_deepest_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("poc.db");
        let store = Store::open(&path, 1).unwrap();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE audit (request_id TEXT, status TEXT, note TEXT);
                 CREATE TRIGGER audit AFTER UPDATE OF status ON provision_requests BEGIN
                   INSERT INTO audit VALUES (NEW.request_id, NEW.status,
                     CASE WHEN NEW.status = 'completed' THEN upper(substr(NEW.kubeconfig, 1, 10))
                          WHEN NEW.status = 'failed' THEN lower(NEW.error_message)
                          ELSE coalesce(NEW.user_id, '') || '@' || NEW.request_id END);
                 END;",
            )
            .unwrap();
        let worker = std::thread::Builder::new()
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || {
                for i in 0..3 {
                    let req = ProvisionRequest {
                        request_id: format!("r{i}"),
                        user_id: "ü'\":#\n😀x".repeat(32),
                        gpu_count: 1,
                        duration_hours: 1,
                    };
                    assert_eq!(store.claim(&req).unwrap(), Claim::Claimed);
                    let yaml = crate::kubeconfig::render(&req, &crate::kubeconfig::new_token());
                    assert!(store.complete(&req.request_id, &yaml).unwrap());
                }
                assert!(!store.fail("r0", "late").unwrap());
            })
            .unwrap();
        worker.join().unwrap();
    }
}
