//! The worker in a group that changes (issue 19), on kafka-testkit's cluster keeping
//! consumer groups by Kafka's rules (`Cluster::start_with_kafka_groups`; tansu 0.6's own
//! groups have no join barrier, never fence a static member and choose a group's assignor
//! once: see README "Guarantees"):
//!
//! - (a) three workers at a 2 s provisioning delay, a fourth joins: with cooperative-sticky
//!   the partitions that do not move show no gap in claims longer than 0.5 s and no
//!   request is interrupted or repeated; the same run with range (eager) is the reference.
//!   Each prints the longest gap per partition, the row README's Performance section
//!   quotes.
//! - (b) a static member killed with SIGKILL and restarted within the session timeout gets
//!   the same partitions back, and the group does not rebalance (its generation stays; the
//!   other workers revoke and get nothing).
//! - (c) librdkafka (cooperative-sticky) and the worker in one group split the partitions
//!   and hand them over when either leaves: every request handled once, by one of them.
//! - (d) FENCED_INSTANCE_ID and a group on a strategy the worker does not offer stop it
//!   with exit code 1 and a sentence naming the id, or both strategies.
//!
//! Each test produces one request to every partition every 100 ms straight to tansu and
//! reads, from triggers in the database, when the worker made each `provisioning`. They
//! run one at a time: two on the same two cores would measure each other.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{TempDb, WorkerProcess, wait_until};
use kafka_testkit::cluster::{ApiKey, Cluster, GroupState, INITIAL_REBALANCE_DELAY};
use kafka_testkit::member::LibrdkafkaMember;
use rustfs_kafka::producer::{Producer, Record, RequiredAcks};

const TOPIC: &str = "requests";
const GROUP: &str = "group-test";
const PARTITIONS: i32 = 6;
/// One request to every partition this often.
const EVERY: Duration = Duration::from_millis(100);
/// The issue's bar for partitions that do not move in a cooperative rebalance.
const NO_GAP: Duration = Duration::from_millis(500);
const JOIN: Duration = Duration::from_secs(60);
/// How long the requests of a run may take to be provisioned once producing stops.
const DRAIN: Duration = Duration::from_secs(60);

static SERIAL: Mutex<()> = Mutex::new(());

// ------------------------------------------------------------------------------------
// (a) a fourth worker joins

#[test]
fn a_fourth_worker_joining_a_cooperative_group_stops_only_the_partitions_that_move() {
    let run = GapRun::run("cooperative-sticky,range");
    let still = run.unmoved();
    assert!(
        !still.is_empty(),
        "some partitions stay put: {:?}",
        run.moved
    );
    for p in &still {
        let gap = run.gaps[p];
        assert!(
            gap <= NO_GAP,
            "p{p} did not move, yet went {gap:?} without a claim (before the fourth worker \
             came, with no rebalance, its longest gap was {:?}: a busy machine shows there)\n{}",
            run.before_gaps[p],
            run.table_row()
        );
    }
    // Nothing interrupted: the partitions that stay never drained, and what moved finished
    // its in-flight work before it went.
    for w in &run.workers {
        assert_eq!(w.count_lines("still unfinished"), 0);
        assert_eq!(
            w.count_lines("Rebalance (cooperative"),
            w.count_lines("Partitions revoked")
        );
    }
    run.assert_each_claimed_once();
}

/// The reference: the same with the eager protocol (range), every partition stops.
#[test]
fn a_fourth_worker_joining_an_eager_group_stops_every_partition() {
    let run = GapRun::run("range");
    run.assert_each_claimed_once();
    // Every worker revoked everything.
    for w in &run.workers[..3] {
        assert!(w.count_lines("Partitions revoked") >= 1);
    }
}

