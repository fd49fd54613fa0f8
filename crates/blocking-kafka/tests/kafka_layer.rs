//! The client (`blocking_kafka`) against a real broker (a private tansu per
//! test) and an independent client (librdkafka, through kafka-testkit's interop/kafka_tool.py):
//!
//! - interop: librdkafka's records, in every codec, are consumed byte-exact; committed
//!   offsets are shared with librdkafka consumers of the same group, both ways;
//! - start positions: `StartFrom::Latest` and `Earliest` when nothing is committed;
//! - groups: two members split a topic without overlap; when one leaves, or its caller
//!   stops polling, the other takes every partition over from the committed offsets;
//! - failures: an unreachable bootstrap server, and a connection cut, refused or frozen
//!   mid-request by a proxy (kafka-testkit's proxy.rs, itself checked here against an echo
//!   server), give retriable errors within a bounded time, and the next calls carry on
//!   without losing or repeating a record.
//!
//! Not here: the encoding of our OffsetCommit request (unit-tested in src/group.rs),
//! and the reset of a committed offset that is out of range: tansu 0.6 answers a fetch
//! beyond the log end with an empty success instead of OFFSET_OUT_OF_RANGE (librdkafka
//! stalls there too), so no test against it can reach that path.
//!
//! A group join takes about half the session timeout on tansu (3 s here), so each test
//! joins as few times as it can; everything else waits for conditions with deadlines.

use crossbeam_channel::{self as mpsc, Receiver, RecvTimeoutError, Sender};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use blocking_kafka::{
    Assignment, BackoffSettings, Consumer, ConsumerSettings, GroupSignal, KafkaError, Message,
    Offset, Partition, StartFrom,
};
use bytes::Bytes;
use kafka_testkit::proxy::{Proxy, broker_behind_proxy};
use kafka_testkit::{
    Broker, OutMessage, librdkafka_committed, librdkafka_consume, librdkafka_produce, produce,
    wait_until,
};

/// Short enough that a silent member is noticed quickly, long enough for a loaded machine;
/// tansu completes a join in about half of it.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// Also the longest a caller may leave the consumer alone (Kafka's max.poll.interval.ms).
const REBALANCE_TIMEOUT: Duration = SESSION_TIMEOUT;
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// tansu holds an empty fetch for about half of this: short, so loops stay responsive.
const FETCH_MAX_WAIT: Duration = Duration::from_millis(100);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A join on tansu takes ~3 s; a rebalance with a member that must first notice it (one
/// heartbeat interval) a little more. Generous for a loaded 2-core machine.
const JOIN_DEADLINE: Duration = Duration::from_secs(20);
/// For the librdkafka tool: its group join alone takes ~3 s on tansu.
const LIBRDKAFKA_TIMEOUT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------------
// Interop: librdkafka produces, we consume

#[test]
fn records_produced_by_librdkafka_with_every_codec_are_consumed_byte_exact() {
    let broker = Broker::start();
    broker.create_topic("codecs", 3);
    let mut want = Vec::new();
    // One produce call per codec, so every codec gets record batches of its own, each
    // holding several records (the tool lingers 20 ms).
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let sent = varied_messages(codec);
        let placed = librdkafka_produce(&broker, "codecs", codec, &sent);
        assert_eq!(placed.len(), sent.len(), "acknowledgements for {codec}");
        want.extend(
            sent.into_iter()
                .zip(placed)
                .map(|(m, (partition, offset))| Expected {
                    partition,
                    offset,
                    key: m.key,
                    value: m.value,
                    headers: m.headers,
                }),
        );
    }

    let (mut consumer, assignment) = joined(settings(
        &broker.addr(),
        "codecs-reader",
        "codecs",
        StartFrom::Earliest,
    ));
    assert_eq!(starts(&assignment), unknown(&[0, 1, 2]));
    let got = fetch_count(&mut consumer, want.len(), Duration::from_secs(20));

    let mut got: Vec<Expected> = got.iter().map(Expected::from).collect();
    got.sort_by_key(|m| (m.partition, m.offset));
    want.sort_by_key(|m| (m.partition, m.offset));
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "record {}/{}", w.partition, w.offset);
    }
}

#[test]
fn repeated_header_names_in_a_librdkafka_record_all_reach_the_consumer() {
    // Kafka headers are a list, not a map: a name may repeat, and order matters.
    let broker = Broker::start();
    broker.create_topic("headers", 1);
    let sent = OutMessage {
        partition: Some(0),
        key: Some(b"k".to_vec()),
        value: Some(b"v".to_vec()),
        headers: vec![
            ("trace".into(), Some(b"first".to_vec())),
            ("other".into(), None),
            ("trace".into(), Some(b"second".to_vec())),
        ],
    };
    let placed = librdkafka_produce(&broker, "headers", "none", std::slice::from_ref(&sent));
    let (mut consumer, _) = joined(settings(
        &broker.addr(),
        "headers-reader",
        "headers",
        StartFrom::Earliest,
    ));
    let got = fetch_count(&mut consumer, 1, Duration::from_secs(10));
    assert_eq!(
        Expected::from(&got[0]),
        Expected {
            partition: placed[0].0,
            offset: placed[0].1,
            key: sent.key,
            value: sent.value,
            headers: sent.headers,
        }
    );
}

// ------------------------------------------------------------------------------------
// Interop: committed offsets are shared with librdkafka

