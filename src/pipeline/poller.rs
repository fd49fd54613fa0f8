//! The poller thread: the one owner of the Kafka consumer.
//!
//! Architecture Invariant: only this thread touches Kafka, and all offset bookkeeping
//! happens here, so it needs no locks. Offsets are committed only from the tracker's
//! committable position, and only after a sync of the store (`Store::start_sync`) that began
//! after their work was done has succeeded. The sync runs on the store's thread while this
//! one goes on (heartbeats are the Kafka client's group thread's); a failed sync stops the
//! worker (DESIGN invariant 12).
//!
//! The loop never blocks for longer than the next heartbeat: when the job channel is full
//! it stops fetching but keeps heartbeating and committing (a full channel pauses the
//! consumer, never the group session).
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blocking_kafka::{
    BatchCompression, Change, CommitResult, Consumer, GroupSignal, KafkaError, Message, Offset,
    Partition, Produced, ProducerThread, StartFrom, Undecoded,
};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};

use super::RunError;
use super::dead_letter::{Cause, DeadLetter};
use super::tracker::OffsetTracker;
use super::workers::{Accepting, Done, Job, JobResult, Work};
use crate::metrics::{Leaving, Metrics};
use crate::request::{MAX_MESSAGE_BYTES, ProvisionRequest, Rejected, RequestError};
use crate::store::{Store, StoreError, Syncing};

#[derive(Debug, Clone)]
pub struct PollerSettings {
    pub topic: String,
    pub group_id: String,
    pub dlq_topic: Option<String>,
    /// The largest dead letter, as the broker measures it (`KAFKA_DLQ_MAX_BYTES`).
    pub dlq_max_bytes: usize,
    pub commit_interval: Duration,
    pub shutdown_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// How long the last commit before a revocation or an exit, and leaving the group,
    /// may wait for the coordinator.
    pub last_commit_wait: Duration,
}

/// Everything the poller owns. Lifecycles: `jobs` is the only job sender; when the poller
/// returns it is dropped, which tells the workers to finish. `abort` is dropped when the
/// shutdown deadline passes, which interrupts the workers' delays.
pub struct Poller {
    pub settings: PollerSettings,
    pub consumer: Consumer,
    pub store: Arc<Store>,
    pub jobs: Sender<Job>,
    pub done: Receiver<Done>,
    pub shutdown: Receiver<()>,
    pub abort: Option<Sender<()>>,
    /// The partitions (and their assignment epochs) workers may start jobs of: none while
    /// an eager revocation or a shutdown drains, all but the revoked ones during a
    /// cooperative revocation.
    pub accepting: Arc<Accepting>,
    /// Written here (membership, commits, queue depth, lag); read by the metrics listener.
    pub metrics: Arc<Metrics>,
    /// Produces to the dead-letter topic, on a thread of its own; `None` when
    /// dead-lettering is off.
    pub dead_letters: Option<ProducerThread>,
}

/// Longest the loop waits without looking at the group.
const TICK: Duration = Duration::from_millis(100);
/// How often the topic is checked for new partitions (or for existing at all).
const TOPIC_CHECK: Duration = Duration::from_secs(30);
const TOPIC_CHECK_WHILE_EMPTY: Duration = Duration::from_secs(5);
/// How often "still unreachable" and "topic missing" are repeated.
const REMINDER: Duration = Duration::from_secs(30);
/// After the shutdown deadline aborts the workers, how long to wait for their reports.
const ABORT_GRACE: Duration = Duration::from_secs(5);
/// How long the last commit before a revocation or an exit waits for its sync. A sync takes
/// milliseconds on working storage; one that takes longer is a stalled disk, and then the
/// partitions are let go uncommitted (their next owner redoes the work; nothing is lost).
const LAST_SYNC_WAIT: Duration = Duration::from_secs(5);

