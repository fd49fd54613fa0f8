//! The consumer: a facade that one thread drives (the worker's poller), over threads that
//! each own their sockets.
//!
//! ```text
//!   caller's thread ── Consumer (facade: positions, leases, routing; no socket while
//!        ▲                │        running: connect/topic_state/log_offsets are for
//!        │ events         │        start-up and tools)
//!        │                ├─ commands ─► group thread ──── coordinator connection(s)
//!        │                ├─ commands ─► metadata thread ─ "any broker" connection
//!        └────────────────┴─ commands ─► fetch thread per broker ── that broker
//! ```
//!
//! Every socket belongs to one thread. Brokers are independent: each leader's partitions
//! are fetched by that broker's own thread (`fetcher`), so one that is away, slow or
//! throttled holds back only the partitions it leads; heartbeats and commits go over the
//! group thread's own connection (`coordinator`) and never wait behind a fetch; where
//! partitions are is learned by the metadata thread (`metadata`) from any broker known.
//! The facade never blocks on Kafka while running: it takes the threads' reports
//! (`events`), hands results over, and asks for metadata at once after a leader error,
//! then with backoff and jitter while the trouble lasts.
//!
//! It keeps the position of every assigned partition (what has been handed to the caller)
//! and never commits on its own: the caller says what to commit, after its work is
//! durable. A partition that moves to another broker is fetched from the position the
//! facade knows, under a new [`Lease`]; whatever the old broker's thread still brings in
//! is dropped, so nothing is handed over twice and nothing is skipped.
//!
//! - `events`: [`Event`], what the threads report, and [`Lease`].
//! - `fetcher`: a broker's fetch thread.
//! - `coordinator`: the group thread.
//! - `metadata`: the metadata thread.
pub(crate) mod coordinator;
pub(crate) mod events;
pub(crate) mod fetcher;
pub(crate) mod metadata;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::backoff::Backoff;
use crate::cluster::book::BrokerBook;
use crate::cluster::{Cluster, TopicState};
use crate::consumer::coordinator::Joined;
use crate::consumer::events::{Batch, Event, Inner, Lease, Snapshot};
use crate::consumer::fetcher::{Assigned, FetchSettings};
use crate::error::KafkaError;
use crate::fetch;
use crate::group::{Group, GroupSettings, Heartbeat};
use crate::net::interrupt::Interrupt;
use crate::net::settings::SessionInfo;
use crate::settings::ConsumerSettings;
use crate::types::{Assignor, Offset, Partition, StartFrom};
use crate::wire::message::Message;

/// What the group side asks of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupSignal {
    /// The coordinator confirmed our membership just now: keep going.
    Fine,
    /// Nothing new from the coordinator since the last call; keep going (says nothing
    /// about Kafka being reachable).
    NotDue,
    /// Revoke every partition (finish or drop their work, commit), then call `join`: an
    /// eager rebalance, or a membership that is lost (the partitions may be someone
    /// else's already).
    Rejoin(&'static str),
    /// A cooperative rebalance changed our share (KIP-429); every other partition stays
    /// ours and is fetched throughout. Start on the partitions added (they are fetched
    /// already); finish or drop the work of those revoked, commit it, then call
    /// [`Consumer::revoked`] with them.
    Changed(Change),
}

/// Our share of the topic after a join, with the offset each partition starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Each partition we own, with the offset fetching starts from: the group's committed
    /// offset, or `None` when there is none and the partition's leader resets it to the
    /// configured start (earliest or latest) before its first fetch.
    pub partitions: Vec<(Partition, Option<Offset>)>,
    /// How many partitions the topic had when we joined (0: the topic is missing).
    pub topic_partitions: usize,
    /// The assignor the group uses in this generation: a cooperative one rebalances
    /// incrementally ([`GroupSignal::Changed`]), an eager one with
    /// [`GroupSignal::Rejoin`].
    pub protocol: Assignor,
}

/// What a cooperative rebalance changed in our share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Partitions now ours, with their start offsets (as in [`Assignment`]).
    pub added: Vec<(Partition, Option<Offset>)>,
    /// Partitions the new plan gives to another member: no longer fetched; finish or drop
    /// their work, commit it, then call [`Consumer::revoked`].
    pub revoked: Vec<Partition>,
    /// The assignor of the new generation.
    pub protocol: Assignor,
}

/// The outcome of a commit asked for with [`Consumer::commit`].
#[derive(Debug)]
pub struct CommitResult {
    /// The offsets committed (or not), each the next offset to read.
    pub offsets: Vec<(Partition, Offset)>,
    /// Whether the coordinator took them.
    pub result: Result<(), KafkaError>,
}

/// A member of one consumer group reading one topic, driven by one thread. It joins,
/// fetches, commits and leaves when told to, so the caller decides when an offset is safe
/// to commit; beneath it, threads it owns heartbeat, fetch from each broker and follow the
/// cluster (see the module's documentation). Dropping it stops and joins them.
pub struct Consumer {
    settings: ConsumerSettings,
    /// The brokers known and their health, shared with every thread's connections.
    book: Arc<BrokerBook>,
    /// The caller's own connections: start-up (`connect`, `topic_state`, `session_info`)
    /// and tools (`log_offsets`); never used by `join`, `fetch`, `heartbeat`, `commit`.
    cluster: Cluster,
    fetch_settings: Arc<FetchSettings>,
    /// Every thread reports here.
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
    /// Started on first use.
    group: Option<Worker<coordinator::Command>>,
    metadata: Option<Worker<metadata::Command>>,
    /// One per broker that leads (or led) a partition of ours, by "host:port".
    fetchers: HashMap<String, Worker<fetcher::Command>>,
    /// Our partitions; empty between revoke and join.
    owned: BTreeMap<Partition, Owned>,
    /// Joins so far (commit outcomes of an earlier one are dropped).
    epoch: u64,
    /// The caller's calls, for the group thread (see `coordinator::Liveness`).
    liveness: coordinator::Liveness,
    /// The group thread's count of the join that made our membership.
    group_join: u64,
    next_lease: u64,
    /// Results waiting for the caller, in the order they came.
    ready: VecDeque<Ready>,
    /// The broker whose result the caller took last: it fetches again when the caller asks
    /// for more (see `fetch`).
    handed: Option<String>,
    /// What the group thread said since the caller last asked; a rebalance stays until the
    /// next join.
    group_news: Option<Result<(), KafkaError>>,
    rejoin: Option<&'static str>,
    /// Cooperative rounds the caller has not heard of yet, oldest first.
    changes: VecDeque<Change>,
    commit_results: Vec<CommitResult>,
    /// The topic's partitions and leaders as last seen.
    snapshot: Option<Snapshot>,
    meta: MetadataSchedule,
    /// The topic's partition count at the last join, to notice partitions added later.
    topic_partitions: usize,
    /// Fetch threads whose broker is failing, for the log.
    failing: HashMap<String, Failing>,
    log_ends: HashMap<Partition, Offset>,
}