#[test]
fn offsets_committed_by_our_consumer_are_where_librdkafka_resumes() {
    let broker = Broker::start();
    broker.create_topic("handoff", 3);
    let placed = produce_per_partition(&broker, "handoff", &[4, 4, 4]);

    let mut s = settings(
        &broker.addr(),
        "handoff-group",
        "handoff",
        StartFrom::Earliest,
    );
    // librdkafka's default strategy below is range (then roundrobin). Kafka lets an empty
    // group take any assignor; tansu 0.6 keeps an emptied group's first one for good, and
    // would refuse librdkafka (INCONSISTENT_GROUP_PROTOCOL) had we formed it on
    // cooperative-sticky.
    s.assignors = vec![blocking_kafka::Assignor::Range];
    let (mut consumer, _) = joined(s);
    fetch_count(&mut consumer, placed.len(), Duration::from_secs(10));
    // "Done up to" a different point in each partition.
    let done = at(&[(0, 1), (1, 2), (2, 3)]);
    consumer
        .commit_sync(&done, REQUEST_TIMEOUT)
        .expect("commit");
    consumer.leave().expect("leave the group");

    let committed = librdkafka_committed(&broker, "handoff-group", "handoff");
    assert_eq!(
        committed,
        BTreeMap::from([(0, Some(1)), (1, Some(2)), (2, Some(3))]),
        "offsets as librdkafka reads them"
    );

    let rest = from_commits(&placed, &done);
    let mut got: Vec<(i32, i64)> = librdkafka_consume(
        &broker,
        "handoff-group",
        "handoff",
        rest.len(),
        LIBRDKAFKA_TIMEOUT,
    )
    .iter()
    .map(|m| (m.partition, m.offset))
    .collect();
    got.sort();
    assert_eq!(got, rest, "librdkafka resumes where we committed");
}

#[test]
fn offsets_committed_by_librdkafka_are_where_our_consumer_starts() {
    let broker = Broker::start();
    broker.create_topic("takeover", 3);
    // A different number per partition, so each partition's commit differs.
    let first = produce_per_partition(&broker, "takeover", &[1, 2, 3]);
    librdkafka_consume(
        &broker,
        "takeover-group",
        "takeover",
        first.len(),
        LIBRDKAFKA_TIMEOUT,
    );
    assert_eq!(
        librdkafka_committed(&broker, "takeover-group", "takeover"),
        BTreeMap::from([(0, Some(1)), (1, Some(2)), (2, Some(3))]),
    );
    let second = produce_per_partition(&broker, "takeover", &[2, 2, 2]);

    // Earliest, so a consumer that ignored the commits would read `first` again.
    let (mut consumer, assignment) = joined(settings(
        &broker.addr(),
        "takeover-group",
        "takeover",
        StartFrom::Earliest,
    ));
    assert_eq!(starts(&assignment), known(&[(0, 1), (1, 2), (2, 3)]));
    let parts = [Partition(0), Partition(1), Partition(2)];
    let committed = consumer.committed(&parts).expect("committed offsets");
    for (p, o) in at(&[(0, 1), (1, 2), (2, 3)]) {
        assert_eq!(committed[&p], Some(o), "committed offset of partition {p}");
    }
    let mut got = offsets_of(&fetch_count(
        &mut consumer,
        second.len(),
        Duration::from_secs(10),
    ));
    got.sort();
    assert_eq!(
        got, second,
        "exactly the records after librdkafka's commits"
    );
}

// ------------------------------------------------------------------------------------
// Start positions without a committed offset

#[test]
fn latest_without_a_committed_offset_starts_at_the_log_end() {
    let broker = Broker::start();
    broker.create_topic("fresh", 3);
    produce_per_partition(&broker, "fresh", &[2, 2, 2]);

    let (mut consumer, assignment) = joined(settings(
        &broker.addr(),
        "fresh-latest",
        "fresh",
        StartFrom::Latest,
    ));
    // Nothing committed: each partition's leader resets it before the first fetch.
    assert_eq!(starts(&assignment), unknown(&[0, 1, 2]));
    let parts = [Partition(0), Partition(1), Partition(2)];
    let ends = consumer
        .log_offsets(&parts, StartFrom::Latest)
        .expect("log end offsets");
    for p in parts {
        assert_eq!(ends[&p], Offset(2), "log end of partition {p}");
    }
    wait_for_positions(&mut consumer, &at(&[(0, 2), (1, 2), (2, 2)]));
    // Nothing before the join arrives; what comes after does.
    assert_eq!(offsets_of(&consumer.fetch()), vec![]);
    let after = produce_per_partition(&broker, "fresh", &[1, 1, 1]);
    let mut got = offsets_of(&fetch_count(&mut consumer, 3, Duration::from_secs(10)));
    got.sort();
    assert_eq!(got, after);
}

#[test]
fn earliest_without_a_committed_offset_starts_at_offset_zero() {
    let broker = Broker::start();
    broker.create_topic("backlog", 3);
    let before = produce_per_partition(&broker, "backlog", &[2, 1, 3]);

    let (mut consumer, assignment) = joined(settings(
        &broker.addr(),
        "backlog-earliest",
        "backlog",
        StartFrom::Earliest,
    ));
    assert_eq!(starts(&assignment), unknown(&[0, 1, 2]));
    let mut got = offsets_of(&fetch_count(
        &mut consumer,
        before.len(),
        Duration::from_secs(10),
    ));
    assert_eq!(
        [0, 1, 2].map(|p| consumer.position(Partition(p))),
        [Some(Offset(2)), Some(Offset(1)), Some(Offset(3))]
    );
    got.sort();
    assert_eq!(got, before);
}