/// One run of (a): the workers, and the longest gap between claims of each partition.
struct GapRun {
    strategy: &'static str,
    workers: Vec<WorkerProcess>,
    /// Partitions that went to the fourth worker.
    moved: BTreeSet<i32>,
    gaps: BTreeMap<i32, Duration>,
    /// When each partition's longest gap began, in seconds after the fourth worker started.
    gap_at: BTreeMap<i32, f64>,
    /// The producer's own longest pause between two sends: no claim gap can be shorter.
    producer_pause: Duration,
    /// The cluster's longest pause between Fetch answers after the fourth worker started,
    /// and when it began (seconds after the fourth worker's start).
    fetch_pause: (Duration, f64),
    /// Each partition's longest gap among requests sent before the fourth worker started:
    /// what the machine does to claims with no rebalance at all.
    before_gaps: BTreeMap<i32, Duration>,
    claims: HashMap<String, (f64, usize)>,
    sent: Vec<(String, i32, f64)>,
    _cluster: Cluster,
    _dbs: Vec<TempDb>,
    _serial: MutexGuard<'static, ()>,
}

impl GapRun {
    fn run(strategy: &'static str) -> GapRun {
        let serial = serial();
        let cluster = Cluster::start_with_kafka_groups(1, INITIAL_REBALANCE_DELAY);
        cluster.create_topic(TOPIC, PARTITIONS);
        // A database per worker, as on hosts of their own, in RAM: the gaps measured are
        // the group's, not those of four processes taking turns at one SQLite file's lock,
        // nor of the shared machine's disk (other work's writes held every worker's claims
        // and commits back at once, for 0.2-1.7 s, while the cluster's Fetch answers flowed).
        let dbs: Vec<TempDb> = (0..4).map(|_| TempDb::in_ram()).collect();
        for db in &dbs {
            install_audit(db);
        }
        let all_claims = || {
            let mut all: HashMap<String, (f64, usize)> = HashMap::new();
            for db in &dbs {
                for (id, (at, n)) in provisioning_times(db) {
                    let e = all.entry(id).or_insert((at, 0));
                    e.0 = e.0.min(at);
                    e.1 += n;
                }
            }
            all
        };
        let settings = [
            ("KAFKA_PARTITION_ASSIGNMENT_STRATEGY", strategy),
            ("MOCK_PROVISION_DELAY_SECONDS", "2"),
            // 10 requests a second per partition, 2 s each: ~20 in flight per partition.
            ("WORKER_THREADS", "64"),
        ];
        let mut workers: Vec<WorkerProcess> = dbs[..3]
            .iter()
            .map(|db| worker(&cluster.bootstrap(), db, &settings))
            .collect();
        wait_gently("three workers to own two partitions each", JOIN, || {
            let owned: Vec<BTreeSet<i32>> = workers.iter().map(owned_by).collect();
            owned.iter().all(|o| o.len() == 2).then_some(())
        });
        let producing = Producing::start(&cluster);
        // Every partition flows before the fourth worker comes.
        let warm = Instant::now();
        wait_until(
            "every partition to be provisioned",
            Duration::from_secs(30),
            || {
                let claims = all_claims();
                let flowing: BTreeSet<i32> = claims.keys().map(|id| partition_of(id)).collect();
                (flowing.len() == PARTITIONS as usize && warm.elapsed() > Duration::from_secs(3))
                    .then_some(())
            },
        );
        let fourth_at = now_ms();
        let fourth_instant = Instant::now();
        cluster.reset_answer_gaps();
        workers.push(worker(&cluster.bootstrap(), &dbs[3], &settings));
        let moved = wait_gently("the fourth worker to own a share", JOIN, || {
            let owned: Vec<BTreeSet<i32>> = workers.iter().map(owned_by).collect();
            let total: usize = owned.iter().map(BTreeSet::len).sum();
            let union: BTreeSet<i32> = owned.iter().flatten().copied().collect();
            (owned[3].len() == 1 && total == PARTITIONS as usize && union.len() == total)
                .then(|| owned[3].clone())
        });
        // A little more, so every partition shows how it flows after the rebalance.
        thread::sleep(Duration::from_secs(4));
        let sent = producing.stop();
        let claims = wait_gently("every request to be provisioned", DRAIN, || {
            let claims = all_claims();
            sent.iter()
                .all(|(id, _, _)| claims.contains_key(id))
                .then_some(claims)
        });
        wait_gently("every request to be completed", DRAIN, || {
            let completed: i64 = dbs
                .iter()
                .map(|db| db.count_by_status().get("completed").copied().unwrap_or(0))
                .sum();
            (completed >= sent.len() as i64).then_some(())
        });
        let mut gaps = BTreeMap::new();
        let mut gap_at = BTreeMap::new();
        let mut before_gaps = BTreeMap::new();
        for p in 0..PARTITIONS {
            let mut before: Vec<f64> = sent
                .iter()
                .filter(|(_, q, at)| *q == p && *at < fourth_at)
                .filter_map(|(id, _, _)| claims.get(id).map(|(t, _)| *t))
                .collect();
            before.sort_by(f64::total_cmp);
            let longest = before.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
            before_gaps.insert(p, Duration::from_secs_f64(longest / 1000.0));
            let mut at: Vec<f64> = sent
                .iter()
                .filter(|(_, q, _)| *q == p)
                .filter_map(|(id, _, _)| claims.get(id).map(|(t, _)| *t))
                .collect();
            at.sort_by(f64::total_cmp);
            let (gap, from) = at
                .windows(2)
                .map(|w| (w[1] - w[0], w[0]))
                .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
            gaps.insert(p, Duration::from_secs_f64(gap / 1000.0));
            gap_at.insert(p, (from - fourth_at) / 1000.0);
        }
        // The producer's own longest pause: a gap in claims no worker could have closed.
        let mut sends: Vec<f64> = sent.iter().map(|(_, _, t)| *t).collect();
        sends.sort_by(f64::total_cmp);
        let (pause, pause_from) = sends
            .windows(2)
            .map(|w| (w[1] - w[0], w[0]))
            .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
        let producer_pause = Duration::from_secs_f64(pause / 1000.0);
        // The cluster's own longest pause between Fetch answers (to any worker).
        let fetch_pause = cluster
            .longest_answer_gap(ApiKey::Fetch)
            .map(|(gap, began)| {
                let at = began
                    .saturating_duration_since(fourth_instant)
                    .as_secs_f64()
                    - fourth_instant
                        .saturating_duration_since(began)
                        .as_secs_f64();
                (gap, at)
            })
            .unwrap_or_default();
        eprintln!(
            "the producer's longest pause: {:.2} s at {:+.1} s",
            pause / 1000.0,
            (pause_from - fourth_at) / 1000.0
        );
        let run = GapRun {
            strategy,
            workers,
            moved,
            gaps,
            gap_at,
            producer_pause,
            fetch_pause,
            before_gaps,
            claims,
            sent,
            _cluster: cluster,
            _dbs: dbs,
            _serial: serial,
        };
        eprintln!("{}", run.table_row());
        run
    }

