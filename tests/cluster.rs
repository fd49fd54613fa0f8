//! The worker against a cluster of three brokers (kafka-testkit's `cluster::Cluster`: one
//! tansu presented as brokers 1-3, partition p led by broker p % 3 + 1, broker 1 the
//! coordinator), through the scenarios of issue 16 (`latency::Scenario`, the very timelines
//! librdkafka is measured with), and what else a managed cluster does to a client:
//!
//! - a leader away, with and without a leader move: the partitions of healthy leaders keep
//!   a worst produce→`provisioning` time of at most a second, and a moved partition flows
//!   again within 5 s of the move (or of its broker's return);
//! - the coordinator away, the bootstrap list naming only it: no rebalance, no request
//!   processed twice, commits go on at the new coordinator;
//! - a broker answering 8 s late, or throttling every answer: its partition is still served,
//!   the others are not held back;
//! - a broker bounce during a rebalance; partitions in message formats v0 and v1;
//! - brokers that offer only Kafka 2.1's API versions (the oldest the worker supports).
//!
//! Each scenario produces one request to every partition every 100 ms straight to tansu (so
//! producing never meets the faults), notes when each was sent, and reads when the worker
//! made it `provisioning` from a trigger in the database. It prints each partition's worst
//! time, the row README's Performance section quotes beside librdkafka's. The timing tests
//! run one at a time: a second cluster and worker on the same two cores would measure each
//! other; and their database is in memory-backed storage (`TempDb::in_ram`), so that a
//! slow disk (the poller fsyncs the WAL before each commit) is not measured as a broker. Every request is provisioned exactly once in every scenario: none of them is a
//! rebalance, and a partition that moves is fetched from where it was, never twice.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{TempDb, WorkerProcess, librdkafka_committed, wait_until};
use kafka_testkit::cluster::{ApiKey, Cluster, KAFKA_2_1};
use kafka_testkit::latency::Scenario;
use kafka_testkit::legacy::{LegacyCodec, LegacyMessage, Magic};
use rustfs_kafka::producer::{Producer, Record, RequiredAcks};

const TOPIC: &str = "requests";
const GROUP: &str = "cluster-test-group";
const PARTITIONS: i32 = 3;
/// One request to every partition this often, as the librdkafka probe does.
const EVERY: Duration = Duration::from_millis(100);
/// The issue's bound for partitions whose leader is healthy.
const HEALTHY: Duration = Duration::from_secs(1);
/// The issue's bound for a moved partition (after the move, or after its broker is back).
const FLOWS_AGAIN: Duration = Duration::from_secs(5);
/// How long the requests of a run may take to be provisioned once producing stops.
const DRAIN: Duration = Duration::from_secs(60);

/// One timing test at a time (see the module's documentation).
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_healthy_cluster_serves_every_partition_within_a_second() {
    // The reference row of the table: nothing happens for 10 s.
    let run = Run::scenario(Scenario::Healthy);
    run.assert_healthy(&[0, 1, 2]);
    run.assert_each_provisioned_once();
}

#[test]
fn a_leader_away_holds_back_only_its_partition_which_flows_within_5_s_of_its_move() {
    let run = Run::scenario(Scenario::LeaderAway);
    run.assert_healthy(&[0, 2]);
    // p1 moves to broker 3 three seconds in.
    run.assert_flows_again(1, 3);
    run.assert_each_provisioned_once();
}

#[test]
fn a_leader_away_without_a_move_holds_back_only_its_partition_until_it_returns() {
    let run = Run::scenario(Scenario::LeaderAwayNoMove);
    run.assert_healthy(&[0, 2]);
    // Broker 2 is back twenty seconds in.
    run.assert_flows_again(1, 20);
    run.assert_each_provisioned_once();
}