// ------------------------------------------------------------------------------------
// Groups: two members, one leaves or goes silent

#[test]
fn when_a_member_leaves_the_other_owns_every_partition_from_the_committed_offsets() {
    let group = TwoMembers::start("leaver");
    group.a.leave();
    let took = group.wait_for_sole_owner("b", SESSION_TIMEOUT);
    eprintln!("b owned every partition {took:?} after a left");
    group.check_resumed_from_commits("b");
    group.view.check_no_overlap();
    group.stop();
}

#[test]
fn when_a_member_stops_polling_the_other_owns_every_partition_after_the_rebalance_timeout() {
    let group = TwoMembers::start("silent");
    let mut zombie = group.a.stall();
    // a's group thread heartbeats on, but its caller is silent: after the rebalance timeout
    // (Kafka's max.poll.interval.ms; 6 s here, as the session) it leaves the group, and b
    // notices at its next heartbeat and rejoins (a join on tansu: about half the session).
    let bound = REBALANCE_TIMEOUT + SESSION_TIMEOUT / 2 + Duration::from_secs(3);
    let took = group.wait_for_sole_owner("b", bound);
    eprintln!("b owned every partition {took:?} after a went silent");
    assert!(
        took >= REBALANCE_TIMEOUT - Duration::from_secs(1),
        "b took over after {took:?}, before a's caller could have been overdue"
    );
    group.check_resumed_from_commits("b");

    // The silent member wakes up: its generation is over, so its commit must not overwrite
    // the new owner's progress, and its next heartbeat tells it to rejoin.
    let err = zombie
        .commit_sync(&at(&[(0, 4)]), REQUEST_TIMEOUT)
        .expect_err("a commit from an expired member");
    assert!(
        matches!(err, KafkaError::Broker { code: 22 | 25, .. }),
        "ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID expected: {err:?}"
    );
    let committed = zombie.committed(&[Partition(0)]).expect("committed");
    assert_eq!(committed[&Partition(0)], Some(Offset(1)));
    wait_until(
        "the expired member to be told to rejoin",
        REQUEST_TIMEOUT,
        || matches!(zombie.heartbeat(), Ok(GroupSignal::Rejoin(_))).then_some(()),
    );
    group.stop();
}

// ------------------------------------------------------------------------------------
// Failures

