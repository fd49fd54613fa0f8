//! Secured clusters through the client's API: `Security` built from TLS and SASL settings,
//! then our `Producer` and `Consumer` against tansu behind real TLS (stunnel4, OpenSSL) and a
//! SASL front whose SCRAM server is Python's `scramp` (kafka-testkit's secure.rs), with
//! certificates made at test time.
//!
//! Covered: TLS with a private CA (a record out and back, the session described); TLS
//! refusals as `KafkaError::Tls` in words (untrusted, wrong name, expired) and the one check
//! `verify_hostname: false` skips; a plaintext client at a TLS listener; mutual TLS with and
//! without a client certificate; SASL PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 over
//! SASL_PLAINTEXT and SASL_SSL; a wrong password in the broker's own words; short SASL
//! sessions renewed in band, never cut off; answers before authentication capped at 512 KiB
//! whatever length a peer announces (a scripted fake broker).
//!
//! What the worker makes of these (exit codes, log lines, `/healthz`, rotated password files)
//! is tested with the worker, in the repository's tests/security.rs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use blocking_kafka::{
    BackoffSettings, BatchCompression, ClientIdentity, Consumer, ConsumerSettings, GroupSignal,
    KafkaError, OutRecord, Password, Producer, ProducerSettings, RecordLimits, SaslMechanism,
    SaslSettings, Security, StartFrom, TlsSettings,
};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, SaslHandshakeResponse};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_testkit::secure::{Certs, FrontSettings, Protocol, SecureBroker};
use kafka_testkit::wait_until;

const TOPIC: &str = "secured";
/// The SASL front's user for the client (see `FrontSettings::default`).
const USER: &str = "alice";
const PASSWORD: &str = "alice-secret";
/// A group join takes ~3 s on tansu; generous for a loaded machine.
const JOIN_AND_READ: Duration = Duration::from_secs(45);

// ------------------------------------------------------------------------------------
// TLS

#[test]
fn over_tls_with_a_private_ca_a_record_goes_out_and_back_and_the_session_is_described() {
    let sb = SecureBroker::start(Protocol::Ssl, &FrontSettings::default(), false);
    sb.broker.create_topic(TOPIC, 1);
    let security = security(Some(tls(&sb, "ca.pem")), None);
    assert_eq!(security.protocol(), "SSL");

    let mut consumer = consumer(&sb, &security, "tls");
    let session = consumer.session_info().expect("a TLS session").to_string();
    assert!(session.starts_with("SSL: TLS 1.3, "), "{session}");
    assert!(
        session.contains("broker certificate CN=localhost, O=Tests (expires "),
        "{session}"
    );
    assert!(session.ends_with(", no SASL"), "{session}");
    round_trip(&sb, &security, &mut consumer, "over TLS");
}

