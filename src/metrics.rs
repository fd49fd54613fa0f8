//! Health and metrics: what the pipeline counts, and the optional HTTP listener
//! (`METRICS_ADDR`) that serves it as `GET /metrics` (Prometheus text format 0.0.4) and
//! `GET /healthz`.
//!
//! Architecture Invariant: the pipeline only writes here and the listener only reads. The
//! per-message path (a worker starting and finishing a job) touches atomics only; the one
//! lock, around the per-partition offsets, is taken per commit and per log-end refresh, never
//! per message. The listener never touches Kafka: lag is computed from log-end offsets the
//! poller fetches itself ([`Metrics::log_end_refresh_due`]), so "only the poller touches
//! Kafka" still holds.
//!
//! This module imports nothing else from the crate but the `Partition` and `Offset` newtypes;
//! the database check of `/healthz` comes in as a closure, so `metrics` depends on neither
//! `store` nor the pipeline.
//!
//! Why std and not an HTTP crate: two fixed routes, answered with `Connection: close`, to a
//! scraper every few seconds and a liveness probe. That is a couple of hundred lines of std,
//! where a server crate would add dependencies (and an async runtime) the binary does not need.
//!
//! Bounded whatever the clients do: a few handler threads ([`HANDLERS`]), started with the
//! listener, each serving one connection within a total deadline ([`REQUEST_DEADLINE`]: read
//! the request and write the answer, or 408 and close). The accepting thread hands each
//! connection to an idle handler, or answers 503 at once when all are busy: a slow client
//! holds one handler for at most the deadline and never delays another probe, and a flood
//! of connections costs no thread and no memory beyond them.
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blocking_kafka::{Offset, Partition};

/// How often the poller asks for the log-end offsets of its partitions (for lag), while the
/// metrics are served. One ListOffsets request per interval; a scrape sees lag at most this old.
pub const LOG_END_REFRESH: Duration = Duration::from_secs(5);

/// Upper bounds (seconds) of the processing-time buckets: a job is one database round trip
/// plus `MOCK_PROVISION_DELAY_SECONDS` (5 s by default).
const PROCESSING_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
];
/// Upper bounds (seconds) of the end-to-end buckets: from the message's Kafka timestamp to
/// the end of its job, so queueing behind other requests and outages show up here.
const END_TO_END_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];

/// How a job ended, as `provision_requests_total{status=...}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    /// The row moved to `completed`.
    Completed,
    /// The row moved to `failed` (a request that cannot succeed).
    Failed,
    /// The message was not a valid request: its row (if any) is `failed`, and the message
    /// goes to the dead-letter topic when one is configured.
    Invalid,
    /// The row was already `completed` or `failed`: a redelivered or duplicate message.
    AlreadyFinal,
    /// The database refused a step for good: the row is `failed` with its reason (or as it
    /// was), the message dead-lettered.
    Refused,
    /// The row's status is not the worker's (the backend's `cancelled`, say): left as it is,
    /// the message dead-lettered.
    ForeignStatus,
}

/// Why the worker is (no longer) a member of its group, for `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    Rebalance,
    Shutdown,
}

/// Everything counted, shared (`Arc`) by the poller, the workers and the listener.
pub struct Metrics {
    topic: String,
    group_id: String,
    /// `/healthz` fails when the poller has not confirmed membership for this long: a
    /// poller stuck somewhere would otherwise look healthy forever. The session timeout:
    /// after that long without heartbeats the coordinator has dropped us anyway.
    stale_after: Duration,
    /// The zero of `confirmed_at_ms`.
    epoch: Instant,
    /// Set by [`MetricsServer::start`]; until then the poller skips the log-end refreshes.
    served: AtomicBool,

    completed: AtomicU64,
    failed: AtomicU64,
    invalid: AtomicU64,
    already_final: AtomicU64,
    refused: AtomicU64,
    foreign_status: AtomicU64,
    dead_lettered: AtomicU64,
    /// Dead letters Kafka refused even in their cut-down form: logged and skipped.
    dead_letters_dropped: AtomicU64,
    /// Jobs a worker has taken and not finished.
    in_flight: AtomicI64,
    /// Fetched messages waiting for a worker (the poller's buffer plus the job channel).
    queue_depth: AtomicI64,
    processing: Histogram,
    end_to_end: Histogram,
    rebalances: AtomicU64,
    reconnects: AtomicU64,
    db_busy_retries: AtomicU64,
    db_other_retries: AtomicU64,
    /// Database steps given up after [`crate::provision::PERMANENT_TRIES`] refusals.
    db_gave_up: AtomicU64,