#[test]
fn bootstrap_to_a_closed_port_is_unreachable_naming_the_address_within_the_deadline() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").to_string()
    }; // Dropped: nothing listens there now.
    let mut consumer = Consumer::new(settings(&addr, "nobody", "nothing", StartFrom::Earliest));
    let waits = Mutex::new(0u32);
    let deadline = Duration::from_secs(2);
    let started = Instant::now();
    let result = consumer.connect(started + deadline, &|wait| {
        *waits.lock().expect("waits") += 1;
        thread::sleep(wait);
        false
    });
    let took = started.elapsed();
    let err = result.expect_err("a closed port must not connect");

    assert!(matches!(err, KafkaError::Unreachable { .. }), "{err:?}");
    assert!(err.is_retriable(), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&addr), "names the address: {text}");
    assert!(text.contains("is the broker running?"), "{text}");
    assert!(
        took >= deadline,
        "gave up after {took:?}, before the deadline"
    );
    assert!(took < Duration::from_secs(4), "gave up only after {took:?}");
    assert!(*waits.lock().expect("waits") >= 2, "retried with backoff");

    // Any later call fails the same way, at once rather than after a timeout.
    let started = Instant::now();
    let err = consumer.join().expect_err("join without a broker");
    assert!(matches!(err, KafkaError::Unreachable { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_connection_cut_mid_fetch_is_told_and_fetching_resumes_without_loss_or_duplicates() {
    let (broker, proxy) = broker_behind_proxy();
    broker.create_topic("cut", 1);
    let first = produce_per_partition(&broker, "cut", &[5]);
    // A long fetch wait, so an empty fetch is held by the broker (about half of this)
    // long enough for the test to cut the connection while it is outstanding.
    let fetch_wait = Duration::from_secs(2);
    let mut s = settings(&proxy.addr(), "cut-group", "cut", StartFrom::Earliest);
    s.fetch_max_wait = fetch_wait;
    let (mut consumer, _) = joined(s);
    let mut got = fetch_count(&mut consumer, first.len(), Duration::from_secs(10));
    assert_eq!(consumer.position(Partition(0)), Some(Offset(5)));

    // The fetch thread fetches again at once and the broker holds that fetch: cut then.
    let sent_before = proxy.bytes_upstream();
    wait_until("the next fetch to reach the broker", fetch_wait, || {
        (proxy.bytes_upstream() > sent_before).then_some(())
    });
    proxy.cut();
    // The same broker is the coordinator: its heartbeats fail too, promptly (the proxy
    // refuses new connections) and retriably.
    let started = Instant::now();
    let err = wait_until("a heartbeat to fail", REQUEST_TIMEOUT, || {
        consumer.heartbeat().err()
    });
    assert!(err.is_retriable(), "{err:?}");
    eprintln!(
        "a heartbeat failed {:?} after the cut: {err}",
        started.elapsed()
    );
    assert!(consumer.fetch().is_empty(), "nothing fetched while cut");
    assert_eq!(consumer.position(Partition(0)), Some(Offset(5)));

    proxy.restore();
    let second = produce_per_partition(&broker, "cut", &[5]);
    got.extend(fetch_count(
        &mut consumer,
        second.len(),
        Duration::from_secs(10),
    ));
    assert_eq!(
        offsets_of(&got),
        [first, second].concat(),
        "every record once, in order"
    );
    assert_eq!(consumer.position(Partition(0)), Some(Offset(10)));
    assert_eq!(
        consumer.heartbeat_now().expect("heartbeat"),
        GroupSignal::Fine
    );
}

#[test]
fn a_connection_cut_mid_heartbeat_is_retriable_and_the_membership_survives() {
    let (broker, proxy) = broker_behind_proxy();
    broker.create_topic("beat", 3);
    let (mut consumer, assignment) = joined(settings(
        &proxy.addr(),
        "beat-group",
        "beat",
        StartFrom::Earliest,
    ));
    let mine = consumer.assigned();
    assert_eq!(mine.len(), 3, "{assignment:?}");

    proxy.cut();
    let started = Instant::now();
    let err = consumer
        .heartbeat_now()
        .expect_err("a heartbeat whose connection was cut");
    assert!(err.is_retriable(), "{err:?}");
    assert!(
        started.elapsed() < REQUEST_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    let err = consumer
        .commit_sync(&at(&[(0, 0)]), REQUEST_TIMEOUT)
        .expect_err("a commit while cut");
    assert!(err.is_retriable(), "{err:?}");

    proxy.restore();
    // Back well within the session timeout: still a member of the same generation.
    assert_eq!(
        consumer.heartbeat_now().expect("heartbeat"),
        GroupSignal::Fine
    );
    consumer
        .commit_sync(&at(&[(1, 0)]), REQUEST_TIMEOUT)
        .expect("commit after restore");
    assert_eq!(consumer.assigned(), mine);
    let committed = consumer.committed(&mine).expect("committed offsets");
    assert_eq!(committed[&Partition(1)], Some(Offset(0)));
}

#[test]
fn a_broker_that_stops_answering_times_out_within_the_request_timeout() {
    let (broker, proxy) = broker_behind_proxy();
    broker.create_topic("frozen", 1);
    // Shorter than usual so the member's session (6 s) survives the outage plus a retry.
    let request_timeout = Duration::from_secs(2);
    let mut s = settings(&proxy.addr(), "frozen-group", "frozen", StartFrom::Earliest);
    s.request_timeout = request_timeout;
    let (mut consumer, _) = joined(s);

    proxy.freeze();
    let started = Instant::now();
    // The next heartbeat (within an interval) waits for its answer one request timeout.
    let err = wait_until(
        "a heartbeat to time out",
        request_timeout + HEARTBEAT_INTERVAL * 4,
        || consumer.heartbeat().err(),
    );
    let took = started.elapsed();
    assert!(matches!(err, KafkaError::Timeout { .. }), "{err:?}");
    assert!(err.is_retriable(), "{err:?}");
    assert!(
        took >= request_timeout && took < request_timeout + HEARTBEAT_INTERVAL * 3,
        "the heartbeat gave up after {took:?}"
    );

    proxy.restore();
    assert_eq!(
        consumer.heartbeat_now().expect("heartbeat"),
        GroupSignal::Fine
    );
    let placed = produce_per_partition(&broker, "frozen", &[1]);
    let got = fetch_count(&mut consumer, 1, Duration::from_secs(10));
    assert_eq!(offsets_of(&got), placed);
}

#[test]
fn the_test_proxy_forwards_cuts_refuses_freezes_and_restores() {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
    let upstream_addr = upstream.local_addr().expect("echo address").to_string();
    let proxy = Proxy::start(&upstream_addr);
    let proxy_addr = proxy.addr();
    let connect = || {
        let stream = std::net::TcpStream::connect(&proxy_addr).expect("connect to the proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("read timeout");
        stream
    };
    // Set when the test is over, pass or fail: the echo server stops accepting. Without it a
    // failed assertion would leave the server blocked in `accept` and `thread::scope` waiting
    // for it forever, and a stray connection (another test probing a port it just freed) is
    // served harmlessly instead of taking the place of one the proxy passes on.
    let done = std::sync::atomic::AtomicBool::new(false);
    upstream.set_nonblocking(true).expect("non-blocking accept");
    thread::scope(|scope| {
        struct Done<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _done_on_exit = Done(&done);
        let echo = scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok((mut stream, _)) = upstream.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                stream.set_nonblocking(false).expect("blocking echo stream");
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("echo read timeout");
                scope.spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });

        let mut first = connect();
        assert_eq!(echo_through(&mut first, b"hello"), b"hello");
        assert_eq!(proxy.bytes_upstream(), 5);
        assert_eq!(proxy.open_connections(), 1);

        proxy.cut();
        assert_eq!(proxy.open_connections(), 0);
        assert_eq!(
            read_some(&mut first),
            Vec::<u8>::new(),
            "cut: end of stream"
        );
        let mut refused = connect();
        assert_eq!(
            read_some(&mut refused),
            Vec::<u8>::new(),
            "refused while cut"
        );

        proxy.restore();
        let mut second = connect();
        assert_eq!(echo_through(&mut second, b"again"), b"again");

        proxy.freeze();
        second.write_all(b"held").expect("write");
        second
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let err = second
            .read(&mut [0u8; 16])
            .expect_err("nothing passes a frozen proxy");
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err:?}"
        );
        second
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("read timeout");
        proxy.restore();
        assert_eq!(read_some(&mut second), b"held", "delivered after restore");

        drop(proxy);
        assert_eq!(read_some(&mut second), Vec::<u8>::new(), "closed on drop");
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        echo.join().expect("the echo server");
    });
}

// ------------------------------------------------------------------------------------
// Helpers: settings, joining, fetching

fn settings(bootstrap: &str, group: &str, topic: &str, start_from: StartFrom) -> ConsumerSettings {
    ConsumerSettings {
        bootstrap: vec![bootstrap.to_owned()],
        client_id: format!("kafka-layer-test-{group}"),
        group_id: group.to_owned(),
        group_instance_id: None,
        assignors: blocking_kafka::Assignor::DEFAULT.to_vec(),
        topic: topic.to_owned(),
        session_timeout: SESSION_TIMEOUT,
        rebalance_timeout: REBALANCE_TIMEOUT,
        heartbeat_interval: HEARTBEAT_INTERVAL,
        fetch_max_wait: FETCH_MAX_WAIT,
        request_timeout: REQUEST_TIMEOUT,
        connect_timeout: REQUEST_TIMEOUT,
        retry_backoff: BackoffSettings::RETRY,
        reconnect_backoff: BackoffSettings::RECONNECT,
        start_from,
        security: Default::default(),
        record_limits: Default::default(),
    }
}

/// A consumer that has connected and joined its group (as its only member).
fn joined(settings: ConsumerSettings) -> (Consumer, Assignment) {
    let mut consumer = Consumer::new(settings);
    connect(&mut consumer);
    let started = Instant::now();
    let assignment = consumer.join().expect("join the group");
    eprintln!("joined in {:?}: {assignment:?}", started.elapsed());
    (consumer, assignment)
}

fn connect(consumer: &mut Consumer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let connected = consumer
        .connect(deadline, &|wait| {
            thread::sleep(wait);
            false
        })
        .expect("connect to the broker");
    assert!(connected, "connect was not cancelled");
}

/// Fetches (heartbeating as the poller does) until `count` records have arrived.
/// Panics on a rebalance: these consumers are their group's only member.
fn fetch_count(consumer: &mut Consumer, count: usize, deadline: Duration) -> Vec<Message> {
    let mut got = Vec::new();
    wait_until(&format!("{count} records"), deadline, || {
        match consumer.heartbeat() {
            Ok(GroupSignal::Rejoin(why)) => {
                panic!("unexpected rebalance of a one-member group: {why}")
            }
            // A heartbeat that failed during an outage a test made, told late: retried.
            Err(e) => eprintln!("heartbeat: {e}"),
            Ok(_) => {}
        }
        let more = consumer.fetch();
        if more.is_empty() {
            wait_for_event(consumer);
        }
        got.extend(more);
        (got.len() >= count).then_some(())
    });
    assert_eq!(got.len(), count, "more records than produced: {got:?}");
    got
}

/// Waits (briefly) for the consumer's threads to report something, as a caller's event
/// loop does, and hands it over.
fn wait_for_event(consumer: &mut Consumer) {
    if let Ok(event) = consumer.events().recv_timeout(Duration::from_millis(50)) {
        consumer.handle(event);
    }
}

/// Waits until the consumer knows these positions (partitions reset by their leaders).
fn wait_for_positions(consumer: &mut Consumer, want: &[(Partition, Offset)]) {
    wait_until("the start positions", Duration::from_secs(10), || {
        assert!(consumer.fetch().is_empty(), "nothing to fetch yet");
        wait_for_event(consumer);
        want.iter()
            .all(|(p, o)| consumer.position(*p) == Some(*o))
            .then_some(())
    });
}

trait HeartbeatNow {
    /// Waits for the group thread's next heartbeat and returns what it learned.
    fn heartbeat_now(&mut self) -> Result<GroupSignal, KafkaError>;
}

impl HeartbeatNow for Consumer {
    fn heartbeat_now(&mut self) -> Result<GroupSignal, KafkaError> {
        // Whatever came before is old news.
        let _ = self.heartbeat();
        wait_until(
            "the next heartbeat",
            HEARTBEAT_INTERVAL * 2 + REQUEST_TIMEOUT,
            || match self.heartbeat() {
                Ok(GroupSignal::NotDue) => {
                    wait_for_event(self);
                    None
                }
                other => Some(other),
            },
        )
    }
}

/// Produces `counts[p]` records to each partition `p` (values "p/i"), in order; returns
/// their (partition, offset), sorted.
fn produce_per_partition(broker: &Broker, topic: &str, counts: &[usize]) -> Vec<(i32, i64)> {
    let mut placed = Vec::new();
    for (p, &count) in counts.iter().enumerate() {
        let p = i32::try_from(p).expect("a partition number");
        for i in 0..count {
            let value = format!("{p}/{i}");
            placed.push(produce(
                broker,
                topic,
                Some(p),
                Some(b"k"),
                value.as_bytes(),
                &[],
            ));
        }
    }
    placed.sort();
    placed
}

/// Writes `data` and reads until as many bytes came back (or the stream ended).
fn echo_through(stream: &mut std::net::TcpStream, data: &[u8]) -> Vec<u8> {
    stream.write_all(data).expect("write");
    let mut got = Vec::new();
    while got.len() < data.len() {
        let more = read_some(stream);
        if more.is_empty() {
            break;
        }
        got.extend(more);
    }
    got
}

/// One read: what arrived, or nothing at end of stream (a reset counts as an end too).
fn read_some(stream: &mut std::net::TcpStream) -> Vec<u8> {
    let mut buf = [0u8; 1024];
    match stream.read(&mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Vec::new(),
        Err(e) => panic!("read through the proxy: {e}"),
    }
}

/// The records of `placed` at or after the committed offset of their partition.
fn from_commits(placed: &[(i32, i64)], committed: &[(Partition, Offset)]) -> Vec<(i32, i64)> {
    let committed: BTreeMap<i32, i64> = committed.iter().map(|(p, o)| (p.0, o.0)).collect();
    placed
        .iter()
        .copied()
        .filter(|(p, o)| committed.get(p).is_none_or(|c| o >= c))
        .collect()
}

fn offsets_of(messages: &[Message]) -> Vec<(i32, i64)> {
    messages
        .iter()
        .map(|m| (m.partition.0, m.offset.0))
        .collect()
}

fn at(pairs: &[(i32, i64)]) -> Vec<(Partition, Offset)> {
    pairs
        .iter()
        .map(|&(p, o)| (Partition(p), Offset(o)))
        .collect()
}

fn starts(assignment: &Assignment) -> Vec<(Partition, Option<Offset>)> {
    let mut starts = assignment.partitions.clone();
    starts.sort();
    starts
}

/// Start positions committed: known at the join.
fn known(pairs: &[(i32, i64)]) -> Vec<(Partition, Option<Offset>)> {
    pairs
        .iter()
        .map(|&(p, o)| (Partition(p), Some(Offset(o))))
        .collect()
}

/// No committed offsets: reset by the leaders after the join.
fn unknown(partitions: &[i32]) -> Vec<(Partition, Option<Offset>)> {
    partitions.iter().map(|&p| (Partition(p), None)).collect()
}

/// Records that exercise the decoders: keys absent, empty and binary; values absent
/// (a tombstone), empty, binary, large and compressible; headers with null, empty and
/// binary values. Spread over partitions 0-2.
fn varied_messages(codec: &str) -> Vec<OutMessage> {
    let all_bytes: Vec<u8> = (0..=255).collect();
    let big: Vec<u8> = format!("{codec} provisioning request; ")
        .repeat(2000)
        .into_bytes();
    let values: Vec<Option<Vec<u8>>> = vec![
        Some(format!("{{\"codec\":\"{codec}\"}}").into_bytes()),
        Some(all_bytes.clone()),
        None,
        Some(Vec::new()),
        Some(big),
        Some([all_bytes.as_slice(), codec.as_bytes()].concat()),
    ];
    let keys: Vec<Option<Vec<u8>>> = vec![
        Some(codec.as_bytes().to_vec()),
        None,
        Some(vec![0, 0xff, 0x80, 0x7f]),
        Some(Vec::new()),
    ];
    (0..12)
        .map(|i| OutMessage {
            partition: Some(i32::try_from(i % 3).expect("small")),
            key: keys[i % keys.len()].clone(),
            value: values[i % values.len()].clone(),
            headers: match i % 3 {
                0 => vec![],
                1 => vec![("codec".into(), Some(codec.as_bytes().to_vec()))],
                _ => vec![
                    ("null".into(), None),
                    ("empty".into(), Some(Vec::new())),
                    ("bin".into(), Some(all_bytes.clone())),
                ],
            },
        })
        .collect()
}

/// A record in a form both sides can be compared in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl From<&Message> for Expected {
    fn from(m: &Message) -> Expected {
        let bytes = |b: &Option<Bytes>| b.as_ref().map(|b| b.to_vec());
        Expected {
            partition: m.partition.0,
            offset: m.offset.0,
            key: bytes(&m.key),
            value: bytes(&m.value),
            headers: m
                .headers
                .iter()
                .map(|(name, v)| (name.clone(), bytes(v)))
                .collect(),
        }
    }
}

