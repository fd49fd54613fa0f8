//! One broker's fetch thread. It owns the consumer's only fetching connection to that
//! broker, fetches the partitions the facade gave it (those the broker leads for us), and
//! hands each result to the facade on the shared event channel. A slow, throttled or
//! unreachable broker holds back only this thread, so only its own partitions.
//!
//! Flow control: after a result with messages or positions the thread waits until the
//! facade has handed it on ([`Command::Credit`]), so at most one result per broker waits
//! for the caller (DESIGN invariant 9: per broker, one fetch's answer being read and one
//! result waiting).
//!
//! Failures: a connection that fails is dropped and opened again after the reconnect
//! backoff; the thread keeps its partitions meanwhile (the facade moves them if the
//! metadata names another leader) and says so ([`Inner::BrokerFailed`], then
//! [`Inner::BrokerRecovered`]). A partition the broker does not lead is handed back
//! ([`Inner::Moved`]); one whose position is out of range is reset (earliest or latest) on
//! this same connection, as is one assigned without a committed offset. Throttling
//! (KIP-219) is waited out before the next fetch, answering commands meanwhile.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::backoff::{Backoff, BackoffSettings};
use crate::cluster::book::BrokerBook;
use crate::consumer::events::{Batch, Event, Inner, Lease};
use crate::error::KafkaError;
use crate::fetch::{self, Fetched};
use crate::net::conn::Connection;
use crate::net::interrupt::Interrupt;
use crate::net::security::Security;
use crate::net::settings::Timeouts;
use crate::types::{Offset, Partition, StartFrom};
use crate::wire::limits::RecordLimits;

/// What the facade tells a fetch thread. The thread stops when the sender is dropped.
#[derive(Debug)]
pub(crate) enum Command {
    /// Fetch these partitions too.
    Assign(Vec<Assigned>),
    /// Stop fetching these partitions.
    Unassign(Vec<Partition>),
    /// The last result was handed on: the thread may fetch again.
    Credit,
}

/// A partition given to a fetch thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Assigned {
    pub(crate) partition: Partition,
    pub(crate) lease: Lease,
    /// Where to fetch from; `None`: reset by `FetchSettings::start_from` first.
    pub(crate) start: Option<Offset>,
}

/// What every fetch thread of one consumer is configured with.
#[derive(Debug)]
pub(crate) struct FetchSettings {
    pub(crate) topic: String,
    pub(crate) client_id: String,
    pub(crate) timeouts: Timeouts,
    pub(crate) security: Arc<Security>,
    pub(crate) max_wait: Duration,
    pub(crate) start_from: StartFrom,
    pub(crate) limits: RecordLimits,
    pub(crate) reconnect_backoff: BackoffSettings,
    pub(crate) retry_backoff: BackoffSettings,
}

/// Runs a fetch thread for the broker at `addr` until `commands` is dropped.
pub(crate) fn run(
    addr: String,
    settings: Arc<FetchSettings>,
    book: Arc<BrokerBook>,
    commands: Receiver<Command>,
    events: Sender<Event>,
    interrupt: Arc<Interrupt>,
) {
    let mut f = Fetcher {
        reconnect: Backoff::new(settings.reconnect_backoff),
        addr,
        settings,
        book,
        events,
        interrupt,
        conn: None,
        parts: BTreeMap::new(),
        credit: true,
        retry_at: None,
        failing_since: None,
        resolved: Vec::new(),
    };
    while f.take_commands(&commands) {
        f.work();
    }
}

struct Fetcher {
    addr: String,
    settings: Arc<FetchSettings>,
    book: Arc<BrokerBook>,
    events: Sender<Event>,
    interrupt: Arc<Interrupt>,
    /// This thread's connection to its broker; `None` after a failure, until reopened.
    conn: Option<Connection>,
    parts: BTreeMap<Partition, Part>,
    /// False from a result's handover until the facade hands it on.
    credit: bool,
    /// After a connection failure: not before then.
    retry_at: Option<Instant>,
    reconnect: Backoff,
    /// Since when the broker fails (connection or request), if it does.
    failing_since: Option<Instant>,
    /// Start positions resolved (ListOffsets) and not reported yet.
    resolved: Vec<(Partition, Lease, Offset)>,
}

/// One partition this thread fetches.
struct Part {
    lease: Lease,
    /// The next offset to fetch; `None`: to be reset first.
    position: Option<Offset>,
    /// Why the position is being reset (logged with the new position), if it was set.
    reset_from: Option<Offset>,
    /// After a failure of this partition alone: not before then.
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// The log end last reported, to report only changes.
    log_end: Option<Offset>,
}