    /// A [`GroupState`] as u8.
    group: AtomicU8,
    /// When the poller last saw its membership fine (ms since `epoch`).
    confirmed_at_ms: AtomicU64,
    /// Set while heartbeats fail; `heartbeat_error` then holds the last error. The flag lets
    /// the poller's fine path skip the lock.
    heartbeat_failing: AtomicBool,
    heartbeat_error: Mutex<String>,
    /// The last Kafka connection failure (an outage, a refused login, a TLS error) while
    /// it lasts; empty once Kafka answers again. Shown while joining, when no heartbeat runs.
    kafka_error: Mutex<String>,
    /// Set while a dead letter waits for Kafka (its partition's offset held);
    /// `dead_letter_error` then says which and why. The flag spares the fine path the lock.
    dead_letter_waiting: AtomicBool,
    dead_letter_error: Mutex<String>,
    /// Set when a sync of the database failed: the worker is stopping, and `/healthz`
    /// answers 503 with this reason until the process exits.
    durability_lost: Mutex<Option<String>>,
    /// When the poller next asks for log-end offsets (ms since `epoch`).
    next_log_end_ms: AtomicU64,
    /// The assigned partitions' offsets; replaced at every join.
    partitions: Mutex<BTreeMap<Partition, PartitionOffsets>>,
}

/// A job in a worker's hands; dropping it without [`JobTimer::finish`] (a revoked job, a
/// panic) only takes it out of `in_flight`.
pub struct JobTimer<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

/// The HTTP listener. Owns its threads: dropping the server stops and joins them.
pub struct MetricsServer {
    addr: SocketAddr,
    /// Tells the accepting thread to stop.
    stop: Arc<AtomicBool>,
    /// Accepts connections and hands each to an idle handler. It owns the sending end of the
    /// hand-over, so the handlers end once it has ended.
    acceptor: Option<JoinHandle<()>>,
    /// Each answers one connection at a time, within [`REQUEST_DEADLINE`].
    handlers: Vec<JoinHandle<()>>,
}

/// The database half of `/healthz`: `Err(reason)` when the database cannot be queried.
/// `Sync`: the handler threads may ask at the same time.
pub type DbCheck = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Connections answered at the same time: a scraper and a probe or two, with room for a
/// slow client. More at once get a 503 from the accepting thread.
pub const HANDLERS: usize = 4;

/// The whole life of one connection: reading the request and writing the answer. A client
/// slower than this is answered 408 and cut off, so it holds a handler at most this long.
/// Our answers take milliseconds; a Kubernetes probe gives up after 1 s by default.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PartitionOffsets {
    committed: Option<i64>,
    log_end: Option<i64>,
}

/// One per-partition gauge's value, when known.
type PartitionValue = fn(&PartitionOffsets) -> Option<i64>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum GroupState {
    Joining = 0,
    Member = 1,
    Rebalancing = 2,
    ShuttingDown = 3,
}