#[test]
fn a_coordinator_move_causes_no_rebalance_repeats_nothing_and_commits_go_on() {
    let run = Run::scenario(Scenario::CoordinatorAway);
    run.assert_healthy(&[1, 2]);
    // The coordinator and p0 move to broker 2 two seconds in.
    run.assert_flows_again(0, 2);
    run.assert_each_provisioned_once();
    assert_eq!(
        run.worker.count_lines("Partitions assigned"),
        1,
        "one join, no rebalance"
    );
    assert_eq!(run.worker.count_lines("Rebalance ("), 0, "no rebalance");
    // Commits went on at the new coordinator while the old one was away (one every
    // COMMIT_INTERVAL_MS, 200 ms, while requests flowed: ~100 in those 23 s), and the
    // group's offsets reach the log end.
    assert!(
        run.commits_during[1] >= 10,
        "commits answered by broker 2 before broker 1 came back: {:?}",
        run.commits_during
    );
    run.assert_committed_to_the_end();
    assert!(
        run.cluster.requests(2, ApiKey::Heartbeat) > 0,
        "the member heartbeated to the new coordinator"
    );
}

#[test]
fn a_broker_answering_after_8_s_still_has_its_partition_served_and_holds_back_no_other() {
    let run = Run::scenario(Scenario::SlowBroker);
    run.assert_healthy(&[0, 1]);
    // Broker 3 is slow for the first 30 s: p2's requests of that time are provisioned
    // during it, an answer (8 s) or two after they were sent, not only after it.
    run.assert_served_while(2, run.at(0), run.at(30));
    run.assert_each_provisioned_once();
}

#[test]
fn a_throttled_broker_is_waited_for_and_holds_back_no_other() {
    let run = Run::scenario(Scenario::ThrottledBroker);
    run.assert_healthy(&[0, 1]);
    assert!(
        run.cluster.throttled_answers(3) > 0,
        "broker 3 throttled its answers"
    );
    // Throttled by 2 s each time, p2 is served within a throttle or two.
    let worst = run.worst(2);
    assert!(
        worst <= Duration::from_secs(6),
        "p2's worst time under a 2 s throttle: {worst:?}\n{}",
        run.table_row()
    );
    assert_eq!(
        run.worker.count_lines("failed while fetching"),
        0,
        "no request to the throttled broker failed (its throttle was waited out)"
    );
    run.assert_each_provisioned_once();
}

#[test]
fn a_broker_bounce_during_a_rebalance_loses_nothing() {
    let _serial = serial();
    let cluster = Cluster::start(3);
    cluster.create_topic(TOPIC, PARTITIONS);
    let db = TempDb::in_ram();
    install_audit(&db);
    let mut producer = RequestProducer::new(&cluster);
    let mut a = worker(&cluster.bootstrap(), &db, &[]);
    a.wait_for_line("Partitions assigned", Duration::from_secs(60));
    for i in 0..30 {
        producer.send(&format!("before-{i}"), i % PARTITIONS);
    }
    // A second worker joins: a rebalance. While it is under way (its join sent), the
    // coordinator, which also leads p0, goes away for three seconds.
    let mut b = worker(&cluster.bootstrap(), &db, &[]);
    let joins = cluster.requests(1, kafka_testkit::cluster::ApiKey::JoinGroup);
    wait_until("the second worker's join", Duration::from_secs(30), || {
        (cluster.requests(1, kafka_testkit::cluster::ApiKey::JoinGroup) > joins).then_some(())
    });
    cluster.cut(1);
    for i in 0..30 {
        producer.send(&format!("during-{i}"), i % PARTITIONS);
    }
    thread::sleep(Duration::from_secs(3));
    cluster.restore(1);
    for i in 0..30 {
        producer.send(&format!("after-{i}"), i % PARTITIONS);
    }
    let sent = producer.ids();
    wait_until("every request completed", Duration::from_secs(90), || {
        let done = db.count_by_status().get("completed").copied().unwrap_or(0);
        (done == sent.len() as i64).then_some(())
    });
    // The group settles with each worker owning a share.
    let settled = |w: &WorkerProcess| {
        w.lines()
            .iter()
            .rev()
            .find(|l| l.contains("Partitions assigned"))
            .cloned()
    };
    wait_until(
        "both workers to own partitions",
        Duration::from_secs(60),
        || {
            let (la, lb) = (settled(&a)?, settled(&b)?);
            (!la.contains("[]") && !lb.contains("[]")).then_some(())
        },
    );
    let audit = read_audit(&db);
    for id in &sent {
        let completed = audit
            .iter()
            .filter(|t| &t.request_id == id && t.status == "completed")
            .count();
        assert_eq!(completed, 1, "{id} completed once");
    }
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
    a.signal("TERM");
    b.signal("TERM");
    assert!(a.wait_exit(Duration::from_secs(60)).success());
    assert!(b.wait_exit(Duration::from_secs(60)).success());
}