#[test]
fn tls_refusals_name_their_cause_and_only_the_host_name_check_can_be_skipped() {
    let sb = SecureBroker::start(Protocol::Ssl, &FrontSettings::default(), false);
    // A CA that signed nothing here.
    let e = refusal(&sb, security(Some(tls(&sb, "other-ca.pem")), None));
    assert_eq!(
        e.to_string(),
        "TLS: the certificate of 127.0.0.1 is not signed by a trusted CA: set KAFKA_SSL_CA_LOCATION to the PEM file of the CA that signed the broker's certificate"
    );
    // A plaintext client at the TLS listener.
    let e = refusal(&sb, Arc::new(Security::plaintext()));
    assert!(matches!(e, KafkaError::WrongProtocol { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "Kafka broker {} is a TLS listener, but KAFKA_SECURITY_PROTOCOL=PLAINTEXT: set it to SSL (or SASL_SSL if the listener also wants SASL)",
            sb.addr()
        )
    );

    let wrong_name = SecureBroker::start_with(
        Protocol::Ssl,
        &FrontSettings::default(),
        false,
        Certs::generate(),
        "wrong-name",
    );
    let e = refusal(
        &wrong_name,
        security(Some(tls(&wrong_name, "ca.pem")), None),
    );
    assert_eq!(
        e.to_string(),
        "TLS: certificate for kafka.example.com is not valid for 127.0.0.1: connect by a name it has (kafka.example.com) in KAFKA_BOOTSTRAP_SERVERS and in the brokers' advertised listeners, or have the broker's certificate issued for 127.0.0.1"
    );
    // Not checking the name: the session is set up, the chain still checked.
    let relaxed = TlsSettings {
        verify_hostname: false,
        ..tls(&wrong_name, "ca.pem")
    };
    let security_relaxed = security(Some(relaxed.clone()), None);
    assert!(security_relaxed.skips_hostname_verification());
    let session = consumer(&wrong_name, &security_relaxed, "relaxed")
        .session_info()
        .expect("the name is not checked")
        .to_string();
    assert!(session.contains("CN=kafka.example.com"), "{session}");
    let untrusted = TlsSettings {
        ca_location: Some(wrong_name.certs.path("other-ca.pem")),
        ..relaxed
    };
    let e = refusal(&wrong_name, security(Some(untrusted), None));
    assert!(
        e.to_string().contains("is not signed by a trusted CA"),
        "{e}"
    );

    let expired = SecureBroker::start_with(
        Protocol::Ssl,
        &FrontSettings::default(),
        false,
        Certs::generate(),
        "expired",
    );
    let e = refusal(&expired, security(Some(tls(&expired, "ca.pem")), None));
    assert!(
        e.to_string()
            .starts_with("TLS: the certificate of 127.0.0.1 expired on 2021-01-01 00:00:00 UTC"),
        "{e}"
    );
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate_and_serves_one_with_it() {
    let sb = SecureBroker::start(Protocol::Ssl, &FrontSettings::default(), true);
    sb.broker.create_topic(TOPIC, 1);
    let e = refusal(&sb, security(Some(tls(&sb, "ca.pem")), None));
    assert!(
        e.to_string().contains(
            "requires a client certificate (mutual TLS) and none is configured: set KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION"
        ),
        "{e}"
    );

    let with_identity = TlsSettings {
        client_identity: Some(ClientIdentity {
            certificate_location: sb.certs.path("client.pem"),
            key_location: sb.certs.path("client.key"),
        }),
        ..tls(&sb, "ca.pem")
    };
    let security = security(Some(with_identity), None);
    let mut consumer = consumer(&sb, &security, "mutual");
    round_trip(&sb, &security, &mut consumer, "over mutual TLS");
}

// ------------------------------------------------------------------------------------
// SASL

#[test]
fn every_sasl_mechanism_authenticates_over_sasl_plaintext_and_sasl_ssl() {
    let plain = SecureBroker::start(Protocol::SaslPlaintext, &FrontSettings::default(), false);
    for mechanism in [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
    ] {
        let security = security(None, Some(sasl(mechanism, PASSWORD)));
        assert_eq!(security.protocol(), "SASL_PLAINTEXT");
        let session = consumer(&plain, &security, "sasl")
            .session_info()
            .unwrap_or_else(|e| panic!("{}: {e}", mechanism.as_str()))
            .to_string();
        assert_eq!(
            session,
            format!(
                "SASL_PLAINTEXT: no TLS, authenticated as {USER} with {}",
                mechanism.as_str()
            )
        );
        // The client can be back before the front's line reaches the test (it is written
        // around the answer and read through a pipe by a reader thread): wait for it.
        wait_until(
            &format!("the front to log a {} login", mechanism.as_str()),
            Duration::from_secs(5),
            || {
                plain
                    .front()
                    .lines()
                    .iter()
                    .any(|l| {
                        l.starts_with("AUTH ok")
                            && l.contains(&format!("mechanism={}", mechanism.as_str()))
                    })
                    .then_some(())
            },
        );
    }
    assert_eq!(plain.front().count("AUTH failed"), 0);

    let ssl = SecureBroker::start(Protocol::SaslSsl, &FrontSettings::default(), false);
    ssl.broker.create_topic(TOPIC, 1);
    let security = security(
        Some(tls(&ssl, "ca.pem")),
        Some(sasl(SaslMechanism::ScramSha512, PASSWORD)),
    );
    assert_eq!(security.protocol(), "SASL_SSL");
    let mut consumer = consumer(&ssl, &security, "sasl-ssl");
    let session = consumer.session_info().expect("a session").to_string();
    assert!(session.starts_with("SASL_SSL: TLS 1.3, "), "{session}");
    assert!(
        session.ends_with(&format!(", authenticated as {USER} with SCRAM-SHA-512")),
        "{session}"
    );
    round_trip(&ssl, &security, &mut consumer, "over SASL_SSL");
}

#[test]
fn a_wrong_password_is_refused_at_once_in_the_brokers_words() {
    let sb = SecureBroker::start(Protocol::SaslSsl, &FrontSettings::default(), false);
    let security = security(
        Some(tls(&sb, "ca.pem")),
        Some(sasl(SaslMechanism::ScramSha256, "not-the-password")),
    );
    let mut consumer = consumer(&sb, &security, "refused");
    let started = Instant::now();
    // A security failure is not retried for the whole deadline: it will not clear by itself.
    let e = consumer
        .connect(Instant::now() + Duration::from_secs(60), &|_: Duration| {
            false
        })
        .expect_err("the password is wrong");
    assert!(started.elapsed() < Duration::from_secs(10), "{e}");
    assert!(matches!(e, KafkaError::Authentication { .. }), "{e:?}");
    assert!(e.is_security() && e.is_connection(), "{e:?}");
    assert_eq!(
        e.to_string(),
        "authentication failed for user alice with SCRAM-SHA-256: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256"
    );
    // The front logs the refusal after it has sent it, so the client can be back first:
    // wait for the line, then check that the refusal was asked for once, not retried.
    wait_until(
        "the front to log the refusal",
        Duration::from_secs(5),
        || (sb.front().count("AUTH failed") > 0).then_some(()),
    );
    assert_eq!(
        sb.front().count("AUTH failed"),
        1,
        "{:?}",
        sb.front().lines()
    );
    assert!(
        !format!("{security:?}").contains("not-the-password"),
        "the password shows in Debug"
    );
}

#[test]
fn short_sasl_sessions_are_renewed_in_band_and_never_cut_off() {
    // 4 s sessions: in ~12 s of fetching and producing, each connection renews about three
    // times. (At 1.5 s the renewal, due at 85-95 % of the lifetime, left 75-225 ms before the
    // front cut the connection; under load a renewal was seen with 11 ms to spare.)
    let front = FrontSettings {
        session_lifetime_ms: 4000,
        ..FrontSettings::default()
    };
    let sb = SecureBroker::start(Protocol::SaslSsl, &front, false);
    sb.broker.create_topic(TOPIC, 1);
    let security = security(
        Some(tls(&sb, "ca.pem")),
        Some(sasl(SaslMechanism::ScramSha512, PASSWORD)),
    );
    let mut consumer = consumer(&sb, &security, "renewing");
    let session = consumer.session_info().expect("a session").to_string();
    assert!(
        session.contains("(session lifetime 4 s, re-authenticated before it ends)"),
        "{session}"
    );
    join(&mut consumer);
    let mut producer = producer(&sb, &security);
    let started = Instant::now();
    let mut sent = 0;
    let mut read = Vec::new();
    while started.elapsed() < Duration::from_secs(12) || read.len() < sent {
        assert!(
            started.elapsed() < JOIN_AND_READ,
            "read {} of {sent} records",
            read.len()
        );
        if started.elapsed() < Duration::from_secs(12) {
            producer
                .send(&record(&format!("renewal {sent}")), BatchCompression::None)
                .expect("produce");
            sent += 1;
        }
        read.extend(poll(&mut consumer));
    }
    let expected: Vec<String> = (0..sent).map(|i| format!("renewal {i}")).collect();
    assert_eq!(read, expected);
    let renewals = sb
        .front()
        .lines()
        .iter()
        .filter(|l| l.starts_with("AUTH ok") && l.ends_with("reauth=1"))
        .count();
    assert!(
        renewals >= 6,
        "only {renewals} re-authentications in 12 s of 4 s sessions: {:?}",
        sb.front().lines()
    );
    assert_eq!(sb.front().count("EXPIRED"), 0, "{:?}", sb.front().lines());
    assert_eq!(sb.front().count("AUTH failed"), 0);
}

// ------------------------------------------------------------------------------------
// Before authentication

#[test]
fn answers_before_authentication_are_capped_at_512_kib_whatever_length_the_peer_announces() {
    // Before SASL completes, the peer may be anyone (an unauthenticated stranger, a man in the
    // middle of a plaintext connection): each answer it announces as 200 MiB is refused after
    // its length prefix, instead of being allocated and read. Each step of the exchange in
    // turn: ApiVersions, SaslHandshake, SaslAuthenticate.
    for step in [
        ApiKey::ApiVersions,
        ApiKey::SaslHandshake,
        ApiKey::SaslAuthenticate,
    ] {
        let fake = FakeBroker::start(step);
        let security = security(None, Some(sasl(SaslMechanism::Plain, PASSWORD)));
        let started = Instant::now();
        let e = Consumer::new(ConsumerSettings {
            bootstrap: vec![fake.addr.clone()],
            ..consumer_settings_for("unused", &security)
        })
        .session_info()
        .expect_err("a 200 MiB answer is refused");
        let written = fake.finish();
        let text = e.to_string();
        eprintln!(
            "{step:?}: {text} ({written} bytes sent, {:?})",
            started.elapsed()
        );
        assert!(
            text.contains(&format!(
                "{step:?} answer of 209715200 bytes before authentication: at most 524288 are read before SASL completes"
            )),
            "{step:?}: {text}"
        );
        // The client hung up at the length prefix: what the fake could send is what the
        // sockets' buffers took, not the 200 MiB announced.
        assert!(
            written < 32 * 1024 * 1024,
            "{step:?}: the client read {written} bytes of a refused answer"
        );
    }

    // Without SASL, the ApiVersions answer of a new connection is capped the same way.
    let fake = FakeBroker::start(ApiKey::ApiVersions);
    let plaintext = Arc::new(Security::plaintext());
    let e = Consumer::new(ConsumerSettings {
        bootstrap: vec![fake.addr.clone()],
        ..consumer_settings_for("unused", &plaintext)
    })
    .session_info()
    .expect_err("a 200 MiB answer is refused");
    let written = fake.finish();
    assert!(
        e.to_string()
            .contains("ApiVersions answer of 209715200 bytes before authentication"),
        "{e}"
    );
    assert!(written < 32 * 1024 * 1024, "{written} bytes read");
}

/// A broker played by the test on one connection: it answers ApiVersions (offering SASL)
/// and SaslHandshake (enabling PLAIN) properly up to `huge_at`, whose answer it announces as
/// 200 MiB and then streams until the client hangs up.
struct FakeBroker {
    addr: String,
    /// Returns how many bytes of the huge answer the client took.
    thread: JoinHandle<u64>,
}

impl FakeBroker {
    const HUGE: u32 = 200 * 1024 * 1024;

    fn start(huge_at: ApiKey) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let thread = thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            loop {
                let (key, correlation) = read_request(&mut conn);
                if key == huge_at as i16 {
                    return stream_huge_answer(&mut conn, correlation);
                }
                let body = match key {
                    k if k == ApiKey::ApiVersions as i16 => encode(
                        &ApiVersionsResponse::default().with_api_keys(
                            [
                                (ApiKey::SaslHandshake, 0, 1),
                                (ApiKey::SaslAuthenticate, 0, 2),
                            ]
                            .into_iter()
                            .map(|(k, lo, hi)| {
                                ApiVersion::default()
                                    .with_api_key(k as i16)
                                    .with_min_version(lo)
                                    .with_max_version(hi)
                            })
                            .collect(),
                        ),
                        2,
                    ),
                    k if k == ApiKey::SaslHandshake as i16 => encode(
                        &SaslHandshakeResponse::default()
                            .with_mechanisms(vec![StrBytes::from_static_str("PLAIN")]),
                        1,
                    ),
                    other => panic!("the fake broker got API key {other}"),
                };
                let mut frame = BytesMut::new();
                frame.put_i32((4 + body.len()) as i32);
                frame.put_i32(correlation);
                frame.put_slice(&body);
                conn.write_all(&frame).expect("answer");
            }
        });
        FakeBroker { addr, thread }
    }

    /// How many bytes of the huge answer the client took before it hung up.
    fn finish(self) -> u64 {
        self.thread.join().expect("the fake broker")
    }
}