/// When the thread has something to do.
enum Wake {
    /// Nothing: wait for a command.
    Never,
    Now,
    At(Instant),
}

impl Fetcher {
    /// Waits for commands for as long as there is nothing to do, then takes all that came.
    /// False when the facade is gone (the thread ends).
    fn take_commands(&mut self, commands: &Receiver<Command>) -> bool {
        if self.interrupt.is_interrupted() {
            return false;
        }
        let first = match self.wake() {
            Wake::Never => match commands.recv() {
                Ok(c) => c,
                Err(_) => return false,
            },
            Wake::At(at) => match commands.recv_deadline(at) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            },
            Wake::Now => match commands.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            },
        };
        self.command(first);
        loop {
            match commands.try_recv() {
                Ok(c) => self.command(c),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Assign(parts) => {
                for a in parts {
                    self.parts.insert(
                        a.partition,
                        Part {
                            lease: a.lease,
                            position: a.start,
                            reset_from: None,
                            retry_at: None,
                            backoff: Backoff::new(self.settings.retry_backoff),
                            log_end: None,
                        },
                    );
                }
            }
            Command::Unassign(parts) => {
                for p in parts {
                    self.parts.remove(&p);
                }
                self.resolved.retain(|(p, _, _)| self.parts.contains_key(p));
            }
            Command::Credit => self.credit = true,
        }
    }

    /// When there is work: a partition to fetch or reset, credit to do it with, and no
    /// backoff or throttle in the way.
    fn wake(&self) -> Wake {
        if !self.credit || self.parts.is_empty() {
            return Wake::Never;
        }
        let now = Instant::now();
        let Some(mut at) = self.parts.values().map(|p| p.retry_at.unwrap_or(now)).min() else {
            return Wake::Never;
        };
        if let Some(t) = self.retry_at {
            at = at.max(t);
        }
        if let Some(t) = self.conn.as_ref().and_then(Connection::throttled_until) {
            at = at.max(t);
        }
        if at <= now { Wake::Now } else { Wake::At(at) }
    }

    /// One step: reset what needs it, then one fetch, its result handed over.
    fn work(&mut self) {
        if !matches!(self.wake(), Wake::Now) {
            return;
        }
        if !self.connect() {
            return;
        }
        let now = Instant::now();
        let ready = |p: &Part| p.retry_at.is_none_or(|t| t <= now);
        let resets: Vec<Partition> = self
            .parts
            .iter()
            .filter(|(_, p)| p.position.is_none() && ready(p))
            .map(|(p, _)| *p)
            .collect();
        if !resets.is_empty() && !self.reset(&resets) {
            return;
        }
        let wanted: Vec<(Partition, Offset)> = self
            .parts
            .iter()
            .filter(|(_, p)| ready(p))
            .filter_map(|(p, part)| Some((*p, part.position?)))
            .collect();
        if wanted.is_empty() {
            self.hand_over(Batch::default());
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let started = Instant::now();
        let result = fetch::fetch(
            conn,
            &self.settings.topic,
            &wanted,
            self.settings.max_wait,
            self.settings.limits,
        );
        match result {
            Ok(fetched) => {
                // A broker may hold a fetch for the wait it was given; only beyond that is
                // it slow.
                self.answered(started.elapsed().saturating_sub(self.settings.max_wait));
                self.fetched(fetched);
            }
            Err(e) => self.failed(e),
        }
    }

    /// Makes sure the connection is open; false (and backing off) when it cannot be.
    fn connect(&mut self) -> bool {
        if self.conn.as_ref().is_some_and(|c| !c.is_usable()) {
            self.drop_conn();
        }
        if self.conn.is_some() {
            return true;
        }
        match Connection::open(
            &self.addr,
            &self.settings.client_id,
            self.settings.timeouts,
            &self.settings.security,
            Some(&self.interrupt),
        ) {
            Ok(c) => {
                self.conn = Some(c);
                true
            }
            Err(e) => {
                self.failed(e);
                false
            }
        }
    }

    /// Resets the positions of `parts` (earliest or latest) with ListOffsets; false when
    /// the connection failed.
    fn reset(&mut self, parts: &[Partition]) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let listed = match fetch::list_offsets_on(
            conn,
            &self.settings.topic,
            parts,
            self.settings.start_from,
        ) {
            Ok(l) => l,
            Err(e) => {
                self.failed(e);
                return false;
            }
        };
        self.answered(Duration::ZERO);
        for (p, offset) in listed.offsets {
            let Some(part) = self.parts.get_mut(&p) else {
                continue;
            };
            if let Some(from) = part.reset_from.take() {
                log::warn!(
                    "offset {from} of partition {p} is out of range; resetting to {offset} ({:?})",
                    self.settings.start_from
                );
            }
            part.position = Some(offset);
            part.backoff.reset();
            self.resolved.push((p, part.lease, offset));
        }
        let answered: Vec<Partition> = listed.stale.iter().map(|(p, _)| *p).collect();
        self.stale(listed.stale);
        let mut failed = Vec::new();
        for (p, error) in listed.errors {
            failed.push(p);
            self.partition_failed(p, error);
        }
        // A partition the answer left out is retried later, not at once and forever.
        for p in parts {
            let missing = self
                .parts
                .get(p)
                .is_some_and(|part| part.position.is_none());
            if missing && !answered.contains(p) && !failed.contains(p) {
                let error = KafkaError::Protocol {
                    broker: self.addr.clone(),
                    detail: format!("ListOffsets answer does not mention partition {p}"),
                };
                self.partition_failed(*p, error);
            }
        }
        true
    }

    fn fetched(&mut self, f: Fetched) {
        let mut batch = Batch {
            messages: f.messages,
            positions: std::mem::take(&mut self.resolved),
            log_ends: Vec::new(),
        };
        for (p, next) in f.positions {
            if let Some(part) = self.parts.get_mut(&p)
                && part.position != Some(next)
            {
                part.position = Some(next);
                part.backoff.reset();
                batch.positions.push((p, part.lease, next));
            }
        }
        for (p, end) in f.log_ends {
            if let Some(part) = self.parts.get_mut(&p)
                && part.log_end != Some(end)
            {
                part.log_end = Some(end);
                batch.log_ends.push((p, end));
            }
        }
        for p in f.out_of_range {
            if let Some(part) = self.parts.get_mut(&p) {
                part.reset_from = part.position.take();
            }
        }
        self.stale(f.stale);
        for (p, error) in f.errors {
            self.partition_failed(p, error);
        }
        self.hand_over(batch);
    }

    /// Sends a result. One with messages or positions waits for its credit; log ends
    /// alone are only news.
    fn hand_over(&mut self, mut batch: Batch) {
        batch.positions.append(&mut self.resolved);
        if batch.messages.is_empty() && batch.positions.is_empty() && batch.log_ends.is_empty() {
            return;
        }
        if !batch.messages.is_empty() || !batch.positions.is_empty() {
            self.credit = false;
        }
        self.send(Inner::Fetched {
            broker: self.addr.clone(),
            batch,
        });
    }

    /// Partitions this broker does not lead: handed back to the facade.
    fn stale(&mut self, stale: Vec<(Partition, i16)>) {
        let Some((_, code)) = stale.first().copied() else {
            return;
        };
        let mut moved = Vec::new();
        for (p, _) in stale {
            if let Some(part) = self.parts.remove(&p) {
                moved.push((p, part.lease));
            }
        }
        self.resolved.retain(|(p, _, _)| self.parts.contains_key(p));
        if !moved.is_empty() {
            self.send(Inner::Moved {
                broker: self.addr.clone(),
                partitions: moved,
                code,
            });
        }
    }

    /// A partition failed for a reason of its own: retried after the retry backoff.
    fn partition_failed(&mut self, p: Partition, error: KafkaError) {
        let Some(part) = self.parts.get_mut(&p) else {
            return;
        };
        part.retry_at = Some(Instant::now() + part.backoff.next_delay());
        let lease = part.lease;
        self.send(Inner::PartitionFailed {
            broker: self.addr.clone(),
            partition: p,
            lease,
            error,
        });
    }

    /// The broker answered (after `took` beyond what it may hold a request).
    fn answered(&mut self, took: Duration) {
        self.book.answered(&self.addr, took);
        self.reconnect.reset();
        self.retry_at = None;
        if let Some(since) = self.failing_since.take() {
            self.send(Inner::BrokerRecovered {
                broker: self.addr.clone(),
                since,
            });
        }
    }

    /// The connection or a request on it failed: reconnect after the backoff.
    fn failed(&mut self, error: KafkaError) {
        self.drop_conn();
        if error.is_connection() {
            self.book.failed(&self.addr);
        }
        self.retry_at = Some(Instant::now() + self.reconnect.next_delay());
        self.failing_since.get_or_insert_with(Instant::now);
        self.send(Inner::BrokerFailed {
            broker: self.addr.clone(),
            error,
        });
    }

    fn drop_conn(&mut self) {
        self.conn = None;
        self.interrupt.forget(&self.addr);
    }

    fn send(&self, event: Inner) {
        // The facade is gone only when the consumer is being dropped: nothing to tell.
        let _ = self.events.send(Event(event));
    }
}