enum State {
    Joining {
        retry_at: Instant,
        backoff: Duration,
    },
    Running,
    Draining {
        why: Drain,
        deadline: Instant,
        aborted_at: Option<Instant>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Drain {
    Rebalance,
    Shutdown,
}

/// The partitions a cooperative rebalance took away, being revoked.
struct Revoking {
    partitions: Vec<Partition>,
    /// When to give up waiting for their in-flight work (three quarters of the rebalance
    /// timeout, as for an eager revocation).
    deadline: Instant,
}

/// The loop's own state, separate from what it was given.
struct Run {
    p: Poller,
    tracker: OffsetTracker,
    state: State,
    /// The last assignment epoch handed out: each assignment of partitions (a join, or the
    /// partitions a cooperative rebalance adds) takes the next.
    epoch: u64,
    /// The epoch each partition we own was assigned in (jobs, reports and dead letters
    /// carry it; those of another epoch are settled already).
    epochs: HashMap<Partition, u64>,
    /// A cooperative revocation in progress: the partitions a rebalance took away, whose
    /// in-flight work finishes (by the deadline) while every other partition goes on.
    revoking: Option<Revoking>,
    /// An error that ends the worker (FENCED_INSTANCE_ID on a commit, say), returned at
    /// the top of the loop.
    fatal: Option<KafkaError>,
    buffer: VecDeque<Job>,
    pending_dead_letters: VecDeque<DeadLetter>,
    /// The dead letter at the front of the queue, sent and not answered yet: its number
    /// and the bytes of value sent.
    dead_letter_in_flight: Option<(u64, usize)>,
    /// The number of the last dead letter sent.
    dead_letter_id: u64,
    dead_letter_retry_at: Instant,
    dead_letter_backoff: Duration,
    last_commit: Instant,
    next_topic_check: Instant,
    topic_missing_said: Option<Instant>,
    kafka_down: Option<(Instant, Instant)>,
    shutdown_seen: bool,
    /// Set when the topic's partitions changed: the next rejoin first leaves the group.
    /// A coordinator may answer a member that rejoins with unchanged metadata with the old
    /// generation and assignment (tansu does); a fresh member forces a real rebalance.
    leave_before_join: bool,
    /// Offsets waiting for the sync that makes their work durable; at most one at a time.
    /// Taken when the sync answers: committed if it succeeded, never if it failed.
    syncing: Option<Pending>,
    /// Set when a sync failed, or a worker met a fatal storage fault: nothing is committed
    /// any more and the loop stops with this error.
    durability_lost: Option<RunError>,
}

/// Offsets to commit once `sync` succeeds. The sync began after they were read from the
/// tracker, so it covers every completion they stand for.
struct Pending {
    offsets: Vec<(Partition, Offset)>,
    sync: Syncing,
    /// The last commit before partitions are let go (`commit_and_wait`): the coordinator's
    /// answer is waited for, so the next owner starts from it.
    last: bool,
}

impl Poller {
    /// Runs until shutdown has drained, committed and left the group; stops with an error
    /// when Kafka fails for good or a sync of the database failed.
    pub fn run(self) -> Result<(), RunError> {
        let now = Instant::now();
        let mut run = Run {
            p: self,
            tracker: OffsetTracker::new(),
            state: State::Joining {
                retry_at: now,
                backoff: Duration::from_millis(500),
            },
            epoch: 0,
            epochs: HashMap::new(),
            revoking: None,
            fatal: None,
            buffer: VecDeque::new(),
            pending_dead_letters: VecDeque::new(),
            dead_letter_in_flight: None,
            dead_letter_id: 0,
            dead_letter_retry_at: now,
            dead_letter_backoff: Duration::from_millis(500),
            last_commit: now,
            next_topic_check: now + TOPIC_CHECK,
            topic_missing_said: None,
            kafka_down: None,
            shutdown_seen: false,
            leave_before_join: false,
            syncing: None,
            durability_lost: None,
        };
        run.run()
    }
}

impl Run {
    fn run(&mut self) -> Result<(), RunError> {
        loop {
            if let Some(e) = self.durability_lost.take() {
                return Err(self.stop_for_durability(e, true));
            }
            if let Some(e) = self.fatal.take() {
                return Err(RunError::Kafka(e));
            }
            self.collect_done();
            self.collect_commits();
            self.send_dead_letters();
            // Every pass, and a pass is at most a tick apart: a cheap store keeps it current.
            self.p
                .metrics
                .set_queue_depth(self.buffer.len() + self.p.jobs.len());
            if !self.shutdown_seen && self.shutdown_requested() {
                self.shutdown_seen = true;
            }
            if self.shutdown_seen && !self.draining(Drain::Shutdown) {
                self.begin_drain(Drain::Shutdown, "shutdown requested");
            }
            match self.state {
                State::Joining { retry_at, backoff } => {
                    if Instant::now() >= retry_at {
                        self.join(backoff).map_err(RunError::Kafka)?;
                    } else {
                        self.wait_until(retry_at);
                    }
                }
                State::Running => self.run_once().map_err(RunError::Kafka)?,
                State::Draining { .. } => {
                    if self.drain_once().map_err(RunError::Kafka)? {
                        // The drain has left the group already.
                        return match self.durability_lost.take() {
                            Some(e) => Err(self.stop_for_durability(e, false)),
                            None => Ok(()),
                        };
                    }
                }
            }
        }
    }

    fn join(&mut self, backoff: Duration) -> Result<(), KafkaError> {
        log::info!("Joining consumer group {}", self.p.settings.group_id);
        match self.p.consumer.join() {
            Ok(assignment) => {
                self.kafka_ok();
                self.tracker.clear();
                self.epochs.clear();
                self.revoking = None;
                self.p.accepting.stop_all();
                self.start_partitions(&assignment.partitions);
                let partitions: Vec<Partition> =
                    assignment.partitions.iter().map(|(p, _)| *p).collect();
                self.p.metrics.joined(&partitions);
                log::info!(
                    "Partitions assigned: [{}] (topic {}, partition@start offset; assignor {})",
                    self.start_list(&assignment.partitions),
                    self.p.settings.topic,
                    assignment.protocol
                );
                if assignment.topic_partitions == 0 {
                    self.say_topic_missing(true);
                } else if assignment.partitions.is_empty() {
                    log::info!(
                        "No partitions assigned to this worker (topic {} has {}; the group's other members own them)",
                        self.p.settings.topic,
                        assignment.topic_partitions
                    );
                }
                let check = if assignment.partitions.is_empty() {
                    TOPIC_CHECK_WHILE_EMPTY
                } else {
                    TOPIC_CHECK
                };
                self.next_topic_check = Instant::now() + check;
                self.last_commit = Instant::now();
                self.state = State::Running;
                // Record where each partition starts, so a reset position sticks.
                self.commit(true);
                Ok(())
            }
            Err(e) if e.is_retriable() && !e.is_fatal() => {
                self.kafka_error(&e, "joining the consumer group");
                self.state = State::Joining {
                    retry_at: Instant::now() + backoff,
                    backoff: (backoff * 2).min(Duration::from_secs(5)),
                };
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn run_once(&mut self) -> Result<(), KafkaError> {
        match self.p.consumer.heartbeat() {
            // Only an answer counts: a pass with no heartbeat due used to clear a failed
            // heartbeat's reason, so /healthz flipped back to 200 in the middle of an outage.
            Ok(GroupSignal::Fine) => {
                self.p.metrics.group_fine();
                self.kafka_ok();
            }
            Ok(GroupSignal::NotDue) => {}
            Ok(GroupSignal::Rejoin(why)) => {
                self.begin_drain(Drain::Rebalance, why);
                return Ok(());
            }
            Ok(GroupSignal::Changed(change)) => self.change(change),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                self.p.metrics.heartbeat_failed(&e);
                self.kafka_error(&e, "heartbeating");
            }
        }
        self.revoke_step();
        self.commit(false);
        if self.p.metrics.log_end_refresh_due() {
            // For the lag metric; only while metrics are served. The log ends come with the
            // fetch answers: nothing is asked of Kafka here.
            self.p.metrics.log_ends(&self.p.consumer.log_ends());
        }
        let now = Instant::now();
        if now >= self.next_topic_check {
            self.next_topic_check = now + TOPIC_CHECK;
            if self.p.consumer.topic_changed() {
                self.leave_before_join = true;
                self.begin_drain(Drain::Rebalance, "the topic's partitions changed");
                return Ok(());
            }
            if self.owns_nothing() {
                self.next_topic_check = now + TOPIC_CHECK_WHILE_EMPTY;
                self.say_topic_missing(false);
            }
        }

        let room = self.p.jobs.capacity().unwrap_or(usize::MAX) > self.p.jobs.len();
        if self.buffer.is_empty() && room && !self.owns_nothing() {
            // Never blocks: the brokers' fetch threads have fetched ahead, one result each.
            let messages = self.p.consumer.fetch();
            if messages.is_empty() {
                // Nothing fetched yet: wait for a fetch thread's result (or a report, a
                // shutdown request, the next tick).
                self.wait_until(self.next_tick());
                return Ok(());
            }
            self.accept(messages);
        }
        if self.owns_nothing() {
            self.wait_until(Instant::now() + TICK);
        } else {
            self.dispatch();
        }
        Ok(())
    }

    /// Turns fetched messages into jobs; validation happens here, once.
    fn accept(&mut self, messages: Vec<Message>) {
        // A seam for the test that a panicking poller exits non-zero (there is no natural way
        // to make it panic): debug builds only, so the release binary never reads it.
        #[cfg(debug_assertions)]
        if !messages.is_empty() && std::env::var_os("PROVISION_WORKER_TEST_PANIC_POLLER").is_some()
        {
            panic!("PROVISION_WORKER_TEST_PANIC_POLLER is set: the poller panics, as a test asks");
        }
        for m in messages {
            self.tracker.fetched(m.partition, m.offset);
            let work = work_for(m.undecoded, m.key, m.value, m.value_len);
            self.buffer.push_back(Job {
                partition: m.partition,
                offset: m.offset,
                epoch: self.epochs.get(&m.partition).copied().unwrap_or_default(),
                produced_ms: m.timestamp_ms,
                work,
            });
        }
        for p in self.p.consumer.assigned() {
            if let Some(next) = self.p.consumer.position(p) {
                self.tracker.position(p, next);
            }
        }
    }

    /// Hands buffered jobs to the workers; when the channel is full, waits for room, a
    /// report, or the next tick, whichever comes first.
    fn dispatch(&mut self) {
        while let Some(job) = self.buffer.pop_front() {
            match self.p.jobs.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    self.buffer.push_front(job);
                    break;
                }
                Err(TrySendError::Disconnected(job)) => {
                    // Workers are gone (they only stop when we drop the sender): keep the
                    // job unfinished so its offset is never committed.
                    log::error!("worker threads are gone; cannot dispatch jobs");
                    self.tracker.dropped(job.partition, job.offset);
                }
            }
        }
        if self.buffer.is_empty() {
            if self.p.jobs.is_full() {
                // Nothing to hand over and no room to fetch into: without this wait the loop
                // would spin (measured: ~2 s of poller CPU per run of 4,096 two-second jobs on
                // 1,024 threads) until a worker takes a job.
                self.wait_for_room();
            }
            return;
        }
        let deadline = self.next_tick();
        let sync = self.sync_receiver();
        let mut sel = Select::new();
        let send = sel.send(&self.p.jobs);
        let done = sel.recv(&self.p.done);
        let shutdown = sel.recv(&self.p.shutdown);
        let synced = sync.as_ref().map(|r| sel.recv(r));
        let Ok(op) = sel.select_deadline(deadline) else {
            return;
        };
        match op.index() {
            i if i == send => {
                if let Some(job) = self.buffer.pop_front()
                    && let Err(e) = op.send(&self.p.jobs, job)
                {
                    self.tracker.dropped(e.0.partition, e.0.offset);
                }
            }
            i if i == done => {
                if let Ok(d) = op.recv(&self.p.done) {
                    self.on_done(d);
                }
            }
            i if i == shutdown => {
                let _ = op.recv(&self.p.shutdown);
                self.shutdown_seen = true;
            }
            i => {
                if let Some(r) = &sync {
                    debug_assert_eq!(Some(i), synced);
                    let received = op.recv(r);
                    self.sync_received(received);
                }
            }
        }
    }

    /// Waits until the job channel has room, a report or a shutdown request arrives, or the
    /// next tick is due, whichever comes first.
    fn wait_for_room(&mut self) {
        let sync = self.sync_receiver();
        let mut sel = Select::new();
        let send = sel.send(&self.p.jobs);
        let done = sel.recv(&self.p.done);
        let shutdown = sel.recv(&self.p.shutdown);
        let synced = sync.as_ref().map(|r| sel.recv(r));
        match sel.ready_deadline(self.next_tick()) {
            Ok(i) if i == done => {
                if let Ok(d) = self.p.done.try_recv() {
                    self.on_done(d);
                }
            }
            Ok(i) if i == shutdown => {
                if self.p.shutdown.try_recv().is_ok() {
                    self.shutdown_seen = true;
                }
            }
            Ok(i) if Some(i) == synced => self.check_sync(),
            // Room in the channel (the next pass fetches), or the tick: nothing to do here.
            Ok(i) => debug_assert_eq!(i, send),
            Err(_) => {}
        }
    }

    /// Assigns `partitions` under a new epoch: tracked from their start offsets, their
    /// jobs allowed to start.
    fn start_partitions(&mut self, partitions: &[(Partition, Option<Offset>)]) {
        self.epoch += 1;
        let mut started = Vec::with_capacity(partitions.len());
        for (p, start) in partitions {
            self.tracker.assign(*p, *start);
            self.epochs.insert(*p, self.epoch);
            started.push(*p);
        }
        self.p.accepting.assign(&started, self.epoch);
    }

    /// "0@12, 1@earliest": each partition with the offset it starts from. Without a
    /// committed offset a partition starts where KAFKA_AUTO_OFFSET_RESET says, which its
    /// leader resolves before the first fetch.
    fn start_list(&self, partitions: &[(Partition, Option<Offset>)]) -> String {
        let reset = match self.p.consumer.settings().start_from {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        };
        let list: Vec<String> = partitions
            .iter()
            .map(|(p, o)| match o {
                Some(o) => format!("{p}@{o}"),
                None => format!("{p}@{reset}"),
            })
            .collect();
        list.join(", ")
    }

    /// A cooperative rebalance changed our share (KIP-429): partitions added start at once;
    /// those taken away stop starting jobs and are revoked once their in-flight work is
    /// done (`revoke_step`), while every other partition goes on as before.
    fn change(&mut self, change: Change) {
        let Change {
            added,
            revoked,
            protocol,
        } = change;
        if !revoked.is_empty() {
            self.p.accepting.stop(&revoked);
            let buffered = std::mem::take(&mut self.buffer);
            for job in buffered {
                if revoked.contains(&job.partition) {
                    self.tracker.dropped(job.partition, job.offset);
                } else {
                    self.buffer.push_back(job);
                }
            }
            let keeping: Vec<String> = self
                .p
                .consumer
                .assigned()
                .iter()
                .filter(|p| !revoked.contains(p))
                .map(ToString::to_string)
                .collect();
            log::info!(
                "Rebalance (cooperative, assignor {protocol}): finishing {} in-flight request(s) before revoking partitions [{}]; partitions [{}] go on",
                self.tracker.in_flight_of(&revoked),
                join(&revoked),
                keeping.join(", ")
            );
            let deadline = Instant::now() + self.p.settings.rebalance_timeout * 3 / 4;
            match &mut self.revoking {
                Some(r) => {
                    r.partitions.extend(revoked);
                    r.deadline = r.deadline.max(deadline);
                }
                None => {
                    self.revoking = Some(Revoking {
                        partitions: revoked,
                        deadline,
                    });
                }
            }
        }
        if !added.is_empty() {
            self.start_partitions(&added);
            let partitions: Vec<Partition> = added.iter().map(|(p, _)| *p).collect();
            self.p.metrics.partitions_added(&partitions);
            log::info!(
                "Partitions assigned: [{}] (topic {}, partition@start offset; cooperative rebalance, assignor {protocol}; now owning [{}])",
                self.start_list(&added),
                self.p.settings.topic,
                join(&self.p.consumer.assigned())
            );
        }
        // Something to do at once, if the revoked partitions had nothing in flight.
        self.revoke_step();
    }

    /// Ends a cooperative revocation once the revoked partitions' in-flight work is done
    /// (or its deadline passed): commits, forgets them, and lets the group thread rejoin.
    fn revoke_step(&mut self) {
        let Some(r) = &self.revoking else {
            return;
        };
        let unfinished = self.tracker.in_flight_of(&r.partitions);
        if unfinished > 0 && Instant::now() < r.deadline {
            return;
        }
        let Some(Revoking { partitions, .. }) = self.revoking.take() else {
            return;
        };
        if unfinished > 0 {
            log::warn!(
                "{unfinished} request(s) of revoked partitions [{}] still unfinished; their offsets stay uncommitted",
                join(&partitions)
            );
        }
        // Their last offsets go before anyone else may start on them.
        self.commit_and_wait();
        self.tracker.remove(&partitions);
        for p in &partitions {
            self.epochs.remove(p);
        }
        // Their dead letters not produced yet are the next owner's (uncommitted); one being
        // produced is forgotten, so its outcome is not taken for another's.
        if self
            .pending_dead_letters
            .front()
            .is_some_and(|dl| partitions.contains(&dl.partition))
        {
            self.dead_letter_in_flight = None;
        }
        self.pending_dead_letters
            .retain(|dl| !partitions.contains(&dl.partition));
        self.p.metrics.partitions_revoked(&partitions);
        self.p.consumer.revoked(&partitions);
        log::info!("Partitions revoked: [{}]", join(&partitions));
    }

    fn begin_drain(&mut self, why: Drain, reason: &str) {
        // Workers must start nothing more: queued jobs come back as dropped. A cooperative
        // revocation in progress is part of this one now.
        self.p.accepting.stop_all();
        self.revoking = None;
        self.p.metrics.leaving(match why {
            Drain::Rebalance => Leaving::Rebalance,
            Drain::Shutdown => Leaving::Shutdown,
        });
        for job in self.buffer.drain(..) {
            self.tracker.dropped(job.partition, job.offset);
        }
        let in_flight = self.tracker.in_flight();
        let assigned: Vec<String> = self
            .p
            .consumer
            .assigned()
            .iter()
            .map(ToString::to_string)
            .collect();
        let (deadline, aborted_at) = match (why, &self.state) {
            // A shutdown during a revocation keeps waiting for the same in-flight work.
            (
                Drain::Shutdown,
                State::Draining {
                    deadline,
                    aborted_at,
                    ..
                },
            ) => (
                (*deadline).min(Instant::now() + self.p.settings.shutdown_timeout),
                *aborted_at,
            ),
            (Drain::Shutdown, _) => (Instant::now() + self.p.settings.shutdown_timeout, None),
            // Leave a quarter of the rebalance timeout for the commit and the join itself.
            (Drain::Rebalance, _) => (
                Instant::now() + self.p.settings.rebalance_timeout * 3 / 4,
                None,
            ),
        };
        match why {
            Drain::Shutdown => log::info!(
                "Shutting down: stopped fetching; waiting up to {} s for requests in progress ({in_flight} fetched and unfinished)",
                crate::provision::format_seconds(self.p.settings.shutdown_timeout)
            ),
            Drain::Rebalance => log::info!(
                "Rebalance ({reason}): finishing {in_flight} in-flight request(s) before revoking partitions [{}]",
                assigned.join(", ")
            ),
        }
        self.state = State::Draining {
            why,
            deadline,
            aborted_at,
        };
    }

    /// One step of a drain; true when the worker may exit.
    fn drain_once(&mut self) -> Result<bool, KafkaError> {
        let State::Draining {
            why,
            deadline,
            aborted_at,
        } = self.state
        else {
            return Ok(false);
        };
        // Keep the session while in-flight work finishes, so nobody else takes over our
        // partitions and redoes it. During a rebalance the coordinator answers "rebalancing"
        // but still counts the heartbeat, so the session survives a long revocation.
        // While Kafka is down a shutdown does not talk to it until the end: each attempt can
        // block for the request timeout, and the shutdown deadline is the operator's.
        let kafka_down = self.kafka_down.is_some();
        if !(why == Drain::Shutdown && kafka_down) {
            match self.p.consumer.heartbeat() {
                Err(e) if e.is_fatal() && why == Drain::Rebalance => return Err(e),
                Err(e) => self.kafka_error(&e, "heartbeating"),
                Ok(_) => {}
            }
            self.commit(false);
        }
        // Reports that arrived while we talked to Kafka count before any deadline decision.
        self.collect_done();
        let now = Instant::now();
        let mut aborted_at = aborted_at;
        if why == Drain::Shutdown && now >= deadline && aborted_at.is_none() {
            log::warn!(
                "Shutdown timeout reached: interrupting {} in-flight request(s); they stay provisioning and will be redelivered",
                self.tracker.in_flight()
            );
            self.p.abort = None;
            aborted_at = Some(now);
            self.state = State::Draining {
                why,
                deadline,
                aborted_at,
            };
        }
        let finished = self.tracker.in_flight() == 0;
        let gave_up = match why {
            Drain::Rebalance => now >= deadline,
            Drain::Shutdown => aborted_at.is_some_and(|t| now >= t + ABORT_GRACE),
        };
        if !(finished || gave_up) {
            self.wait_until(self.next_tick());
            return Ok(false);
        }
        if gave_up && !finished {
            log::warn!(
                "{} request(s) still unfinished; their offsets stay uncommitted",
                self.tracker.in_flight()
            );
        }
        // One final commit, waiting for its sync; during a shutdown with Kafka down it is
        // tried only if it can still make a difference (something finished), and it is
        // bounded by the request timeout like every call.
        if !(why == Drain::Shutdown
            && self.kafka_down.is_some()
            && self.tracker.to_commit().is_empty())
        {
            self.commit_and_wait();
        }
        let revoked: Vec<String> = self
            .p
            .consumer
            .assigned()
            .iter()
            .map(ToString::to_string)
            .collect();
        self.tracker.clear();
        self.epochs.clear();
        self.pending_dead_letters.clear();
        self.dead_letter_in_flight = None;
        self.p.consumer.revoke();
        match why {
            Drain::Rebalance => {
                log::info!("Partitions revoked: [{}]", revoked.join(", "));
                if std::mem::take(&mut self.leave_before_join)
                    && let Err(e) = self
                        .p
                        .consumer
                        .leave_within(self.p.settings.last_commit_wait)
                {
                    log::warn!("Could not leave the group before rejoining: {e}");
                }
                self.state = State::Joining {
                    retry_at: Instant::now(),
                    backoff: Duration::from_millis(500),
                };
                Ok(false)
            }
            Drain::Shutdown if self.kafka_down.is_some() => {
                log::warn!(
                    "Not leaving consumer group {} (Kafka is unreachable); the broker will notice after the session timeout",
                    self.p.settings.group_id
                );
                Ok(true)
            }
            // A static member does not leave (as Kafka's own clients do): its place, and its
            // partitions, wait for it for the session timeout, so a restart within that
            // time causes no rebalance at all.
            Drain::Shutdown if self.p.consumer.settings().group_instance_id.is_some() => {
                log::info!(
                    "Not leaving consumer group {} (static member {}): a restart within the session timeout ({} s) takes the same partitions back without a rebalance; otherwise the group gives them to the others then",
                    self.p.settings.group_id,
                    self.p
                        .consumer
                        .settings()
                        .group_instance_id
                        .as_deref()
                        .unwrap_or_default(),
                    crate::provision::format_seconds(self.p.consumer.settings().session_timeout)
                );
                Ok(true)
            }
            Drain::Shutdown => {
                match self
                    .p
                    .consumer
                    .leave_within(self.p.settings.last_commit_wait)
                {
                    Ok(()) => log::info!("Left consumer group {}", self.p.settings.group_id),
                    Err(e) => log::warn!(
                        "Could not leave consumer group {} ({e}); the broker will notice after the session timeout",
                        self.p.settings.group_id
                    ),
                }
                Ok(true)
            }
        }
    }

    fn on_done(&mut self, d: Done) {
        if let JobResult::StorageFailed(reason) = d.result {
            // Whatever its epoch: the storage is the store's, not a partition's.
            self.storage_failed(reason);
            return;
        }
        if self.epochs.get(&d.partition) != Some(&d.epoch) {
            // A report from before a revocation: that partition's offsets were settled then.
            return;
        }
        match d.result {
            JobResult::Finished(outcome) => {
                log::debug!(
                    "partition {} offset {} finished: {outcome:?}",
                    d.partition,
                    d.offset
                );
                self.tracker.finished(d.partition, d.offset);
            }
            JobResult::Dropped => self.tracker.dropped(d.partition, d.offset),
            // Handled above.
            JobResult::StorageFailed(_) => {}
            JobResult::Rejected {
                reason,
                key,
                value,
                original_len,
            } => self.dead_letter(DeadLetter {
                cause: Cause::Invalid,
                partition: d.partition,
                offset: d.offset,
                epoch: d.epoch,
                reason,
                key,
                value,
                original_len,
                cut_down: false,
            }),
            JobResult::Refused { refusal, value } => self.dead_letter(DeadLetter {
                cause: Cause::Refused,
                partition: d.partition,
                offset: d.offset,
                epoch: d.epoch,
                reason: refusal.reason,
                key: None,
                original_len: value.len(),
                value,
                cut_down: false,
            }),
        }
    }

    /// Queues a dead letter; its offset stays unfinished until it is sent. Without a
    /// dead-letter topic the message is logged and done.
    fn dead_letter(&mut self, dl: DeadLetter) {
        if self.p.settings.dlq_topic.is_some() {
            self.pending_dead_letters.push_back(dl);
        } else {
            log::warn!(
                "Dropping {} at partition {} offset {} (dead-letter topic disabled): {}",
                dl.cause.describe(),
                dl.partition,
                dl.offset,
                dl.reason
            );
            self.tracker.finished(dl.partition, dl.offset);
        }
    }

    fn collect_done(&mut self) {
        loop {
            match self.p.done.try_recv() {
                Ok(d) => self.on_done(d),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Produces pending dead letters in order, one at a time, on the dead-letter producer's
    /// own thread (a slow or unreachable broker never holds up this loop): takes the outcome
    /// of the one sent before, then sends the next. A transient failure (outage, missing
    /// topic, leader election, a throttled broker) is retried later with backoff, the offset
    /// held meanwhile. A permanent refusal (too large, invalid, not authorized) gets one
    /// more try in the cut-down form; if that is refused too, the message is logged,
    /// counted and skipped, so that one record the broker will never take cannot stall its
    /// partition forever.
    fn send_dead_letters(&mut self) {
        let (Some(topic), Some(producer)) = (
            self.p.settings.dlq_topic.clone(),
            self.p.dead_letters.as_ref(),
        ) else {
            return;
        };
        let outcomes: Vec<Produced> = producer.results().try_iter().collect();
        for produced in outcomes {
            self.dead_letter_produced(&topic, produced);
        }
        if self.dead_letter_in_flight.is_some() {
            return;
        }
        while self
            .pending_dead_letters
            .front()
            .is_some_and(|dl| self.epochs.get(&dl.partition) != Some(&dl.epoch))
        {
            self.pending_dead_letters.pop_front();
        }
        let Some(dl) = self.pending_dead_letters.front() else {
            self.p.metrics.dead_letters_flowing();
            return;
        };
        if Instant::now() < self.dead_letter_retry_at {
            return;
        }
        let record = dl.record(&self.p.settings.topic, self.p.settings.dlq_max_bytes);
        // The cut-down form goes uncompressed: the one retry should depend on as little as
        // possible (a broker or topic refusing the codec, say).
        let compression = if dl.cut_down {
            BatchCompression::None
        } else {
            BatchCompression::Gzip
        };
        let sent = record.value.as_ref().map_or(0, bytes::Bytes::len);
        self.dead_letter_id += 1;
        let id = self.dead_letter_id;
        if let Some(producer) = self.p.dead_letters.as_ref()
            && producer.send(id, record, compression)
        {
            self.dead_letter_in_flight = Some((id, sent));
        } else {
            log::error!("the dead-letter producer's thread is gone; dead letters wait");
        }
    }

    /// The outcome of the dead letter at the front of the queue.
    fn dead_letter_produced(&mut self, topic: &str, produced: Produced) {
        let Some((id, sent)) = self.dead_letter_in_flight else {
            return;
        };
        if produced.id != id {
            return; // sent before a revocation cleared the queue
        }
        self.dead_letter_in_flight = None;
        let Some(dl) = self.pending_dead_letters.front_mut() else {
            return;
        };
        match produced.result {
            Ok(delivery) => {
                let cut = if sent < dl.original_len {
                    format!(
                        " (cut to {sent} of {} bytes{})",
                        dl.original_len,
                        if dl.cut_down { ", cut-down form" } else { "" }
                    )
                } else {
                    String::new()
                };
                log::warn!(
                    "Dead-lettered {} at partition {} offset {} to {topic}{cut}: {}",
                    dl.cause.describe(),
                    dl.partition,
                    dl.offset,
                    dl.reason
                );
                log::debug!(
                    "dead letter of partition {} offset {} is at {topic} partition {} offset {}",
                    dl.partition,
                    dl.offset,
                    delivery.partition,
                    delivery
                        .offset
                        .map_or_else(|| "(written before)".to_owned(), |o| o.to_string())
                );
                self.tracker.finished(dl.partition, dl.offset);
                self.p.metrics.dead_lettered();
                self.pending_dead_letters.pop_front();
                self.dead_letter_backoff = Duration::from_millis(500);
            }
            Err(e) if e.is_permanent() && !dl.cut_down => {
                log::error!(
                    "Kafka refused the dead letter of partition {} offset {} ({sent} bytes of value) for good: {e}; trying once more with the value cut to {} bytes",
                    dl.partition,
                    dl.offset,
                    super::dead_letter::CUT_DOWN_VALUE_BYTES
                );
                dl.cut_down = true;
            }
            Err(e) if e.is_permanent() => {
                log::error!(
                    "Giving up on the dead letter of partition {} offset {}: Kafka refused even its cut-down form: {e}; {} ({}), its value starts {}; skipping it, so its partition moves on",
                    dl.partition,
                    dl.offset,
                    dl.cause.what_it_was(),
                    dl.reason.escape_debug(),
                    dl.first_bytes()
                );
                self.tracker.finished(dl.partition, dl.offset);
                self.p.metrics.dead_letter_dropped();
                self.pending_dead_letters.pop_front();
                self.dead_letter_backoff = Duration::from_millis(500);
            }
            Err(e) => {
                log::error!(
                    "Could not dead-letter the message at partition {} offset {} ({} bytes): {e}; retrying in {:?} (its offset stays uncommitted)",
                    dl.partition,
                    dl.offset,
                    dl.original_len,
                    self.dead_letter_backoff
                );
                self.p.metrics.dead_letter_waiting(format!(
                    "dead letter for partition {} offset {} waiting: {e}",
                    dl.partition, dl.offset
                ));
                self.dead_letter_retry_at = Instant::now() + self.dead_letter_backoff;
                self.dead_letter_backoff =
                    (self.dead_letter_backoff * 2).min(Duration::from_secs(10));
            }
        }
    }

    /// Commits what the tracker allows, when due (or now, when `force`). Durability first:
    /// the database's writes reach the disk before Kafka hears that they are done. The sync
    /// runs on the store's thread; this only starts it, and a later pass commits the offsets
    /// read now once it has succeeded (see `sync_answered`), so a stalled disk never stops
    /// the heartbeats.
    fn commit(&mut self, force: bool) {
        self.start_commit(force, false);
    }

    /// [`Self::commit`]; `last` marks the commit before partitions are let go.
    fn start_commit(&mut self, force: bool, last: bool) {
        self.check_sync();
        if self.syncing.is_some() || self.durability_lost.is_some() {
            // One sync at a time; the next one covers whatever finishes meanwhile.
            return;
        }
        let now = Instant::now();
        if !force && now < self.last_commit + self.p.settings.commit_interval {
            return;
        }
        self.last_commit = now;
        let offsets = self.tracker.to_commit();
        if offsets.is_empty() {
            return;
        }
        // Read before the sync begins: every completion these offsets stand for was
        // committed to the database before the sync, so the sync covers it.
        self.syncing = Some(Pending {
            offsets,
            sync: self.p.store.start_sync(),
            last,
        });
    }

    /// Handles the sync's answer if it has come.
    fn check_sync(&mut self) {
        let answer = match &self.syncing {
            Some(pending) => match pending.sync.receiver().try_recv() {
                Ok(()) => pending.sync.result(Ok(())),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => Err(StoreError::SyncThreadGone),
            },
            None => return,
        };
        self.sync_answered(answer);
    }

    /// The pending sync answered: commit its offsets, or, if it failed, never commit them
    /// (nor anything after them) and stop.
    fn sync_answered(&mut self, answer: Result<(), StoreError>) {
        let Some(pending) = self.syncing.take() else {
            return;
        };
        let list: Vec<String> = pending
            .offsets
            .iter()
            .map(|(p, o)| format!("{p}@{o}"))
            .collect();
        if let Err(e) = answer {
            log::error!(
                "Database sync failed: {e}; offsets [{}] stay uncommitted; stopping (exit code 1)",
                list.join(", ")
            );
            self.p
                .metrics
                .durability_lost(format!("database sync failed, stopping: {e}"));
            self.durability_lost = Some(RunError::Durability(e));
            return;
        }
        let Pending { offsets, last, .. } = pending;
        if last {
            // Before a revocation or an exit: wait for the outcome (within the request
            // timeout), so the next owner starts from it.
            let wait = self.p.settings.last_commit_wait;
            let result = self.p.consumer.commit_sync(&offsets, wait);
            self.on_committed(CommitResult { offsets, result });
            return;
        }
        // The group thread commits; the outcome comes back later (`collect_commits`), so a
        // slow coordinator never holds up dispatching and acknowledging jobs.
        if let Err(e) = self.p.consumer.commit(&offsets) {
            self.on_committed(CommitResult {
                offsets,
                result: Err(e),
            });
        }
    }

    /// Takes the outcomes of the commits the group thread made since the last pass.
    fn collect_commits(&mut self) {
        for result in self.p.consumer.commit_results() {
            self.on_committed(result);
        }
    }

    fn on_committed(&mut self, c: CommitResult) {
        let CommitResult { offsets, result } = c;
        let list: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}@{o}")).collect();
        match result {
            Ok(()) => {
                self.tracker.committed(&offsets);
                self.p.metrics.committed(&offsets);
                log::debug!("Committed offsets [{}]", list.join(", "));
            }
            Err(e) if e.is_membership_change() => log::info!(
                "Offsets [{}] not committed: {e}; the group is rebalancing and whoever owns these partitions next resumes from the last commit",
                list.join(", ")
            ),
            Err(e) => self.kafka_error(&e, "committing offsets"),
        }
    }

    /// The last commit before the partitions are let go: waits for a sync in flight, then
    /// syncs what is finished now, for at most [`LAST_SYNC_WAIT`], and commits it waiting
    /// for the coordinator's answer (within `last_commit_wait`). The group thread goes on
    /// heartbeating meanwhile, and what it learns waits in the consumer's channel.
    fn commit_and_wait(&mut self) {
        let deadline = Instant::now() + LAST_SYNC_WAIT;
        self.wait_for_sync(deadline);
        self.start_commit(true, true);
        self.wait_for_sync(deadline);
        if self.syncing.take().is_some() {
            log::warn!(
                "The database sync did not finish within {} s; the partitions are let go without this commit (their next owner redoes the unfinished part)",
                LAST_SYNC_WAIT.as_secs()
            );
        }
    }

    /// Waits for the pending sync (if any) to answer, until `deadline`.
    fn wait_for_sync(&mut self, deadline: Instant) {
        while let Some(pending) = &self.syncing {
            match pending.sync.receiver().recv_deadline(deadline) {
                Ok(()) => {
                    let answer = pending.sync.result(Ok(()));
                    self.sync_answered(answer);
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    self.sync_answered(Err(StoreError::SyncThreadGone));
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return,
            }
        }
    }

    /// A worker met a fatal storage fault (its step failed with it; the worker logged it):
    /// the loop stops as after a failed sync, without waiting for the next one, which could
    /// be long in coming when nothing finishes any more. The first failure is the one kept.
    fn storage_failed(&mut self, reason: String) {
        if self.durability_lost.is_some() {
            return;
        }
        log::error!(
            "Database storage failed: {reason}; no more offsets are committed; stopping (exit code 1)"
        );
        self.p
            .metrics
            .durability_lost(format!("database storage failed, stopping: {reason}"));
        // A sync in flight began before the failure was seen; its offsets stay uncommitted.
        self.syncing = None;
        self.durability_lost = Some(RunError::Storage(reason));
    }

    /// A sync failed or the storage did: workers start nothing more and their waits end, the
    /// group is left (when `leave`) so that the partitions move on from their last commit,
    /// and `/healthz` says why until the process exits. Nothing is committed.
    fn stop_for_durability(&mut self, e: RunError, leave: bool) -> RunError {
        self.p.accepting.stop_all();
        self.p.abort = None;
        self.buffer.clear();
        self.pending_dead_letters.clear();
        if leave
            && let Err(leave) = self
                .p
                .consumer
                .leave_within(self.p.settings.last_commit_wait)
        {
            log::warn!(
                "Could not leave consumer group {} ({leave}); the broker will notice after the session timeout",
                self.p.settings.group_id
            );
        }
        e
    }

    fn say_topic_missing(&mut self, force: bool) {
        let now = Instant::now();
        if !force && self.topic_missing_said.is_some_and(|t| now < t + REMINDER) {
            return;
        }
        self.topic_missing_said = Some(now);
        let topic = &self.p.settings.topic;
        if self.p.consumer.topic_partitions() == Some(0) {
            log::warn!(
                "Topic {topic} does not exist yet; waiting for it. Create it, e.g. `kafka-topics.sh --bootstrap-server {} --create --topic {topic} --partitions 3`, or set KAFKA_TOPIC to the backend's topic",
                self.p.consumer.settings().bootstrap.join(",")
            );
        }
    }

    /// Logs a Kafka error. Connection failures are an outage: logged once at its start,
    /// then reminded every half minute, and its end is logged by `kafka_ok`.
    fn kafka_error(&mut self, e: &KafkaError, during: &str) {
        if e.is_fatal() {
            // The error's words say what to do; the loop returns it.
            if self.fatal.is_none() {
                self.fatal = Some(clone_fatal(e));
            }
            return;
        }
        if !e.is_connection() {
            log::warn!("Kafka error while {during}: {e}");
            return;
        }
        self.p.metrics.kafka_failed(e);
        let now = Instant::now();
        match self.kafka_down {
            None => {
                log::error!("Lost connection to Kafka while {during}: {e}");
                self.kafka_down = Some((now, now));
            }
            Some((since, said)) if now >= said + REMINDER => {
                log::error!(
                    "Kafka still failing after {} s (while {during}): {e}",
                    (now - since).as_secs()
                );
                self.kafka_down = Some((since, now));
            }
            Some(_) => log::debug!("Kafka error while {during}: {e}"),
        }
    }

    fn kafka_ok(&mut self) {
        if let Some((since, _)) = self.kafka_down.take() {
            // Dead letters waiting out a backoff from the outage go now.
            self.dead_letter_retry_at = Instant::now();
            self.dead_letter_backoff = Duration::from_millis(500);
            self.p.metrics.reconnected();
            log::info!(
                "Reconnected to Kafka after {:.1} s",
                since.elapsed().as_secs_f64()
            );
        }
    }

    fn draining(&self, which: Drain) -> bool {
        matches!(self.state, State::Draining { why, .. } if why == which)
    }

    /// Checked every pass of the loop, so it must not allocate.
    fn owns_nothing(&self) -> bool {
        self.p.consumer.owns_nothing()
    }

    fn shutdown_requested(&self) -> bool {
        match self.p.shutdown.try_recv() {
            Ok(()) => true,
            Err(TryRecvError::Empty) => false,
            // Nobody can ask for shutdown any more; the owner of the sender is gone.
            Err(TryRecvError::Disconnected) => true,
        }
    }

    /// The next moment the loop must look at the group or commit.
    fn next_tick(&self) -> Instant {
        let now = Instant::now();
        (now + TICK)
            .min(self.p.consumer.next_heartbeat().max(now))
            .min((self.last_commit + self.p.settings.commit_interval).max(now))
    }

    /// Waits for a report or a shutdown request, at most until `until`.
    fn wait_until(&mut self, until: Instant) {
        let until = until.min(
            self.next_tick()
                .max(Instant::now() + Duration::from_millis(1)),
        );
        // The consumer's threads report here: a fetched result wakes the loop at once; so
        // does a dead letter's outcome (taken by `send_dead_letters`, next pass) and the
        // pending sync's answer.
        let kafka_events = self.p.consumer.events().clone();
        let produced = self.p.dead_letters.as_ref().map(|p| p.results().clone());
        let sync = self.sync_receiver();
        let mut sel = Select::new();
        let done = sel.recv(&self.p.done);
        let shutdown = sel.recv(&self.p.shutdown);
        let kafka = sel.recv(&kafka_events);
        if let Some(r) = &produced {
            sel.recv(r);
        }
        let synced = sync.as_ref().map(|r| sel.recv(r));
        let Ok(op) = sel.ready_deadline(until) else {
            return;
        };
        if op == done {
            if let Ok(d) = self.p.done.try_recv() {
                self.on_done(d);
            }
        } else if op == shutdown {
            // (Readiness may be spurious: the channel itself says.)
            if self.shutdown_requested() {
                self.shutdown_seen = true;
            }
        } else if op == kafka {
            if let Ok(event) = kafka_events.try_recv() {
                self.p.consumer.handle(event);
            }
        } else if Some(op) == synced {
            self.check_sync();
        }
    }

    /// A `select` received the pending sync's signal.
    fn sync_received(&mut self, received: Result<(), crossbeam_channel::RecvError>) {
        if let Some(pending) = &self.syncing {
            let answer = pending.sync.result(received);
            self.sync_answered(answer);
        }
    }

    /// The receiver of the pending sync's signal, for a `select` that should also wake for
    /// it (a clone: the `select` borrows it while `self` is used afterwards).
    fn sync_receiver(&self) -> Option<Receiver<()>> {
        self.syncing
            .as_ref()
            .map(|pending| pending.sync.receiver().clone())
    }
}

/// "0, 3, 5".
fn join(partitions: &[Partition]) -> String {
    let list: Vec<String> = partitions.iter().map(ToString::to_string).collect();
    list.join(", ")
}

/// The fatal errors hold only text: a copy for the loop to return.
fn clone_fatal(e: &KafkaError) -> KafkaError {
    match e {
        KafkaError::FencedInstanceId { group, instance_id } => KafkaError::FencedInstanceId {
            group: group.clone(),
            instance_id: instance_id.clone(),
        },
        KafkaError::GroupProtocol {
            group,
            offered,
            group_uses,
            protocol_type,
        } => KafkaError::GroupProtocol {
            group: group.clone(),
            offered: offered.clone(),
            group_uses: group_uses.clone(),
            protocol_type: protocol_type.clone(),
        },
        KafkaError::StaticMembershipUnsupported { broker, join_group } => {
            KafkaError::StaticMembershipUnsupported {
                broker: broker.clone(),
                join_group: *join_group,
            }
        }
        other => KafkaError::Protocol {
            broker: String::new(),
            detail: other.to_string(),
        },
    }
}

/// What to do with one fetched message: validated here, once. Records the Kafka layer gave
/// up on (a batch past its bounds) are rejected with its reason, which names their offsets;
/// a value longer than any request can be (held only in part) is rejected by its true size
/// without being parsed.
fn work_for(
    undecoded: Option<Box<Undecoded>>,
    key: Option<Bytes>,
    value: Option<Bytes>,
    value_len: usize,
) -> Work {
    let value = value.unwrap_or_default();
    if let Some(undecoded) = undecoded {
        return Work::Reject {
            request_id: None,
            reason: undecoded.reason,
            key: None,
            value,
            original_len: 0,
        };
    }
    let parsed = if value_len > MAX_MESSAGE_BYTES {
        Err(Rejected {
            request_id: None,
            reason: RequestError::TooLarge { size: value_len },
        })
    } else {
        ProvisionRequest::parse(&value)
    };
    match parsed {
        Ok(req) => Work::Provision(req),
        Err(rejected) => Work::Reject {
            request_id: rejected.request_id,
            reason: rejected.reason.to_string(),
            key,
            value,
            original_len: value_len,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blocking_kafka::Offset;

    #[test]
    fn a_value_held_only_in_part_is_rejected_by_its_true_size() {
        let prefix = Bytes::from(vec![b'{'; 1000]);
        let work = work_for(
            None,
            Some(Bytes::from_static(b"k")),
            Some(prefix.clone()),
            314_572_800,
        );
        let Work::Reject {
            reason,
            value,
            original_len,
            key,
            request_id,
        } = work
        else {
            panic!("accepted: {work:?}");
        };
        assert_eq!(
            reason,
            "message is 314572800 bytes, more than the limit of 65536 bytes"
        );
        assert_eq!((value, original_len), (prefix, 314_572_800));
        assert_eq!((key.as_deref(), request_id), (Some(&b"k"[..]), None));
    }

    #[test]
    fn records_left_undecoded_are_rejected_with_the_layers_reason() {
        let undecoded = Undecoded {
            last: Offset(9),
            reason: "offsets 5 to 9 of partition 0 were not decoded: why".into(),
        };
        let work = work_for(Some(Box::new(undecoded)), None, None, 0);
        assert!(
            matches!(&work, Work::Reject { reason, value, .. } if reason.contains("offsets 5 to 9") && value.is_empty()),
            "{work:?}"
        );
    }

    #[test]
    fn a_whole_value_is_parsed() {
        let value = br#"{"request_id":"r","user_id":"u","gpu_count":1,"duration_hours":1}"#;
        let work = work_for(None, None, Some(Bytes::from_static(value)), value.len());
        assert!(matches!(work, Work::Provision(_)), "{work:?}");
        let work = work_for(None, None, Some(Bytes::from_static(b"[]")), 2);
        assert!(
            matches!(&work, Work::Reject { reason, .. } if reason.contains("JSON object")),
            "{work:?}"
        );
    }
}