    fn unmoved(&self) -> Vec<i32> {
        (0..PARTITIONS)
            .filter(|p| !self.moved.contains(p))
            .collect()
    }

    /// "| cooperative-sticky | 0.21 / 0.20 / ... s | moved: [5] |": README's row.
    fn table_row(&self) -> String {
        let gaps: Vec<String> = self
            .gaps
            .iter()
            .map(|(p, g)| {
                let star = if self.moved.contains(p) { "*" } else { "" };
                format!("{:.2}{star}", g.as_secs_f64())
            })
            .collect();
        let at: Vec<String> = self.gap_at.values().map(|t| format!("{t:+.1}")).collect();
        format!(
            "| {} | {} s | (* moved; {} requests; each gap began at {} s from the fourth worker's start; the producer's longest pause {:.2} s; the cluster's longest pause between Fetch answers {:.2} s at {:+.1} s) |",
            self.strategy,
            gaps.join(" / "),
            self.sent.len(),
            at.join(" / "),
            self.producer_pause.as_secs_f64(),
            self.fetch_pause.0.as_secs_f64(),
            self.fetch_pause.1
        )
    }

    fn assert_each_claimed_once(&self) {
        let repeated: Vec<(&String, usize)> = self
            .claims
            .iter()
            .filter(|(_, (_, n))| *n != 1)
            .map(|(id, (_, n))| (id, *n))
            .collect();
        assert!(repeated.is_empty(), "claimed more than once: {repeated:?}");
    }
}

// ------------------------------------------------------------------------------------
// (b) a static member restarts

