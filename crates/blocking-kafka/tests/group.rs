//! Static membership (KIP-345) and cooperative rebalancing (KIP-429), the client alone,
//! through its public API, against kafka-testkit's cluster keeping groups by Kafka's rules
//! (`Cluster::start_with_kafka_groups`: the join barrier, protocol selection by vote,
//! FENCED_INSTANCE_ID; tansu 0.6 has none of them, see the crate's README "Groups"), and
//! with librdkafka in the same group.
//!
//! Broker behaviour each test relies on is named in its comment.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use blocking_kafka::{
    Assignor, BackoffSettings, Consumer, ConsumerSettings, GroupSignal, KafkaError, Partition,
    StartFrom,
};
use crossbeam_channel as channel;
use kafka_testkit::cluster::{Cluster, GroupState, INITIAL_REBALANCE_DELAY, KAFKA_2_1};
use kafka_testkit::member::LibrdkafkaMember;
use kafka_testkit::wait_until;

const TOPIC: &str = "group-topic";
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A rebalance: the initial delay, every member noticing (a heartbeat interval), two
/// rounds for a cooperative one. Generous for a loaded 2-core machine.
const SETTLE: Duration = Duration::from_secs(30);

fn settings(cluster: &Cluster, group: &str, assignors: &[Assignor]) -> ConsumerSettings {
    settings_at(&cluster.bootstrap(), group, assignors)
}

fn settings_at(bootstrap: &str, group: &str, assignors: &[Assignor]) -> ConsumerSettings {
    ConsumerSettings {
        bootstrap: vec![bootstrap.to_owned()],
        client_id: format!("group-test-{group}"),
        group_id: group.to_owned(),
        group_instance_id: None,
        assignors: assignors.to_vec(),
        topic: TOPIC.to_owned(),
        session_timeout: SESSION_TIMEOUT,
        rebalance_timeout: SESSION_TIMEOUT,
        heartbeat_interval: HEARTBEAT_INTERVAL,
        fetch_max_wait: Duration::from_millis(100),
        request_timeout: REQUEST_TIMEOUT,
        connect_timeout: REQUEST_TIMEOUT,
        retry_backoff: BackoffSettings::RETRY,
        reconnect_backoff: BackoffSettings::RECONNECT,
        start_from: StartFrom::Earliest,
        security: Default::default(),
        record_limits: Default::default(),
    }
}

fn cluster(partitions: i32) -> Cluster {
    let cluster = Cluster::start_with_kafka_groups(1, INITIAL_REBALANCE_DELAY);
    cluster.create_topic(TOPIC, partitions);
    cluster
}

// ------------------------------------------------------------------------------------
// Cooperative rebalancing

/// Kafka's barrier and vote: three members offering cooperative-sticky split six
/// partitions; a fourth joins and each partition that moves reaches it only after its owner
/// gave it up, while the partitions that stay are never revoked (no member is told to
/// revoke everything).
#[test]
fn a_member_joining_a_cooperative_group_takes_partitions_only_from_where_they_move() {
    let cluster = cluster(6);
    let view = Arc::new(View::default());
    let s = settings(&cluster, "coop", &Assignor::DEFAULT);
    let members: Vec<Ours> = ["a", "b", "c"]
        .iter()
        .map(|n| Ours::start(n, s.clone(), &view))
        .collect();
    let before = wait_until("a, b and c to own two partitions each", SETTLE, || {
        let owned = view.owned();
        (owned.len() == 3 && owned.values().all(|o| o.len() == 2)).then_some(owned)
    });
    let d = Ours::start("d", s, &view);
    let after = wait_until("d to own a share", SETTLE, || {
        let owned = view.owned();
        let total: usize = owned.values().map(BTreeSet::len).sum();
        (owned.get("d").is_some_and(|o| !o.is_empty()) && total == 6).then_some(owned)
    });
    eprintln!("before {before:?}\nafter {after:?}");
    view.check();
    let state = view.state();
    for name in ["a", "b", "c"] {
        assert!(
            !state.rejoins.contains_key(name),
            "{name} was told to revoke everything: {:?}",
            state.rejoins
        );
        // What it kept, it was never told to revoke.
        let kept: BTreeSet<Partition> = before[name].intersection(&after[name]).copied().collect();
        let revoked: BTreeSet<Partition> = state
            .revoked
            .get(name)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        assert!(
            kept.is_disjoint(&revoked),
            "{name} kept {kept:?} revoked {revoked:?}"
        );
        assert!(!kept.is_empty());
    }
    assert!(
        state
            .protocols
            .iter()
            .all(|p| *p == Assignor::CooperativeSticky),
        "{:?}",
        state.protocols
    );
    drop(state);
    for m in members {
        m.leave();
    }
    d.leave();
}