// ------------------------------------------------------------------------------------
// Helpers: two group members, each driven from its own thread like the poller drives one

const GROUP_TOPIC: &str = "jobs";
const RECORDS_PER_PARTITION: usize = 5;

/// What each member commits before one of them goes away: partition p "done" up to p + 1.
fn commits() -> Vec<(Partition, Offset)> {
    at(&[(0, 1), (1, 2), (2, 3)])
}

/// A broker with a 3-partition topic of 5 records per partition, and members "a" and "b"
/// of one group that own disjoint parts of it, covering all of it, and have committed
/// [`commits`].
struct TwoMembers {
    a: Member,
    b: Member,
    view: Arc<GroupView>,
    placed: Vec<(i32, i64)>,
    /// Dropped last: the members' threads talk to it until `stop`.
    _broker: Broker,
}

impl TwoMembers {
    fn start(group: &str) -> TwoMembers {
        let broker = Broker::start();
        broker.create_topic(GROUP_TOPIC, 3);
        let placed = produce_per_partition(&broker, GROUP_TOPIC, &[RECORDS_PER_PARTITION; 3]);
        let view = Arc::new(GroupView::default());
        let mut s = settings(&broker.addr(), group, GROUP_TOPIC, StartFrom::Earliest);
        // The eager protocol: every rebalance revokes everything and joins anew, which is
        // what these tests check (start offsets at a join, fetched since it). The
        // cooperative protocol has tests of its own (tests/group.rs).
        s.assignors = vec![blocking_kafka::Assignor::Range];
        let a = Member::start("a", s.clone(), &view);
        let b = Member::start("b", s, &view);

        let started = Instant::now();
        let split = wait_until("a and b to split the topic", JOIN_DEADLINE, || {
            let owned = view.owned();
            let (a, b) = (owned.get("a")?, owned.get("b")?);
            let all: BTreeSet<Partition> = a.union(b).copied().collect();
            let covered = a.is_disjoint(b) && all.len() == 3 && !a.is_empty() && !b.is_empty();
            covered.then(|| (a.clone(), b.clone()))
        });
        eprintln!("split after {:?}: {split:?}", started.elapsed());
        view.check_no_overlap();

        // Each member commits for the partitions it owns.
        let (for_a, for_b): (Vec<_>, Vec<_>) = commits()
            .into_iter()
            .partition(|(p, _)| split.0.contains(p));
        a.commit(for_a);
        b.commit(for_b);
        TwoMembers {
            a,
            b,
            view,
            placed,
            _broker: broker,
        }
    }