#[test]
fn a_static_worker_killed_and_restarted_within_its_session_gets_its_partitions_back_without_a_rebalance()
 {
    let _serial = serial();
    let cluster = Cluster::start_with_kafka_groups(1, INITIAL_REBALANCE_DELAY);
    cluster.create_topic(TOPIC, PARTITIONS);
    let db = TempDb::new();
    install_audit(&db);
    let statically = |id: &'static str| {
        [
            ("KAFKA_GROUP_INSTANCE_ID", id),
            ("MOCK_PROVISION_DELAY_SECONDS", "0.5"),
            // The default: a restart must come within it.
            ("KAFKA_SESSION_TIMEOUT_MS", "10000"),
        ]
    };
    let mut w1 = worker(&cluster.bootstrap(), &db, &statically("edge-1"));
    let mut w2 = worker(&cluster.bootstrap(), &db, &statically("edge-2"));
    let mut w3 = worker(&cluster.bootstrap(), &db, &statically("edge-3"));
    let split = wait_until("three workers to own two partitions each", JOIN, || {
        let owned: Vec<BTreeSet<i32>> = [&w1, &w2, &w3].into_iter().map(owned_by).collect();
        owned.iter().all(|o| o.len() == 2).then_some(owned)
    });
    let producing = Producing::start(&cluster);
    wait_until("requests to flow", Duration::from_secs(30), || {
        (provisioning_times(&db).len() >= 30).then_some(())
    });
    let (generation, state) = cluster.group(GROUP).expect("the group");
    assert_eq!(state, GroupState::Stable);
    let rebalances = cluster.rebalances(GROUP).len();

    w2.kill9();
    let interrupted: BTreeSet<String> = db
        .all_rows()
        .into_iter()
        .filter(|(_, r)| r.status == "provisioning")
        .map(|(id, _)| id)
        .collect();
    let killed = Instant::now();
    let mut again = worker(&cluster.bootstrap(), &db, &statically("edge-2"));
    again.wait_for_line("Partitions assigned", JOIN);
    let back = killed.elapsed();
    assert!(
        back < Duration::from_secs(10),
        "back after {back:?}, past the session"
    );
    assert_eq!(owned_by(&again), split[1], "the same partitions back");
    // More requests through all three before looking.
    thread::sleep(Duration::from_secs(3));
    let sent = producing.stop();
    assert_eq!(
        cluster.group(GROUP),
        Some((generation, GroupState::Stable)),
        "no rebalance: {:?}",
        &cluster.rebalances(GROUP)[rebalances..]
    );
    assert_eq!(cluster.rebalances(GROUP).len(), rebalances);
    for w in [&w1, &w3] {
        assert_eq!(w.count_lines("Partitions assigned"), 1, "{:?}", w.lines());
        assert_eq!(w.count_lines("Rebalance ("), 0);
        assert_eq!(w.count_lines("Partitions revoked"), 0);
    }
    let claims = wait_until("every request to be provisioned", DRAIN, || {
        let claims = provisioning_times(&db);
        sent.iter()
            .all(|(id, _, _)| claims.contains_key(id))
            .then_some(claims)
    });
    for (id, _, _) in &sent {
        let n = claims[id].1;
        let allowed = 1 + usize::from(interrupted.contains(id));
        assert!(n <= allowed, "{id} claimed {n} times (allowed {allowed})");
    }
    // A static member does not leave at shutdown: its place waits for it.
    for w in [&mut w1, &mut again, &mut w3] {
        w.signal("TERM");
        assert!(w.wait_exit(Duration::from_secs(30)).success());
        assert_eq!(w.count_lines("Not leaving consumer group"), 1);
    }
    assert_eq!(cluster.group(GROUP), Some((generation, GroupState::Stable)));
}

// ------------------------------------------------------------------------------------
// (c) librdkafka and the worker in one group