/// One of our partitions.
#[derive(Debug)]
struct Owned {
    /// A cooperative rebalance gave it to another member: no longer fetched, waiting for
    /// the caller's `revoked`.
    revoking: bool,
    /// Under which lease its fetch thread fetches it.
    lease: Lease,
    /// The broker whose thread fetches it; `None` while its leader is unknown.
    broker: Option<String>,
    /// The next offset to fetch, as far as results have come in (handed over or waiting).
    fetched: Option<Offset>,
    /// The next offset after what was handed to the caller.
    delivered: Option<Offset>,
}

/// A fetch result waiting for the caller.
#[derive(Debug)]
struct Ready {
    broker: String,
    messages: Vec<Message>,
    positions: Vec<(Partition, Offset)>,
}

/// When to ask for metadata next.
#[derive(Debug)]
struct MetadataSchedule {
    in_flight: bool,
    /// Ask at (or after) this moment; `None`: not wanted.
    due: Option<Instant>,
    /// Not before this moment (the backoff after a refresh that left trouble).
    earliest: Instant,
    backoff: Backoff,
}

#[derive(Debug)]
struct Failing {
    since: Instant,
    said_at: Instant,
}

/// A thread of the consumer: its command channel (dropping it tells the thread to stop),
/// its sockets (shut down to stop it at once), and its handle (joined).
struct Worker<C> {
    commands: Option<Sender<C>>,
    interrupt: Arc<Interrupt>,
    thread: Option<JoinHandle<()>>,
}

/// How often the metadata is read again when nothing is wrong: partitions added to the
/// topic are noticed within this (the worker's topic check asked as often).
const METADATA_MAX_AGE: Duration = Duration::from_secs(30);
/// While the consumer owns no partition, more often: a topic being created is noticed soon.
const METADATA_MAX_AGE_WHILE_EMPTY: Duration = Duration::from_secs(5);
/// How often a broker that keeps failing is named in the log again.
const REMINDER: Duration = Duration::from_secs(30);

