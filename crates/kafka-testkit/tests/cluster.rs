//! The fake cluster (one tansu behind N Kafka-aware proxy ports) answers as a cluster of N
//! brokers would: checked through librdkafka and through bare requests whose answers the
//! tests read field by field.
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiVersionsRequest, FetchRequest, FetchResponse, FindCoordinatorRequest, GroupId,
    HeartbeatRequest, JoinGroupRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse,
    OffsetFetchRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_testkit::cluster::{
    ApiKey, Cluster, FENCED_LEADER_EPOCH, KAFKA_2_1, NOT_COORDINATOR, NOT_LEADER_OR_FOLLOWER,
    Placement, UNKNOWN_LEADER_EPOCH,
};
use kafka_testkit::hostile_batch::{self, Codec, Piece};
use kafka_testkit::legacy::{LegacyCodec, LegacyMessage, Magic};
use kafka_testkit::raw::RawConnection;
use kafka_testkit::{
    OutMessage, json_i64, librdkafka_metadata, librdkafka_produce, librdkafka_read, wait_until,
};

const TOPIC: &str = "t";
/// A read timeout for bare requests: far above any answer the tests expect.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn librdkafka_sees_n_brokers_and_the_leaders_the_test_sets() {
    let cluster = Cluster::start(3);
    cluster.create_topic(TOPIC, 4);
    let md = librdkafka_metadata(&cluster.addr(1), TOPIC);
    for id in 1..=3 {
        assert_eq!(md["brokers"][id.to_string()], cluster.addr(id), "{md}");
    }
    assert_eq!(md["brokers"].as_object().unwrap().len(), 3, "{md}");
    assert_eq!(json_i64(&md, "controller"), 1);
    for (p, leader) in [(0, 1), (1, 2), (2, 3), (3, 1)] {
        let part = &md["partitions"][p.to_string()];
        assert_eq!(json_i64(part, "leader"), leader, "partition {p}: {md}");
        assert_eq!(part["replicas"][0], leader, "the leader comes first: {md}");
        assert_eq!(part["isrs"].as_array().unwrap().len(), 3, "{md}");
    }

    cluster.move_leader(TOPIC, 1, 3);
    let md = librdkafka_metadata(&cluster.addr(2), TOPIC);
    assert_eq!(json_i64(&md["partitions"]["1"], "leader"), 3, "{md}");
    assert_eq!(
        cluster.leader(TOPIC, 1),
        Placement {
            leader: 3,
            epoch: 1
        }
    );
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[test]
fn every_metadata_version_names_the_brokers_leaders_and_epochs() {
    let cluster = Cluster::start(3);
    cluster.create_topic(TOPIC, 3);
    cluster.move_leader(TOPIC, 2, 1);
    cluster.move_leader(TOPIC, 2, 2);
    for version in 0..=12 {
        let mut conn = connect(&cluster, 2);
        let answer = conn
            .call(version, &metadata_request(version))
            .unwrap_or_else(|e| panic!("Metadata v{version}: {e}"));
        let brokers: Vec<(i32, i32)> = answer
            .brokers
            .iter()
            .map(|b| (b.node_id.0, b.port))
            .collect();
        let expected: Vec<(i32, i32)> = (1..=3)
            .map(|id| (id, i32::from(cluster.port(id))))
            .collect();
        assert_eq!(brokers, expected, "Metadata v{version}");
        let leaders = leaders(&answer);
        assert_eq!(leaders, [(0, 1), (1, 2), (2, 2)], "Metadata v{version}");
        if version >= 7 {
            let epoch = answer.topics[0]
                .partitions
                .iter()
                .find(|p| p.partition_index == 2)
                .unwrap()
                .leader_epoch;
            assert_eq!(epoch, 2, "two moves, two epochs (Metadata v{version})");
        }
    }
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[test]
fn find_coordinator_names_the_coordinator_the_test_sets() {
    let cluster = Cluster::start(3);
    for (version, coordinator) in [(0, 1), (1, 1), (3, 1), (4, 1), (5, 1), (6, 1)] {
        let (node, port) = find_coordinator(&cluster, 3, version);
        assert_eq!(node, coordinator, "FindCoordinator v{version}");
        assert_eq!(port, i32::from(cluster.port(coordinator)));
    }
    cluster.move_coordinator(2);
    for version in [0, 3, 4] {
        let (node, port) = find_coordinator(&cluster, 1, version);
        assert_eq!((node, port), (2, i32::from(cluster.port(2))), "v{version}");
    }
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[test]
fn a_fetch_for_a_partition_the_broker_does_not_lead_gets_not_leader_or_follower() {
    let cluster = Cluster::start(3);
    cluster.create_topic(TOPIC, 3);
    produce_direct(&cluster, 0, b"on p0");
    produce_direct(&cluster, 1, b"on p1");

    // Broker 1 leads p0, not p1: one request for both.
    let mut conn = connect(&cluster, 1);
    let answer = conn
        .call(12, &fetch_request(&[(0, -1), (1, -1)]))
        .expect("a Fetch at broker 1");
    let p0 = partition(&answer, 0);
    assert_eq!(p0.error_code, 0);
    assert!(
        p0.records.as_ref().is_some_and(|r| !r.is_empty()),
        "p0's record is served"
    );
    let p1 = partition(&answer, 1);
    assert_eq!(p1.error_code, NOT_LEADER_OR_FOLLOWER);
    assert!(
        p1.records.as_ref().is_none_or(|r| r.is_empty()),
        "nothing of p1"
    );
    assert_eq!(answer.session_id, 0, "no fetch sessions");
    assert_eq!(
        cluster.injected(1, ApiKey::Fetch, NOT_LEADER_OR_FOLLOWER),
        1
    );

    // After p0 moves to broker 2, broker 1 refuses it too, answering in tansu's place.
    cluster.move_leader(TOPIC, 0, 2);
    let answer = conn.call(12, &fetch_request(&[(0, -1)])).expect("a Fetch");
    assert_eq!(partition(&answer, 0).error_code, NOT_LEADER_OR_FOLLOWER);
    let mut at_2 = connect(&cluster, 2);
    let answer = at_2.call(12, &fetch_request(&[(0, 1)])).expect("a Fetch");
    assert_eq!(
        partition(&answer, 0).error_code,
        0,
        "the new leader serves p0 at epoch 1"
    );
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[test]
fn leader_epochs_older_or_newer_than_the_partitions_are_refused() {
    let cluster = Cluster::start(3);
    cluster.create_topic(TOPIC, 3);
    cluster.move_leader(TOPIC, 0, 2);
    cluster.move_leader(TOPIC, 0, 2);
    let mut conn = connect(&cluster, 2);
    for (epoch, code) in [
        (-1, 0),
        (2, 0),
        (1, FENCED_LEADER_EPOCH),
        (3, UNKNOWN_LEADER_EPOCH),
    ] {
        let answer = conn
            .call(12, &fetch_request(&[(0, epoch)]))
            .expect("a Fetch");
        assert_eq!(
            partition(&answer, 0).error_code,
            code,
            "Fetch with epoch {epoch}"
        );
        let request = ListOffsetsRequest::default()
            .with_replica_id((-1).into())
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(topic_name())
                    .with_partitions(vec![
                        ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_current_leader_epoch(epoch)
                            .with_timestamp(-1),
                    ]),
            ]);
        let answer = conn.call(7, &request).expect("a ListOffsets");
        assert_eq!(
            answer.topics[0].partitions[0].error_code, code,
            "ListOffsets with epoch {epoch}"
        );
    }
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[test]
fn a_produce_to_a_broker_that_does_not_lead_is_refused_and_not_written() {
    let cluster = Cluster::start(3);
    cluster.create_topic(TOPIC, 3);
    let batch = hostile_batch::batch(
        Codec::None,
        &[hostile_batch::record(0, vec![Piece::Bytes(b"x".to_vec())])],
    );
    let request = |partitions: &[i32]| {
        ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(topic_name())
                    .with_partition_data(
                        partitions
                            .iter()
                            .map(|&p| {
                                PartitionProduceData::default()
                                    .with_index(p)
                                    .with_records(Some(batch.clone()))
                            })
                            .collect(),
                    ),
            ])
    };
    let mut conn = connect(&cluster, 3);
    // Broker 3 leads p2, not p1.
    let answer = conn.call(7, &request(&[1, 2])).expect("a Produce");
    let codes: Vec<(i32, i16)> = answer.responses[0]
        .partition_responses
        .iter()
        .map(|p| (p.index, p.error_code))
        .collect();
    assert!(codes.contains(&(2, 0)), "{codes:?}");
    assert!(codes.contains(&(1, NOT_LEADER_OR_FOLLOWER)), "{codes:?}");
    let answer = conn
        .call(7, &request(&[1]))
        .expect("a Produce refused whole");
    assert_eq!(
        answer.responses[0].partition_responses[0].error_code,
        NOT_LEADER_OR_FOLLOWER
    );

    // Only p2's record was written.
    let mut direct = RawConnection::connect(&cluster.tansu().addr(), READ_TIMEOUT).unwrap();
    let answer = direct
        .call(12, &fetch_request(&[(1, -1), (2, -1)]))
        .unwrap();
    assert_eq!(
        partition(&answer, 1).high_watermark,
        0,
        "nothing written to p1"
    );
    assert_eq!(
        partition(&answer, 2).high_watermark,
        1,
        "one record written to p2"
    );
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[test]
fn group_requests_to_a_broker_that_is_not_the_coordinator_get_not_coordinator() {
    let cluster = Cluster::start(3);
    cluster.create_topic(TOPIC, 3);
    let heartbeat = HeartbeatRequest::default()
        .with_group_id(group())
        .with_generation_id(1)
        .with_member_id(StrBytes::from_static_str("nobody"));
    let join = JoinGroupRequest::default()
        .with_group_id(group())
        .with_session_timeout_ms(6_000)
        .with_rebalance_timeout_ms(6_000)
        .with_protocol_type(StrBytes::from_static_str("consumer"));
    let offsets = OffsetFetchRequest::default().with_groups(vec![
        OffsetFetchRequestGroup::default().with_group_id(group()),
    ]);

    let mut at_2 = connect(&cluster, 2);
    for version in [0, 2, 4] {
        let answer = at_2.call(version, &heartbeat).expect("a Heartbeat");
        assert_eq!(answer.error_code, NOT_COORDINATOR, "Heartbeat v{version}");
    }
    for version in [2, 5, 7] {
        let answer = at_2.call(version, &join).expect("a JoinGroup");
        assert_eq!(answer.error_code, NOT_COORDINATOR, "JoinGroup v{version}");
    }
    let answer = at_2.call(8, &offsets).expect("an OffsetFetch");
    assert_eq!(answer.groups[0].error_code, NOT_COORDINATOR);
    let legacy_offsets = OffsetFetchRequest::default()
        .with_group_id(group())
        .with_topics(Some(Vec::new()));
    assert_eq!(
        at_2.call(5, &legacy_offsets).unwrap().error_code,
        NOT_COORDINATOR
    );
    assert_eq!(cluster.injected(2, ApiKey::Heartbeat, NOT_COORDINATOR), 3);

    // The coordinator forwards to tansu, which does not know the member.
    let mut at_1 = connect(&cluster, 1);
    let answer = at_1.call(4, &heartbeat).expect("a Heartbeat");
    assert_ne!(answer.error_code, NOT_COORDINATOR);

    // Once the coordinator moves, broker 1 refuses and broker 2 forwards.
    cluster.move_coordinator(2);
    assert_eq!(
        at_1.call(4, &heartbeat).unwrap().error_code,
        NOT_COORDINATOR
    );
    assert_ne!(
        at_2.call(4, &heartbeat).unwrap().error_code,
        NOT_COORDINATOR
    );
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[test]
fn api_versions_are_capped_where_topics_would_be_named_by_id() {
    let cluster = Cluster::start(2);
    let mut conn = connect(&cluster, 2);
    let answer = conn
        .call(
            3,
            &ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("test"))
                .with_client_software_version(StrBytes::from_static_str("1")),
        )
        .expect("an ApiVersions");
    let range = |key: ApiKey| {
        answer
            .api_keys
            .iter()
            .find(|a| a.api_key == key as i16)
            .map(|a| (a.min_version, a.max_version))
    };
    assert_eq!(range(ApiKey::Fetch), Some((4, 12)));
    assert_eq!(range(ApiKey::Produce).map(|r| r.0), Some(3));
    assert!(range(ApiKey::Produce).unwrap().1 <= 12);
    assert!(range(ApiKey::OffsetCommit).unwrap().1 <= 9);
    assert!(range(ApiKey::OffsetFetch).unwrap().1 <= 9);
    assert_eq!(range(ApiKey::ConsumerGroupHeartbeat), None);
    // Kafka 2.1's own versions stay inside: Fetch 10, Metadata 7, JoinGroup 3, ListOffsets 4.
    for (key, v) in [
        (ApiKey::Fetch, 10),
        (ApiKey::Metadata, 7),
        (ApiKey::JoinGroup, 3),
        (ApiKey::ListOffsets, 4),
        (ApiKey::FindCoordinator, 2),
    ] {
        let (min, max) = range(key).unwrap_or_else(|| panic!("{key:?} offered"));
        assert!(min <= v && v <= max, "{key:?} v{v} outside {min}..={max}");
    }
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[test]
fn capped_to_kafka_2_1_the_brokers_offer_its_versions_and_nothing_newer() {
    let cluster = Cluster::start(2);
    cluster.cap_versions(KAFKA_2_1);
    let mut conn = connect(&cluster, 1);
    let answer = conn
        .call(
            2,
            &ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("test"))
                .with_client_software_version(StrBytes::from_static_str("1")),
        )
        .expect("an ApiVersions");
    let range = |key: ApiKey| {
        answer
            .api_keys
            .iter()
            .find(|a| a.api_key == key as i16)
            .map(|a| (a.min_version, a.max_version))
    };
    assert_eq!(range(ApiKey::JoinGroup).map(|r| r.1), Some(3));
    assert_eq!(range(ApiKey::Metadata).map(|r| r.1), Some(7));
    assert_eq!(range(ApiKey::ListOffsets).map(|r| r.1), Some(4));
    assert_eq!(range(ApiKey::Fetch), Some((4, 10)));
    assert_eq!(range(ApiKey::Produce), Some((3, 7)));
    assert!(
        answer.api_keys.iter().all(|a| a.api_key <= 42),
        "an API Kafka 2.1 did not have: {:?}",
        answer
            .api_keys
            .iter()
            .map(|a| a.api_key)
            .collect::<Vec<_>>()
    );
    assert_eq!(range(ApiKey::DescribeCluster), None);
    assert_eq!(cluster.versions(ApiKey::ApiVersions), [2]);
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[test]
fn a_throttled_broker_sets_throttle_time_and_holds_the_connection_that_long() {
    let cluster = Cluster::start(3);
    cluster.create_topic(TOPIC, 3);
    let throttle = Duration::from_millis(1_500);
    cluster.throttle(2, throttle);
    let mut at_2 = connect(&cluster, 2);
    let request = metadata_request(9);
    // Measured from before the first request: the mute starts when the proxy has written
    // the first answer, which the client may read a moment later.
    let start = Instant::now();
    let answer = at_2.call(9, &request).expect("a Metadata");
    assert_eq!(answer.throttle_time_ms, 1_500);
    // KIP-219: the next request on that connection waits out the throttle.
    let answer = at_2.call(9, &request).expect("a second Metadata");
    assert!(
        start.elapsed() >= throttle,
        "two answers in {:?} despite a {throttle:?} throttle",
        start.elapsed()
    );
    assert_eq!(answer.throttle_time_ms, 1_500);
    let answer = at_2.call(12, &fetch_request(&[(1, -1)])).expect("a Fetch");
    assert_eq!(answer.throttle_time_ms, 1_500);
    assert!(cluster.throttled_answers(2) >= 3);

    // Pipelined requests go one at a time, each after the mute of the answer before it.
    let mut fresh = connect(&cluster, 2);
    let start = Instant::now();
    let first = fresh.send(9, &request).unwrap();
    let second = fresh.send(9, &request).unwrap();
    fresh
        .receive::<MetadataRequest>(9, first)
        .expect("the first answer");
    fresh
        .receive::<MetadataRequest>(9, second)
        .expect("the second answer");
    assert!(
        start.elapsed() >= throttle,
        "two pipelined answers in {:?} despite a {throttle:?} throttle",
        start.elapsed()
    );

    // Other brokers are not throttled; a restored one no longer is.
    let mut at_1 = connect(&cluster, 1);
    assert_eq!(at_1.call(9, &request).unwrap().throttle_time_ms, 0);
    cluster.restore(2);
    assert_eq!(at_2.call(9, &request).unwrap().throttle_time_ms, 0);
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[test]
fn a_delayed_broker_answers_after_the_delay_and_at_once_when_restored() {
    let cluster = Cluster::start(3);
    cluster.create_topic(TOPIC, 3);
    let delay = Duration::from_millis(1_500);
    cluster.delay(3, delay);
    let mut at_3 = connect(&cluster, 3);
    let start = Instant::now();
    at_3.call(9, &metadata_request(9)).expect("a Metadata");
    assert!(
        start.elapsed() >= delay,
        "answered after {:?}",
        start.elapsed()
    );

    // Pipelined requests are each held from their own arrival, not one after another.
    let delay = Duration::from_secs(3);
    cluster.delay(3, delay);
    let start = Instant::now();
    let sent: Vec<i32> = (0..4)
        .map(|_| at_3.send(9, &metadata_request(9)).unwrap())
        .collect();
    for correlation in sent {
        at_3.receive::<MetadataRequest>(9, correlation)
            .expect("a held answer");
    }
    let took = start.elapsed();
    assert!(took >= delay, "four answers in {took:?}");
    assert!(
        took < delay * 3,
        "four pipelined answers took {took:?}: held one after another"
    );

    // An answer held for a minute is released by restore().
    cluster.delay(3, Duration::from_secs(60));
    let before = cluster.requests(3, ApiKey::Metadata);
    let correlation = at_3.send(9, &metadata_request(9)).unwrap();
    wait_until("broker 3 read the request", Duration::from_secs(10), || {
        (cluster.requests(3, ApiKey::Metadata) > before).then_some(())
    });
    cluster.restore(3);
    at_3.receive::<MetadataRequest>(9, correlation)
        .expect("the held answer, released before the read timeout");
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[test]
fn a_cut_broker_closes_its_connections_and_new_ones_until_restored() {
    let cluster = Cluster::start(3);
    let mut at_2 = connect(&cluster, 2);
    at_2.call(9, &metadata_request(9))
        .expect("a Metadata before the cut");
    assert_eq!(cluster.open_connections(2), 1);

    cluster.cut(2);
    assert_eq!(cluster.open_connections(2), 0);
    assert!(
        at_2.call(9, &metadata_request(9)).is_err(),
        "the open connection is closed"
    );
    let accepted = cluster.connections(2);
    let mut again = connect(&cluster, 2);
    assert!(
        again.call(9, &metadata_request(9)).is_err(),
        "a new connection is closed"
    );
    assert_eq!(cluster.connections(2), accepted + 1);
    // Other brokers are unaffected.
    connect(&cluster, 1)
        .call(9, &metadata_request(9))
        .expect("broker 1 answers");

    cluster.restore(2);
    connect(&cluster, 2)
        .call(9, &metadata_request(9))
        .expect("broker 2 answers again");
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[test]
fn a_frozen_broker_holds_its_answers_until_restored() {
    let cluster = Cluster::start(2);
    let mut conn = RawConnection::connect(&cluster.addr(2), Duration::from_millis(500)).unwrap();
    cluster.freeze(2);
    let correlation = conn.send(9, &metadata_request(9)).unwrap();
    let held = conn.receive::<MetadataRequest>(9, correlation);
    assert!(held.is_err(), "no answer while frozen");
    cluster.restore(2);
    let mut conn = RawConnection::connect(&cluster.addr(2), READ_TIMEOUT).unwrap();
    conn.call(9, &metadata_request(9))
        .expect("answers after restore");
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[test]
fn a_timeline_applies_its_steps_in_order() {
    let cluster = Cluster::start(3);
    let timeline = cluster.schedule(vec![
        (Duration::ZERO, kafka_testkit::cluster::Step::Cut(2)),
        (
            Duration::from_millis(200),
            kafka_testkit::cluster::Step::MoveLeader(TOPIC.into(), 1, 3),
        ),
        (
            Duration::from_millis(400),
            kafka_testkit::cluster::Step::Restore(2),
        ),
    ]);
    timeline.wait();
    assert_eq!(
        cluster.leader(TOPIC, 1),
        Placement {
            leader: 3,
            epoch: 1
        }
    );
    assert!(!cluster.faults(2).cut);
}

#[test]
fn librdkafka_reads_legacy_message_sets_served_by_the_cluster() {
    let cluster = Cluster::start(3);
    cluster.create_topic(TOPIC, 1);
    let plain = |v: &str| OutMessage {
        partition: Some(0),
        value: Some(v.as_bytes().to_vec()),
        ..Default::default()
    };
    librdkafka_produce(cluster.tansu(), TOPIC, "none", &[plain("before")]);
    let messages = |tag: &str, n: usize| -> Vec<LegacyMessage> {
        (0..n)
            .map(|i| {
                let key = format!("{tag}-key-{i}");
                let value = format!("{tag}-value-{i}");
                LegacyMessage::new(
                    Some(key.as_bytes()),
                    Some(value.as_bytes()),
                    1_600_000_000_000 + i as i64,
                )
            })
            .collect()
    };
    let sets = [
        (Magic::V0, LegacyCodec::None, "v0-plain", 2, 1),
        (Magic::V1, LegacyCodec::Gzip, "v1-gzip", 5, 2),
        (Magic::V0, LegacyCodec::Snappy, "v0-snappy", 3, 3),
        (Magic::V1, LegacyCodec::Snappy, "v1-snappy", 2, 2),
        (Magic::V0, LegacyCodec::Gzip, "v0-gzip", 2, 2),
    ];
    let mut expected = vec![(0, None, b"before".to_vec())];
    for (magic, codec, tag, n, per_wrapper) in sets {
        let offsets =
            cluster.produce_legacy(TOPIC, 0, magic, codec, &messages(tag, n), per_wrapper);
        assert_eq!(offsets.end - offsets.start, n as i64);
        for (i, offset) in offsets.enumerate() {
            let key = format!("{tag}-key-{i}").into_bytes();
            expected.push((offset, Some(key), format!("{tag}-value-{i}").into_bytes()));
        }
    }
    librdkafka_produce(cluster.tansu(), TOPIC, "none", &[plain("after")]);
    expected.push((expected.len() as i64, None, b"after".to_vec()));

    let got: Vec<(i64, Option<Vec<u8>>, Vec<u8>)> =
        librdkafka_read(&cluster.addr(1), "g", TOPIC, expected.len())
            .into_iter()
            .map(|r| (r.offset, r.key, r.value.unwrap_or_default()))
            .collect();
    assert_eq!(got, expected);
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

// ------------------------------------------------------------------------------------
// Helpers

fn connect(cluster: &Cluster, id: i32) -> RawConnection {
    RawConnection::connect(&cluster.addr(id), READ_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to broker {id}: {e}"))
}

fn topic_name() -> TopicName {
    TopicName(StrBytes::from_static_str(TOPIC))
}

fn group() -> GroupId {
    GroupId(StrBytes::from_static_str("g"))
}

fn metadata_request(version: i16) -> MetadataRequest {
    let topic = MetadataRequestTopic::default().with_name(Some(topic_name()));
    let request = MetadataRequest::default().with_topics(Some(vec![topic]));
    if version >= 4 {
        request.with_allow_auto_topic_creation(false)
    } else {
        request
    }
}

/// (partition, leader) of the test topic, by partition.
fn leaders(answer: &MetadataResponse) -> Vec<(i32, i32)> {
    let mut out: Vec<(i32, i32)> = answer
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect();
    out.sort();
    out
}

/// (node id, port) a FindCoordinator of `version` at broker `at` names.
fn find_coordinator(cluster: &Cluster, at: i32, version: i16) -> (i32, i32) {
    let mut conn = connect(cluster, at);
    let mut request = FindCoordinatorRequest::default();
    if version >= 4 {
        request.coordinator_keys = vec![StrBytes::from_static_str("g")];
    } else {
        request.key = StrBytes::from_static_str("g");
    }
    let answer = conn
        .call(version, &request)
        .unwrap_or_else(|e| panic!("FindCoordinator v{version}: {e}"));
    if version >= 4 {
        let c: &Coordinator = &answer.coordinators[0];
        assert_eq!(c.error_code, 0);
        (c.node_id.0, c.port)
    } else {
        assert_eq!(answer.error_code, 0);
        (answer.node_id.0, answer.port)
    }
}

/// A Fetch of the test topic's (partition, current leader epoch) from offset 0.
fn fetch_request(partitions: &[(i32, i32)]) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(10)
        .with_min_bytes(1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(topic_name())
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&(p, epoch)| {
                            FetchPartition::default()
                                .with_partition(p)
                                .with_current_leader_epoch(epoch)
                                .with_partition_max_bytes(1 << 20)
                        })
                        .collect(),
                ),
        ])
}

fn partition(
    answer: &FetchResponse,
    p: i32,
) -> &kafka_protocol::messages::fetch_response::PartitionData {
    answer
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .find(|x| x.partition_index == p)
        .unwrap_or_else(|| panic!("partition {p} missing from the Fetch answer {answer:?}"))
}

/// One record to `partition` of the test topic, straight to tansu.
fn produce_direct(cluster: &Cluster, partition: i32, value: &[u8]) {
    let batch = hostile_batch::batch(
        Codec::None,
        &[hostile_batch::record(0, vec![Piece::Bytes(value.to_vec())])],
    );
    hostile_batch::produce_raw(&cluster.tansu().addr(), TOPIC, partition, batch);
}