#[test]
fn librdkafka_and_the_worker_split_the_group_and_hand_over_without_loss_or_repeats() {
    let _serial = serial();
    let cluster = Cluster::start_with_kafka_groups(1, INITIAL_REBALANCE_DELAY);
    cluster.create_topic(TOPIC, PARTITIONS);
    let db = TempDb::new();
    install_audit(&db);
    let settings = [("MOCK_PROVISION_DELAY_SECONDS", "0.2")];
    let librdkafka = |name| {
        LibrdkafkaMember::start(
            name,
            &cluster.bootstrap(),
            GROUP,
            TOPIC,
            &[
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("session.timeout.ms", "10000"),
            ],
            Duration::from_millis(20),
        )
    };
    let producing = Producing::start(&cluster);
    let mut w1 = worker(&cluster.bootstrap(), &db, &settings);
    let mut l1 = librdkafka("librdkafka");
    let split = |w: &WorkerProcess, l: &LibrdkafkaMember| {
        let (ours, theirs) = (owned_by(w), l.owned());
        (ours.len() == 3 && theirs.len() == 3 && ours.is_disjoint(&theirs)).then_some(())
    };
    wait_until("the worker and librdkafka to split the topic", JOIN, || {
        split(&w1, &l1)
    });
    assert_eq!(
        cluster
            .rebalances(GROUP)
            .last()
            .and_then(|r| r.protocol.clone())
            .as_deref(),
        Some("cooperative-sticky"),
        "both offer cooperative-sticky: the group uses it"
    );
    thread::sleep(Duration::from_secs(2));

    // The worker leaves: librdkafka takes everything.
    w1.signal("TERM");
    assert!(w1.wait_exit(Duration::from_secs(30)).success());
    l1.wait_for("all six partitions", JOIN, |m| m.owned().len() == 6);
    thread::sleep(Duration::from_secs(2));

    // A worker joins again; then librdkafka leaves, and the worker takes everything.
    let w2 = worker(&cluster.bootstrap(), &db, &settings);
    wait_until("a new split", JOIN, || split(&w2, &l1));
    thread::sleep(Duration::from_secs(2));
    assert!(l1.stop(Duration::from_secs(30)).success());
    wait_until("the worker to own all six partitions", JOIN, || {
        (owned_by(&w2).len() == 6).then_some(())
    });
    thread::sleep(Duration::from_secs(2));
    let sent = producing.stop();

    // Every request handled once: claimed by a worker, or processed by librdkafka.
    let by_librdkafka: HashMap<String, usize> =
        l1.processed()
            .iter()
            .fold(HashMap::new(), |mut seen, (_, _, value)| {
                let v: serde_json::Value =
                    serde_json::from_slice(value).expect("librdkafka processed a request");
                let id = v["request_id"].as_str().expect("an id").to_owned();
                *seen.entry(id).or_default() += 1;
                seen
            });
    let claims = wait_until("every request to be handled", DRAIN, || {
        let claims = provisioning_times(&db);
        sent.iter()
            .all(|(id, _, _)| claims.contains_key(id) || by_librdkafka.contains_key(id))
            .then_some(claims)
    });
    let mut twice = Vec::new();
    for (id, _, _) in &sent {
        let n = claims.get(id).map_or(0, |c| c.1) + by_librdkafka.get(id).copied().unwrap_or(0);
        if n != 1 {
            twice.push((
                id.clone(),
                claims.get(id).map(|c| c.1),
                by_librdkafka.get(id),
            ));
        }
    }
    assert!(
        twice.is_empty(),
        "{} of {} requests handled more than once (worker claims, librdkafka): {:?}",
        twice.len(),
        sent.len(),
        &twice[..twice.len().min(10)]
    );
    let (ours, theirs) = (
        sent.iter()
            .filter(|(id, _, _)| claims.contains_key(id))
            .count(),
        by_librdkafka.len(),
    );
    eprintln!(
        "{} requests: {ours} by the workers, {theirs} by librdkafka",
        sent.len()
    );
    assert!(ours > 0 && theirs > 0);
}

// ------------------------------------------------------------------------------------
// (d) errors that stop the worker