    /// Waits until `name` owns all three partitions; returns how long that took.
    fn wait_for_sole_owner(&self, name: &'static str, deadline: Duration) -> Duration {
        let started = Instant::now();
        wait_until(&format!("{name} to own every partition"), deadline, || {
            (self.view.owned().get(name)?.len() == 3).then_some(())
        });
        started.elapsed()
    }

    /// `name`'s last join started each partition at the committed offset, and it then
    /// fetched exactly the records from there on.
    fn check_resumed_from_commits(&self, name: &'static str) {
        let state = self.view.state();
        let start = state.starts.get(name).expect("a join");
        let want: Vec<(Partition, Option<Offset>)> =
            commits().into_iter().map(|(p, o)| (p, Some(o))).collect();
        assert_eq!(start, &want, "{name} starts at the committed offsets");
        drop(state);

        let rest = from_commits(&self.placed, &commits());
        let got = wait_until(
            &format!("{name} to fetch the {} uncommitted records", rest.len()),
            Duration::from_secs(10),
            || {
                let state = self.view.state();
                let got = state.fetched.get(name)?;
                (got.len() >= rest.len()).then(|| got.clone())
            },
        );
        let mut got = offsets_of(&got);
        got.sort();
        assert_eq!(got, rest, "{name} fetched from the committed offsets on");
    }

