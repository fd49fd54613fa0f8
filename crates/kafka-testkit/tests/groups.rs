//! The fake cluster's group coordinator (Kafka's rules, `cluster/groups.rs`) checked with
//! librdkafka, an independent client built against Apache Kafka: its cooperative-sticky
//! members hand partitions over incrementally without ever sharing one, a static member
//! restarted within its session gets its partitions back with no rebalance, and a second
//! process with the same group.instance.id fences the first.
use std::collections::BTreeSet;
use std::time::Duration;

use kafka_testkit::cluster::{Cluster, GroupState, INITIAL_REBALANCE_DELAY};
use kafka_testkit::member::{LibrdkafkaMember, MemberEvent};
use kafka_testkit::wait_until;

const TOPIC: &str = "groups";
/// librdkafka's session timeout in `kafka_tool.py` (6 s), and time to notice and rejoin.
const SETTLE: Duration = Duration::from_secs(30);

fn cooperative() -> Vec<(&'static str, &'static str)> {
    vec![("partition.assignment.strategy", "cooperative-sticky")]
}

fn start(name: &str, cluster: &Cluster, group: &str, config: &[(&str, &str)]) -> LibrdkafkaMember {
    LibrdkafkaMember::start(
        name,
        &cluster.bootstrap(),
        group,
        TOPIC,
        config,
        Duration::ZERO,
    )
}

/// Owned sets are disjoint, and together they are `all` when `complete`.
fn split(members: &[&LibrdkafkaMember], complete: usize) -> Option<Vec<BTreeSet<i32>>> {
    let owned: Vec<BTreeSet<i32>> = members.iter().map(|m| m.owned()).collect();
    let total: usize = owned.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<i32> = owned.iter().flatten().copied().collect();
    (total == union.len() && union.len() == complete && owned.iter().all(|o| !o.is_empty()))
        .then_some(owned)
}

#[test]
fn cooperative_librdkafka_members_hand_partitions_over_incrementally() {
    let cluster = Cluster::start_with_kafka_groups(1, INITIAL_REBALANCE_DELAY);
    cluster.create_topic(TOPIC, 6);
    let a = start("a", &cluster, "coop", &cooperative());
    let b = start("b", &cluster, "coop", &cooperative());
    let two = wait_until("a and b to split six partitions", SETTLE, || {
        split(&[&a, &b], 6)
    });
    eprintln!("a and b: {two:?}");
    let before = cluster.rebalances("coop").len();

    let c = start("c", &cluster, "coop", &cooperative());
    let three = wait_until("a, b and c to own two partitions each", SETTLE, || {
        split(&[&a, &b, &c], 6).filter(|o| o.iter().all(|s| s.len() == 2))
    });
    eprintln!("a, b and c: {three:?}");
    // Incremental: a and b each gave up exactly one partition, and were never told to
    // revoke the ones they kept.
    for (m, had) in [(&a, &two[0]), (&b, &two[1])] {
        let revoked: Vec<i32> = m
            .events()
            .into_iter()
            .filter_map(|(_, e)| match e {
                MemberEvent::Revoked(p) => Some(p),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(revoked.len(), 1, "{:?} revoked {revoked:?}", m.owned());
        assert!(had.contains(&revoked[0]));
    }
    // Two rounds: the first takes the partitions away, the second hands them to c.
    let rebalances = cluster.rebalances("coop");
    assert!(
        rebalances.len() >= before + 2,
        "{:?}",
        &rebalances[before..]
    );
    assert!(
        rebalances[before..]
            .iter()
            .all(|r| r.protocol.as_deref() == Some("cooperative-sticky"))
    );
    for mut m in [a, b, c] {
        assert!(m.stop(Duration::from_secs(20)).success());
    }
}

#[test]
fn a_static_librdkafka_member_restarted_within_its_session_causes_no_rebalance() {
    let cluster = Cluster::start_with_kafka_groups(1, INITIAL_REBALANCE_DELAY);
    cluster.create_topic(TOPIC, 4);
    let config_a = [
        ("group.instance.id", "host-a"),
        ("partition.assignment.strategy", "range"),
    ];
    let config_b = [
        ("group.instance.id", "host-b"),
        ("partition.assignment.strategy", "range"),
    ];
    let a = start("a", &cluster, "static", &config_a);
    let b = start("b", &cluster, "static", &config_b);
    let owned = wait_until("a and b to split four partitions", SETTLE, || {
        split(&[&a, &b], 4)
    });
    let (generation, state) = cluster.group("static").expect("the group");
    assert_eq!(state, GroupState::Stable);
    let b_events = b.events().len();

    a.kill();
    let mut a = start("a again", &cluster, "static", &config_a);
    a.wait_for("its old partitions", SETTLE, |m| m.owned() == owned[0]);
    assert_eq!(
        cluster.group("static"),
        Some((generation, GroupState::Stable)),
        "no rebalance: {:?}",
        cluster.rebalances("static")
    );
    assert_eq!(
        b.events().len(),
        b_events,
        "b heard of nothing: {:?}",
        b.events()
    );
    // A static member does not leave when it closes: its place waits for it.
    assert!(a.stop(Duration::from_secs(20)).success());
    assert_eq!(
        cluster.group("static"),
        Some((generation, GroupState::Stable))
    );
    drop(b);
}

#[test]
fn a_second_process_with_the_same_instance_id_fences_the_first() {
    let cluster = Cluster::start_with_kafka_groups(1, INITIAL_REBALANCE_DELAY);
    cluster.create_topic(TOPIC, 2);
    let config = [("group.instance.id", "twin")];
    let first = start("first", &cluster, "fenced", &config);
    first.wait_for("its partitions", SETTLE, |m| m.owned().len() == 2);
    let second = start("second", &cluster, "fenced", &config);
    second.wait_for("the partitions", SETTLE, |m| m.owned().len() == 2);
    first.wait_for("to be fenced", SETTLE, |m| {
        m.events().iter().any(|(_, e)| {
            // librdkafka's words for FENCED_INSTANCE_ID (a fatal error, code _FATAL).
            matches!(e, MemberEvent::Error(text, _) if text.contains("Static consumer fenced"))
        })
    });
    drop(first);
    drop(second);
}