/// Reads one request frame: (API key, correlation id).
fn read_request(conn: &mut TcpStream) -> (i16, i32) {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).expect("a request");
    let mut frame = vec![0u8; i32::from_be_bytes(len) as usize];
    conn.read_exact(&mut frame).expect("the request's body");
    (
        i16::from_be_bytes([frame[0], frame[1]]),
        i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
    )
}

/// Announces an answer of `FakeBroker::HUGE` bytes and sends zeros until the client hangs up
/// (or all of it went); the bytes sent after the prefix.
fn stream_huge_answer(conn: &mut TcpStream, correlation: i32) -> u64 {
    let mut head = Vec::new();
    head.extend_from_slice(&FakeBroker::HUGE.to_be_bytes());
    head.extend_from_slice(&correlation.to_be_bytes());
    if conn.write_all(&head).is_err() {
        return 0;
    }
    let chunk = vec![0u8; 1024 * 1024];
    let mut sent = 4u64;
    while sent < u64::from(FakeBroker::HUGE) {
        match conn.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => sent += n as u64,
        }
    }
    sent
}

fn encode<M: Encodable>(message: &M, version: i16) -> Vec<u8> {
    let mut buf = BytesMut::new();
    message.encode(&mut buf, version).expect("encode");
    buf.to_vec()
}