    fn stop(self) {
        self.a.stop();
        self.b.stop();
        self.view.check_errors();
    }
}

/// What the test sees of the members: recorded by their threads under one lock, so the
/// order of events is the order in which they happened.
#[derive(Default)]
struct GroupView {
    state: Mutex<ViewState>,
}

#[derive(Default, Clone)]
struct ViewState {
    /// The partitions each member owns now (between a join and the next revoke).
    owned: BTreeMap<&'static str, BTreeSet<Partition>>,
    /// Each member's start offsets at its last join, sorted.
    starts: BTreeMap<&'static str, Vec<(Partition, Option<Offset>)>>,
    /// What each member fetched since its last join.
    fetched: BTreeMap<&'static str, Vec<Message>>,
    /// Partitions handed to a member while another still owned them.
    overlaps: Vec<String>,
    /// Errors the members' loops met (retried, but worth showing on failure).
    errors: Vec<String>,
}

impl GroupView {
    fn state(&self) -> std::sync::MutexGuard<'_, ViewState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn owned(&self) -> BTreeMap<&'static str, BTreeSet<Partition>> {
        self.state().owned.clone()
    }

    fn revoked(&self, name: &'static str) {
        self.state().owned.insert(name, BTreeSet::new());
    }

    fn assigned(&self, name: &'static str, assignment: &Assignment) {
        let mut state = self.state();
        let mine: BTreeSet<Partition> = assignment.partitions.iter().map(|(p, _)| *p).collect();
        let clashes: Vec<String> = state
            .owned
            .iter()
            .filter(|(other, theirs)| **other != name && !theirs.is_disjoint(&mine))
            .map(|(other, theirs)| format!("{name} got {mine:?} while {other} owned {theirs:?}"))
            .collect();
        state.overlaps.extend(clashes);
        state.owned.insert(name, mine);
        state.starts.insert(name, starts(assignment));
        state.fetched.insert(name, Vec::new());
    }

    fn fetched(&self, name: &'static str, messages: Vec<Message>) {
        if !messages.is_empty() {
            self.state()
                .fetched
                .entry(name)
                .or_default()
                .extend(messages);
        }
    }

    fn error(&self, name: &'static str, what: &str, e: &KafkaError) {
        eprintln!("member {name}: {what}: {e}");
        self.state().errors.push(format!("{name}: {what}: {e}"));
    }

    fn check_no_overlap(&self) {
        let state = self.state();
        assert!(
            state.overlaps.is_empty(),
            "a partition was owned twice: {:?}",
            state.overlaps
        );
    }

