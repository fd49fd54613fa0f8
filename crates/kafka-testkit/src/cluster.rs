//! One tansu presented as a cluster of N brokers: a Kafka-aware proxy on N loopback ports.
//!
//! Broker `id` (1..=N) is the port [`Cluster::addr`]`(id)`; every port forwards to the same
//! tansu, one upstream connection per client connection, and rewrites what a cluster of N
//! brokers would answer differently from one broker:
//!
//! - **Metadata** (every version): the broker list is the N ports (host 127.0.0.1, controller
//!   1); each partition's leader follows the leadership map the test controls (default:
//!   partition `p` led by broker `p % N + 1`), its replicas and ISR are every broker, leader
//!   first; the leader epoch is the number of times the test moved that partition.
//!   DescribeCluster likewise.
//! - **FindCoordinator** (v0-3 and the coordinators array of v4+): the coordinator is the
//!   broker the test set (default 1), for every group and transactional id.
//! - **The wrong broker**: Fetch, ListOffsets and Produce partitions this broker does not
//!   lead get NOT_LEADER_OR_FOLLOWER (6); at the leader, a client's `current_leader_epoch`
//!   older than the partition's gets FENCED_LEADER_EPOCH (74), a newer one
//!   UNKNOWN_LEADER_EPOCH (75). Refused partitions are taken out of the request before it
//!   is forwarded (a Produce to a non-leader never writes), and put back into tansu's answer
//!   with the error; a request refused whole is answered by the proxy. A Fetch with a
//!   refused partition is forwarded with `max_wait_ms` 0, because a broker answers a fetch
//!   with an error at once. Group requests (JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//!   OffsetCommit, OffsetFetch, DescribeGroups) to a broker that is not the coordinator get
//!   NOT_COORDINATOR (16) from the proxy.
//! - **ApiVersions**: ranges capped so the rewriting stays simple and decodable: Fetch
//!   4-12, Produce 3-12 (tansu 0.6 stops at 11), OffsetCommit 2-9, OffsetFetch 1-9 (topics by name, not id), the
//!   other rewritten APIs to what kafka-protocol decodes; KIP-848's ConsumerGroupHeartbeat
//!   and ConsumerGroupDescribe are not offered. Kafka 2.1+ clients (librdkafka included)
//!   work within these ranges. [`Cluster::cap_versions`] narrows them further, to what an
//!   older broker offers ([`KAFKA_2_1`]: the APIs Kafka 2.1 had, at its highest versions),
//!   and [`Cluster::versions`] says which versions clients then used.
//! - **Fetch sessions** are refused (session id 0 in every answer), so clients send full
//!   fetch requests that the proxy can route partition by partition.
//!
//! Each client connection has two threads: one reads requests and forwards them as the
//! client pipelines them, one delivers the answers in request order. Per broker, on command
//! ([`BrokerFaults`]):
//!
//! - [`Cluster::cut`]: every open connection is closed and new ones are accepted and closed
//!   at once: the broker is unreachable.
//! - [`Cluster::freeze`]: connections stay open, nothing is forwarded either way.
//! - [`Cluster::delay`]: every answer is held until `D` after its own request was read, then
//!   delivered; requests are still read and forwarded meanwhile: a slow broker (or a slow
//!   path to it).
//! - [`Cluster::throttle`]: answers carry `throttle_time_ms = T`, and after each such answer
//!   the connection's next request is held for T, as KIP-219 brokers mute the channel
//!   (while throttling, a connection's requests go one at a time).
//! - [`Cluster::restore`]: all of that undone (held answers are released at once).
//!
//! Leadership and the coordinator move with [`Cluster::move_leader`] and
//! [`Cluster::move_coordinator`]; [`Cluster::schedule`] runs such steps on a timeline.
//! Counters ([`Cluster::requests`], [`Cluster::answers`], [`Cluster::injected`],
//! [`Cluster::connections`]) let a test wait for a condition instead of sleeping.
//!
//! Not emulated: replication (one tansu holds every partition, so a "leader move" loses and
//! duplicates nothing, and there is no follower fetching or under-replication), per-broker
//! metadata staleness (every broker answers from the same leadership map at that moment),
//! a cut broker leaving the broker list, fetch sessions, OffsetForLeaderEpoch (tansu does
//! not offer it, so clients skip KIP-320 validation), TLS and SASL (plaintext only), and
//! transactions' coordinator routing (InitProducerId, AddPartitionsToTxn, EndTxn go to
//! tansu from any broker).
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use kafka_protocol::messages::ApiKey;

use crate::Broker;
use crate::hostile_batch::{self, Codec, Piece};
use crate::legacy::{LegacyCodec, LegacyMessage, Magic, MessageSet};

mod groups;
mod rewrite;