// ------------------------------------------------------------------------------------
// Helpers

/// TLS trusting `ca` (one of the `Certs` files), the host name checked.
fn tls(sb: &SecureBroker, ca: &str) -> TlsSettings {
    TlsSettings {
        ca_location: Some(sb.certs.path(ca)),
        client_identity: None,
        verify_hostname: true,
    }
}

fn sasl(mechanism: SaslMechanism, password: &str) -> SaslSettings {
    SaslSettings {
        mechanism,
        username: USER.to_owned(),
        password: Password::fixed(password.to_owned()),
    }
}

fn security(tls: Option<TlsSettings>, sasl: Option<SaslSettings>) -> Arc<Security> {
    Arc::new(Security::new(tls, sasl).expect("the certificate files are usable"))
}

fn consumer(sb: &SecureBroker, security: &Arc<Security>, group: &str) -> Consumer {
    Consumer::new(ConsumerSettings {
        bootstrap: vec![sb.addr()],
        ..consumer_settings_for(group, security)
    })
}

/// The tests' consumer settings, with an empty bootstrap list.
fn consumer_settings_for(group: &str, security: &Arc<Security>) -> ConsumerSettings {
    ConsumerSettings {
        bootstrap: Vec::new(),
        client_id: "blocking-kafka-security-test".to_owned(),
        group_id: group.to_owned(),
        group_instance_id: None,
        assignors: blocking_kafka::Assignor::DEFAULT.to_vec(),
        topic: TOPIC.to_owned(),
        session_timeout: Duration::from_secs(6),
        rebalance_timeout: Duration::from_secs(6),
        heartbeat_interval: Duration::from_millis(500),
        fetch_max_wait: Duration::from_millis(100),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        retry_backoff: BackoffSettings::RETRY,
        reconnect_backoff: BackoffSettings::RECONNECT,
        start_from: StartFrom::Earliest,
        security: security.clone(),
        record_limits: RecordLimits::default(),
    }
}