    fn check_errors(&self) {
        let state = self.state();
        let fatal: Vec<&String> = state
            .errors
            .iter()
            .filter(|e| !e.contains("will reconnect"))
            .collect();
        assert!(fatal.is_empty(), "the members met errors: {fatal:?}");
    }
}

enum Command {
    Commit(Vec<(Partition, Offset)>, Sender<Result<(), String>>),
    Leave(Sender<Result<(), String>>),
    /// Stop calling the consumer at all (no heartbeats) and hand it, alive, to the test.
    Stall(Sender<Consumer>),
    Stop,
}

/// One group member on its own thread, looping as the poller does: heartbeat (rejoining
/// after revoking on `Rejoin`), fetch, and commands from the test in between.
struct Member {
    name: &'static str,
    commands: Sender<Command>,
    thread: JoinHandle<()>,
}

impl Member {
    fn start(name: &'static str, settings: ConsumerSettings, view: &Arc<GroupView>) -> Member {
        let (commands, rx) = mpsc::unbounded();
        let view = Arc::clone(view);
        let thread = thread::Builder::new()
            .name(format!("member-{name}"))
            .spawn(move || member_loop(name, settings, &rx, &view))
            .expect("spawn a member thread");
        Member {
            name,
            commands,
            thread,
        }
    }

    fn commit(&self, offsets: Vec<(Partition, Offset)>) {
        let (reply, answer) = mpsc::unbounded();
        self.send(Command::Commit(offsets.clone(), reply));
        let result = answer
            .recv_timeout(JOIN_DEADLINE)
            .unwrap_or_else(|e| panic!("member {} did not commit: {e}", self.name));
        result.unwrap_or_else(|e| panic!("member {} committing {offsets:?}: {e}", self.name));
    }

    fn leave(&self) {
        let (reply, answer) = mpsc::unbounded();
        self.send(Command::Leave(reply));
        let result = answer
            .recv_timeout(JOIN_DEADLINE)
            .unwrap_or_else(|e| panic!("member {} did not leave: {e}", self.name));
        result.unwrap_or_else(|e| panic!("member {} leaving: {e}", self.name));
    }

    /// Stops the member's loop and returns its consumer, still a member of the group as
    /// far as the coordinator knows, but silent from now on.
    fn stall(&self) -> Consumer {
        let (reply, answer) = mpsc::unbounded();
        self.send(Command::Stall(reply));
        answer
            .recv_timeout(JOIN_DEADLINE)
            .unwrap_or_else(|e| panic!("member {} did not stall: {e}", self.name))
    }

    fn stop(self) {
        let _ = self.commands.send(Command::Stop);
        self.thread
            .join()
            .unwrap_or_else(|_| panic!("member {} panicked", self.name));
    }

    fn send(&self, command: Command) {
        self.commands
            .send(command)
            .unwrap_or_else(|_| panic!("member {} has stopped", self.name));
    }
}

fn member_loop(
    name: &'static str,
    settings: ConsumerSettings,
    commands: &Receiver<Command>,
    view: &GroupView,
) {
    let mut consumer = Consumer::new(settings);
    connect(&mut consumer);
    let mut must_join = true;
    loop {
        if must_join {
            view.revoked(name);
            consumer.revoke();
            match consumer.join() {
                Ok(assignment) => {
                    view.assigned(name, &assignment);
                    must_join = false;
                }
                Err(e) => {
                    view.error(name, "joining", &e);
                    continue;
                }
            }
        }
        // Wait for a command or the consumer's threads, a moment at most.
        let mut sel = crossbeam_channel::Select::new();
        let command = sel.recv(commands);
        let kafka = sel.recv(consumer.events());
        let ready = sel.ready_timeout(FETCH_MAX_WAIT);
        if ready == Ok(kafka)
            && let Ok(event) = consumer.events().try_recv()
        {
            consumer.handle(event);
        }
        let next = if ready == Ok(command) {
            commands.try_recv().map_err(|_| RecvTimeoutError::Timeout)
        } else {
            Err(RecvTimeoutError::Timeout)
        };
        match next {
            Ok(Command::Commit(offsets, reply)) => {
                let result = consumer.commit_sync(&offsets, REQUEST_TIMEOUT);
                let _ = reply.send(result.map_err(|e| e.to_string()));
            }
            Ok(Command::Leave(reply)) => {
                view.revoked(name);
                let _ = reply.send(consumer.leave().map_err(|e| e.to_string()));
                wait_for_stop(commands);
                return;
            }
            Ok(Command::Stall(reply)) => {
                // The consumer stays alive (connections open) but says nothing more.
                view.revoked(name);
                let _ = reply.send(consumer);
                return;
            }
            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        match consumer.heartbeat() {
            Ok(GroupSignal::Fine | GroupSignal::NotDue) => {}
            Ok(GroupSignal::Rejoin(_)) => {
                must_join = true;
                continue;
            }
            Ok(GroupSignal::Changed(change)) => {
                panic!("member {name}: a cooperative change in an eager group: {change:?}")
            }
            Err(e) => view.error(name, "heartbeating", &e),
        }
        view.fetched(name, consumer.fetch());
    }
}

fn wait_for_stop(commands: &Receiver<Command>) {
    while let Ok(command) = commands.recv() {
        if let Command::Stop = command {
            return;
        }
    }
}