/// Kafka's vote: a group whose member offers only range uses range (eager: everyone
/// revokes everything), and once that member is gone and every member offers
/// cooperative-sticky first, the group moves to it.
#[test]
fn a_group_moves_from_range_to_cooperative_sticky_once_every_member_offers_it() {
    let cluster = cluster(4);
    let view = Arc::new(View::default());
    let old = Ours::start(
        "old",
        settings(&cluster, "upgrade", &[Assignor::Range]),
        &view,
    );
    let new = Ours::start(
        "new",
        settings(&cluster, "upgrade", &Assignor::DEFAULT),
        &view,
    );
    wait_until("old and new to split the topic", SETTLE, || {
        let owned = view.owned();
        (owned.len() == 2 && owned.values().all(|o| o.len() == 2)).then_some(())
    });
    assert_eq!(
        view.state().last_protocol.get("new"),
        Some(&Assignor::Range)
    );
    old.leave();
    let upgraded = Ours::start(
        "upgraded",
        settings(&cluster, "upgrade", &Assignor::DEFAULT),
        &view,
    );
    wait_until("the group to be on cooperative-sticky", SETTLE, || {
        let state = view.state();
        (state.last_protocol.get("upgraded") == Some(&Assignor::CooperativeSticky)
            && state.owned.get("upgraded").is_some_and(|o| o.len() == 2))
        .then_some(())
    });
    view.check();
    new.leave();
    upgraded.leave();
}

// ------------------------------------------------------------------------------------
// Static membership

/// Kafka's KIP-345: a static member that comes back within its session (a new process:
/// no member id, nothing owned) is given its old partitions under a new member id, and the
/// group does not rebalance: its generation stays, the other member hears nothing.
#[test]
fn a_static_member_back_within_its_session_gets_its_partitions_without_a_rebalance() {
    let cluster = cluster(4);
    let view = Arc::new(View::default());
    let mut sa = settings(&cluster, "static", &Assignor::DEFAULT);
    sa.group_instance_id = Some("host-a".into());
    let mut sb = sa.clone();
    sb.group_instance_id = Some("host-b".into());
    let a = Ours::start("a", sa.clone(), &view);
    let b = Ours::start("b", sb, &view);
    let owned = wait_until("a and b to split the topic", SETTLE, || {
        let owned = view.owned();
        (owned.len() == 2 && owned.values().all(|o| o.len() == 2)).then_some(owned)
    });
    let (generation, state) = cluster.group("static").expect("the group");
    assert_eq!(state, GroupState::Stable);
    let b_signals = view.signals("b");

    // A process that dies: its consumer is dropped, sends no LeaveGroup.
    a.stop();
    let a = Ours::start("a-again", sa, &view);
    wait_until("a's partitions back", SETTLE, || {
        (view.owned().get("a-again") == owned.get("a")).then_some(())
    });
    assert_eq!(
        cluster.group("static"),
        Some((generation, GroupState::Stable))
    );
    assert_eq!(view.signals("b"), b_signals, "b heard of no rebalance");
    view.check();
    a.stop();
    b.stop();
}

/// Kafka's KIP-345: a second process with the same group.instance.id takes the place;
/// the first is fenced, and hears it as a fatal error naming the id.
#[test]
fn a_second_consumer_with_the_same_instance_id_fences_the_first() {
    let cluster = cluster(2);
    let view = Arc::new(View::default());
    let mut s = settings(&cluster, "twins", &Assignor::DEFAULT);
    s.group_instance_id = Some("twin".into());
    let first = Ours::start("first", s.clone(), &view);
    wait_until("first to own the topic", SETTLE, || {
        (view.owned().get("first").map(BTreeSet::len) == Some(2)).then_some(())
    });
    let second = Ours::start("second", s, &view);
    let fatal = wait_until("first to be fenced", SETTLE, || {
        view.state().fatal.get("first").cloned()
    });
    assert!(
        fatal.contains("\"twin\"") && fatal.contains("FENCED_INSTANCE_ID"),
        "{fatal}"
    );
    wait_until("second to own the topic", SETTLE, || {
        (view.owned().get("second").map(BTreeSet::len) == Some(2)).then_some(())
    });
    first.stop();
    second.stop();
}