#[test]
fn requests_in_message_formats_v0_and_v1_are_provisioned_and_committed_past() {
    let _serial = serial();
    let cluster = Cluster::start(3);
    cluster.create_topic(TOPIC, PARTITIONS);
    let db = TempDb::in_ram();
    // Old data, written by an old client: v0 plain messages in p0, v1 in gzip wrappers in
    // p1, v0 in snappy wrappers in p2; then a modern request after each.
    let old = |prefix: &str, n: usize| -> Vec<LegacyMessage> {
        (0..n)
            .map(|i| {
                let value = request_json(&format!("{prefix}-{i}"));
                LegacyMessage::new(None, Some(value.as_bytes()), 1_700_000_000_000)
            })
            .collect()
    };
    let sets = [
        (0, Magic::V0, LegacyCodec::None, old("v0-plain", 4)),
        (1, Magic::V1, LegacyCodec::Gzip, old("v1-gzip", 7)),
        (2, Magic::V0, LegacyCodec::Snappy, old("v0-snappy", 5)),
    ];
    let mut ends = BTreeMap::new();
    for (p, magic, codec, messages) in &sets {
        let offsets = cluster.produce_legacy(TOPIC, *p, *magic, *codec, messages, 3);
        ends.insert(*p, offsets.end);
    }
    let mut producer = RequestProducer::new(&cluster);
    for p in 0..PARTITIONS {
        producer.send(&format!("modern-{p}"), p);
        *ends.get_mut(&p).expect("a partition") += 1;
    }
    let mut w = worker(&cluster.bootstrap(), &db, &[]);
    let all = 4 + 7 + 5 + 3;
    wait_until("every request completed", Duration::from_secs(60), || {
        let done = db.count_by_status().get("completed").copied().unwrap_or(0);
        (done == all).then_some(())
    });
    for (_, _, _, messages) in &sets {
        for m in messages {
            let value =
                String::from_utf8_lossy(m.value.as_deref().unwrap_or_default()).into_owned();
            let id = request_id_of(&value);
            assert_eq!(db.status_of(&id).as_deref(), Some("completed"), "{id}");
        }
    }
    wait_until("commits past the old data", Duration::from_secs(30), || {
        let committed = librdkafka_committed(cluster.tansu(), GROUP, TOPIC);
        ends.iter()
            .all(|(p, end)| committed.get(p).copied().flatten() == Some(*end))
            .then_some(())
    });
    assert_eq!(w.count_lines("not decoded"), 0, "nothing given up");
    w.signal("TERM");
    assert!(w.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn a_cluster_of_kafka_2_1_brokers_is_joined_served_committed_and_dead_lettered_to() {
    // The oldest broker the worker supports: every broker offers only what Kafka 2.1 did
    // (JoinGroup up to v3, so no member-id round trip; Metadata 7, ListOffsets 4, Fetch 10,
    // Produce 7). The worker joins, resets its new group's positions, provisions, commits
    // and dead-letters at those versions.
    let _serial = serial();
    let cluster = Cluster::start(3);
    cluster.cap_versions(KAFKA_2_1);
    cluster.create_topic(TOPIC, PARTITIONS);
    let dlq = "requests.dlq";
    cluster.create_topic(dlq, 1);
    let db = TempDb::in_ram();
    let mut producer = RequestProducer::new(&cluster);
    for i in 0..9 {
        producer.send(&format!("old-broker-{i}"), i % PARTITIONS);
    }
    producer.send_raw(b"not json", 1);
    let mut w = worker(
        &cluster.bootstrap(),
        &db,
        &[
            ("KAFKA_DLQ_TOPIC", dlq),
            ("KAFKA_AUTO_OFFSET_RESET", "earliest"),
        ],
    );
    let assigned = w.wait_for_line("Partitions assigned", Duration::from_secs(60));
    assert!(assigned.contains("0@earliest"), "{assigned}");
    wait_until("every request completed", Duration::from_secs(60), || {
        let done = db.count_by_status().get("completed").copied().unwrap_or(0);
        (done == 9).then_some(())
    });
    w.wait_for_line(
        &format!("Dead-lettered invalid message at partition 1 offset 3 to {dlq}"),
        Duration::from_secs(30),
    );
    let ends = BTreeMap::from([(0, Some(3)), (1, Some(4)), (2, Some(3))]);
    wait_until("commits to the log end", Duration::from_secs(30), || {
        let committed = librdkafka_committed(cluster.tansu(), GROUP, TOPIC);
        (committed == ends).then_some(())
    });
    wait_until("a heartbeat", Duration::from_secs(30), || {
        (!cluster.versions(ApiKey::Heartbeat).is_empty()).then_some(())
    });
    for (api, cap) in KAFKA_2_1.caps {
        let used = cluster.versions(*api);
        assert!(
            used.iter().all(|v| v <= cap),
            "{api:?} sent at versions {used:?}, above Kafka 2.1's {cap}"
        );
    }
    for api in [
        ApiKey::Metadata,
        ApiKey::FindCoordinator,
        ApiKey::JoinGroup,
        ApiKey::SyncGroup,
        ApiKey::OffsetFetch,
        ApiKey::ListOffsets,
        ApiKey::Fetch,
        ApiKey::OffsetCommit,
        ApiKey::InitProducerId,
        ApiKey::Produce,
    ] {
        assert!(!cluster.versions(api).is_empty(), "{api:?} never sent");
    }
    assert!(
        cluster.versions(ApiKey::JoinGroup).iter().all(|v| *v >= 2),
        "JoinGroup {:?}",
        cluster.versions(ApiKey::JoinGroup)
    );
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
    w.signal("TERM");
    assert!(w.wait_exit(Duration::from_secs(30)).success());
    assert!(
        cluster.versions(ApiKey::LeaveGroup).iter().all(|v| *v <= 2),
        "LeaveGroup {:?}",
        cluster.versions(ApiKey::LeaveGroup)
    );
}

// ------------------------------------------------------------------------------------
// One scenario run

/// A worker through one scenario, and what it did.
struct Run {
    scenario: Scenario,
    cluster: Cluster,
    db: TempDb,
    worker: WorkerProcess,
    /// When the timeline started (ms since 1970).
    started_ms: f64,
    /// Every request of the measured window: (id, partition, sent at).
    sent: Vec<(String, i32, f64)>,
    /// When each request became `provisioning`, and how many times.
    provisioned: HashMap<String, (f64, usize)>,
    /// OffsetCommit answers of brokers 1..=3 by the end of the timeline (the broker in
    /// trouble restored at that moment).
    commits_during: Vec<u64>,
    _serial: MutexGuard<'static, ()>,
}

impl Run {
    fn scenario(scenario: Scenario) -> Run {
        let serial = serial();
        let cluster = Cluster::start(3);
        cluster.create_topic(TOPIC, PARTITIONS);
        let db = TempDb::in_ram();
        install_audit(&db);
        let mut worker = worker(&scenario.bootstrap(&cluster), &db, &[]);
        worker.wait_for_line("Partitions assigned", Duration::from_secs(60));
        // Every partition flows before the window starts.
        let mut producer = RequestProducer::new(&cluster);
        for p in 0..PARTITIONS {
            producer.send(&format!("warm-up-{p}"), p);
        }
        let warm = producer.ids();
        wait_until("the warm-up requests", Duration::from_secs(30), || {
            warm.iter()
                .all(|id| db.status_of(id).as_deref() == Some("completed"))
                .then_some(())
        });

        let producing = Producing::start(&cluster);
        let started_ms = now_ms();
        cluster.schedule(scenario.steps(TOPIC)).wait();
        let commits_during = (1..=PARTITIONS)
            .map(|b| cluster.answers(b, ApiKey::OffsetCommit))
            .collect();
        let sent = producing.stop();
        let mut provisioned = HashMap::new();
        let deadline = Instant::now() + DRAIN;
        while Instant::now() < deadline {
            provisioned = provisioning_times(&db);
            if sent.iter().all(|(id, _, _)| provisioned.contains_key(id)) {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        let run = Run {
            scenario,
            cluster,
            db,
            worker,
            started_ms,
            sent,
            provisioned,
            commits_during,
            _serial: serial,
        };
        // The row scripts/cluster-scenarios.sh collects (a failed bar prints it again).
        eprintln!("cluster scenario row: {}", run.table_row());
        let missing: Vec<&String> = run
            .sent
            .iter()
            .map(|(id, _, _)| id)
            .filter(|id| !run.provisioned.contains_key(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "{} request(s) never provisioned within {DRAIN:?} after the scenario, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert!(
            run.cluster.errors().is_empty(),
            "{:?}",
            run.cluster.errors()
        );
        run
    }

    /// A moment of the timeline, `secs` after its start (ms since 1970).
    fn at(&self, secs: u64) -> f64 {
        self.started_ms + (secs * 1000) as f64
    }

    /// The worst produce→provisioning time of partition `p`.
    fn worst(&self, p: i32) -> Duration {
        self.latencies(p)
            .map(|(_, _, l)| l)
            .fold(Duration::ZERO, Duration::max)
    }

    /// (sent, provisioned, latency) of every request of partition `p`.
    fn latencies(&self, p: i32) -> impl Iterator<Item = (f64, f64, Duration)> + '_ {
        self.sent
            .iter()
            .filter(move |(_, q, _)| *q == p)
            .filter_map(|(id, _, sent)| {
                let (at, _) = self.provisioned.get(id)?;
                Some((
                    *sent,
                    *at,
                    Duration::from_secs_f64(((at - sent) / 1000.0).max(0.0)),
                ))
            })
    }

    /// "| scenario | p0 / p1 / p2 |": each partition's worst time, for README's table.
    fn table_row(&self) -> String {
        let worst: Vec<String> = (0..PARTITIONS)
            .map(|p| format!("{:.2}", self.worst(p).as_secs_f64()))
            .collect();
        // When each partition's worst request was sent, into the timeline: which moment
        // of the scenario it belongs to.
        let when: Vec<String> = (0..PARTITIONS)
            .map(|p| {
                let sent = self
                    .latencies(p)
                    .max_by(|a, b| a.2.cmp(&b.2))
                    .map_or(0.0, |(sent, _, _)| sent);
                format!("{:.1}", (sent - self.started_ms) / 1000.0)
            })
            .collect();
        format!(
            "| {} | {} s | ({} requests; worst sent at {} s) |",
            self.scenario.name(),
            worst.join(" / "),
            self.sent.len(),
            when.join(" / ")
        )
    }

    fn assert_healthy(&self, partitions: &[i32]) {
        for &p in partitions {
            let worst = self.worst(p);
            assert!(
                worst <= HEALTHY,
                "p{p}, whose leader is healthy, waited up to {worst:?} in {}\n{}",
                self.scenario.name(),
                self.table_row()
            );
        }
    }

    /// Every request of `p` was provisioned within `FLOWS_AGAIN` of when it was sent or of
    /// `secs` into the timeline (the move, or the broker's return), whichever came later.
    fn assert_flows_again(&self, p: i32, secs: u64) {
        let moment = self.at(secs);
        for (sent, at, latency) in self.latencies(p) {
            let due = sent.max(moment) + FLOWS_AGAIN.as_secs_f64() * 1000.0;
            assert!(
                at <= due,
                "a request to p{p} sent {:.1} s into the scenario waited {latency:?}, past {:.1} s\n{}",
                (sent - self.started_ms) / 1000.0,
                (due - self.started_ms) / 1000.0,
                self.table_row()
            );
        }
    }

    /// Some request of `p` sent between `from` and `until` was provisioned before `until`.
    fn assert_served_while(&self, p: i32, from: f64, until: f64) {
        let served = self
            .latencies(p)
            .filter(|(sent, at, _)| *sent >= from && *at <= until)
            .count();
        assert!(
            served > 0,
            "p{p} was not served during its broker's trouble\n{}",
            self.table_row()
        );
    }

    fn assert_each_provisioned_once(&self) {
        let repeated: Vec<(&String, usize)> = self
            .provisioned
            .iter()
            .filter(|(_, (_, n))| *n != 1)
            .map(|(id, (_, n))| (id, *n))
            .collect();
        assert!(
            repeated.is_empty(),
            "provisioned more than once: {repeated:?}"
        );
    }

    fn assert_committed_to_the_end(&self) {
        let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
        let conn = self.db.conn();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM provision_requests", [], |r| r.get(0))
            .expect("count rows");
        assert!(count > 0);
        drop(conn);
        for p in 0..PARTITIONS {
            let n = self.sent.iter().filter(|(_, q, _)| *q == p).count() as i64;
            // One warm-up request and the window's.
            ends.insert(p, n + 1);
        }
        wait_until(
            "the group's commits to reach the log end",
            Duration::from_secs(30),
            || {
                let committed = librdkafka_committed(self.cluster.tansu(), GROUP, TOPIC);
                ends.iter()
                    .all(|(p, end)| committed.get(p).copied().flatten() == Some(*end))
                    .then_some(())
            },
        );
    }
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
        let mut producer = RequestProducer::new(cluster);
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut sent = Vec::new();
            let mut next = Instant::now();
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                for p in 0..PARTITIONS {
                    let id = format!("r{i}-p{p}");
                    let at = now_ms();
                    producer.send(&id, p);
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

/// A rustfs-kafka producer to tansu itself (not through the cluster's faults).
struct RequestProducer {
    producer: Producer,
    ids: Vec<String>,
}

impl RequestProducer {
    fn new(cluster: &Cluster) -> RequestProducer {
        let producer = Producer::from_hosts(vec![cluster.tansu().addr()])
            .with_required_acks(RequiredAcks::All)
            .with_ack_timeout(Duration::from_secs(10))
            .with_client_id("cluster-test".to_owned())
            .create()
            .expect("a rustfs-kafka producer to tansu");
        RequestProducer {
            producer,
            ids: Vec::new(),
        }
    }

    fn send(&mut self, id: &str, partition: i32) {
        let value = request_json(id);
        self.producer
            .send(&Record::from_value(TOPIC, value.as_bytes()).with_partition(partition))
            .unwrap_or_else(|e| panic!("produce {id} to p{partition}: {e}"));
        self.ids.push(id.to_owned());
    }

    /// A value that is not a request (for the worker to dead-letter).
    fn send_raw(&mut self, value: &[u8], partition: i32) {
        self.producer
            .send(&Record::from_value(TOPIC, value).with_partition(partition))
            .unwrap_or_else(|e| panic!("produce to p{partition}: {e}"));
    }

    fn ids(&self) -> Vec<String> {
        self.ids.clone()
    }
}

// ------------------------------------------------------------------------------------
// Helpers

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
        ("MOCK_PROVISION_DELAY_SECONDS", "0"),
        ("WORKER_THREADS", "8"),
        ("SHUTDOWN_TIMEOUT_SECONDS", "10"),
        ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_HEARTBEAT_INTERVAL_MS", "1000"),
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

fn request_json(id: &str) -> String {
    format!(r#"{{"request_id":"{id}","user_id":"u-{id}","gpu_count":1,"duration_hours":1}}"#)
}

fn request_id_of(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).expect("a request");
    v["request_id"].as_str().expect("a request id").to_owned()
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
        * 1000.0
}

/// Triggers recording every status a row takes, with the time (ms since 1970, SQLite's
/// clock: the test's own).
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

struct Transition {
    request_id: String,
    status: String,
}

fn read_audit(db: &TempDb) -> Vec<Transition> {
    let conn = db.conn();
    let mut stmt = conn
        .prepare("SELECT request_id, status FROM status_audit ORDER BY seq")
        .expect("prepare the audit query");
    stmt.query_map([], |row| {
        Ok(Transition {
            request_id: row.get(0)?,
            status: row.get(1)?,
        })
    })
    .and_then(|rows| rows.collect())
    .expect("read the audit trail")
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