impl Consumer {
    /// A consumer with `settings`; it connects on first use (or `connect`) and starts its
    /// threads when it first needs them.
    pub fn new(settings: ConsumerSettings) -> Consumer {
        let book = Arc::new(BrokerBook::new(settings.bootstrap.clone()));
        let cluster = Cluster::with_book(
            book.clone(),
            &settings.client_id,
            settings.timeouts(),
            settings.security.clone(),
        );
        let fetch_settings = Arc::new(FetchSettings {
            topic: settings.topic.clone(),
            client_id: settings.client_id.clone(),
            timeouts: settings.timeouts(),
            security: settings.security.clone(),
            max_wait: settings.fetch_max_wait,
            start_from: settings.start_from,
            limits: settings.record_limits,
            reconnect_backoff: settings.reconnect_backoff,
            retry_backoff: settings.retry_backoff,
        });
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        Consumer {
            liveness: coordinator::Liveness::new(settings.rebalance_timeout),
            meta: MetadataSchedule {
                in_flight: false,
                due: None,
                earliest: Instant::now(),
                backoff: Backoff::new(settings.retry_backoff),
            },
            settings,
            book,
            cluster,
            fetch_settings,
            events_tx,
            events_rx,
            group: None,
            metadata: None,
            fetchers: HashMap::new(),
            owned: BTreeMap::new(),
            epoch: 0,
            group_join: 0,
            next_lease: 0,
            ready: VecDeque::new(),
            handed: None,
            group_news: None,
            rejoin: None,
            changes: VecDeque::new(),
            commit_results: Vec::new(),
            snapshot: None,
            topic_partitions: 0,
            failing: HashMap::new(),
            log_ends: HashMap::new(),
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &ConsumerSettings {
        &self.settings
    }

    /// Reaches a broker, retrying with backoff until `deadline`; the error names the servers.
    /// Between attempts it calls `cancelled(backoff)`, which must itself wait up to `backoff`
    /// (e.g. on a shutdown channel) and say whether to stop; `Ok(false)` then. One attempt
    /// to an address that neither answers nor refuses can overrun the deadline by up to the
    /// request timeout.
    pub fn connect(
        &mut self,
        deadline: Instant,
        cancelled: &dyn Fn(Duration) -> bool,
    ) -> Result<bool, KafkaError> {
        let mut backoff = Backoff::new(self.settings.reconnect_backoff);
        loop {
            match self.cluster.any() {
                Ok(_) => return Ok(true),
                // Credentials, certificates or the protocol are wrong: waiting will not help.
                Err(e) if e.is_security() => return Err(e),
                Err(e) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(e);
                    }
                    log::warn!("{e}; retrying for up to {:?}", deadline - now);
                    if cancelled(backoff.next_delay().min(deadline - now)) {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// What the connection to some broker negotiated (TLS version, cipher suite, the
    /// broker's certificate, the SASL identity), for `check`.
    pub fn session_info(&mut self) -> Result<SessionInfo, KafkaError> {
        self.cluster.session_info()
    }

    /// Whether the topic exists, and its partitions: asked now, on the caller's thread
    /// (start-up and tools; a running caller uses [`Consumer::topic_partitions`]).
    pub fn topic_state(&mut self) -> Result<TopicState, KafkaError> {
        self.cluster.refresh(&self.settings.topic)
    }

    /// The waiting side of the consumer's threads' reports: a caller that waits for
    /// several things at once (a `crossbeam_channel::Select`) waits on this too, and hands
    /// what it receives to [`Consumer::handle`]. Fetched messages, group news and commit
    /// outcomes all arrive this way.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events_rx
    }

    /// Takes a report received from [`Consumer::events`].
    pub fn handle(&mut self, event: Event) {
        self.on_event(event.0);
    }

    /// Joins the group and sets the start position of each assigned partition: the
    /// committed offset, else (`None` in the assignment) the configured reset, which the
    /// partition's leader resolves before its first fetch. Blocks for as long as the
    /// coordinator holds the join (up to the rebalance timeout; ~3 s on tansu).
    pub fn join(&mut self) -> Result<Assignment, KafkaError> {
        self.revoke();
        self.start()?;
        let snapshot = self.refresh_now()?;
        let partitions: Vec<Partition> = snapshot.leaders.iter().map(|(p, _)| *p).collect();
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.group_command(coordinator::Command::Join {
            partitions: partitions.clone(),
            reply,
        })?;
        // The group thread retries a join that is bounced for up to the rebalance timeout
        // plus the session timeout; each attempt may take a request timeout more.
        let wait = self.settings.rebalance_timeout
            + self.settings.session_timeout
            + self.settings.request_timeout * 2
            + Duration::from_secs(5);
        let joined = self.wait_reply(&answer, wait, "JoinGroup")??;
        let Joined {
            mine,
            committed,
            protocol,
            join,
        } = joined;
        self.epoch += 1;
        self.group_join = join;
        self.rejoin = None;
        self.group_news = None;
        self.commit_results.clear();
        self.topic_partitions = partitions.len();
        for p in mine {
            let start = committed.get(&p).copied().flatten();
            let lease = self.lease();
            self.owned.insert(
                p,
                Owned {
                    revoking: false,
                    lease,
                    broker: None,
                    fetched: start,
                    delivered: start,
                },
            );
        }
        self.route();
        self.schedule_metadata(self.max_age());
        Ok(Assignment {
            partitions: self.owned.iter().map(|(p, o)| (*p, o.delivered)).collect(),
            topic_partitions: self.topic_partitions,
            protocol,
        })
    }

    /// What the group thread learned since the last call: `Fine` after an answered
    /// heartbeat, `NotDue` when nothing came, `Rejoin` from an eager rebalance (or a lost
    /// membership) until the next join, `Changed` for each cooperative round, an error
    /// after a heartbeat that did not reach the coordinator (for the caller to log; the
    /// group thread keeps trying, finding the coordinator again) or one that ends the
    /// consumer ([`KafkaError::is_fatal`]: FENCED_INSTANCE_ID, say). Never blocks: the
    /// group thread heartbeats on its own.
    pub fn heartbeat(&mut self) -> Result<GroupSignal, KafkaError> {
        self.pump();
        if self.epoch == 0 {
            return Ok(GroupSignal::Rejoin("not a member of the group"));
        }
        if let Some(why) = self.rejoin {
            return Ok(GroupSignal::Rejoin(why));
        }
        if let Some(change) = self.changes.pop_front() {
            return Ok(GroupSignal::Changed(change));
        }
        match self.group_news.take() {
            None => Ok(GroupSignal::NotDue),
            Some(Ok(())) => Ok(GroupSignal::Fine),
            Some(Err(e)) => Err(e),
        }
    }

    /// The group thread heartbeats by itself: a caller need not wake for it. (A moment
    /// one interval away, for callers that plan their waits around it.)
    pub fn next_heartbeat(&self) -> Instant {
        Instant::now() + self.settings.heartbeat_interval
    }

    /// The topic's partition count in the latest metadata, if any came yet (never blocks).
    pub fn topic_partitions(&mut self) -> Option<usize> {
        self.pump();
        self.snapshot.as_ref().map(|s| s.leaders.len())
    }

    /// True when the topic now has a different number of partitions than at our join (it
    /// was created, or partitions were added): the group must rebalance to spread them.
    /// Answers from the latest metadata (at most a few seconds old) and asks for newer.
    pub fn topic_changed(&mut self) -> bool {
        self.pump();
        self.schedule_metadata(Duration::ZERO);
        self.snapshot
            .as_ref()
            .is_some_and(|s| s.leaders.len() != self.topic_partitions)
    }

    /// The messages of the next fetch result waiting, if any (never blocks; wait on
    /// [`Consumer::events`] for more). Positions move as results are handed over, so
    /// [`Consumer::position`] never runs ahead of what the caller has.
    pub fn fetch(&mut self) -> Vec<Message> {
        self.pump();
        // The caller asks for more: it is done with what it took last, and that result's
        // broker may fetch again. Not earlier: the messages it holds are that fetch's
        // memory (DESIGN invariant 9), so one broker's fetches are never more than one
        // result ahead of the caller.
        if let Some(broker) = self.handed.take() {
            self.credit(&broker);
        }
        while let Some(r) = self.ready.pop_front() {
            for (p, o) in &r.positions {
                if let Some(own) = self.owned.get_mut(p) {
                    own.delivered = Some(*o);
                }
            }
            if !r.messages.is_empty() {
                self.handed = Some(r.broker);
                return r.messages;
            }
            self.credit(&r.broker);
        }
        Vec::new()
    }

    /// Asks the group thread to commit `offsets` (each the next offset to read) for our
    /// generation; the outcome comes later ([`Consumer::commit_results`]). Never blocks.
    pub fn commit(&mut self, offsets: &[(Partition, Offset)]) -> Result<(), KafkaError> {
        if offsets.is_empty() {
            return Ok(());
        }
        if self.epoch == 0 {
            return Err(not_a_member());
        }
        self.group_command(coordinator::Command::Commit {
            epoch: self.epoch,
            offsets: offsets.to_vec(),
            reply: None,
        })
    }

    /// The outcomes of commits asked for since the last call, in order.
    pub fn commit_results(&mut self) -> Vec<CommitResult> {
        self.pump();
        std::mem::take(&mut self.commit_results)
    }

    /// Commits `offsets` and waits for the outcome, at most `timeout` (before a
    /// revocation or an exit, when the caller needs to know).
    pub fn commit_sync(
        &mut self,
        offsets: &[(Partition, Offset)],
        timeout: Duration,
    ) -> Result<(), KafkaError> {
        if offsets.is_empty() {
            return Ok(());
        }
        if self.epoch == 0 {
            return Err(not_a_member());
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.group_command(coordinator::Command::Commit {
            epoch: self.epoch,
            offsets: offsets.to_vec(),
            reply: Some(reply),
        })?;
        self.wait_reply(&answer, timeout, "OffsetCommit")?
    }

    /// The log end (last stable offset) of our partitions, as the latest fetch answers
    /// said (for the lag).
    pub fn log_ends(&mut self) -> HashMap<Partition, Offset> {
        self.pump();
        self.log_ends.clone()
    }

    /// The next offset to fetch from `partition` after what was handed over, if we own it
    /// and know it (a partition without a committed offset is known once its leader has
    /// reset it).
    pub fn position(&self, partition: Partition) -> Option<Offset> {
        self.owned.get(&partition).and_then(|o| o.delivered)
    }

    /// True when we own no partition (not joined yet, or nothing assigned to us).
    pub fn owns_nothing(&self) -> bool {
        self.owned.is_empty()
    }

    /// The partitions we own now.
    pub fn assigned(&self) -> Vec<Partition> {
        self.owned.keys().copied().collect()
    }

    /// The caller has finished revoking `partitions` (taken away by a cooperative
    /// rebalance, [`GroupSignal::Changed`]): they are forgotten, and the group thread
    /// rejoins for the round that gives them to their new owners.
    pub fn revoked(&mut self, partitions: &[Partition]) {
        self.owned
            .retain(|p, o| !(o.revoking && partitions.contains(p)));
        if self.group.is_some() {
            let _ = self.group_command(coordinator::Command::Revoked {
                partitions: partitions.to_vec(),
            });
        }
    }

    /// Forgets positions and stops fetching: called once the caller has finished revoking.
    /// Results not handed over yet are dropped.
    pub fn revoke(&mut self) {
        self.changes.clear();
        let mut by_broker: HashMap<String, Vec<Partition>> = HashMap::new();
        for (p, o) in std::mem::take(&mut self.owned) {
            if let Some(b) = o.broker {
                by_broker.entry(b).or_default().push(p);
            }
        }
        for (broker, parts) in by_broker {
            self.fetcher_command(&broker, fetcher::Command::Unassign(parts));
        }
        for r in std::mem::take(&mut self.ready) {
            self.credit(&r.broker);
        }
        if let Some(broker) = self.handed.take() {
            self.credit(&broker);
        }
        self.log_ends.clear();
    }

    /// Leaves the group (best effort, within the request timeout).
    pub fn leave(&mut self) -> Result<(), KafkaError> {
        let wait = self.settings.request_timeout + self.settings.connect_timeout;
        self.leave_within(wait)
    }

    /// Leaves the group, waiting at most `wait` for the coordinator's answer (a program
    /// on its way out may not want to wait a whole request timeout).
    pub fn leave_within(&mut self, wait: Duration) -> Result<(), KafkaError> {
        self.revoke();
        self.epoch = 0;
        if self.group.is_none() {
            return Ok(());
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.group_command(coordinator::Command::Leave { reply })?;
        self.wait_reply(&answer, wait, "LeaveGroup")?
    }

    /// The committed offsets of the group for `partitions` (asks the coordinator and
    /// waits, within the request timeout).
    pub fn committed(
        &mut self,
        partitions: &[Partition],
    ) -> Result<HashMap<Partition, Option<Offset>>, KafkaError> {
        self.start()?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.group_command(coordinator::Command::Committed {
            partitions: partitions.to_vec(),
            reply,
        })?;
        let wait = self.settings.request_timeout * 2 + self.settings.connect_timeout;
        self.wait_reply(&answer, wait, "OffsetFetch")?
    }

    /// The log end (or start) offsets of `partitions`, asked now on the caller's thread
    /// (for tools and tests; a running caller uses [`Consumer::log_ends`]).
    pub fn log_offsets(
        &mut self,
        partitions: &[Partition],
        from: StartFrom,
    ) -> Result<HashMap<Partition, Offset>, KafkaError> {
        self.cluster.refresh(&self.settings.topic)?;
        fetch::list_offsets(&mut self.cluster, &self.settings.topic, partitions, from)
    }

    // ---- the threads

    /// Starts the group and metadata threads if they are not running.
    fn start(&mut self) -> Result<(), KafkaError> {
        if self.group.is_none() {
            let interrupt = Arc::new(Interrupt::default());
            let cluster = self.thread_cluster(&interrupt);
            let group = Group::new(GroupSettings {
                group_id: self.settings.group_id.clone(),
                topic: self.settings.topic.clone(),
                instance_id: self.settings.group_instance_id.clone(),
                assignors: if self.settings.assignors.is_empty() {
                    Assignor::DEFAULT.to_vec()
                } else {
                    self.settings.assignors.clone()
                },
                session_timeout: self.settings.session_timeout,
                rebalance_timeout: self.settings.rebalance_timeout,
                heartbeat_interval: self.settings.heartbeat_interval,
                retry_backoff: self.settings.retry_backoff,
            });
            let events = self.events_tx.clone();
            let liveness = self.liveness.clone();
            self.group = Some(Worker::spawn("kafka-group", interrupt, move |commands| {
                coordinator::run(cluster, group, liveness, commands, events)
            })?);
        }
        if self.metadata.is_none() {
            let interrupt = Arc::new(Interrupt::default());
            let cluster = self.thread_cluster(&interrupt);
            let topic = self.settings.topic.clone();
            let events = self.events_tx.clone();
            self.metadata = Some(Worker::spawn(
                "kafka-metadata",
                interrupt,
                move |commands| metadata::run(cluster, topic, commands, events),
            )?);
        }
        Ok(())
    }

    /// A cluster for a thread of ours: the shared book, its own connections.
    fn thread_cluster(&self, interrupt: &Arc<Interrupt>) -> Cluster {
        Cluster::with_book(
            self.book.clone(),
            &self.settings.client_id,
            self.settings.timeouts(),
            self.settings.security.clone(),
        )
        .interruptible(interrupt.clone())
    }

    /// The fetch thread of `broker`, started if needed.
    fn fetcher(&mut self, broker: &str) -> Option<&Worker<fetcher::Command>> {
        if !self.fetchers.contains_key(broker) {
            let interrupt = Arc::new(Interrupt::default());
            let (addr, settings, book, events, i) = (
                broker.to_owned(),
                self.fetch_settings.clone(),
                self.book.clone(),
                self.events_tx.clone(),
                interrupt.clone(),
            );
            let name = format!("kafka-fetch-{}", self.fetchers.len());
            log::debug!("{name} fetches from Kafka broker {broker}");
            match Worker::spawn(&name, interrupt, move |commands| {
                fetcher::run(addr, settings, book, commands, events, i)
            }) {
                Ok(w) => {
                    self.fetchers.insert(broker.to_owned(), w);
                }
                Err(e) => {
                    log::error!("{e}");
                    return None;
                }
            }
        }
        self.fetchers.get(broker)
    }

    fn fetcher_command(&mut self, broker: &str, c: fetcher::Command) {
        if let Some(w) = self.fetchers.get(broker) {
            w.send(c);
        }
    }

    fn credit(&mut self, broker: &str) {
        self.fetcher_command(broker, fetcher::Command::Credit);
    }

    fn group_command(&mut self, c: coordinator::Command) -> Result<(), KafkaError> {
        match &self.group {
            Some(w) if w.send(c) => Ok(()),
            _ => Err(thread_gone("the group thread")),
        }
    }

    /// Waits for a thread's reply, taking the other threads' reports meanwhile.
    fn wait_reply<T>(
        &mut self,
        answer: &Receiver<T>,
        wait: Duration,
        what: &'static str,
    ) -> Result<T, KafkaError> {
        let deadline = Instant::now() + wait;
        loop {
            self.pump();
            let mut sel = crossbeam_channel::Select::new();
            let reply = sel.recv(answer);
            let events = sel.recv(&self.events_rx);
            let Ok(op) = sel.select_deadline(deadline) else {
                return Err(KafkaError::Timeout {
                    broker: self.book.servers(),
                    what,
                    after: wait,
                });
            };
            if op.index() == reply {
                return op.recv(answer).map_err(|_| thread_gone(what));
            }
            debug_assert_eq!(op.index(), events);
            if let Ok(e) = op.recv(&self.events_rx) {
                self.on_event(e.0);
            }
        }
    }

    // ---- reports from the threads

    /// Takes every report waiting, then asks for metadata if it is due.
    fn pump(&mut self) {
        self.liveness.polled();
        while let Ok(e) = self.events_rx.try_recv() {
            self.on_event(e.0);
        }
        self.ask_metadata_if_due();
    }

    fn on_event(&mut self, e: Inner) {
        match e {
            Inner::Fetched { broker, batch } => self.on_fetched(broker, batch),
            Inner::Moved {
                broker,
                partitions,
                code,
            } => {
                let mut moved = Vec::new();
                for (p, lease) in partitions {
                    if let Some(own) = self.owned.get_mut(&p)
                        && own.lease == lease
                    {
                        own.broker = None;
                        moved.push(p.to_string());
                    }
                }
                if !moved.is_empty() {
                    log::info!(
                        "Kafka broker {broker} no longer leads partition(s) [{}] of {} ({}); refreshing metadata",
                        moved.join(", "),
                        self.settings.topic,
                        code_name(code)
                    );
                    self.schedule_metadata(Duration::ZERO);
                }
            }
            Inner::PartitionFailed {
                broker,
                partition,
                lease,
                error,
            } => {
                if self.owned.get(&partition).is_some_and(|o| o.lease == lease) {
                    log::warn!(
                        "fetching partition {partition} of {} from {broker}: {error}",
                        self.settings.topic
                    );
                }
            }
            Inner::BrokerFailed { broker, error } => self.on_broker_failed(broker, &error),
            Inner::BrokerRecovered { broker, since } => {
                if self.failing.remove(&broker).is_some() {
                    log::info!(
                        "Kafka broker {broker} answers again after {:.1} s; fetching its partitions",
                        since.elapsed().as_secs_f64()
                    );
                }
            }
            Inner::Heartbeat { join, news } => {
                if join != self.group_join || self.epoch == 0 {
                    return; // about a membership before the current one
                }
                match news {
                    Ok(Heartbeat::Fine | Heartbeat::NotDue) => self.group_news = Some(Ok(())),
                    Ok(Heartbeat::Rejoin(why)) => {
                        self.rejoin.get_or_insert(why);
                    }
                    Err(e) => self.group_news = Some(Err(e)),
                }
            }
            Inner::Assigned {
                join,
                added,
                revoked,
                protocol,
                topic_partitions,
            } => self.on_assigned(join, added, revoked, protocol, topic_partitions),
            Inner::Committed {
                epoch,
                offsets,
                result,
            } => {
                if epoch == self.epoch {
                    self.commit_results.push(CommitResult { offsets, result });
                }
            }
            Inner::Metadata(result) => self.on_metadata(result),
        }
    }

    /// A cooperative round: the partitions added are fetched at once, those taken away no
    /// more (what was fetched of them and not handed over is dropped), and the caller hears
    /// of both with its next `heartbeat`.
    fn on_assigned(
        &mut self,
        join: u64,
        added: Vec<(Partition, Option<Offset>)>,
        revoked: Vec<Partition>,
        protocol: Assignor,
        topic_partitions: usize,
    ) {
        if self.epoch == 0 || self.rejoin.is_some() || join <= self.group_join {
            return; // a membership the caller is leaving, or one before it
        }
        self.group_join = join;
        self.topic_partitions = topic_partitions;
        self.stop_fetching(&revoked);
        let mut added_at = Vec::with_capacity(added.len());
        for (p, start) in added {
            let lease = self.lease();
            self.owned.insert(
                p,
                Owned {
                    revoking: false,
                    lease,
                    broker: None,
                    fetched: start,
                    delivered: start,
                },
            );
            added_at.push((p, start));
        }
        self.route();
        if added_at.is_empty() && revoked.is_empty() {
            return;
        }
        self.changes.push_back(Change {
            added: added_at,
            revoked,
            protocol,
        });
    }

    /// Stops fetching `partitions` (being revoked): their fetch threads let them go, and
    /// results not handed over yet lose their messages and positions, so nothing of them
    /// reaches the caller after this.
    fn stop_fetching(&mut self, partitions: &[Partition]) {
        let mut by_broker: HashMap<String, Vec<Partition>> = HashMap::new();
        for p in partitions {
            if let Some(own) = self.owned.get_mut(p) {
                own.revoking = true;
                if let Some(b) = own.broker.take() {
                    by_broker.entry(b).or_default().push(*p);
                }
            }
            self.log_ends.remove(p);
        }
        for (broker, parts) in by_broker {
            self.fetcher_command(&broker, fetcher::Command::Unassign(parts));
        }
        let mut emptied = Vec::new();
        self.ready.retain_mut(|r| {
            r.messages.retain(|m| !partitions.contains(&m.partition));
            r.positions.retain(|(p, _)| !partitions.contains(p));
            let keep = !r.messages.is_empty() || !r.positions.is_empty();
            if !keep {
                emptied.push(r.broker.clone());
            }
            keep
        });
        for broker in emptied {
            self.credit(&broker);
        }
    }

    fn on_fetched(&mut self, broker: String, batch: Batch) {
        let Batch {
            mut messages,
            positions,
            log_ends,
        } = batch;
        let counts = !messages.is_empty() || !positions.is_empty();
        // Reports under another lease (a partition that moved, or was revoked) are dropped.
        let current = |owned: &BTreeMap<Partition, Owned>, p: Partition, lease: Option<Lease>| {
            owned.get(&p).is_some_and(|o| {
                o.broker.as_deref() == Some(broker.as_str()) && lease.is_none_or(|l| l == o.lease)
            })
        };
        let mut accepted = Vec::with_capacity(positions.len());
        for (p, lease, next) in positions {
            if current(&self.owned, p, Some(lease)) {
                if let Some(own) = self.owned.get_mut(&p) {
                    own.fetched = Some(next);
                }
                accepted.push((p, next));
            }
        }
        if messages
            .iter()
            .any(|m| !accepted.iter().any(|(p, _)| *p == m.partition))
        {
            messages.retain(|m| accepted.iter().any(|(p, _)| *p == m.partition));
        }
        for (p, end) in log_ends {
            if current(&self.owned, p, None) {
                self.log_ends.insert(p, end);
            }
        }
        if !counts {
            return;
        }
        if messages.is_empty() && accepted.is_empty() {
            // Nothing of it is ours any more: the thread may go on at once.
            self.credit(&broker);
            return;
        }
        self.ready.push_back(Ready {
            broker,
            messages,
            positions: accepted,
        });
    }

    fn on_broker_failed(&mut self, broker: String, error: &KafkaError) {
        let now = Instant::now();
        let waiting: Vec<String> = self
            .owned
            .iter()
            .filter(|(_, o)| o.broker.as_deref() == Some(broker.as_str()))
            .map(|(p, _)| p.to_string())
            .collect();
        match self.failing.get_mut(&broker) {
            None => {
                if error.is_security() {
                    // Credentials or certificates refused: no other broker takes them either
                    // and no leader move helps, so it is the operator's error, as the
                    // group's is.
                    log::error!(
                        "Kafka broker {broker} refused us while fetching partition(s) [{}] of {}: {error}",
                        waiting.join(", "),
                        self.settings.topic
                    );
                } else {
                    log::warn!(
                        "Kafka broker {broker} failed while fetching partition(s) [{}] of {}: {error}; they wait for it or for a new leader, the others go on",
                        waiting.join(", "),
                        self.settings.topic
                    );
                }
                self.failing.insert(
                    broker,
                    Failing {
                        since: now,
                        said_at: now,
                    },
                );
            }
            Some(f) if now >= f.said_at + REMINDER => {
                log::warn!(
                    "Kafka broker {broker} still failing after {} s (partitions [{}] wait): {error}",
                    (now - f.since).as_secs(),
                    waiting.join(", ")
                );
                f.said_at = now;
            }
            Some(_) => log::debug!("Kafka broker {broker}: {error}"),
        }
        // Maybe the leadership moved away from it: look (with backoff while it lasts).
        self.schedule_metadata(Duration::ZERO);
    }

    fn on_metadata(&mut self, result: Result<Snapshot, KafkaError>) {
        self.meta.in_flight = false;
        match result {
            Ok(snapshot) => {
                self.snapshot = Some(snapshot);
                self.route();
            }
            Err(e) => log::debug!("refreshing metadata of {}: {e}", self.settings.topic),
        }
        let now = Instant::now();
        let trouble = self.snapshot.is_none()
            || self.owned.values().filter(|o| !o.revoking).any(|o| {
                o.broker
                    .as_deref()
                    .is_none_or(|b| self.failing.contains_key(b))
            });
        if trouble {
            // Again soon, backing off, until every partition has a leader that answers.
            self.meta.earliest = now + self.meta.backoff.next_delay();
            self.meta.due = Some(self.meta.earliest);
        } else {
            self.meta.backoff.reset();
            self.meta.earliest = now;
            let next = now + self.max_age();
            if self.meta.due.is_none_or(|d| d > next) {
                self.meta.due = Some(next);
            }
        }
    }

    /// Gives each partition to its leader's fetch thread, moving those whose leader
    /// changed (under a new lease, from the position the facade knows).
    fn route(&mut self) {
        let Some(snapshot) = &self.snapshot else {
            return;
        };
        let leaders: HashMap<Partition, Option<String>> =
            snapshot.leaders.iter().cloned().collect();
        let mut unassign: HashMap<String, Vec<Partition>> = HashMap::new();
        let mut assign: HashMap<String, Vec<Assigned>> = HashMap::new();
        let mut moves = Vec::new();
        for (p, own) in self.owned.iter_mut() {
            if own.revoking {
                continue;
            }
            let leader = leaders.get(p).cloned().flatten();
            if own.broker.is_some() && own.broker == leader {
                continue;
            }
            if let Some(old) = own.broker.take() {
                moves.push(format!(
                    "{p}: {old} -> {}",
                    leader.as_deref().unwrap_or("none")
                ));
                unassign.entry(old).or_default().push(*p);
            }
            let Some(leader) = leader else { continue };
            self.next_lease += 1;
            own.lease = Lease(self.next_lease);
            own.broker = Some(leader.clone());
            assign.entry(leader).or_default().push(Assigned {
                partition: *p,
                lease: own.lease,
                start: own.fetched,
            });
        }
        if !moves.is_empty() {
            log::info!(
                "Partition leadership of {} changed: [{}]",
                self.settings.topic,
                moves.join(", ")
            );
        }
        for (broker, parts) in unassign {
            self.fetcher_command(&broker, fetcher::Command::Unassign(parts));
        }
        for (broker, parts) in assign {
            match self.fetcher(&broker) {
                Some(w) => {
                    w.send(fetcher::Command::Assign(parts));
                }
                None => {
                    // No thread: leave them unrouted, so the next metadata tries again.
                    for a in parts {
                        if let Some(own) = self.owned.get_mut(&a.partition) {
                            own.broker = None;
                        }
                    }
                }
            }
        }
    }

    fn lease(&mut self) -> Lease {
        self.next_lease += 1;
        Lease(self.next_lease)
    }

    /// How long metadata may age when nothing is wrong.
    fn max_age(&self) -> Duration {
        if self.owned.is_empty() {
            METADATA_MAX_AGE_WHILE_EMPTY
        } else {
            METADATA_MAX_AGE
        }
    }

    /// Wants metadata within `within` (not before the backoff allows).
    fn schedule_metadata(&mut self, within: Duration) {
        let at = (Instant::now() + within).max(self.meta.earliest);
        if self.meta.due.is_none_or(|d| d > at) {
            self.meta.due = Some(at);
        }
        self.ask_metadata_if_due();
    }

    fn ask_metadata_if_due(&mut self) {
        if self.meta.in_flight || self.meta.due.is_none_or(|d| d > Instant::now()) {
            return;
        }
        if let Some(w) = &self.metadata
            && w.send(metadata::Command::Refresh)
        {
            self.meta.in_flight = true;
            self.meta.due = None;
        }
    }

    /// Asks for metadata now and waits for it (a join needs the partitions as they are).
    fn refresh_now(&mut self) -> Result<Snapshot, KafkaError> {
        if !self
            .metadata
            .as_ref()
            .is_some_and(|w| w.send(metadata::Command::Refresh))
        {
            return Err(thread_gone("the metadata thread"));
        }
        self.meta.in_flight = true;
        let wait = self.settings.request_timeout * 2 + self.settings.connect_timeout * 2;
        let deadline = Instant::now() + wait;
        loop {
            let event = match self.events_rx.recv_deadline(deadline) {
                Ok(e) => e.0,
                Err(_) => {
                    return Err(KafkaError::Timeout {
                        broker: self.book.servers(),
                        what: "Metadata",
                        after: wait,
                    });
                }
            };
            match event {
                Inner::Metadata(result) => {
                    self.meta.in_flight = false;
                    let snapshot = result?;
                    self.snapshot = Some(snapshot.clone());
                    return Ok(snapshot);
                }
                other => self.on_event(other),
            }
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Every thread told to stop (its channel closed) and its sockets shut down first,
        // so that none waits out a request timeout; then each is joined.
        let mut workers: Vec<&mut dyn Stoppable> = Vec::new();
        if let Some(w) = self.group.as_mut() {
            workers.push(w);
        }
        if let Some(w) = self.metadata.as_mut() {
            workers.push(w);
        }
        for w in self.fetchers.values_mut() {
            workers.push(w);
        }
        for w in &mut workers {
            w.stop();
        }
        for w in workers {
            w.join();
        }
    }
}

trait Stoppable {
    fn stop(&mut self);
    fn join(&mut self);
}

impl<C: Send + 'static> Worker<C> {
    fn spawn(
        name: &str,
        interrupt: Arc<Interrupt>,
        body: impl FnOnce(Receiver<C>) + Send + 'static,
    ) -> Result<Worker<C>, KafkaError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(rx))
            .map_err(|source| KafkaError::Io {
                broker: String::new(),
                what: "starting a thread",
                source,
            })?;
        Ok(Worker {
            commands: Some(tx),
            interrupt,
            thread: Some(thread),
        })
    }

    /// False when the thread is gone.
    fn send(&self, c: C) -> bool {
        self.commands.as_ref().is_some_and(|tx| tx.send(c).is_ok())
    }
}

impl<C> Stoppable for Worker<C> {
    fn stop(&mut self) {
        self.commands = None;
        self.interrupt.interrupt();
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("a thread of the Kafka consumer panicked");
        }
    }
}

fn not_a_member() -> KafkaError {
    KafkaError::Broker {
        what: "OffsetCommit",
        code: 25, // UNKNOWN_MEMBER_ID
    }
}

fn thread_gone(what: &str) -> KafkaError {
    KafkaError::Io {
        broker: String::new(),
        what: "talking to a thread of the consumer",
        source: std::io::Error::other(format!("{what} has stopped")),
    }
}

/// "NOT_LEADER_OR_FOLLOWER (error code 6)".
fn code_name(code: i16) -> String {
    match kafka_protocol::error::ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?} (error code {code})"),
        None => format!("error code {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::BackoffSettings;
    use crate::wire::limits::RecordLimits;

    fn consumer() -> Consumer {
        Consumer::new(ConsumerSettings {
            // Nothing listens there: a fetch thread started for it fails, which these tests
            // never wait for.
            bootstrap: vec!["127.0.0.1:9".into()],
            client_id: "unit".into(),
            group_id: "g".into(),
            group_instance_id: None,
            assignors: Assignor::DEFAULT.to_vec(),
            topic: "t".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
            fetch_max_wait: Duration::from_millis(40),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            retry_backoff: BackoffSettings::RETRY,
            reconnect_backoff: BackoffSettings::RECONNECT,
            start_from: StartFrom::Earliest,
            security: Default::default(),
            record_limits: RecordLimits::default(),
        })
    }

    /// Makes `p` ours, fetched by `broker`'s thread under `lease`, from `at`.
    fn own(c: &mut Consumer, p: i32, broker: &str, lease: u64, at: i64) {
        c.epoch = 1;
        c.next_lease = c.next_lease.max(lease);
        c.owned.insert(
            Partition(p),
            Owned {
                revoking: false,
                lease: Lease(lease),
                broker: Some(broker.into()),
                fetched: Some(Offset(at)),
                delivered: Some(Offset(at)),
            },
        );
    }

    fn message(p: i32, offset: i64) -> Message {
        Message {
            partition: Partition(p),
            offset: Offset(offset),
            key: None,
            value: None,
            value_len: 0,
            headers: Vec::new(),
            timestamp_ms: 0,
            undecoded: None,
        }
    }

    fn fetched(broker: &str, p: i32, lease: u64, offsets: std::ops::Range<i64>) -> Event {
        Event(Inner::Fetched {
            broker: broker.into(),
            batch: Batch {
                positions: vec![(Partition(p), Lease(lease), Offset(offsets.end))],
                messages: offsets.map(|o| message(p, o)).collect(),
                log_ends: vec![(Partition(p), Offset(100))],
            },
        })
    }

    fn offsets(messages: &[Message]) -> Vec<(i32, i64)> {
        messages
            .iter()
            .map(|m| (m.partition.0, m.offset.0))
            .collect()
    }

    #[test]
    fn positions_move_only_as_results_are_handed_over() {
        let mut c = consumer();
        own(&mut c, 0, "b1:9092", 1, 5);
        c.handle(fetched("b1:9092", 0, 1, 5..8));
        // Waiting for the caller: committing from the position must not pass them.
        assert_eq!(c.position(Partition(0)), Some(Offset(5)));
        assert_eq!(offsets(&c.fetch()), vec![(0, 5), (0, 6), (0, 7)]);
        assert_eq!(c.position(Partition(0)), Some(Offset(8)));
        assert_eq!(c.log_ends()[&Partition(0)], Offset(100));
        assert!(c.fetch().is_empty());
    }

    #[test]
    fn a_result_under_another_lease_is_dropped() {
        let mut c = consumer();
        own(&mut c, 0, "b1:9092", 2, 5);
        own(&mut c, 1, "b1:9092", 3, 0);
        // Lease 1 of p0 ended (the partition moved away and back, say): its late result
        // is not handed over, and the position stays where the current lease starts.
        c.handle(fetched("b1:9092", 0, 1, 5..9));
        assert!(c.fetch().is_empty());
        assert_eq!(c.position(Partition(0)), Some(Offset(5)));
        // The same from another broker's thread, even under the current lease number.
        c.handle(fetched("b2:9092", 1, 3, 0..4));
        assert!(c.fetch().is_empty());
        assert_eq!(c.position(Partition(1)), Some(Offset(0)));
        // Of one result, only the partitions under their current lease are handed over.
        let Event(Inner::Fetched { mut batch, .. }) = fetched("b1:9092", 0, 2, 5..7) else {
            unreachable!()
        };
        let Event(Inner::Fetched { batch: stale, .. }) = fetched("b1:9092", 1, 9, 0..2) else {
            unreachable!()
        };
        batch.messages.extend(stale.messages);
        batch.positions.extend(stale.positions);
        c.handle(Event(Inner::Fetched {
            broker: "b1:9092".into(),
            batch,
        }));
        assert_eq!(offsets(&c.fetch()), vec![(0, 5), (0, 6)]);
        assert_eq!(c.position(Partition(1)), Some(Offset(0)));
    }

    #[test]
    fn a_partition_that_moves_is_fetched_by_its_new_leader_from_where_results_left_it() {
        let mut c = consumer();
        own(&mut c, 0, "127.0.0.1:9", 1, 5);
        // A result came in (not handed over yet), then the metadata names a new leader.
        c.handle(fetched("127.0.0.1:9", 0, 1, 5..8));
        c.handle(Event(Inner::Metadata(Ok(Snapshot {
            leaders: vec![(Partition(0), Some("127.0.0.1:7".into()))],
        }))));
        let own = &c.owned[&Partition(0)];
        assert_eq!(own.broker.as_deref(), Some("127.0.0.1:7"));
        assert!(own.lease > Lease(1), "a new lease");
        assert_eq!(
            own.fetched,
            Some(Offset(8)),
            "the new leader starts after the result"
        );
        // The result that came before the move is still handed over, once.
        assert_eq!(offsets(&c.fetch()), vec![(0, 5), (0, 6), (0, 7)]);
        // What the old broker's thread brings in after the move is not.
        c.handle(fetched("127.0.0.1:9", 0, 1, 8..10));
        assert!(c.fetch().is_empty());
        assert_eq!(c.position(Partition(0)), Some(Offset(8)));
    }

    #[test]
    fn a_revoked_partition_hands_nothing_over() {
        let mut c = consumer();
        own(&mut c, 0, "b1:9092", 1, 5);
        c.handle(fetched("b1:9092", 0, 1, 5..8));
        c.revoke();
        assert!(c.fetch().is_empty());
        c.handle(fetched("b1:9092", 0, 1, 8..9));
        assert!(c.fetch().is_empty());
        assert!(c.owns_nothing());
    }

    #[test]
    fn heartbeat_news_of_an_earlier_membership_is_ignored() {
        let mut c = consumer();
        c.epoch = 1;
        c.group_join = 2;
        c.handle(Event(Inner::Heartbeat {
            join: 1,
            news: Ok(Heartbeat::Rejoin("the group is rebalancing")),
        }));
        assert_eq!(c.heartbeat().unwrap(), GroupSignal::NotDue);
        c.handle(Event(Inner::Heartbeat {
            join: 2,
            news: Ok(Heartbeat::Fine),
        }));
        assert_eq!(c.heartbeat().unwrap(), GroupSignal::Fine);
        c.handle(Event(Inner::Heartbeat {
            join: 2,
            news: Ok(Heartbeat::Rejoin("the group is rebalancing")),
        }));
        // A rebalance stays until the next join.
        for _ in 0..2 {
            assert_eq!(
                c.heartbeat().unwrap(),
                GroupSignal::Rejoin("the group is rebalancing")
            );
        }
    }
    /// A cooperative round: the partition taken away hands nothing more over (not even
    /// what was fetched of it before), the others go on, the one added starts from its
    /// committed offset, and the caller hears of both once.
    #[test]
    fn a_cooperative_change_stops_only_the_revoked_partition() {
        let mut c = consumer();
        own(&mut c, 0, "b1:9092", 1, 5);
        own(&mut c, 1, "b1:9092", 2, 0);
        let Event(Inner::Fetched { mut batch, .. }) = fetched("b1:9092", 0, 1, 5..7) else {
            unreachable!()
        };
        let Event(Inner::Fetched { batch: other, .. }) = fetched("b1:9092", 1, 2, 0..2) else {
            unreachable!()
        };
        batch.messages.extend(other.messages);
        batch.positions.extend(other.positions);
        c.handle(Event(Inner::Fetched {
            broker: "b1:9092".into(),
            batch,
        }));
        c.handle(Event(Inner::Assigned {
            join: 1,
            added: vec![(Partition(2), Some(Offset(7)))],
            revoked: vec![Partition(1)],
            protocol: Assignor::CooperativeSticky,
            topic_partitions: 3,
        }));
        assert_eq!(
            c.heartbeat().unwrap(),
            GroupSignal::Changed(Change {
                added: vec![(Partition(2), Some(Offset(7)))],
                revoked: vec![Partition(1)],
                protocol: Assignor::CooperativeSticky,
            })
        );
        assert_eq!(c.heartbeat().unwrap(), GroupSignal::NotDue, "told once");
        assert_eq!(offsets(&c.fetch()), vec![(0, 5), (0, 6)], "only p0 goes on");
        assert_eq!(c.position(Partition(1)), Some(Offset(0)));
        assert_eq!(c.position(Partition(2)), Some(Offset(7)));
        c.handle(fetched("b1:9092", 1, 2, 2..4));
        assert!(
            c.fetch().is_empty(),
            "nothing of p1 after its revocation began"
        );
        c.revoked(&[Partition(1)]);
        assert_eq!(c.assigned(), vec![Partition(0), Partition(2)]);
        // A round of an earlier membership (the caller rejoined since) is ignored.
        c.handle(Event(Inner::Assigned {
            join: 1,
            added: vec![(Partition(1), None)],
            revoked: vec![],
            protocol: Assignor::CooperativeSticky,
            topic_partitions: 3,
        }));
        assert_eq!(c.heartbeat().unwrap(), GroupSignal::NotDue);
    }
}