fn producer(sb: &SecureBroker, security: &Arc<Security>) -> Producer {
    Producer::new(ProducerSettings {
        bootstrap: vec![sb.addr()],
        client_id: "blocking-kafka-security-test".to_owned(),
        topic: TOPIC.to_owned(),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        security: security.clone(),
    })
}

/// The error a first connection gets (no retry: a security failure is final).
fn refusal(sb: &SecureBroker, security: Arc<Security>) -> KafkaError {
    let e = consumer(sb, &security, "refused")
        .session_info()
        .expect_err("the connection is refused");
    assert!(e.is_security(), "{e:?}");
    e
}

fn record(value: &str) -> OutRecord {
    OutRecord {
        key: None,
        value: Some(Bytes::from(value.to_owned())),
        headers: vec![("h".to_owned(), Some(Bytes::from_static(b"v")))],
    }
}

/// Produces one record with our producer and reads it back with `consumer`, both over
/// `security`.
fn round_trip(sb: &SecureBroker, security: &Arc<Security>, consumer: &mut Consumer, what: &str) {
    let delivery = producer(sb, security)
        .send(&record(what), BatchCompression::Gzip)
        .expect("produce");
    join(consumer);
    let started = Instant::now();
    let mut read = Vec::new();
    while read.is_empty() {
        assert!(started.elapsed() < JOIN_AND_READ, "nothing read {what}");
        read = poll(consumer);
    }
    assert_eq!(read, vec![what.to_owned()]);
    assert_eq!(consumer.position(delivery.partition).map(|o| o.0), Some(1));
}

fn join(consumer: &mut Consumer) {
    let assignment = consumer.join().expect("join the group");
    assert_eq!(assignment.topic_partitions, 1, "{assignment:?}");
}

/// One heartbeat (rejoining if asked) and one fetch: the values read.
fn poll(consumer: &mut Consumer) -> Vec<String> {
    if let GroupSignal::Rejoin(why) = consumer.heartbeat().expect("heartbeat") {
        eprintln!("rejoining: {why}");
        consumer.revoke();
        join(consumer);
    }
    let messages = consumer.fetch();
    if messages.is_empty()
        && let Ok(event) = consumer.events().recv_timeout(Duration::from_millis(50))
    {
        consumer.handle(event);
    }
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(m.value.as_deref().unwrap_or_default()).into_owned())
        .collect()
}