pub use groups::{GroupState, INITIAL_REBALANCE_DELAY, Rebalance};

pub use rewrite::{
    FENCED_LEADER_EPOCH, NOT_COORDINATOR, NOT_LEADER_OR_FOLLOWER, UNKNOWN_LEADER_EPOCH,
};
use rewrite::{Route, Snapshot};

/// A broker of the cluster: 1..=N.
pub type BrokerId = i32;

/// Who leads a partition, and in which leader epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub leader: BrokerId,
    pub epoch: i32,
}

/// What is wrong with one broker now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerFaults {
    /// Unreachable: connections closed, new ones closed as soon as accepted.
    pub cut: bool,
    /// Nothing forwarded either way; connections stay open.
    pub frozen: bool,
    /// Every answer held until this long after its request was read.
    pub delay: Duration,
    /// The `throttle_time_ms` put into answers, and how long the connection is then muted.
    pub throttle: Duration,
}

/// The ApiVersions answer of an older broker, for [`Cluster::cap_versions`]: no API with a
/// key above `highest_key` is offered (it came later), and each API in `caps` is offered up
/// to that version at most. Within that, the cluster's own ranges hold (tansu's, and the
/// floors the rewriting needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionCaps {
    pub highest_key: i16,
    pub caps: &'static [(ApiKey, i16)],
}

/// Apache Kafka 2.1.0, the oldest broker the worker supports: API keys up to 42
/// (DeleteGroups; ElectPreferredLeaders came in 2.2), and the highest version of each API a
/// consumer, a producer and the worker's tools use, as 2.1.0's ApiVersions answer lists
/// them. JoinGroup stops at 3 (v4, with the member-id round trip, came in 2.2), Metadata at
/// 7, ListOffsets at 4, Fetch at 10, Produce at 7, SaslAuthenticate at 0.
pub const KAFKA_2_1: VersionCaps = VersionCaps {
    highest_key: 42,
    caps: &[
        (ApiKey::Produce, 7),
        (ApiKey::Fetch, 10),
        (ApiKey::ListOffsets, 4),
        (ApiKey::Metadata, 7),
        (ApiKey::OffsetCommit, 6),
        (ApiKey::OffsetFetch, 5),
        (ApiKey::FindCoordinator, 2),
        (ApiKey::JoinGroup, 3),
        (ApiKey::Heartbeat, 2),
        (ApiKey::LeaveGroup, 2),
        (ApiKey::SyncGroup, 2),
        (ApiKey::DescribeGroups, 2),
        (ApiKey::ListGroups, 2),
        (ApiKey::SaslHandshake, 1),
        (ApiKey::ApiVersions, 2),
        (ApiKey::CreateTopics, 3),
        (ApiKey::DeleteTopics, 3),
        (ApiKey::InitProducerId, 1),
        (ApiKey::SaslAuthenticate, 0),
    ],
};

/// One step of a [`Cluster::schedule`] timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Cut(BrokerId),
    Freeze(BrokerId),
    Delay(BrokerId, Duration),
    Throttle(BrokerId, Duration),
    Restore(BrokerId),
    /// Leadership of (topic, partition) to a broker; the leader epoch goes up by one.
    MoveLeader(String, i32, BrokerId),
    MoveCoordinator(BrokerId),
}

/// A tansu broker behind N proxy ports that behave as N brokers. Dropping it closes every
/// connection, joins every thread and stops tansu.
pub struct Cluster {
    /// The real broker. Clients that connect to it directly bypass every fault (useful for a
    /// test's producer); it advertises its own address.
    tansu: Broker,
    shared: Arc<Shared>,
    /// One accept thread per broker port; joined (and emptied) in `Drop`.
    acceptors: Vec<JoinHandle<()>>,
}

/// A timeline of steps running on its own thread ([`Cluster::schedule`]). Dropping it
/// cancels the steps not yet applied.
pub struct Timeline {
    /// Set (and signalled) by `Drop`: the thread applies no further step.
    cancel: Arc<(Mutex<bool>, Condvar)>,
    /// The thread applying the steps; `None` once joined.
    thread: Option<JoinHandle<()>>,
}

impl Placement {
    /// The default: partition `p` led by broker `p % n + 1`, epoch 0.
    pub fn default_for(partition: i32, n: usize) -> Placement {
        Placement {
            leader: partition.rem_euclid(n as i32) + 1,
            epoch: 0,
        }
    }
}

impl Cluster {
    /// Starts tansu and `brokers` proxy ports in front of it (broker ids 1..=`brokers`).
    /// Consumer groups are tansu's.
    pub fn start(brokers: usize) -> Cluster {
        Cluster::launch(brokers, None)
    }