/// A broker before Kafka 2.3 (JoinGroup below v5) cannot hold a static member: the join
/// is refused at once with a sentence naming the broker's version and the setting.
#[test]
fn static_membership_on_a_kafka_2_1_broker_is_refused_with_a_clear_error() {
    let cluster = cluster(1);
    cluster.cap_versions(KAFKA_2_1);
    let mut s = settings(&cluster, "old-broker", &Assignor::DEFAULT);
    s.group_instance_id = Some("host-a".into());
    let mut consumer = connected(s);
    let err = consumer.join().expect_err("a static member on Kafka 2.1");
    assert!(
        matches!(
            err,
            KafkaError::StaticMembershipUnsupported { join_group: 3, .. }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("Kafka 2.3") && text.contains("KAFKA_GROUP_INSTANCE_ID"),
        "{text}"
    );
    assert!(err.is_fatal());
}

// ------------------------------------------------------------------------------------
// Protocol mismatch

/// Kafka's INCONSISTENT_GROUP_PROTOCOL, and DescribeGroups naming a stable group's
/// protocol: a group of librdkafka members on roundrobin has no room for a member offering
/// cooperative-sticky and range, and the refusal names both.
#[test]
fn a_group_on_a_strategy_we_do_not_offer_is_refused_naming_both() {
    let cluster = cluster(2);
    let other = LibrdkafkaMember::start(
        "librdkafka",
        &cluster.bootstrap(),
        "roundrobin",
        TOPIC,
        &[("partition.assignment.strategy", "roundrobin")],
        Duration::ZERO,
    );
    other.wait_for("its partitions", SETTLE, |m| m.owned().len() == 2);
    let mut consumer = connected(settings(&cluster, "roundrobin", &Assignor::DEFAULT));
    let err = consumer.join().expect_err("a group on roundrobin");
    let text = err.to_string();
    assert!(
        matches!(&err, KafkaError::GroupProtocol { group_uses: Some(r), .. } if r == "roundrobin"),
        "{err:?}"
    );
    assert!(
        text.contains("roundrobin") && text.contains("cooperative-sticky,range"),
        "{text}"
    );
    assert!(err.is_fatal());
    drop(other);
}

/// The same on tansu alone, which answers INCONSISTENT_GROUP_PROTOCOL with the group's
/// protocol in the JoinGroup answer (its DescribeGroups names none): still both named.
#[test]
fn on_tansu_too_a_group_on_a_strategy_we_do_not_offer_is_refused_naming_both() {
    let broker = kafka_testkit::Broker::start();
    broker.create_topic(TOPIC, 1);
    let other = LibrdkafkaMember::start(
        "librdkafka",
        &broker.addr(),
        "rr",
        TOPIC,
        &[("partition.assignment.strategy", "roundrobin")],
        Duration::ZERO,
    );
    other.wait_for("its partition", SETTLE, |m| m.owned().len() == 1);
    let mut consumer = connected(settings_at(&broker.addr(), "rr", &Assignor::DEFAULT));
    let err = consumer.join().expect_err("a group on roundrobin");
    let text = err.to_string();
    assert!(
        text.contains("roundrobin") && text.contains("cooperative-sticky,range"),
        "{text}"
    );
    drop(other);
}

fn connected(settings: ConsumerSettings) -> Consumer {
    let mut consumer = Consumer::new(settings);
    let deadline = Instant::now() + Duration::from_secs(10);
    let ok = consumer
        .connect(deadline, &|wait| {
            thread::sleep(wait);
            false
        })
        .expect("connect");
    assert!(ok);
    consumer
}

// ------------------------------------------------------------------------------------
// Harness: members on threads, what they were told in one view

/// What the members were told, recorded under one lock in the order it happened.
#[derive(Default)]
struct View {
    state: Mutex<ViewState>,
}

#[derive(Default, Clone)]
struct ViewState {
    owned: BTreeMap<&'static str, BTreeSet<Partition>>,
    /// Eager signals (revoke everything), by member.
    rejoins: BTreeMap<&'static str, Vec<String>>,
    /// Partitions taken away by cooperative rounds, by member.
    revoked: BTreeMap<&'static str, Vec<Partition>>,
    /// Every signal other than Fine/NotDue, by member, as text.
    signals: BTreeMap<&'static str, Vec<String>>,
    protocols: Vec<Assignor>,
    last_protocol: BTreeMap<&'static str, Assignor>,
    overlaps: Vec<String>,
    fatal: BTreeMap<&'static str, String>,
}

impl View {
    fn state(&self) -> std::sync::MutexGuard<'_, ViewState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn owned(&self) -> BTreeMap<&'static str, BTreeSet<Partition>> {
        self.state()
            .owned
            .iter()
            .filter(|(_, o)| !o.is_empty())
            .map(|(n, o)| (*n, o.clone()))
            .collect()
    }

    fn signals(&self, name: &str) -> Vec<String> {
        self.state().signals.get(name).cloned().unwrap_or_default()
    }

    fn gained(&self, name: &'static str, partitions: &[Partition], protocol: Assignor) {
        let mut state = self.state();
        let mine: BTreeSet<Partition> = partitions.iter().copied().collect();
        let clashes: Vec<String> = state
            .owned
            .iter()
            .filter(|(other, theirs)| **other != name && !theirs.is_disjoint(&mine))
            .map(|(other, theirs)| format!("{name} got {mine:?} while {other} owned {theirs:?}"))
            .collect();
        state.overlaps.extend(clashes);
        state.owned.entry(name).or_default().extend(mine);
        state.protocols.push(protocol);
        state.last_protocol.insert(name, protocol);
    }

    fn lost(&self, name: &'static str, partitions: &[Partition]) {
        let mut state = self.state();
        let owned = state.owned.entry(name).or_default();
        for p in partitions {
            owned.remove(p);
        }
    }

    fn check(&self) {
        let state = self.state();
        assert!(state.overlaps.is_empty(), "{:?}", state.overlaps);
    }
}

enum Cmd {
    /// Drop the consumer without leaving (a process that dies).
    Stop,
    /// Leave the group, then stop.
    Leave,
}

struct Ours {
    commands: channel::Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
}

impl Ours {
    fn start(name: &'static str, settings: ConsumerSettings, view: &Arc<View>) -> Ours {
        let (commands, rx) = channel::unbounded();
        let view = Arc::clone(view);
        let thread = thread::Builder::new()
            .name(format!("member-{name}"))
            .spawn(move || run(name, settings, &rx, &view))
            .expect("spawn a member");
        Ours {
            commands,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        let _ = self.commands.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            t.join().expect("a member panicked");
        }
    }

    fn leave(mut self) {
        let _ = self.commands.send(Cmd::Leave);
        if let Some(t) = self.thread.take() {
            t.join().expect("a member panicked");
        }
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        let _ = self.commands.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A member's loop: joins, and follows the group as a caller must: an eager rebalance
/// revokes everything and joins again; a cooperative change is applied (partitions taken
/// away are let go at once, nothing being in flight here).
fn run(
    name: &'static str,
    settings: ConsumerSettings,
    commands: &channel::Receiver<Cmd>,
    view: &View,
) {
    let mut consumer = connected(settings);
    let mut must_join = true;
    loop {
        if must_join {
            let owned: Vec<Partition> = view
                .state()
                .owned
                .get(name)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            view.lost(name, &owned);
            consumer.revoke();
            match consumer.join() {
                Ok(a) => {
                    let mine: Vec<Partition> = a.partitions.iter().map(|(p, _)| *p).collect();
                    view.gained(name, &mine, a.protocol);
                    must_join = false;
                }
                Err(e) if e.is_fatal() => {
                    view.state().fatal.insert(name, e.to_string());
                    return;
                }
                Err(e) => {
                    eprintln!("member {name}: joining: {e}");
                    continue;
                }
            }
        }
        match commands.try_recv() {
            // The process is gone: what it owned is nobody's until the group says.
            Ok(Cmd::Stop) | Err(channel::TryRecvError::Disconnected) => {
                let owned: Vec<Partition> = view
                    .state()
                    .owned
                    .get(name)
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect();
                view.lost(name, &owned);
                return;
            }
            Ok(Cmd::Leave) => {
                let owned: Vec<Partition> = view
                    .state()
                    .owned
                    .get(name)
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect();
                view.lost(name, &owned);
                let _ = consumer.leave();
                return;
            }
            Err(channel::TryRecvError::Empty) => {}
        }
        match consumer.heartbeat() {
            Ok(GroupSignal::Fine | GroupSignal::NotDue) => {}
            Ok(GroupSignal::Rejoin(why)) => {
                let mut state = view.state();
                state.rejoins.entry(name).or_default().push(why.to_owned());
                state
                    .signals
                    .entry(name)
                    .or_default()
                    .push(format!("rejoin: {why}"));
                drop(state);
                must_join = true;
                continue;
            }
            Ok(GroupSignal::Changed(change)) => {
                {
                    let mut state = view.state();
                    state
                        .signals
                        .entry(name)
                        .or_default()
                        .push(format!("{change:?}"));
                    state
                        .revoked
                        .entry(name)
                        .or_default()
                        .extend(&change.revoked);
                }
                view.lost(name, &change.revoked);
                consumer.revoked(&change.revoked);
                let added: Vec<Partition> = change.added.iter().map(|(p, _)| *p).collect();
                view.gained(name, &added, change.protocol);
            }
            Err(e) if e.is_fatal() => {
                view.state().fatal.insert(name, e.to_string());
                return;
            }
            Err(e) => eprintln!("member {name}: heartbeat: {e}"),
        }
        let _ = consumer.fetch();
        if let Ok(event) = consumer.events().recv_timeout(Duration::from_millis(50)) {
            consumer.handle(event);
        }
    }
}
