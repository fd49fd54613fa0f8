//! The fake cluster checked against librdkafka: a real client follows its leader and
//! coordinator moves through the rewritten answers, and one broker's outage holds back only
//! that broker's partitions. The bounds are far from librdkafka's times (README: tens of
//! milliseconds for a healthy partition, about a second after a move) and far below the
//! outage, so they tell "followed the move" from "waited for the broker".
use std::time::Duration;

use kafka_testkit::cluster::{ApiKey, Cluster, Step};
use kafka_testkit::latency::LatencyProbe;

const TOPIC: &str = "probe";
const OUTAGE: Duration = Duration::from_secs(12);
const MOVE_AFTER: Duration = Duration::from_secs(2);
/// A healthy partition's worst time must stay under this.
const HEALTHY: Duration = Duration::from_secs(2);
/// A moved partition must flow again within this of the outage's start.
const MOVED: Duration = Duration::from_secs(7);

#[test]
fn librdkafka_follows_a_leader_move_while_the_old_leader_is_unreachable() {
    let cluster = Cluster::start(3);
    cluster.create_topic(TOPIC, 3);
    let probe = LatencyProbe::start(&cluster, &cluster.bootstrap(), TOPIC, 3);
    cluster
        .schedule(vec![
            (Duration::ZERO, Step::Cut(2)),
            (MOVE_AFTER, Step::MoveLeader(TOPIC.into(), 1, 3)),
            (OUTAGE, Step::Restore(2)),
        ])
        .wait();
    let result = probe.finish();
    eprintln!("{}", result.summary());
    for (p, l) in &result.partitions {
        assert_eq!(l.missing, 0, "partition {p} lost probes: {result:?}");
    }
    assert!(result.worst(0) < HEALTHY, "{}", result.summary());
    assert!(result.worst(2) < HEALTHY, "{}", result.summary());
    assert!(
        result.worst(1) < MOVED,
        "p1 waited for its old leader: {}",
        result.summary()
    );
    assert!(
        cluster.injected(3, ApiKey::Fetch, 6) == 0,
        "broker 3 led every partition it was asked for"
    );
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[test]
fn librdkafka_finds_the_moved_coordinator_through_another_broker() {
    let cluster = Cluster::start(3);
    cluster.create_topic(TOPIC, 3);
    // The bootstrap list names only broker 1, the coordinator, which goes away.
    let probe = LatencyProbe::start(&cluster, &cluster.addr(1), TOPIC, 3);
    cluster
        .schedule(vec![
            (Duration::ZERO, Step::Cut(1)),
            (MOVE_AFTER, Step::MoveCoordinator(2)),
            (MOVE_AFTER, Step::MoveLeader(TOPIC.into(), 0, 2)),
            (OUTAGE, Step::Restore(1)),
        ])
        .wait();
    let result = probe.finish();
    eprintln!("{}", result.summary());
    for (p, l) in &result.partitions {
        assert_eq!(l.missing, 0, "partition {p} lost probes: {result:?}");
    }
    assert!(result.worst(1) < HEALTHY, "{}", result.summary());
    assert!(result.worst(2) < HEALTHY, "{}", result.summary());
    assert!(
        result.worst(0) < MOVED,
        "p0 waited for its old leader: {}",
        result.summary()
    );
    assert!(
        cluster.answers(2, ApiKey::Heartbeat) > 0,
        "the group heartbeats at the new coordinator"
    );
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}