/// A Prometheus histogram on atomics: per-bucket counts (not cumulative; summed when
/// rendered), the sum in microseconds, and the count.
struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus the +Inf bucket.
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Metrics {
    pub fn new(topic: &str, group_id: &str, stale_after: Duration) -> Metrics {
        Metrics {
            topic: topic.to_owned(),
            group_id: group_id.to_owned(),
            stale_after,
            epoch: Instant::now(),
            served: AtomicBool::new(false),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            already_final: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            foreign_status: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            dead_letters_dropped: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            queue_depth: AtomicI64::new(0),
            processing: Histogram::new(PROCESSING_BUCKETS),
            end_to_end: Histogram::new(END_TO_END_BUCKETS),
            rebalances: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            db_busy_retries: AtomicU64::new(0),
            db_other_retries: AtomicU64::new(0),
            db_gave_up: AtomicU64::new(0),
            group: AtomicU8::new(GroupState::Joining as u8),
            confirmed_at_ms: AtomicU64::new(0),
            heartbeat_failing: AtomicBool::new(false),
            heartbeat_error: Mutex::new(String::new()),
            kafka_error: Mutex::new(String::new()),
            dead_letter_waiting: AtomicBool::new(false),
            dead_letter_error: Mutex::new(String::new()),
            durability_lost: Mutex::new(None),
            next_log_end_ms: AtomicU64::new(0),
            partitions: Mutex::new(BTreeMap::new()),
        }
    }

    // ---- workers

    /// A worker took a job off the channel.
    pub fn job_started(&self) -> JobTimer<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        JobTimer {
            metrics: self,
            started: Instant::now(),
        }
    }

    /// A database step is retried; `busy` when SQLite said busy or locked.
    pub fn db_retry(&self, busy: bool) {
        let counter = if busy {
            &self.db_busy_retries
        } else {
            &self.db_other_retries
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A database step was refused for good and given up on.
    pub fn db_gave_up(&self) {
        self.db_gave_up.fetch_add(1, Ordering::Relaxed);
    }

    // ---- the poller

    /// The poller joined the group and owns `partitions`.
    pub fn joined(&self, partitions: &[Partition]) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        *lock(&self.partitions) = partitions
            .iter()
            .map(|p| (*p, PartitionOffsets::default()))
            .collect();
        self.next_log_end_ms.store(0, Ordering::Relaxed);
        self.group
            .store(GroupState::Member as u8, Ordering::Relaxed);
        self.group_fine();
    }

    /// A cooperative rebalance gave us `partitions` (the others stay).
    pub fn partitions_added(&self, partitions: &[Partition]) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        let mut map = lock(&self.partitions);
        for p in partitions {
            map.insert(*p, PartitionOffsets::default());
        }
        self.next_log_end_ms.store(0, Ordering::Relaxed);
    }

    /// A cooperative revocation of `partitions` ended.
    pub fn partitions_revoked(&self, partitions: &[Partition]) {
        let mut map = lock(&self.partitions);
        for p in partitions {
            map.remove(p);
        }
    }

    /// The poller checked its membership (a heartbeat answered, or none was due yet).
    pub fn group_fine(&self) {
        self.confirmed_at_ms.store(self.now_ms(), Ordering::Relaxed);
        if self.heartbeat_failing.load(Ordering::Relaxed) {
            self.heartbeat_failing.store(false, Ordering::Relaxed);
        }
    }

    /// A heartbeat could not reach the coordinator.
    pub fn heartbeat_failed(&self, error: &dyn std::fmt::Display) {
        *lock(&self.heartbeat_error) = error.to_string();
        self.heartbeat_failing.store(true, Ordering::Relaxed);
    }

    /// The poller is giving its partitions up.
    pub fn leaving(&self, why: Leaving) {
        let state = match why {
            Leaving::Rebalance => GroupState::Rebalancing,
            Leaving::Shutdown => GroupState::ShuttingDown,
        };
        self.group.store(state as u8, Ordering::Relaxed);
    }

    /// The group accepted these offsets.
    pub fn committed(&self, offsets: &[(Partition, Offset)]) {
        let mut partitions = lock(&self.partitions);
        for (p, o) in offsets {
            if let Some(entry) = partitions.get_mut(p) {
                entry.committed = Some(o.0);
            }
        }
    }

    /// True when the poller should fetch log-end offsets now (and then it is not due again
    /// for [`LOG_END_REFRESH`]); always false while the metrics are not served.
    pub fn log_end_refresh_due(&self) -> bool {
        if !self.served.load(Ordering::Relaxed) {
            return false;
        }
        let now = self.now_ms();
        if now < self.next_log_end_ms.load(Ordering::Relaxed) {
            return false;
        }
        self.next_log_end_ms
            .store(now + millis(LOG_END_REFRESH), Ordering::Relaxed);
        true
    }

    /// The log-end offsets the poller fetched.
    pub fn log_ends(&self, ends: &HashMap<Partition, Offset>) {
        let mut partitions = lock(&self.partitions);
        for (p, o) in ends {
            if let Some(entry) = partitions.get_mut(p) {
                entry.log_end = Some(o.0);
            }
        }
    }

    /// Fetched messages now waiting for a worker.
    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth
            .store(i64::try_from(depth).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    pub fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    /// Talking to Kafka failed (connection, TLS or SASL): `/healthz` says why while it lasts.
    pub fn kafka_failed(&self, error: &dyn std::fmt::Display) {
        *lock(&self.kafka_error) = error.to_string();
    }

    /// A dead letter Kafka refused for good, even cut down, was skipped (its offset done).
    pub fn dead_letter_dropped(&self) {
        self.dead_letters_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// A dead letter could not be sent and waits, holding its partition's offset:
    /// `/healthz` reports `what` (which one, and why) until [`Metrics::dead_letters_flowing`].
    pub fn dead_letter_waiting(&self, what: String) {
        *lock(&self.dead_letter_error) = what;
        self.dead_letter_waiting.store(true, Ordering::Relaxed);
    }

    /// No dead letter waits any more.
    pub fn dead_letters_flowing(&self) {
        if self.dead_letter_waiting.load(Ordering::Relaxed) {
            self.dead_letter_waiting.store(false, Ordering::Relaxed);
        }
    }

    /// A sync of the database failed (`reason` says which file and why): `/healthz` fails
    /// with it from now on; the worker is stopping.
    pub fn durability_lost(&self, reason: String) {
        *lock(&self.durability_lost) = Some(reason);
    }

    /// The connection to Kafka came back after an outage.
    pub fn reconnected(&self) {
        lock(&self.kafka_error).clear();
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    // ---- the listener

    /// `Ok(summary)` when the worker is a member of its group, its membership was confirmed
    /// within the session timeout, no dead letter waits for Kafka, and the database answers;
    /// else `Err` with every reason.
    pub fn health(&self, db: &dyn Fn() -> Result<(), String>) -> Result<String, String> {
        let mut problems = Vec::new();
        if let Some(reason) = lock(&self.durability_lost).as_ref() {
            problems.push(reason.clone());
        }
        match self.group_state() {
            GroupState::Member => {
                if self.heartbeat_failing.load(Ordering::Relaxed) {
                    problems.push(format!(
                        "the last heartbeat failed: {}",
                        lock(&self.heartbeat_error)
                    ));
                }
                let since = self
                    .now_ms()
                    .saturating_sub(self.confirmed_at_ms.load(Ordering::Relaxed));
                if since > millis(self.stale_after) {
                    problems.push(format!(
                        "group membership not confirmed for {:.1} s (session timeout {:.1} s)",
                        since as f64 / 1000.0,
                        self.stale_after.as_secs_f64()
                    ));
                }
            }
            GroupState::Joining => {
                let why = lock(&self.kafka_error).clone();
                problems.push(if why.is_empty() {
                    format!(
                        "not a member of consumer group {} yet (joining)",
                        self.group_id
                    )
                } else {
                    format!(
                        "not a member of consumer group {} yet (joining; Kafka fails: {why})",
                        self.group_id
                    )
                })
            }
            GroupState::Rebalancing => {
                problems.push(format!("consumer group {} is rebalancing", self.group_id))
            }
            GroupState::ShuttingDown => problems.push("shutting down".to_owned()),
        }
        if self.dead_letter_waiting.load(Ordering::Relaxed) {
            problems.push(lock(&self.dead_letter_error).clone());
        }
        if let Err(e) = db() {
            problems.push(format!("database unreachable: {e}"));
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let partitions: Vec<String> = lock(&self.partitions)
            .keys()
            .map(ToString::to_string)
            .collect();
        Ok(format!(
            "member of consumer group {} with partitions [{}] of {}; database reachable",
            self.group_id,
            partitions.join(", "),
            self.topic
        ))
    }

    /// Everything, in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);

        header(
            &mut out,
            "provision_requests_total",
            "counter",
            "Requests whose job ended, by how: completed, failed, invalid (not a valid request), already_final (a duplicate of a finished request), refused (the database refused a step for good: the row is failed with its reason, the message dead-lettered), foreign_status (the row's status is not this worker's, e.g. cancelled: left unchanged, the message dead-lettered).",
        );
        for (status, counter) in [
            ("completed", &self.completed),
            ("failed", &self.failed),
            ("invalid", &self.invalid),
            ("already_final", &self.already_final),
            ("refused", &self.refused),
            ("foreign_status", &self.foreign_status),
        ] {
            let _ = writeln!(
                out,
                "provision_requests_total{{status=\"{status}\"}} {}",
                get(counter)
            );
        }
        sample(
            &mut out,
            "provision_requests_in_flight",
            "gauge",
            "Jobs a worker is processing now.",
            self.in_flight.load(Ordering::Relaxed).max(0),
        );
        sample(
            &mut out,
            "provision_queue_depth",
            "gauge",
            "Fetched messages waiting for a free worker.",
            self.queue_depth.load(Ordering::Relaxed).max(0),
        );
        self.processing.render(
            &mut out,
            "provision_processing_seconds",
            "Time a worker spent on a job, from taking it to its final database write.",
        );
        self.end_to_end.render(
            &mut out,
            "provision_end_to_end_seconds",
            "Time from the message's Kafka timestamp to the end of its job.",
        );

        let partitions = lock(&self.partitions).clone();
        let topic = escape(&self.topic);
        let per_partition: [(&str, &str, PartitionValue); 3] = [
            (
                "provision_committed_offset",
                "The group's committed offset (next to read) of each partition this worker owns.",
                |o| o.committed,
            ),
            (
                "provision_log_end_offset",
                "The log-end offset of each partition this worker owns (refreshed every few seconds).",
                |o| o.log_end,
            ),
            (
                "provision_consumer_lag",
                "Messages not yet committed by the group: log-end offset minus committed offset.",
                |o| Some((o.log_end? - o.committed?).max(0)),
            ),
        ];
        for (name, help, value) in per_partition {
            header(&mut out, name, "gauge", help);
            for (p, offsets) in &partitions {
                if let Some(v) = value(offsets) {
                    let _ = writeln!(out, "{name}{{topic=\"{topic}\",partition=\"{p}\"}} {v}");
                }
            }
        }

        for (name, help, value) in [
            (
                "provision_rebalances_total",
                "Partition assignments received (every group join, the first included, and every cooperative round that adds partitions).",
                get(&self.rebalances),
            ),
            (
                "provision_kafka_reconnects_total",
                "Times the connection to Kafka came back after failing.",
                get(&self.reconnects),
            ),
            (
                "provision_db_busy_retries_total",
                "Database steps retried because SQLite was busy or locked.",
                get(&self.db_busy_retries),
            ),
            (
                "provision_db_retries_other_total",
                "Database steps retried after another fault (I/O, full disk, no pooled connection, a refusal tried again).",
                get(&self.db_other_retries),
            ),
            (
                "provision_db_refusals_total",
                "Database steps given up after the database refused them three times (a constraint, a trigger, a status this worker does not own): each logged once with the request id and the reason.",
                get(&self.db_gave_up),
            ),
            (
                "provision_dead_lettered_total",
                "Messages produced to the dead-letter topic: invalid ones, and requests the database refused for good.",
                get(&self.dead_lettered),
            ),
            (
                "provision_dead_letters_dropped_total",
                "Messages whose dead letter Kafka refused for good, even cut down: logged (partition, offset, reason, first bytes) and skipped.",
                get(&self.dead_letters_dropped),
            ),
        ] {
            sample(&mut out, name, "counter", help, value);
        }
        sample(
            &mut out,
            "provision_group_member",
            "gauge",
            "1 while the worker is a member of its consumer group, else 0.",
            u8::from(self.group_state() == GroupState::Member),
        );
        out
    }

    fn group_state(&self) -> GroupState {
        match self.group.load(Ordering::Relaxed) {
            1 => GroupState::Member,
            2 => GroupState::Rebalancing,
            3 => GroupState::ShuttingDown,
            _ => GroupState::Joining,
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }
}

impl JobTimer<'_> {
    /// The job ended with a final database state. `produced_ms` is the message's Kafka
    /// timestamp (ms since the Unix epoch; ignored when not positive).
    pub fn finish(self, outcome: Final, produced_ms: i64) {
        let m = self.metrics;
        let counter = match outcome {
            Final::Completed => &m.completed,
            Final::Failed => &m.failed,
            Final::Invalid => &m.invalid,
            Final::AlreadyFinal => &m.already_final,
            Final::Refused => &m.refused,
            Final::ForeignStatus => &m.foreign_status,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        m.processing.observe(self.started.elapsed());
        if let Ok(produced) = u64::try_from(produced_ms)
            && produced > 0
        {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            // A producer clock ahead of ours gives a negative age: count it as zero.
            m.end_to_end
                .observe(now.saturating_sub(Duration::from_millis(produced)));
        }
    }
}

impl Drop for JobTimer<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl MetricsServer {
    /// Binds `addr` and serves `/metrics` and `/healthz` from threads of its own (one that
    /// accepts, [`HANDLERS`] that answer) until the server is dropped.
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>, db: DbCheck) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let db = Arc::new(db);
        // A rendezvous channel: a hand-over succeeds only when a handler is waiting for one,
        // so a connection never queues behind a slow one.
        let (handover, connections) = crossbeam_channel::bounded::<TcpStream>(0);
        let mut handlers = Vec::with_capacity(HANDLERS);
        for i in 0..HANDLERS {
            let (connections, metrics, db) = (connections.clone(), metrics.clone(), db.clone());
            // (On an error the handlers already started end with `handover`, dropped here.)
            handlers.push(
                std::thread::Builder::new()
                    .name(format!("metrics-{i}"))
                    .spawn(move || handle(&connections, &metrics, &db))?,
            );
        }
        let acceptor = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || accept(&listener, &handover, &stop))?
        };
        metrics.served.store(true, Ordering::Relaxed);
        log::info!("Serving /metrics and /healthz on http://{addr}");
        Ok(MetricsServer {
            addr,
            stop,
            acceptor: Some(acceptor),
            handlers,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The acceptor sits in a blocking accept; a connection of our own wakes it, and it sees
        // `stop`. (std has no way to interrupt an accept; polling would wake it 10 times a
        // second forever to serve a scrape every few seconds.)
        let wake = SocketAddr::new(reachable(self.addr.ip()), self.addr.port());
        match TcpStream::connect_timeout(&wake, Duration::from_secs(1)) {
            Ok(_) => {
                if let Some(thread) = self.acceptor.take()
                    && thread.join().is_err()
                {
                    log::error!("the metrics thread panicked");
                }
                // The hand-over is closed: each handler ends after its connection (at most
                // REQUEST_DEADLINE).
                for thread in self.handlers.drain(..) {
                    if thread.join().is_err() {
                        log::error!("a metrics handler thread panicked");
                    }
                }
            }
            // Leaving the threads blocked is the lesser evil than hanging shutdown; the
            // process is about to exit.
            Err(e) => log::warn!("could not stop the metrics listener on {wake}: {e}"),
        }
    }
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        // The count is the +Inf bucket, so the two always agree within one scrape.
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The accepting thread: hands each connection to an idle handler, or refuses it at once.
fn accept(listener: &TcpListener, handover: &Sender<TcpStream>, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match stream {
            Ok(stream) => match handover.try_send(stream) {
                Ok(()) => {}
                Err(TrySendError::Full(stream)) => refuse_busy(stream),
                // Every handler is gone (they only end with the hand-over): nothing can answer.
                Err(TrySendError::Disconnected(_)) => {
                    log::error!(
                        "the metrics handler threads are gone; /healthz and /metrics no longer answer"
                    );
                    return;
                }
            },
            Err(e) => {
                // Out of file descriptors and the like: don't spin on it.
                log::warn!("metrics listener: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A handler thread: one connection at a time, until the hand-over closes.
fn handle(connections: &Receiver<TcpStream>, metrics: &Metrics, db: &DbCheck) {
    for stream in connections {
        if let Err(e) = answer(stream, metrics, db) {
            log::debug!("metrics request: {e}");
        }
    }
}

/// Every handler is busy: 503 at once, on the accepting thread. The answer is small and a
/// fresh socket's send buffer is empty, so the write does not wait; its timeout only guards
/// against the unexpected. The request is not read.
fn refuse_busy(mut stream: TcpStream) {
    let response = http_response(
        503,
        TEXT,
        "busy: every handler is serving a connection; try again\n",
        false,
    );
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = stream.write_all(response.as_bytes());
}

/// Reads one request and writes its answer, all within [`REQUEST_DEADLINE`]; a client too
/// slow for it gets 408.
fn answer(mut stream: TcpStream, metrics: &Metrics, db: &DbCheck) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let head = match read_head(&mut stream, deadline) {
        Ok(head) => head,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            // A moment more, only to say why the connection ends.
            let response = http_response(
                408,
                TEXT,
                "request timeout: send the request at once\n",
                false,
            );
            let _ = write_within(
                &mut stream,
                response.as_bytes(),
                Instant::now() + Duration::from_millis(100),
            );
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next());
    let path = target.map(|t| t.split(['?', '#']).next().unwrap_or_default());
    let (status, content_type, body) = match (method, path) {
        (_, None) => (400, TEXT, "bad request\n".to_owned()),
        ("GET" | "HEAD", Some("/metrics")) => (200, PROMETHEUS, metrics.render()),
        ("GET" | "HEAD", Some("/healthz")) => match metrics.health(db) {
            Ok(summary) => (200, TEXT, format!("ok: {summary}\n")),
            Err(reasons) => (503, TEXT, format!("unhealthy: {reasons}\n")),
        },
        ("GET" | "HEAD", Some(_)) => (404, TEXT, "not found: try /metrics or /healthz\n".into()),
        _ => (405, TEXT, "method not allowed: use GET\n".to_owned()),
    };
    let response = http_response(status, content_type, &body, method == "HEAD");
    write_within(&mut stream, response.as_bytes(), deadline)
}

/// A whole answer: status line, headers, and the body unless `head_only`.
fn http_response(status: u16, content_type: &str, body: &str, head_only: bool) -> String {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        _ => "Service Unavailable",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    if !head_only {
        response.push_str(body);
    }
    response
}

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Longer request heads are refused; ours need one line.
const MAX_HEAD: usize = 8192;

/// Reads up to the blank line that ends the request head (a request body is never needed),
/// failing with `TimedOut` once `deadline` passes, however the bytes trickle in.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request too long",
            ));
        }
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        let n = stream.read(&mut buf).map_err(timed_out)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Writes all of `data` by `deadline` (a client that does not read is cut off).
fn write_within(stream: &mut TcpStream, mut data: &[u8], deadline: Instant) -> io::Result<()> {
    while !data.is_empty() {
        stream.set_write_timeout(Some(remaining(deadline)?))?;
        match stream.write(data).map_err(timed_out)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => data = &data[n..],
        }
    }
    stream.flush()
}

/// The time left before `deadline`, or `TimedOut` when none is (a zero timeout would mean
/// "none" to the socket).
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

/// A socket timeout surfaces as `WouldBlock` on Unix: call it what it is.
fn timed_out(e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock => io::ErrorKind::TimedOut.into(),
        _ => e,
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// An address to connect to for reaching a listener bound to `ip` (the unspecified address
/// accepts on loopback too).
fn reachable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The data behind these locks stays consistent even if a holder panicked (every update is
/// one assignment), so a poisoned lock is used as is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new("provision-requests", "g", Duration::from_secs(6))
    }

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{text}"))
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_agree_with_the_count() {
        let m = metrics();
        for ms in [1, 40, 40, 3_000, 120_000] {
            let timer = m.job_started();
            m.processing.observe(Duration::from_millis(ms));
            drop(timer);
        }
        let text = m.render();
        assert!(text.contains("provision_processing_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("provision_processing_seconds_bucket{le=\"0.05\"} 3\n"));
        assert!(text.contains("provision_processing_seconds_bucket{le=\"5\"} 4\n"));
        assert!(text.contains("provision_processing_seconds_bucket{le=\"60\"} 4\n"));
        assert!(text.contains("provision_processing_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(text.contains("provision_processing_seconds_count 5\n"));
        assert!(text.contains("provision_processing_seconds_sum 123.081\n"));
        assert!(text.contains("provision_requests_in_flight 0\n"));
    }

    #[test]
    fn finished_jobs_are_counted_by_status_and_leave_in_flight() {
        let m = metrics();
        let a = m.job_started();
        let b = m.job_started();
        assert!(m.render().contains("provision_requests_in_flight 2\n"));
        let produced = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
            - 2_000;
        a.finish(Final::Completed, produced);
        b.finish(Final::Invalid, 0);
        let text = m.render();
        assert!(text.contains("provision_requests_total{status=\"completed\"} 1\n"));
        assert!(text.contains("provision_requests_total{status=\"invalid\"} 1\n"));
        assert!(text.contains("provision_requests_total{status=\"failed\"} 0\n"));
        assert!(text.contains("provision_requests_in_flight 0\n"));
        // Only the job with a timestamp has an end-to-end time, of about two seconds.
        assert!(text.contains("provision_end_to_end_seconds_count 1\n"));
        assert!(text.contains("provision_end_to_end_seconds_bucket{le=\"1\"} 0\n"));
        assert!(text.contains("provision_end_to_end_seconds_bucket{le=\"2.5\"} 1\n"));
    }

    #[test]
    fn lag_is_log_end_minus_committed_for_owned_partitions_only() {
        let m = metrics();
        m.joined(&[Partition(0), Partition(2)]);
        m.committed(&[(Partition(0), Offset(5)), (Partition(1), Offset(9))]);
        m.log_ends(&HashMap::from([
            (Partition(0), Offset(8)),
            (Partition(2), Offset(4)),
        ]));
        let text = m.render();
        let labels = "{topic=\"provision-requests\",partition=";
        assert_eq!(
            line(&text, &format!("provision_committed_offset{labels}\"0\"")),
            format!("provision_committed_offset{labels}\"0\"}} 5")
        );
        assert!(text.contains(&format!("provision_consumer_lag{labels}\"0\"}} 3\n")));
        assert!(text.contains(&format!("provision_log_end_offset{labels}\"2\"}} 4\n")));
        // Partition 2 has nothing committed: no lag line rather than a made-up one.
        assert!(!text.contains(&format!("provision_consumer_lag{labels}\"2\"")));
        assert!(!text.contains(&format!("{labels}\"1\"")));
        // A new assignment forgets the old partitions.
        m.joined(&[Partition(1)]);
        assert!(!m.render().contains(&format!("{labels}\"0\"")));
        assert!(m.render().contains("provision_rebalances_total 2\n"));
        // A cooperative round adds some and, once revoked, takes others away; the rest stay.
        m.committed(&[(Partition(1), Offset(7))]);
        m.partitions_added(&[Partition(3)]);
        m.committed(&[(Partition(3), Offset(2))]);
        assert!(m.render().contains("provision_rebalances_total 3\n"));
        m.partitions_revoked(&[Partition(3)]);
        let text = m.render();
        assert!(text.contains(&format!("provision_committed_offset{labels}\"1\"}} 7\n")));
        assert!(!text.contains(&format!("{labels}\"3\"")));
    }

    #[test]
    fn every_metric_has_help_and_type_and_a_numeric_value() {
        let m = metrics();
        m.joined(&[Partition(0)]);
        m.committed(&[(Partition(0), Offset(1))]);
        let text = m.render();
        let mut typed = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_owned());
                continue;
            }
            if l.starts_with("# HELP ") {
                continue;
            }
            let (name, value) = l.rsplit_once(' ').unwrap();
            let base = name.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| base.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(base);
            assert!(typed.contains(family), "{l}: no TYPE line before it");
            assert!(value.parse::<f64>().is_ok(), "{l}: value is not a number");
        }
    }

    #[test]
    fn while_joining_health_says_why_kafka_fails_until_it_answers_again() {
        let m = Metrics::new("t", "g", Duration::from_secs(10));
        m.kafka_failed(&"authentication failed for user alice with PLAIN: bad");
        let why = m.health(&|| Ok(())).unwrap_err();
        assert!(
            why.contains(
                "(joining; Kafka fails: authentication failed for user alice with PLAIN: bad)"
            ),
            "{why}"
        );
        m.reconnected();
        let why = m.health(&|| Ok(())).unwrap_err();
        assert!(why.ends_with("yet (joining)"), "{why}");
    }

    #[test]
    fn health_needs_membership_a_fresh_confirmation_and_the_database() {
        let m = Metrics::new("t", "g", Duration::from_millis(50));
        let db_ok = || Ok(());
        let db_down = || Err("disk I/O error".to_owned());
        let why = m.health(&db_ok).unwrap_err();
        assert!(
            why.contains("not a member of consumer group g yet"),
            "{why}"
        );

        m.joined(&[Partition(0)]);
        assert!(m.health(&db_ok).unwrap().contains("partitions [0]"));
        let why = m.health(&db_down).unwrap_err();
        assert!(
            why.contains("database unreachable: disk I/O error"),
            "{why}"
        );

        m.heartbeat_failed(&"connection refused");
        let why = m.health(&db_ok).unwrap_err();
        assert!(
            why.contains("last heartbeat failed: connection refused"),
            "{why}"
        );
        m.group_fine();
        assert!(m.health(&db_ok).is_ok());

        std::thread::sleep(Duration::from_millis(60));
        let why = m.health(&db_ok).unwrap_err();
        assert!(why.contains("not confirmed"), "{why}");

        m.group_fine();
        m.dead_letter_waiting(
            "dead letter for partition 0 offset 7 waiting: topic dlq does not exist".into(),
        );
        let why = m.health(&db_ok).unwrap_err();
        assert!(
            why.contains("dead letter for partition 0 offset 7 waiting: topic dlq does not exist"),
            "{why}"
        );
        m.dead_letters_flowing();
        assert!(m.health(&db_ok).is_ok());

        m.durability_lost("database sync failed, stopping: cannot flush poc.db-wal".into());
        let why = m.health(&db_ok).unwrap_err();
        assert!(
            why.starts_with("database sync failed, stopping: cannot flush poc.db-wal"),
            "{why}"
        );
        *lock(&m.durability_lost) = None;
        assert!(m.health(&db_ok).is_ok());

        m.leaving(Leaving::Rebalance);
        assert!(m.health(&db_ok).unwrap_err().contains("rebalancing"));
        m.leaving(Leaving::Shutdown);
        assert!(m.health(&db_ok).unwrap_err().contains("shutting down"));
    }

    #[test]
    fn log_end_refresh_happens_only_while_served_and_when_due() {
        let m = metrics();
        assert!(!m.log_end_refresh_due());
        m.served.store(true, Ordering::Relaxed);
        assert!(m.log_end_refresh_due());
        assert!(!m.log_end_refresh_due());
        m.joined(&[]);
        assert!(m.log_end_refresh_due(), "a join asks for fresh log ends");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