/// Kafka's KIP-345: a second worker started with the same KAFKA_GROUP_INSTANCE_ID takes
/// the place, and the first is fenced: it exits 1 with a sentence naming the id.
#[test]
fn a_second_worker_with_the_same_instance_id_fences_the_first_which_exits_naming_it() {
    let _serial = serial();
    let cluster = Cluster::start_with_kafka_groups(1, INITIAL_REBALANCE_DELAY);
    cluster.create_topic(TOPIC, 2);
    let db = TempDb::new();
    let twin = [("KAFKA_GROUP_INSTANCE_ID", "edge-7")];
    let mut first = worker(&cluster.bootstrap(), &db, &twin);
    first.wait_for_line("Partitions assigned", JOIN);
    let mut second = worker(&cluster.bootstrap(), &db, &twin);
    second.wait_for_line("Partitions assigned", JOIN);
    let status = first.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{:?}", first.lines());
    let line = first.wait_for_line("FENCED_INSTANCE_ID", Duration::ZERO);
    assert!(
        line.contains("ERROR")
            && line.contains("\"edge-7\"")
            && line.contains("KAFKA_GROUP_INSTANCE_ID"),
        "{line}"
    );
    second.signal("TERM");
    assert!(second.wait_exit(Duration::from_secs(30)).success());
}

/// Kafka's INCONSISTENT_GROUP_PROTOCOL: a group whose members use roundrobin (librdkafka)
/// has no room for a worker offering cooperative-sticky and range; the worker exits 1 with
/// a sentence naming both.
#[test]
fn a_group_on_another_strategy_stops_the_worker_with_a_sentence_naming_both() {
    let _serial = serial();
    let cluster = Cluster::start_with_kafka_groups(1, INITIAL_REBALANCE_DELAY);
    cluster.create_topic(TOPIC, 2);
    let db = TempDb::new();
    let mut other = LibrdkafkaMember::start(
        "librdkafka",
        &cluster.bootstrap(),
        GROUP,
        TOPIC,
        &[("partition.assignment.strategy", "roundrobin")],
        Duration::ZERO,
    );
    other.wait_for("its partitions", JOIN, |m| m.owned().len() == 2);
    let mut w = worker(&cluster.bootstrap(), &db, &[]);
    let status = w.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{:?}", w.lines());
    let line = w.wait_for_line("INCONSISTENT_GROUP_PROTOCOL", Duration::ZERO);
    assert!(
        line.contains("ERROR")
            && line.contains("uses the partition assignment strategy roundrobin")
            && line.contains("KAFKA_PARTITION_ASSIGNMENT_STRATEGY=cooperative-sticky,range"),
        "{line}"
    );
    assert!(other.stop(Duration::from_secs(30)).success());
}

// ------------------------------------------------------------------------------------
// Helpers

/// `wait_until`, looking only every quarter second: the timing tests share two cores with
/// the workers they measure, and reading four workers' logs and databases every 20 ms
/// would take time from them (and from the cluster's proxy, in this process).
fn wait_gently<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let mut next = Instant::now();
    wait_until(what, deadline, || {
        if Instant::now() < next {
            return None;
        }
        next = Instant::now() + Duration::from_millis(250);
        f()
    })
}

fn serial() -> MutexGuard<'static, ()> {
    // A test that failed holding it leaves nothing behind that the next one minds.
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn worker(bootstrap: &str, db: &TempDb, extra: &[(&str, &str)]) -> WorkerProcess {
    let url = db.url();
    let mut cmd = WorkerProcess::command().envs(&[
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap),
        ("KAFKA_TOPIC", TOPIC),
        ("KAFKA_GROUP_ID", GROUP),
        ("KAFKA_DLQ_TOPIC", ""),
        ("DATABASE_URL", &url),
        ("WORKER_THREADS", "8"),
        ("SHUTDOWN_TIMEOUT_SECONDS", "10"),
        ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_HEARTBEAT_INTERVAL_MS", "500"),
        ("KAFKA_REBALANCE_TIMEOUT_MS", "20000"),
        ("COMMIT_INTERVAL_MS", "200"),
        ("KAFKA_STARTUP_TIMEOUT_SECONDS", "30"),
        ("LOG_LEVEL", "INFO"),
    ]);
    for (k, v) in extra {
        cmd = cmd.env(k, v);
    }
    cmd.spawn()
}