    /// Like [`Cluster::start`], but the cluster's coordinator keeps consumer groups by
    /// Kafka's rules (`cluster/groups.rs`: the join barrier, protocol selection by vote,
    /// static members that are fenced, no rebalance for a static member's restart), where
    /// tansu's own ways differ; offsets are still stored by tansu. `initial_delay` is
    /// Kafka's `group.initial.rebalance.delay.ms` ([`INITIAL_REBALANCE_DELAY`] is its
    /// default).
    pub fn start_with_kafka_groups(brokers: usize, initial_delay: Duration) -> Cluster {
        Cluster::launch(
            brokers,
            Some(Arc::new(groups::Coordinator::new(initial_delay))),
        )
    }

    fn launch(brokers: usize, groups: Option<Arc<groups::Coordinator>>) -> Cluster {
        assert!(brokers >= 1, "a cluster needs at least one broker");
        let listeners: Vec<TcpListener> = (0..brokers)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a broker port on 127.0.0.1"))
            .collect();
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().expect("a bound port's address").port())
            .collect();
        let tansu = Broker::start();
        let upstream: SocketAddr = tansu.addr().parse().expect("tansu's address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(ports)),
            changed: Condvar::new(),
            upstream,
            groups,
        });
        let mut acceptors: Vec<JoinHandle<()>> = listeners
            .into_iter()
            .enumerate()
            .map(|(i, listener)| {
                let shared = Arc::clone(&shared);
                let id = i as BrokerId + 1;
                thread::Builder::new()
                    .name(format!("cluster-broker-{id}"))
                    .spawn(move || accept_loop(id, &listener, &shared))
                    .expect("spawn a broker's accept thread")
            })
            .collect();
        if shared.groups.is_some() {
            // Sessions that expire and rebalance timeouts that pass, without a request to
            // notice them.
            let shared = Arc::clone(&shared);
            acceptors.push(
                thread::Builder::new()
                    .name("cluster-group-coordinator".into())
                    .spawn(move || {
                        while !shared.lock().stopping {
                            if let Some(g) = &shared.groups {
                                g.tick();
                            }
                            thread::sleep(Duration::from_millis(20));
                        }
                    })
                    .expect("spawn the group coordinator's ticker"),
            );
        }
        Cluster {
            tansu,
            shared,
            acceptors,
        }
    }

    /// The tansu behind the ports (direct connections bypass the cluster's faults).
    pub fn tansu(&self) -> &Broker {
        &self.tansu
    }

    /// Creates `name` with `partitions` partitions (on tansu).
    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.tansu.create_topic(name, partitions);
    }

    /// How many brokers the cluster has.
    pub fn size(&self) -> usize {
        self.shared.lock().ports.len()
    }

    /// Every broker id, 1..=N.
    pub fn broker_ids(&self) -> Vec<BrokerId> {
        (1..=self.size() as BrokerId).collect()
    }

    pub fn port(&self, id: BrokerId) -> u16 {
        let state = self.shared.lock();
        state.ports[state.index(id)]
    }

    /// "127.0.0.1:PORT" of broker `id`.
    pub fn addr(&self, id: BrokerId) -> String {
        format!("127.0.0.1:{}", self.port(id))
    }

    /// A bootstrap list naming every broker.
    pub fn bootstrap(&self) -> String {
        self.broker_ids()
            .iter()
            .map(|&id| self.addr(id))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Makes broker `id` unreachable: open connections are closed, new ones closed at once.
    pub fn cut(&self, id: BrokerId) {
        self.shared.apply(&Step::Cut(id));
    }

    /// Broker `id` stops forwarding in either direction; connections stay open.
    pub fn freeze(&self, id: BrokerId) {
        self.shared.apply(&Step::Freeze(id));
    }

    /// Broker `id` answers every request `delay` after reading it (zero: at once).
    pub fn delay(&self, id: BrokerId, delay: Duration) {
        self.shared.apply(&Step::Delay(id, delay));
    }

    /// Broker `id` throttles every client by `throttle` (zero: not at all).
    pub fn throttle(&self, id: BrokerId, throttle: Duration) {
        self.shared.apply(&Step::Throttle(id, throttle));
    }

    /// Broker `id` is healthy again: reachable, forwarding, prompt and unthrottled.
    pub fn restore(&self, id: BrokerId) {
        self.shared.apply(&Step::Restore(id));
    }

    /// What is wrong with broker `id` now.
    pub fn faults(&self, id: BrokerId) -> BrokerFaults {
        let state = self.shared.lock();
        state.faults[state.index(id)]
    }

    /// Who leads `partition` of `topic`, and in which epoch.
    pub fn leader(&self, topic: &str, partition: i32) -> Placement {
        self.shared.lock().placement(topic, partition)
    }

    /// Moves leadership of `partition` of `topic` to broker `to` (its epoch goes up by one,
    /// even when `to` already leads it, as a re-election does).
    pub fn move_leader(&self, topic: &str, partition: i32, to: BrokerId) {
        self.shared
            .apply(&Step::MoveLeader(topic.to_owned(), partition, to));
    }

    /// The group coordinator every FindCoordinator answer names.
    pub fn coordinator(&self) -> BrokerId {
        self.shared.lock().coordinator
    }

    pub fn move_coordinator(&self, to: BrokerId) {
        self.shared.apply(&Step::MoveCoordinator(to));
    }

    /// Applies one step now.
    pub fn apply(&self, step: &Step) {
        self.shared.apply(step);
    }

    /// Applies each step at its offset from now, on a thread of its own. Offsets must not
    /// decrease.
    pub fn schedule(&self, steps: Vec<(Duration, Step)>) -> Timeline {
        let cancel = Arc::new((Mutex::new(false), Condvar::new()));
        let shared = Arc::clone(&self.shared);
        let thread = {
            let cancel = Arc::clone(&cancel);
            thread::Builder::new()
                .name("cluster-timeline".to_owned())
                .spawn(move || {
                    let start = Instant::now();
                    for (at, step) in steps {
                        let (lock, cv) = &*cancel;
                        let mut cancelled = lock.lock().unwrap_or_else(|p| p.into_inner());
                        // The steps' times are the scenario itself, not a wait for a
                        // condition: the thread sleeps until each is due, unless cancelled.
                        loop {
                            if *cancelled {
                                return;
                            }
                            let now = start.elapsed();
                            if now >= at {
                                break;
                            }
                            cancelled = cv
                                .wait_timeout(cancelled, at - now)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                        drop(cancelled);
                        shared.apply(&step);
                    }
                })
                .expect("spawn the timeline thread")
        };
        Timeline {
            cancel,
            thread: Some(thread),
        }
    }

    /// From now on every broker answers ApiVersions as an older broker would (`caps`);
    /// clients that connect after this negotiate within it.
    pub fn cap_versions(&self, caps: VersionCaps) {
        self.shared.lock().caps = Some(caps);
    }

    /// Every version of `api` that any broker has been sent, lowest first.
    pub fn versions(&self, api: ApiKey) -> Vec<i16> {
        let state = self.shared.lock();
        let mut seen: Vec<i16> = state
            .versions
            .iter()
            .filter(|(key, _)| *key == api as i16)
            .map(|(_, v)| *v)
            .collect();
        seen.sort_unstable();
        seen
    }

    /// The generation and state of consumer group `group` in the cluster's own
    /// coordinator ([`Cluster::start_with_kafka_groups`]); `None` for a group never joined.
    pub fn group(&self, group: &str) -> Option<(i32, GroupState)> {
        self.kafka_groups().group(group)
    }

    /// Every rebalance of `group` that completed, oldest first (the cluster's own
    /// coordinator).
    pub fn rebalances(&self, group: &str) -> Vec<Rebalance> {
        self.kafka_groups().rebalances(group)
    }

    fn kafka_groups(&self) -> &groups::Coordinator {
        self.shared
            .groups
            .as_deref()
            .expect("the cluster keeps no groups of its own: start it with Cluster::start_with_kafka_groups")
    }

    /// Requests broker `id` has read for `api` (including those it then refused).
    pub fn requests(&self, id: BrokerId, api: ApiKey) -> u64 {
        let state = self.shared.lock();
        state.index(id);
        state.requests.get(&(id, api as i16)).copied().unwrap_or(0)
    }

    /// Answers broker `id` has delivered (or is delivering) for `api`.
    pub fn answers(&self, id: BrokerId, api: ApiKey) -> u64 {
        let state = self.shared.lock();
        state.index(id);
        state.answers.get(&(id, api as i16)).copied().unwrap_or(0)
    }

    /// The longest time between two answers to `api` (from any broker) since the last
    /// [`Cluster::reset_answer_gaps`], and when it began: how long the cluster itself (the
    /// proxy, tansu) went without answering, say Fetch, whatever its clients did.
    pub fn longest_answer_gap(&self, api: ApiKey) -> Option<(Duration, Instant)> {
        let state = self.shared.lock();
        state
            .answer_gaps
            .get(&(api as i16))
            .map(|(_, gap, began)| (*gap, *began))
    }

    /// Starts measuring [`Cluster::longest_answer_gap`] afresh.
    pub fn reset_answer_gaps(&self) {
        self.shared.lock().answer_gaps.clear();
    }

    /// How often broker `id` gave error `code` for `api` in tansu's place (per partition for
    /// Fetch, ListOffsets and Produce; per request for group requests).
    pub fn injected(&self, id: BrokerId, api: ApiKey, code: i16) -> u64 {
        let state = self.shared.lock();
        state.index(id);
        state
            .injected
            .get(&(id, api as i16, code))
            .copied()
            .unwrap_or(0)
    }

    /// Answers broker `id` delivered with a throttle time.
    pub fn throttled_answers(&self, id: BrokerId) -> u64 {
        let state = self.shared.lock();
        state.throttled[state.index(id)]
    }

    /// Connections broker `id` has accepted (those closed at once by a cut included).
    pub fn connections(&self, id: BrokerId) -> u64 {
        let state = self.shared.lock();
        state.accepted[state.index(id)]
    }

    /// Connections open to broker `id` now.
    pub fn open_connections(&self, id: BrokerId) -> usize {
        self.shared
            .lock()
            .links
            .values()
            .filter(|l| l.broker == id)
            .count()
    }

    /// Everything the proxy could not decode or encode (each also printed to stderr, and the
    /// connection closed). A test of the harness asserts this stays empty.
    pub fn errors(&self) -> Vec<String> {
        self.shared.lock().errors.clone()
    }

    /// Writes `messages` to `partition` of `topic` as a legacy message set (magic 0 or 1,
    /// plain or in compressed wrappers of `per_wrapper` messages) and returns the offsets
    /// they occupy.
    ///
    /// tansu cannot store message format v0/v1 (see [`crate::legacy`]), so this produces one
    /// placeholder record per message to tansu (so the offsets, high watermark and committed
    /// positions are real), and from then on every broker serves the legacy set in place of
    /// those placeholders in Fetch answers, from the wrapper holding the fetch offset on.
    pub fn produce_legacy(
        &self,
        topic: &str,
        partition: i32,
        magic: Magic,
        codec: LegacyCodec,
        messages: &[LegacyMessage],
        per_wrapper: usize,
    ) -> Range<i64> {
        let placeholders: Vec<Vec<Piece>> = (0..messages.len())
            .map(|i| {
                let value = format!("placeholder for legacy message {i}");
                hostile_batch::record(i as i64, vec![Piece::Bytes(value.into_bytes())])
            })
            .collect();
        let batch = hostile_batch::batch(Codec::None, &placeholders);
        let first = hostile_batch::produce_raw(&self.tansu.addr(), topic, partition, batch);
        let set = MessageSet::build(magic, codec, first, messages, per_wrapper);
        let offsets = set.offsets();
        self.shared
            .lock()
            .legacy
            .entry((topic.to_owned(), partition))
            .or_default()
            .push(Arc::new(set));
        offsets
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ports = {
            let mut state = self.shared.lock();
            state.stopping = true;
            for (_, link) in state.links.drain() {
                link.close();
            }
            self.shared.changed.notify_all();
            state.ports.clone()
        };
        // Each accept thread is blocked in accept(): a connection of our own wakes it, and
        // it sees `stopping`.
        for port in ports {
            let _ = TcpStream::connect(("127.0.0.1", port));
        }
        for acceptor in self.acceptors.drain(..) {
            let _ = acceptor.join();
        }
        let threads = std::mem::take(&mut self.shared.lock().threads);
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Timeline {
    /// Waits until every step has been applied.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            t.join().expect("the timeline thread panicked");
        }
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        let (lock, cv) = &*self.cancel;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------------------------
// State shared by the accept and connection threads

struct Shared {
    state: Mutex<State>,
    /// Signalled on every change of faults, leadership or links: held requests and answers
    /// re-check whether they may go.
    changed: Condvar,
    upstream: SocketAddr,
    /// Kafka's group coordinator in tansu's place, when the cluster plays it
    /// ([`Cluster::start_with_kafka_groups`]).
    groups: Option<Arc<groups::Coordinator>>,
}

struct State {
    ports: Vec<u16>,
    faults: Vec<BrokerFaults>,
    placed: HashMap<(String, i32), Placement>,
    coordinator: BrokerId,
    legacy: HashMap<(String, i32), Vec<Arc<MessageSet>>>,
    /// Open connections by id; a link leaves this map exactly when it is closed.
    links: HashMap<u64, Link>,
    next_link: u64,
    /// Connection threads; finished ones pruned on each accept, the rest joined in Drop.
    threads: Vec<JoinHandle<()>>,
    stopping: bool,
    requests: HashMap<(BrokerId, i16), u64>,
    /// (API key, version) of every request read, by any broker.
    versions: HashSet<(i16, i16)>,
    /// What ApiVersions answers offer at most, if narrowed.
    caps: Option<VersionCaps>,
    answers: HashMap<(BrokerId, i16), u64>,
    /// Per API, over every broker: when the last answer went out, and the longest time
    /// between two answers so far (with when it began), since the last reset.
    answer_gaps: HashMap<i16, (Instant, Duration, Instant)>,
    injected: HashMap<(BrokerId, i16, i16), u64>,
    throttled: Vec<u64>,
    accepted: Vec<u64>,
    errors: Vec<String>,
}

/// One proxied connection: both sockets, for closing it from outside its threads, and what
/// its two threads share.
struct Link {
    broker: BrokerId,
    client: TcpStream,
    upstream: TcpStream,
    /// Requests read and not yet answered (nor dropped).
    outstanding: usize,
    /// After a throttled answer: no request is forwarded before this (KIP-219).
    muted_until: Instant,
}

/// What a hold waits for.
enum Wait {
    Go,
    /// A change of faults or of the link (a notification).
    Changed,
    Until(Instant),
}

/// A request forwarded or answered, queued for the connection's writer in request order.
struct Entry {
    key: i16,
    read_at: Instant,
    answer: Answer,
}

enum Answer {
    /// tansu's next answer on the upstream connection, to rewrite.
    Upstream(rewrite::Pending),
    /// The proxy's own answer, and the throttle it carries.
    Local(Vec<u8>, i32),
}

impl State {
    fn new(ports: Vec<u16>) -> State {
        let n = ports.len();
        State {
            ports,
            faults: vec![BrokerFaults::default(); n],
            placed: HashMap::new(),
            coordinator: 1,
            legacy: HashMap::new(),
            links: HashMap::new(),
            next_link: 0,
            threads: Vec::new(),
            stopping: false,
            requests: HashMap::new(),
            versions: HashSet::new(),
            caps: None,
            answers: HashMap::new(),
            answer_gaps: HashMap::new(),
            injected: HashMap::new(),
            throttled: vec![0; n],
            accepted: vec![0; n],
            errors: Vec::new(),
        }
    }

    /// The index of broker `id`; panics naming the range for an id the cluster lacks.
    fn index(&self, id: BrokerId) -> usize {
        let n = self.ports.len();
        assert!(
            id >= 1 && id as usize <= n,
            "broker {id} is not in this cluster of {n} (ids 1..={n})"
        );
        (id - 1) as usize
    }

    fn placement(&self, topic: &str, partition: i32) -> Placement {
        self.placed
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or_else(|| Placement::default_for(partition, self.ports.len()))
    }

    fn snapshot(&self, me: BrokerId) -> Snapshot {
        let throttle = self.faults[self.index(me)].throttle;
        Snapshot {
            me,
            ports: self.ports.clone(),
            placed: self.placed.clone(),
            coordinator: self.coordinator,
            legacy: self.legacy.clone(),
            throttle_ms: i32::try_from(throttle.as_millis()).unwrap_or(i32::MAX),
            caps: self.caps,
        }
    }
}

impl Link {
    fn close(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the cluster (and the test's
        // diagnostics) with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, step: &Step) {
        let mut state = self.lock();
        match step {
            Step::Cut(id) => {
                let i = state.index(*id);
                state.faults[i].cut = true;
                let cut: Vec<u64> = state
                    .links
                    .iter()
                    .filter(|(_, l)| l.broker == *id)
                    .map(|(k, _)| *k)
                    .collect();
                for k in cut {
                    if let Some(link) = state.links.remove(&k) {
                        link.close();
                    }
                }
            }
            Step::Freeze(id) => {
                let i = state.index(*id);
                state.faults[i].frozen = true;
            }
            Step::Delay(id, d) => {
                let i = state.index(*id);
                state.faults[i].delay = *d;
            }
            Step::Throttle(id, t) => {
                let i = state.index(*id);
                state.faults[i].throttle = *t;
            }
            Step::Restore(id) => {
                let i = state.index(*id);
                state.faults[i] = BrokerFaults::default();
            }
            Step::MoveLeader(topic, partition, to) => {
                state.index(*to);
                let epoch = state.placement(topic, *partition).epoch + 1;
                state.placed.insert(
                    (topic.clone(), *partition),
                    Placement { leader: *to, epoch },
                );
            }
            Step::MoveCoordinator(to) => {
                state.index(*to);
                state.coordinator = *to;
            }
        }
        self.changed.notify_all();
    }

    /// Waits until the request just read on `link` may be forwarded: the broker is not
    /// frozen, and no throttle mutes the connection. While the broker throttles, requests go
    /// one at a time (the previous answer delivered first), so each waits out the mute of the
    /// answer before it, as on a KIP-219 broker. False when the link was closed meanwhile.
    fn hold_request(&self, link: u64, broker: BrokerId) -> bool {
        self.wait(|state| {
            let l = state.links.get(&link)?;
            let faults = state.faults[state.index(broker)];
            let now = Instant::now();
            let throttling = !faults.throttle.is_zero() || l.muted_until > now;
            Some(if faults.frozen || throttling && l.outstanding > 0 {
                Wait::Changed
            } else if l.muted_until > now {
                Wait::Until(l.muted_until)
            } else {
                Wait::Go
            })
        })
    }

    /// Waits until an answer to a request read at `read_at` may be delivered on `link`: the
    /// broker is not frozen, and its delay has passed since the request was read. False when
    /// the link was closed meanwhile.
    fn hold_answer(&self, link: u64, broker: BrokerId, read_at: Instant) -> bool {
        self.wait(|state| {
            state.links.get(&link)?;
            let faults = state.faults[state.index(broker)];
            let until = read_at + faults.delay;
            Some(if faults.frozen {
                Wait::Changed
            } else if Instant::now() < until {
                Wait::Until(until)
            } else {
                Wait::Go
            })
        })
    }

    /// Re-evaluates `check` on every change until it says go (true) or the link is gone
    /// (`None`: false).
    fn wait(&self, check: impl Fn(&State) -> Option<Wait>) -> bool {
        let mut state = self.lock();
        loop {
            let timeout = match check(&state) {
                None => return false,
                Some(Wait::Go) => return true,
                // Woken by a change; the hour is only a bound on a lost notification.
                Some(Wait::Changed) => Duration::from_secs(3600),
                Some(Wait::Until(t)) => t.saturating_duration_since(Instant::now()),
            };
            state = self
                .changed
                .wait_timeout(state, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn close_link(&self, link: u64) {
        let mut state = self.lock();
        if let Some(l) = state.links.remove(&link) {
            l.close();
        }
        self.changed.notify_all();
    }

    fn error(&self, broker: BrokerId, what: String) {
        let what = format!("cluster broker {broker}: {what}");
        eprintln!("{what}");
        self.lock().errors.push(what);
    }
}

// ------------------------------------------------------------------------------------
// Threads

fn accept_loop(id: BrokerId, listener: &TcpListener, shared: &Arc<Shared>) {
    /// How long a broker port waits for tansu to accept a connection.
    const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    for client in listener.incoming() {
        let cut = {
            let mut state = shared.lock();
            if state.stopping {
                return;
            }
            let i = state.index(id);
            state.accepted[i] += 1;
            state.faults[i].cut
        };
        let Ok(client) = client else {
            // Out of descriptors or a connection reset while queued: don't spin.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        if cut {
            drop(client); // Unreachable: the client sees the connection closed.
            continue;
        }
        let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, UPSTREAM_CONNECT_TIMEOUT)
        else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (Ok(client_handle), Ok(upstream_handle)) = (client.try_clone(), upstream.try_clone())
        else {
            continue;
        };
        let mut state = shared.lock();
        let i = state.index(id);
        // A cut (or a drop) may have come while we were connecting upstream.
        if state.faults[i].cut || state.stopping {
            continue;
        }
        let link = state.next_link;
        state.next_link += 1;
        state.links.insert(
            link,
            Link {
                broker: id,
                client: client_handle,
                upstream: upstream_handle,
                outstanding: 0,
                muted_until: Instant::now(),
            },
        );
        state.threads.retain(|t| !t.is_finished());
        let (Ok(client_writer), Ok(upstream_reader)) = (client.try_clone(), upstream.try_clone())
        else {
            if let Some(l) = state.links.remove(&link) {
                l.close();
            }
            continue;
        };
        let (queue, entries) = mpsc::channel();
        let reader = {
            let shared = Arc::clone(shared);
            thread::Builder::new()
                .name(format!("cluster-broker-{id}-link-{link}-requests"))
                .spawn(move || read_requests(id, link, client, upstream, &queue, &shared))
                .expect("spawn a connection thread")
        };
        let writer = {
            let shared = Arc::clone(shared);
            thread::Builder::new()
                .name(format!("cluster-broker-{id}-link-{link}-answers"))
                .spawn(move || {
                    write_answers(id, link, &entries, upstream_reader, client_writer, &shared)
                })
                .expect("spawn a connection thread")
        };
        state.threads.extend([reader, writer]);
    }
}

/// The request side of one client connection of broker `id`: reads each request, routes
/// it, forwards it to tansu or queues the proxy's own answer. Requests are pipelined as the
/// client sends them (answers keep their order through the queue), except while the broker
/// throttles.
fn read_requests(
    id: BrokerId,
    link: u64,
    mut client: TcpStream,
    mut upstream: TcpStream,
    queue: &mpsc::Sender<Entry>,
    shared: &Shared,
) {
    while let Some(request) = read_frame(&mut client) {
        let read_at = Instant::now();
        let Some((key, version)) = rewrite::api_of(&request) else {
            break;
        };
        {
            let mut state = shared.lock();
            *state.requests.entry((id, key)).or_default() += 1;
            state.versions.insert((key, version));
        }
        if !shared.hold_request(link, id) {
            break;
        }
        let snap = shared.lock().snapshot(id);
        if let Some(groups) = &shared.groups
            && snap.me == snap.coordinator
            && groups::Coordinator::handles(key)
        {
            let alive = || {
                let state = shared.lock();
                !state.stopping && state.links.contains_key(&link)
            };
            let answer = match groups.handle(&request, key, version, snap.throttle_ms, &alive) {
                Ok(groups::Handled::Answer(frame)) => Answer::Local(frame, snap.throttle_ms),
                Ok(groups::Handled::Forward(frame)) => {
                    if upstream.write_all(&frame).is_err() {
                        break;
                    }
                    Answer::Upstream(rewrite::Pending::forwarded(key, version))
                }
                Err(e) => {
                    shared.error(id, e);
                    break;
                }
            };
            match shared.lock().links.get_mut(&link) {
                Some(l) => l.outstanding += 1,
                None => break,
            }
            if queue
                .send(Entry {
                    key,
                    read_at,
                    answer,
                })
                .is_err()
            {
                break;
            }
            continue;
        }
        let routed = match rewrite::route(&request, &snap) {
            Ok(routed) => routed,
            Err(e) => {
                shared.error(id, e);
                break;
            }
        };
        let answer = match routed.route {
            Route::Drop => None,
            Route::ForwardOnly(frame) => {
                if upstream.write_all(&frame).is_err() {
                    break;
                }
                None
            }
            Route::Answer(frame) => Some(Answer::Local(frame, snap.throttle_ms)),
            Route::Forward { frame, pending } => {
                if upstream.write_all(&frame).is_err() {
                    break;
                }
                Some(Answer::Upstream(pending))
            }
        };
        let mut state = shared.lock();
        for code in routed.injected {
            *state.injected.entry((id, key, code)).or_default() += 1;
        }
        let Some(answer) = answer else { continue };
        match state.links.get_mut(&link) {
            Some(l) => l.outstanding += 1,
            None => break,
        }
        drop(state);
        if queue
            .send(Entry {
                key,
                read_at,
                answer,
            })
            .is_err()
        {
            break;
        }
    }
    shared.close_link(link);
}

/// The answer side of one client connection of broker `id`: takes the queued requests in
/// order, reads tansu's answer to each forwarded one and rewrites it, holds each answer for
/// the broker's delay, delivers it, and mutes the connection after a throttled answer.
fn write_answers(
    id: BrokerId,
    link: u64,
    entries: &mpsc::Receiver<Entry>,
    mut upstream: TcpStream,
    mut client: TcpStream,
    shared: &Shared,
) {
    while let Ok(entry) = entries.recv() {
        // The answer, and the throttle it carries.
        let (answer, throttle) = match entry.answer {
            Answer::Local(frame, throttle) => (frame, throttle),
            Answer::Upstream(pending) => {
                let Some(answer) = read_frame(&mut upstream) else {
                    break;
                };
                // Leadership and faults as they are when tansu answers.
                let snap = shared.lock().snapshot(id);
                match rewrite::rewrite(&answer, &pending, &snap) {
                    Ok(r) => (r.frame, if r.throttled { snap.throttle_ms } else { 0 }),
                    Err(e) => {
                        shared.error(id, e);
                        break;
                    }
                }
            }
        };
        if !shared.hold_answer(link, id, entry.read_at) {
            break;
        }
        // Counted before the write, so a test that has the answer sees it counted.
        {
            let mut state = shared.lock();
            *state.answers.entry((id, entry.key)).or_default() += 1;
            let now = Instant::now();
            let gap = state
                .answer_gaps
                .entry(entry.key)
                .or_insert((now, Duration::ZERO, now));
            if now - gap.0 > gap.1 {
                *gap = (now, now - gap.0, gap.0);
            } else {
                gap.0 = now;
            }
            if throttle > 0 {
                let i = state.index(id);
                state.throttled[i] += 1;
            }
        }
        if client.write_all(&answer).is_err() {
            break;
        }
        let mut state = shared.lock();
        let Some(l) = state.links.get_mut(&link) else {
            break;
        };
        l.outstanding -= 1;
        if throttle > 0 {
            l.muted_until = Instant::now() + Duration::from_millis(throttle as u64);
        }
        shared.changed.notify_all();
    }
    shared.close_link(link);
}

/// One whole Kafka frame (its 4-byte size included); `None` at end of stream or error.
fn read_frame(from: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    from.read_exact(&mut size).ok()?;
    let len = usize::try_from(i32::from_be_bytes(size)).ok()?;
    let mut frame = vec![0u8; 4 + len];
    frame[..4].copy_from_slice(&size);
    from.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}
