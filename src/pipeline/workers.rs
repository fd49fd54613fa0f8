//! The fixed pool of worker threads.
//!
//! Architecture Invariant: workers never touch Kafka. They take jobs from the bounded job
//! channel, do the database work and the delay, and report every job back exactly once on
//! the done channel: finished, or dropped because its partition was revoked meanwhile.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use crate::kafka::{Offset, Partition};
use crate::metrics::Final;
use crate::provision::{Outcome, Provisioner};
use crate::request::ProvisionRequest;

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
    /// Not done by us (revoked before it started, or aborted by shutdown).
    Dropped,
}

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
    for job in jobs.iter() {
        let timer = provisioner.metrics.job_started();
        // Acquire pairs with the poller's release when it bumps the epoch at revocation, so
        // a job fetched before the revocation is never started after it.
        let result = if job.epoch != epoch.load(Ordering::Acquire) {
            JobResult::Dropped
        } else {
            match job.work {
                Work::Provision(req) => match provisioner.provision(&req) {
                    Outcome::Aborted => JobResult::Dropped,
                    outcome => JobResult::Finished(outcome),
                },
                Work::Reject {
                    request_id,
                    reason,
                    key,
                    value,
                    original_len,
                } => match provisioner.reject(request_id.as_deref(), &reason) {
                    Outcome::Aborted => JobResult::Dropped,
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
        let report = Done {
            partition: job.partition,
            offset: job.offset,
            epoch: job.epoch,
            result,
        };
        if done.send(report).is_err() {
            // The poller is gone: nobody can commit anything any more.
            return;
        }
    }
}

/// How a job's result counts in the metrics; `None` for a job we did not do.
fn final_of(result: &JobResult) -> Option<Final> {
    match result {
        JobResult::Finished(Outcome::Completed) => Some(Final::Completed),
        JobResult::Finished(Outcome::Failed) => Some(Final::Failed),
        JobResult::Finished(Outcome::AlreadyFinal(_)) => Some(Final::AlreadyFinal),
        JobResult::Rejected { .. } => Some(Final::Invalid),
        JobResult::Finished(Outcome::Aborted) | JobResult::Dropped => None,
    }
}