/// The partitions a worker owns now, from its log: every "Partitions assigned" adds (the
/// whole share after a join, the partitions added by a cooperative round), every
/// "Partitions revoked" takes away.
fn owned_by(w: &WorkerProcess) -> BTreeSet<i32> {
    let mut owned = BTreeSet::new();
    for line in w.lines_with("Partitions ") {
        if let Some(list) = bracketed(&line, "Partitions assigned: [") {
            owned.extend(list);
        } else if let Some(list) = bracketed(&line, "Partitions revoked: [") {
            for p in list {
                owned.remove(&p);
            }
        }
    }
    owned
}

/// The partition numbers in "…marker 0@12, 3@earliest]…".
fn bracketed(line: &str, marker: &str) -> Option<Vec<i32>> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let list = &rest[..rest.find(']')?];
    Some(
        list.split(',')
            .filter_map(|item| item.trim().split('@').next()?.parse().ok())
            .collect(),
    )
}

/// "r12-p3" → 3.
fn partition_of(id: &str) -> i32 {
    id.rsplit("-p")
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a request id of this test: {id}"))
}

/// Produces one request to every partition every [`EVERY`], straight to tansu, noting when
/// each was sent.
struct Producing {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(String, i32, f64)>>,
}

impl Producing {
    fn start(cluster: &Cluster) -> Producing {
        let stop = Arc::new(AtomicBool::new(false));
        let mut producer = Producer::from_hosts(vec![cluster.tansu().addr()])
            .with_required_acks(RequiredAcks::All)
            .with_ack_timeout(Duration::from_secs(10))
            .with_client_id("group-test".to_owned())
            .create()
            .expect("a rustfs-kafka producer to tansu");
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut sent = Vec::new();
            let mut next = Instant::now();
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                for p in 0..PARTITIONS {
                    let id = format!("r{i}-p{p}");
                    let at = now_ms();
                    let value = format!(
                        r#"{{"request_id":"{id}","user_id":"u","gpu_count":1,"duration_hours":1}}"#
                    );
                    producer
                        .send(&Record::from_value(TOPIC, value.as_bytes()).with_partition(p))
                        .unwrap_or_else(|e| panic!("produce {id}: {e}"));
                    sent.push((id, p, at));
                }
                i += 1;
                next += EVERY;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            sent
        });
        Producing { stop, thread }
    }

    fn stop(self) -> Vec<(String, i32, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the producing thread")
    }
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
        * 1000.0
}

/// Triggers recording every status a row takes, with the time (ms since 1970).
fn install_audit(db: &TempDb) {
    let conn = db.conn();
    let schema = std::fs::read_to_string(common::repo_root().join("sql/schema.sql"))
        .expect("read sql/schema.sql, the worker's own schema");
    conn.execute_batch(&schema).expect("create the schema");
    conn.execute_batch(
        "CREATE TABLE status_audit (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 request_id TEXT NOT NULL,
                 status TEXT NOT NULL,
                 at_ms REAL NOT NULL
             );
             CREATE TRIGGER audit_insert AFTER INSERT ON provision_requests BEGIN
                 INSERT INTO status_audit (request_id, status, at_ms)
                 VALUES (NEW.request_id, NEW.status, (julianday('now') - 2440587.5) * 86400000.0);
             END;
             CREATE TRIGGER audit_update AFTER UPDATE OF status ON provision_requests BEGIN
                 INSERT INTO status_audit (request_id, status, at_ms)
                 VALUES (NEW.request_id, NEW.status, (julianday('now') - 2440587.5) * 86400000.0);
             END;",
    )
    .expect("install the status audit triggers");
}

/// When each request first became `provisioning`, and how many times it did.
fn provisioning_times(db: &TempDb) -> HashMap<String, (f64, usize)> {
    let conn = db.conn();
    let mut stmt = conn
        .prepare(
            "SELECT request_id, min(at_ms), count(*) FROM status_audit
             WHERE status = 'provisioning' GROUP BY request_id",
        )
        .expect("prepare the provisioning query");
    stmt.query_map([], |row| {
        let n: i64 = row.get(2)?;
        Ok((row.get(0)?, (row.get(1)?, n as usize)))
    })
    .and_then(|rows| rows.collect())
    .expect("read the provisioning times")
}
