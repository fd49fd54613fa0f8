//! Secured clusters, end to end: the real worker binary and operator commands against
//! tansu behind real TLS (stunnel4, OpenSSL) and a SASL front whose SCRAM server is Python's
//! `scramp` (tests/interop/sasl_front.py), with certificates made at test time.
//!
//! Covered: TLS with a private CA, mutual TLS (PKCS#8, PKCS#1 RSA and SEC1 EC client keys),
//! every TLS refusal in words (untrusted, wrong name, expired, client certificate missing),
//! protocol mismatches, SASL PLAIN and SCRAM-SHA-256/512, wrong password and unknown user at
//! start (exit 1 within seconds, exact message), credentials rotated mid-run (an outage that
//! heals, `/healthz` saying why, the new password read from KAFKA_SASL_PASSWORD_FILE),
//! re-authentication over many short session lifetimes, librdkafka interop through the same
//! front, and the whole worker life over SASL_SSL (join, consume, commit, dead letter,
//! rebalance with two workers, SIGTERM), plus the operator commands.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::secure::{
    Certs, FORGED_LINE_SUBJECT, FrontSettings, Protocol, SecureBroker, Stunnel,
    librdkafka_security, openssl,
};
use common::{Broker, TempDb, WorkerProcess, b64_encode, free_port, python_tool, wait_until};

const TOPIC: &str = "provision-requests";
const DLQ: &str = "provision-requests.dlq";
const GROUP: &str = "secure-group";
const PASSWORD: &str = "alice-secret";
/// A group join takes ~3 s on tansu; a few requests a few more.
const JOIN_AND_WORK: Duration = Duration::from_secs(45);
/// A refusal that will not clear must stop the worker within seconds, not after the
/// start-up timeout (20 s here).
const PROMPT_EXIT: Duration = Duration::from_secs(8);

// ------------------------------------------------------------------------------------
// TLS

#[test]
fn over_tls_with_a_private_ca_the_worker_provisions_and_check_describes_the_session() {
    let sb = SecureBroker::start(Protocol::Ssl, &FrontSettings::default(), false);
    sb.broker.create_topic(TOPIC, 3);
    sb.broker.create_topic(DLQ, 1);
    let db = TempDb::new();
    let env = tls_env(&sb, &db, "ca.pem");

    let out = tool(&env, &["check"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let kafka = line_of(&out, "OK   kafka:");
    for part in [
        "(SSL: TLS 1.3, TLS13_",
        "broker certificate CN=localhost, O=Tests (expires ",
        "UTC), no SASL)",
    ] {
        assert!(kafka.contains(part), "{part:?} missing from {kafka:?}");
    }
    // The CA trusted, read from its file: its subject and when it expires.
    assert!(
        line_of(&out, "OK   configuration:").contains(&format!(
            "security SSL (CAs from {}: CN=provision-worker test CA, O=Tests (expires ",
            sb.certs.file("ca.pem")
        )),
        "{}",
        text(&out.stdout)
    );

    let mut worker = spawn(&env);
    worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);
    db.insert_pending("tls-1", "alice", 1, 1);
    produce_through(&sb, Protocol::Ssl, &[(None, request("tls-1"))]);
    wait_status(&db, "tls-1", "completed");
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn a_certificate_for_another_name_stops_the_worker_naming_both_and_none_skips_only_that_check() {
    let sb = SecureBroker::start_with(
        Protocol::Ssl,
        &FrontSettings::default(),
        false,
        Certs::generate(),
        "wrong-name",
    );
    let db = TempDb::new();
    let env = tls_env(&sb, &db, "ca.pem");
    // The names the certificate has, not a switch to turn the check off.
    let line = exits_promptly_with(&env, "TLS:");
    assert!(
        line.ends_with(
            "TLS: certificate for kafka.example.com is not valid for 127.0.0.1: connect by a name it has (kafka.example.com) in KAFKA_BOOTSTRAP_SERVERS and in the brokers' advertised listeners, or have the broker's certificate issued for 127.0.0.1"
        ),
        "{line}"
    );
    assert!(!line.contains("ENDPOINT_IDENTIFICATION"), "{line}");

    // `none`: the name is not checked (said at start), the chain still is.
    let mut relaxed = env.clone();
    relaxed.push(("KAFKA_SSL_ENDPOINT_IDENTIFICATION".into(), "none".into()));
    let out = tool(&relaxed, &["check"]);
    assert!(
        line_of(&out, "OK   kafka:").contains("CN=kafka.example.com"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        line_of(&out, "OK   configuration:").contains("host names not verified"),
        "{}",
        text(&out.stdout)
    );
    let mut worker = spawn(&relaxed);
    worker.wait_for_line(
        "KAFKA_SSL_ENDPOINT_IDENTIFICATION=none: broker certificates are checked against the trusted CAs but not against the brokers' host names",
        Duration::from_secs(10),
    );
    worker.wait_for_line("Kafka consumer started successfully", JOIN_AND_WORK);

    // Without the CA, `none` does not help: the chain is still checked.
    let mut untrusted = relaxed.clone();
    untrusted.retain(|(k, _)| k != "KAFKA_SSL_CA_LOCATION");
    let line = exits_promptly_with(&untrusted, "TLS:");
    assert!(line.contains("is not signed by a trusted CA"), "{line}");
}

#[test]
fn a_broker_advertised_under_another_name_is_verified_under_the_advertised_name() {
    // Bootstrap by `localhost`, where the certificate names only `localhost`; the broker
    // advertises itself as 127.0.0.1 on another port, where the certificate names only
    // 127.0.0.1. Both fronts forward to the same tansu.
    let certs = Certs::generate();
    let advertised_port = free_port();
    let broker = Broker::start_advertising(advertised_port);
    broker.create_topic(TOPIC, 1);
    broker.create_topic(DLQ, 1);
    let tls = |port: u16, cert: &str| {
        Stunnel::start(
            port,
            broker.port,
            &certs.path(&format!("{cert}.pem")),
            &certs.path(&format!("{cert}.key")),
            None,
        )
    };
    let bootstrap = tls(free_port(), "localhost-only");
    let advertised = tls(advertised_port, "ip-only");
    let db = TempDb::new();
    let mut env = base_env(&format!("localhost:{}", bootstrap.port), &db);
    env.push(("KAFKA_SECURITY_PROTOCOL".into(), "SSL".into()));
    env.push(("KAFKA_SSL_CA_LOCATION".into(), certs.file("ca.pem")));

    // `check` reaches the coordinator at the advertised address, its certificate checked
    // for 127.0.0.1.
    let out = tool(&env, &["check"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        line_of(&out, "OK   kafka:").contains("broker certificate CN=localhost, O=Tests"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        line_of(&out, "OK   group coordinator:")
            .contains(&format!("127.0.0.1:{advertised_port} answers")),
        "{}",
        text(&out.stdout)
    );
    // The whole way: `send` produces to the leader, the worker fetches from it, both at the
    // advertised address.
    let out = tool(
        &env,
        &[
            "send",
            "--user",
            "alice",
            "--gpus",
            "1",
            "--hours",
            "1",
            "--request-id",
            "advertised-1",
        ],
    );
    assert!(out.status.success(), "send: {}", text(&out.stderr));
    let mut worker = spawn(&env);
    wait_status(&db, "advertised-1", "completed");
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(20)).code(), Some(0));

    // Were the bootstrap name used for the advertised broker, a certificate for `localhost`
    // there would pass. It does not: the name checked is the advertised one.
    drop(advertised);
    let _advertised = tls(advertised_port, "localhost-only");
    let out = tool(&env, &["check"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        line_of(&out, "FAIL group coordinator:").contains(
            "TLS: certificate for localhost is not valid for 127.0.0.1: connect by a name it has (localhost)"
        ),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn untrusted_and_expired_broker_certificates_stop_the_worker_with_the_reason_in_words() {
    // Trusting only the built-in Mozilla roots, a private CA's certificate is untrusted.
    let sb = SecureBroker::start(Protocol::Ssl, &FrontSettings::default(), false);
    let db = TempDb::new();
    let mut env = tls_env(&sb, &db, "ca.pem");
    env.retain(|(k, _)| k != "KAFKA_SSL_CA_LOCATION");
    let line = exits_promptly_with(&env, "TLS:");
    assert!(
        line.ends_with(
            "TLS: the certificate of 127.0.0.1 is not signed by a trusted CA: set KAFKA_SSL_CA_LOCATION to the PEM file of the CA that signed the broker's certificate"
        ),
        "{line}"
    );
    // Trusting another CA: the same.
    let env = tls_env(&sb, &db, "other-ca.pem");
    let line = exits_promptly_with(&env, "TLS:");
    assert!(line.contains("is not signed by a trusted CA"), "{line}");

    let expired = SecureBroker::start_with(
        Protocol::Ssl,
        &FrontSettings::default(),
        false,
        Certs::generate(),
        "expired",
    );
    let env = tls_env(&expired, &db, "ca.pem");
    let line = exits_promptly_with(&env, "TLS:");
    assert!(
        line.contains("TLS: the certificate of 127.0.0.1 expired on 2021-01-01 00:00:00 UTC"),
        "{line}"
    );
}

#[test]
fn mutual_tls_needs_a_client_certificate_and_takes_pkcs8_pkcs1_and_sec1_keys() {
    let sb = SecureBroker::start(Protocol::Ssl, &FrontSettings::default(), true);
    sb.broker.create_topic(TOPIC, 1);
    sb.broker.create_topic(DLQ, 1);
    let db = TempDb::new();
    let env = tls_env(&sb, &db, "ca.pem");

    let line = exits_promptly_with(&env, "TLS:");
    assert!(
        line.contains("requires a client certificate (mutual TLS) and none is configured: set KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION"),
        "{line}"
    );

    // The same client key in each PEM form: PKCS#8 (rcgen's), SEC1 (openssl's traditional
    // EC form), and an RSA key as PKCS#1, with a certificate the CA signed for it.
    let dir = sb.certs.dir();
    let sec1 = dir.join("client-sec1.key");
    openssl(&[
        "pkey",
        "-in",
        &sb.certs.file("client.key"),
        "-traditional",
        "-out",
        &sec1.display().to_string(),
    ]);
    assert!(
        std::fs::read_to_string(&sec1)
            .expect("read")
            .starts_with("-----BEGIN EC PRIVATE KEY-----")
    );
    let (rsa_cert, rsa_key) = rsa_client(&sb.certs);
    for (cert, key) in [
        (sb.certs.file("client.pem"), sb.certs.file("client.key")),
        (sb.certs.file("client.pem"), sec1.display().to_string()),
        (rsa_cert, rsa_key),
    ] {
        let mut with = env.clone();
        with.push(("KAFKA_SSL_CERTIFICATE_LOCATION".into(), cert));
        with.push(("KAFKA_SSL_KEY_LOCATION".into(), key.clone()));
        let out = tool(&with, &["check"]);
        assert!(out.status.success(), "{key}: {}", text(&out.stdout));
    }

    // A certificate from another CA is refused by the broker, and said so.
    let other = Certs::generate_with_ca("Another CA");
    let mut foreign = env.clone();
    foreign.push((
        "KAFKA_SSL_CERTIFICATE_LOCATION".into(),
        other.file("client.pem"),
    ));
    foreign.push(("KAFKA_SSL_KEY_LOCATION".into(), other.file("client.key")));
    let line = exits_promptly_with(&foreign, "TLS:");
    assert!(line.contains("refused our client certificate"), "{line}");

    // A key file that holds no key is a configuration error: exit 2, naming the variable.
    let mut bad = env.clone();
    bad.push((
        "KAFKA_SSL_CERTIFICATE_LOCATION".into(),
        sb.certs.file("client.pem"),
    ));
    bad.push(("KAFKA_SSL_KEY_LOCATION".into(), sb.certs.file("client.pem")));
    let out = tool(&bad, &["check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout).starts_with("FAIL configuration: cannot use KAFKA_SSL_KEY_LOCATION="),
        "{}",
        text(&out.stdout)
    );
    let mut worker = spawn(&bad);
    assert_eq!(worker.wait_exit(PROMPT_EXIT).code(), Some(2));
}

#[test]
fn a_client_certificate_and_ca_rotated_mid_run_are_used_for_new_connections_without_a_restart() {
    let mut sb = SecureBroker::start_with(
        Protocol::Ssl,
        &FrontSettings::default(),
        true,
        Certs::generate_with_ca("CA before the rotation"),
        "broker",
    );
    sb.broker.create_topic(TOPIC, 1);
    let db = TempDb::new();
    // The worker's own copies of the CA, certificate and key, which a rotation replaces the
    // way renewal agents do (write beside, rename over).
    let dir = tempfile::tempdir().expect("dir");
    let file = |name: &str| dir.path().join(name);
    let install = |certs: &Certs| {
        for name in ["ca.pem", "client.pem", "client.key"] {
            let tmp = file(&format!("{name}.new"));
            std::fs::copy(certs.path(name), &tmp).expect("copy");
            std::fs::rename(&tmp, file(name)).expect("rename");
        }
    };
    install(&sb.certs);
    let show = |name: &str| file(name).display().to_string();
    let mut env = base_env(&sb.addr(), &db);
    for (k, v) in [
        ("KAFKA_SECURITY_PROTOCOL", "SSL".to_owned()),
        ("KAFKA_SSL_CA_LOCATION", show("ca.pem")),
        ("KAFKA_SSL_CERTIFICATE_LOCATION", show("client.pem")),
        ("KAFKA_SSL_KEY_LOCATION", show("client.key")),
        ("KAFKA_DLQ_TOPIC", String::new()),
    ] {
        set(&mut env, k, &v);
    }
    let mut worker = spawn(&env);
    worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);
    db.insert_pending("before", "alice", 1, 1);
    produce_mutual_tls(&sb, &sb.certs, "before");
    wait_status(&db, "before", "completed");

    // The CA, the broker's certificate and ours are all replaced; the broker's restart cuts
    // the worker's connections, and it reconnects with the new files, without a restart.
    let rotated = Certs::generate_with_ca("CA after the rotation");
    install(&rotated);
    sb.restart_tls(&rotated, "broker", true);
    let line = worker.wait_for_line(
        "The TLS files changed; new Kafka connections use them (client certificate CN=worker.client, O=Tests (expires ",
        JOIN_AND_WORK,
    );
    assert!(line.contains(" - INFO - "), "{line}");
    db.insert_pending("after", "alice", 1, 1);
    produce_mutual_tls(&sb, &rotated, "after");
    wait_status(&db, "after", "completed");
    assert_eq!(worker.count_lines("Worker stopped"), 0);

    // `check` names the client certificate the session used, its names and when it
    // expires, and the CA now trusted: the rotated files.
    let out = tool(&env, &["check"]);
    let kafka = line_of(&out, "OK   kafka:");
    assert!(
        kafka.contains("client certificate CN=worker.client, O=Tests (expires "),
        "{kafka}"
    );
    assert!(kafka.contains(" UTC; names worker.client)"), "{kafka}");
    let configuration = line_of(&out, "OK   configuration:");
    for part in [
        format!(
            "CAs from {}: CN=CA after the rotation, O=Tests (expires ",
            show("ca.pem")
        ),
        format!(
            "client certificate {}: CN=worker.client, O=Tests (expires ",
            show("client.pem")
        ),
    ] {
        assert!(
            configuration.contains(&part),
            "{part:?} missing: {configuration}"
        );
    }

    // A bad key arrives: new connections keep the last good files, and it is said once,
    // however many connections are opened meanwhile.
    std::fs::write(file("client.key.new"), "not a key\n").expect("write");
    std::fs::rename(file("client.key.new"), file("client.key")).expect("rename");
    sb.restart_tls(&rotated, "broker", true);
    let refusal = "The TLS files changed but cannot be used: cannot use KAFKA_SSL_KEY_LOCATION=";
    let line = worker.wait_for_line(refusal, JOIN_AND_WORK);
    assert!(line.contains(" - ERROR - "), "{line}");
    assert!(
        line.ends_with("new Kafka connections keep the ones read before (said once per change)"),
        "{line}"
    );
    db.insert_pending("bad-key", "alice", 1, 1);
    produce_mutual_tls(&sb, &rotated, "bad-key");
    wait_status(&db, "bad-key", "completed");
    sb.restart_tls(&rotated, "broker", true);
    db.insert_pending("bad-key-2", "alice", 1, 1);
    produce_mutual_tls(&sb, &rotated, "bad-key-2");
    wait_status(&db, "bad-key-2", "completed");
    assert_eq!(worker.count_lines(refusal), 1, "said more than once");
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

/// Produces the request `id` with librdkafka through `sb`'s mutual-TLS front, with the
/// client certificate of `certs`.
fn produce_mutual_tls(sb: &SecureBroker, certs: &Certs, id: &str) {
    let x = [
        "security.protocol=SSL".to_owned(),
        format!("ssl.ca.location={}", certs.file("ca.pem")),
        format!("ssl.certificate.location={}", certs.file("client.pem")),
        format!("ssl.key.location={}", certs.file("client.key")),
    ];
    librdkafka_produce(sb, &x, TOPIC, &[(None, request(id))]);
}

#[test]
fn a_protocol_mismatch_is_one_sentence_naming_the_right_setting() {
    let sb = SecureBroker::start(Protocol::Ssl, &FrontSettings::default(), false);
    let db = TempDb::new();

    // Plaintext against the TLS port.
    let mut env = tls_env(&sb, &db, "ca.pem");
    env.retain(|(k, _)| !k.starts_with("KAFKA_SSL") && k != "KAFKA_SECURITY_PROTOCOL");
    let line = exits_promptly_with(&env, "TLS listener");
    assert!(
        line.ends_with(&format!(
            "Kafka broker {} is a TLS listener, but KAFKA_SECURITY_PROTOCOL=PLAINTEXT: set it to SSL (or SASL_SSL if the listener also wants SASL)",
            sb.addr()
        )),
        "{line}"
    );

    // TLS against tansu's own plaintext port. Kafka hangs up on a ClientHello at once (its
    // first four bytes read as a frame of ~369 MB, over socket.request.max.bytes); tansu
    // waits for the rest of that frame, so the handshake ends only at its deadline,
    // KAFKA_SOCKET_CONNECTION_SETUP_TIMEOUT_MS (10 s by default), before the plaintext
    // probe names the mismatch. Set to 5 s here, so the worker still stops promptly.
    let mut env = tls_env(&sb, &db, "ca.pem");
    set(&mut env, "KAFKA_BOOTSTRAP_SERVERS", &sb.broker.addr());
    set(&mut env, "KAFKA_SOCKET_CONNECTION_SETUP_TIMEOUT_MS", "5000");
    let line = exits_promptly_with(&env, "plaintext listener");
    assert!(
        line.contains("is a plaintext listener, but KAFKA_SECURITY_PROTOCOL=SSL asks for TLS: set it to PLAINTEXT"),
        "{line}"
    );

    // A mechanism the broker does not enable: the ones it does are listed.
    let front = FrontSettings {
        mechanisms: "SCRAM-SHA-512".into(),
        ..FrontSettings::default()
    };
    let sasl = SecureBroker::start(Protocol::SaslPlaintext, &front, false);
    let mut env = sasl_env(&sasl, &db, "SASL_PLAINTEXT", "PLAIN");
    set(&mut env, "KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT", "true");
    let line = exits_promptly_with(&env, "SASL mechanism");
    assert!(
        line.ends_with(&format!(
            "Kafka broker {} does not enable SASL mechanism PLAIN; it enables SCRAM-SHA-512: set KAFKA_SASL_MECHANISM to one of them",
            sasl.addr()
        )),
        "{line}"
    );
}

#[test]
fn an_encrypted_client_key_is_refused_with_the_openssl_command_that_decrypts_it() {
    // No broker: the key is read at start, before any connection.
    let certs = Certs::generate();
    let dir = certs.dir();
    let show = |p: &std::path::Path| p.display().to_string();
    let (rsa_cert, rsa_key) = rsa_client(&certs);
    let db = TempDb::new();
    // (certificate, unencrypted key, how openssl encrypts it, the PEM label it writes)
    let forms: [(String, String, &[&str], &str); 3] = [
        (
            rsa_cert,
            rsa_key,
            &["rsa", "-aes256", "-traditional"],
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED",
        ),
        (
            certs.file("client.pem"),
            certs.file("client.key"),
            &["ec", "-aes256"],
            "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED",
        ),
        (
            certs.file("client.pem"),
            certs.file("client.key"),
            &["pkcs8", "-topk8", "-v2", "aes256"],
            "-----BEGIN ENCRYPTED PRIVATE KEY-----",
        ),
    ];
    for (i, (cert, key, encrypt, label)) in forms.iter().enumerate() {
        let encrypted = dir.join(format!("encrypted-{i}.key"));
        let mut args = encrypt.to_vec();
        args.extend(["-in", key, "-passout", "pass:test-passphrase", "-out"]);
        let out_path = show(&encrypted);
        args.push(&out_path);
        openssl(&args);
        let pem = std::fs::read_to_string(&encrypted).expect("read the encrypted key");
        assert!(pem.starts_with(label), "{pem}");

        let mut env = base_env("127.0.0.1:1", &db);
        env.push(("KAFKA_SECURITY_PROTOCOL".into(), "SSL".into()));
        env.push(("KAFKA_SSL_CA_LOCATION".into(), certs.file("ca.pem")));
        env.push(("KAFKA_SSL_CERTIFICATE_LOCATION".into(), cert.clone()));
        env.push(("KAFKA_SSL_KEY_LOCATION".into(), out_path.clone()));
        let out = tool(&env, &["check"]);
        assert_eq!(out.status.code(), Some(2), "{label}: {}", text(&out.stdout));
        let first = line_of(&out, "FAIL configuration:");
        let command = format!("openssl pkey -in {out_path} -out {out_path}.dec");
        assert!(
            first.contains(&format!(
                "cannot use KAFKA_SSL_KEY_LOCATION={out_path}: encrypted keys are not supported, decrypt it with `{command}`"
            )),
            "{label}: {first}"
        );

        // The command it names does decrypt this kind of key (given the passphrase, which
        // it would ask for), and the result is taken.
        let mut args: Vec<&str> = command.split(' ').skip(1).collect();
        args.extend(["-passin", "pass:test-passphrase"]);
        openssl(&args);
        set(
            &mut env,
            "KAFKA_SSL_KEY_LOCATION",
            &format!("{out_path}.dec"),
        );
        let out = tool(&env, &["check"]);
        assert!(
            line_of(&out, "OK   configuration:").contains("security SSL"),
            "{label}: {}",
            text(&out.stdout)
        );
    }
}

// ------------------------------------------------------------------------------------
// SASL

#[test]
fn every_mechanism_authenticates_and_check_names_the_user_never_the_password() {
    let sb = SecureBroker::start(Protocol::SaslPlaintext, &FrontSettings::default(), false);
    sb.broker.create_topic(TOPIC, 1);
    sb.broker.create_topic(DLQ, 1);
    let db = TempDb::new();
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let mut env = sasl_env(&sb, &db, "SASL_PLAINTEXT", mechanism);
        if mechanism == "PLAIN" {
            // (Refused without it: see the next test.)
            set(&mut env, "KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT", "true");
        }
        let out = tool(&env, &["check"]);
        assert!(out.status.success(), "{mechanism}: {}", text(&out.stdout));
        let kafka = line_of(&out, "OK   kafka:");
        assert!(
            kafka.contains(&format!(
                "SASL_PLAINTEXT: no TLS, authenticated as alice with {mechanism}"
            )),
            "{kafka}"
        );
        assert!(
            line_of(&out, "OK   configuration:").contains(&format!(
                "security SASL_PLAINTEXT ({mechanism} as alice, password set"
            )),
            "{}",
            text(&out.stdout)
        );
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!all.contains(PASSWORD), "the password was printed: {all}");
        assert!(
            sb.front()
                .lines()
                .iter()
                .any(|l| l.starts_with("AUTH ok") && l.contains(&format!("mechanism={mechanism}"))),
            "the front saw no {mechanism} login"
        );
    }
    assert_eq!(sb.front().count("AUTH failed"), 0);

    // From a file: "from file", and --help never shows a value.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{PASSWORD}\n")).expect("write");
    let mut env = sasl_env(&sb, &db, "SASL_PLAINTEXT", "SCRAM-SHA-512");
    env.retain(|(k, _)| k != "KAFKA_SASL_PASSWORD");
    env.push((
        "KAFKA_SASL_PASSWORD_FILE".into(),
        file.display().to_string(),
    ));
    let out = tool(&env, &["check"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(line_of(&out, "OK   configuration:").contains(&format!(
        "SCRAM-SHA-512 as alice, password from file {}",
        file.display()
    )));
    let help = tool(&env, &["--help"]);
    assert!(!text(&help.stdout).contains(PASSWORD));
}

#[test]
fn plain_over_sasl_plaintext_is_refused_at_start_unless_allowed_and_then_warned_about() {
    let sb = SecureBroker::start(Protocol::SaslPlaintext, &FrontSettings::default(), false);
    sb.broker.create_topic(TOPIC, 1);
    sb.broker.create_topic(DLQ, 1);
    let db = TempDb::new();
    let env = sasl_env(&sb, &db, "SASL_PLAINTEXT", "PLAIN");
    let refusal = "refusing to send the SASL password in clear: KAFKA_SASL_MECHANISM=PLAIN over KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT";

    // Refused before anything is sent: `check` fails its configuration line, and the worker
    // exits 2 naming the better choice and the opt-in.
    let out = tool(&env, &["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let first = line_of(&out, "FAIL configuration:");
    for fragment in [
        refusal,
        "set KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        "KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT=true",
    ] {
        assert!(first.contains(fragment), "{fragment:?} missing: {first}");
    }
    let mut worker = spawn(&env);
    assert_eq!(worker.wait_exit(PROMPT_EXIT).code(), Some(2));
    worker.wait_for_line(refusal, Duration::ZERO);
    assert_eq!(
        sb.front().count("AUTH"),
        0,
        "a login was attempted: {:?}",
        sb.front().lines()
    );

    // Opted in: it works, and both `check` and the worker say what it costs.
    let warning = "KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT=true: the SASL password goes to the broker in clear (PLAIN over SASL_PLAINTEXT) on every connection and every re-authentication";
    let mut allowed = env.clone();
    set(&mut allowed, "KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT", "true");
    let out = tool(&allowed, &["check"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        line_of(&out, "OK   configuration:")
            .contains("(PLAIN as alice, password set; password sent in clear: KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT=true)"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stderr).contains(warning), "{}", text(&out.stderr));
    let mut worker = spawn(&allowed);
    let line = worker.wait_for_line(warning, Duration::from_secs(10));
    assert!(line.contains(" - WARNING - "), "{line}");
    worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(20)).code(), Some(0));

    // SCRAM over SASL_PLAINTEXT never sends the password: no opt-in, no warning.
    let scram = sasl_env(&sb, &db, "SASL_PLAINTEXT", "SCRAM-SHA-256");
    let out = tool(&scram, &["check"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        !text(&out.stderr).contains("in clear"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_wrong_password_or_unknown_user_stops_the_worker_within_seconds_with_the_brokers_words() {
    let sb = SecureBroker::start(Protocol::SaslSsl, &FrontSettings::default(), false);
    let db = TempDb::new();
    let mut env = sasl_env(&sb, &db, "SASL_SSL", "SCRAM-SHA-512");
    set(&mut env, "KAFKA_SASL_PASSWORD", "not-the-password");
    let line = exits_promptly_with(&env, "authentication failed");
    assert!(
        line.ends_with(
            "ERROR - authentication failed for user alice with SCRAM-SHA-512: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"
        ),
        "{line}"
    );
    // Asked once, not for the whole start-up timeout.
    assert_eq!(
        sb.front().count("AUTH failed"),
        1,
        "{:?}",
        sb.front().lines()
    );

    let mut env = sasl_env(&sb, &db, "SASL_SSL", "SCRAM-SHA-256");
    set(&mut env, "KAFKA_SASL_USERNAME", "mallory");
    let line = exits_promptly_with(&env, "authentication failed");
    assert!(
        line.ends_with(
            "authentication failed for user mallory with SCRAM-SHA-256: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256"
        ),
        "{line}"
    );

    let mut env = sasl_env(&sb, &db, "SASL_SSL", "PLAIN");
    set(&mut env, "KAFKA_SASL_PASSWORD", "wrong");
    let line = exits_promptly_with(&env, "authentication failed");
    assert!(
        line.ends_with(
            "authentication failed for user alice with PLAIN: Authentication failed: Invalid username or password"
        ),
        "{line}"
    );
}

#[test]
fn a_forged_scram_server_final_message_is_refused_and_nothing_more_is_sent() {
    // A man in the middle who relays the exchange but does not know the password cannot
    // sign the server-final message: the worker must refuse the session, although the
    // "broker" says the login succeeded, and send nothing more on that connection.
    let front = FrontSettings {
        forge_server_final: true,
        ..FrontSettings::default()
    };
    let sb = SecureBroker::start(Protocol::SaslPlaintext, &front, false);
    sb.broker.create_topic(TOPIC, 1);
    let db = TempDb::new();
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let env = sasl_env(&sb, &db, "SASL_PLAINTEXT", mechanism);
        let line = exits_promptly_with(&env, "authentication failed");
        assert!(
            line.ends_with(&format!(
                "authentication failed for user alice with {mechanism}: the broker's SCRAM server signature is wrong: it does not know this password (is something between us and the broker?)"
            )),
            "{line}"
        );
    }
    // (The front's lines reach the test through a pipe.)
    wait_until(
        "the front to log both forgeries",
        Duration::from_secs(5),
        || (sb.front().count("FORGED") >= 2).then_some(()),
    );
    assert_eq!(
        sb.front().count("AFTER-FORGED"),
        0,
        "a request followed a forged server-final message: {:?}",
        sb.front().lines()
    );
}

#[test]
fn sessions_with_a_short_lifetime_are_renewed_in_band_and_the_broker_never_cuts_one_off() {
    // 4 s sessions: over ~16 s of work every connection renews about four times. (At 1.5 s
    // the renewal, due at 85-95 % of the lifetime, left 75-225 ms before the front cut the
    // connection: a loaded machine made that flaky.)
    let front = FrontSettings {
        session_lifetime_ms: 4000,
        ..FrontSettings::default()
    };
    let sb = SecureBroker::start(Protocol::SaslSsl, &front, false);
    sb.broker.create_topic(TOPIC, 3);
    let db = TempDb::new();
    let mut env = sasl_env(&sb, &db, "SASL_SSL", "SCRAM-SHA-256");
    set(&mut env, "KAFKA_DLQ_TOPIC", "");
    let mut worker = spawn(&env);
    worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);

    let start = Instant::now();
    let mut ids = Vec::new();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(16) {
        let id = format!("reauth-{i}");
        db.insert_pending(&id, "alice", 1, 1);
        produce_through(&sb, Protocol::SaslSsl, &[(None, request(&id))]);
        ids.push(id);
        i += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    for id in &ids {
        wait_status(&db, id, "completed");
    }
    // The worker's own logins (SCRAM-SHA-256; the test's producer uses another user).
    let renewals = sb
        .front()
        .lines()
        .iter()
        .filter(|l| l.starts_with("AUTH ok") && l.contains("user=alice") && l.ends_with("reauth=1"))
        .count();
    assert!(
        renewals >= 6,
        "only {renewals} re-authentications in 16 s of 4 s sessions: {:?}",
        sb.front().lines()
    );
    assert_eq!(sb.front().count("EXPIRED"), 0, "{:?}", sb.front().lines());
    assert_eq!(sb.front().count("AUTH failed"), 0);
    assert_eq!(worker.count_lines("Lost connection to Kafka"), 0);
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn credentials_rotated_mid_run_are_an_outage_healthz_explains_and_a_new_password_file_heals() {
    let front = FrontSettings {
        session_lifetime_ms: 2000,
        ..FrontSettings::default()
    };
    let sb = SecureBroker::start(Protocol::SaslSsl, &front, false);
    sb.broker.create_topic(TOPIC, 1);
    let db = TempDb::new();
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{PASSWORD}\n")).expect("write");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut env = sasl_env(&sb, &db, "SASL_SSL", "SCRAM-SHA-512");
    env.retain(|(k, _)| k != "KAFKA_SASL_PASSWORD");
    env.push((
        "KAFKA_SASL_PASSWORD_FILE".into(),
        file.display().to_string(),
    ));
    env.push(("METRICS_ADDR".into(), metrics.clone()));
    set(&mut env, "KAFKA_DLQ_TOPIC", "");
    let mut worker = spawn(&env);
    worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);
    db.insert_pending("before", "alice", 1, 1);
    produce_through(&sb, Protocol::SaslSsl, &[(None, request("before"))]);
    wait_status(&db, "before", "completed");

    // The broker's operator rotates the password; the worker's sessions end within 2 s.
    sb.front().write_users(&[
        ("alice".into(), "rotated-secret".into()),
        ("feeder".into(), "feeder-secret".into()),
    ]);
    db.insert_pending("during", "alice", 1, 1);
    // The test's producer has its own user, which still works.
    produce_through(&sb, Protocol::SaslSsl, &[(None, request("during"))]);
    let line = worker.wait_for_line(
        "authentication failed for user alice with SCRAM-SHA-512",
        Duration::from_secs(20),
    );
    assert!(line.contains(" - ERROR - "), "{line}");
    let health = wait_until(
        "/healthz to explain the outage",
        Duration::from_secs(30),
        || {
            healthz(&metrics).filter(|(status, body)| {
                *status == 503 && body.contains("authentication failed for user alice")
            })
        },
    );
    assert!(!health.1.contains("rotated-secret") && !health.1.contains(PASSWORD));
    let (_, metrics_text) = http_get(&metrics, "/metrics").expect("/metrics answers");
    assert!(metrics_text.contains("provision_requests_total"));
    assert!(!metrics_text.contains(PASSWORD) && !metrics_text.contains("alice-secret"));
    assert_eq!(
        worker.count_lines("Worker stopped"),
        0,
        "the worker keeps running"
    );

    // The new secret reaches the worker's file (a renewed Kubernetes secret, say): it is
    // used at the next attempt, without a restart, and nothing was lost.
    std::fs::write(&file, "rotated-secret\n").expect("write");
    worker.wait_for_line("Reconnected to Kafka", Duration::from_secs(40));
    wait_status(&db, "during", "completed");
    wait_until("/healthz to recover", Duration::from_secs(40), || {
        healthz(&metrics).filter(|(status, _)| *status == 200)
    });
    let all = worker.lines().join("\n");
    assert!(
        !all.contains("rotated-secret") && !all.contains(PASSWORD),
        "a secret was logged"
    );
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

// ------------------------------------------------------------------------------------
// Interop and the whole run

#[test]
fn librdkafka_produces_through_the_same_sasl_ssl_front_and_reads_back_what_the_worker_committed() {
    let sb = SecureBroker::start(Protocol::SaslSsl, &FrontSettings::default(), false);
    sb.broker.create_topic(TOPIC, 3);
    sb.broker.create_topic(DLQ, 1);
    let db = TempDb::new();
    let ids: Vec<String> = (0..6).map(|i| format!("interop-{i}")).collect();
    for id in &ids {
        db.insert_pending(id, "alice", 2, 3);
    }
    let mut messages: Vec<(Option<i32>, Vec<u8>)> =
        ids.iter().map(|id| (None, request(id))).collect();
    messages.push((None, b"not json at all".to_vec()));
    let x = librdkafka_security(&sb, Protocol::SaslSsl, "SCRAM-SHA-512");
    let positions = librdkafka_produce(&sb, &x, TOPIC, &messages);
    let mut log_end: BTreeMap<i32, Option<i64>> = (0..3).map(|p| (p, None)).collect();
    for (p, o) in &positions {
        let e = log_end.entry(*p).or_default();
        *e = Some(e.unwrap_or(0).max(o + 1));
    }

    let env = sasl_env(&sb, &db, "SASL_SSL", "SCRAM-SHA-512");
    let mut worker = spawn(&env);
    for id in &ids {
        wait_status(&db, id, "completed");
    }
    // The dead letter goes through the same SASL_SSL front (the producer is on our own
    // connection layer); until it is sent, the bad message's offset stays uncommitted.
    worker.wait_for_line("Dead-lettered invalid message", JOIN_AND_WORK);
    // Every partition committed up to its log end, as librdkafka (through the front) reads.
    wait_until(
        "the committed offsets to reach the log end",
        JOIN_AND_WORK,
        || {
            let committed = librdkafka_committed(&sb, &x, TOPIC);
            let expected: BTreeMap<i32, Option<i64>> = log_end
                .iter()
                .map(|(p, o)| (*p, o.or(committed.get(p).copied().flatten())))
                .collect();
            (committed == expected).then_some(())
        },
    );
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(20)).code(), Some(0));
    assert_eq!(sb.front().count("AUTH failed"), 0);
}

#[test]
fn the_whole_worker_life_over_sasl_ssl_join_consume_commit_dead_letter_rebalance_sigterm() {
    let sb = SecureBroker::start(Protocol::SaslSsl, &FrontSettings::default(), false);
    sb.broker.create_topic(TOPIC, 4);
    sb.broker.create_topic(DLQ, 1);
    let db = TempDb::new();
    let env = sasl_env(&sb, &db, "SASL_SSL", "SCRAM-SHA-256");

    let mut first = spawn(&env);
    first.wait_for_line("Partitions assigned: [0@", JOIN_AND_WORK);
    let mut ids = Vec::new();
    let mut batch = Vec::new();
    for i in 0..8 {
        let id = format!("life-a-{i}");
        db.insert_pending(&id, "alice", 1, 1);
        batch.push((Some(i % 4), request(&id)));
        ids.push(id);
    }
    batch.push((Some(1), b"{\"request_id\": 7}".to_vec()));
    produce_through(&sb, Protocol::SaslSsl, &batch);
    for id in &ids {
        wait_status(&db, id, "completed");
    }
    // The dead letter goes through the same SASL_SSL front (the producer is on our own
    // connection layer); until it is sent, the bad message stays in flight.
    first.wait_for_line("Dead-lettered invalid message", JOIN_AND_WORK);

    // A second worker joins: the group rebalances and the partitions are split.
    let mut second = spawn(&env);
    second.wait_for_line("Partitions assigned: [", JOIN_AND_WORK);
    wait_until("both workers to own partitions", JOIN_AND_WORK, || {
        let owns = |w: &WorkerProcess| {
            w.lines()
                .iter()
                .rev()
                .find(|l| l.contains("Partitions assigned: ["))
                .is_some_and(|l| !l.contains("Partitions assigned: []"))
        };
        (owns(&first) && owns(&second)).then_some(())
    });
    let mut batch = Vec::new();
    for i in 0..8 {
        let id = format!("life-b-{i}");
        db.insert_pending(&id, "alice", 1, 1);
        batch.push((Some(i % 4), request(&id)));
        ids.push(id);
    }
    produce_through(&sb, Protocol::SaslSsl, &batch);
    for id in &ids {
        wait_status(&db, id, "completed");
    }

    // Commits, read by librdkafka through the same SASL_SSL front: every partition at its
    // log end (4 partitions, 4 requests each, plus the bad message on partition 1).
    let x = librdkafka_security(&sb, Protocol::SaslSsl, "SCRAM-SHA-256");
    wait_until(
        "the group's commits to reach the log end",
        JOIN_AND_WORK,
        || {
            let c = librdkafka_committed(&sb, &x, TOPIC);
            (c == BTreeMap::from([(0, Some(4)), (1, Some(5)), (2, Some(4)), (3, Some(4))]))
                .then_some(())
        },
    );

    let dead = first
        .lines()
        .into_iter()
        .chain(second.lines())
        .filter(|l| l.contains("Dead-lettered invalid message"))
        .count();
    assert_eq!(dead, 1, "the invalid message was dead-lettered once");

    for w in [&first, &second] {
        w.signal("TERM");
    }
    assert_eq!(first.wait_exit(Duration::from_secs(30)).code(), Some(0));
    assert_eq!(second.wait_exit(Duration::from_secs(30)).code(), Some(0));
    assert_eq!(sb.front().count("AUTH failed"), 0);
}

#[test]
fn operator_commands_work_over_sasl_ssl() {
    let sb = SecureBroker::start(Protocol::SaslSsl, &FrontSettings::default(), false);
    sb.broker.create_topic(TOPIC, 2);
    sb.broker.create_topic(DLQ, 1);
    let db = TempDb::new();
    let mut env = sasl_env(&sb, &db, "SASL_SSL", "SCRAM-SHA-512");
    set(&mut env, "KAFKA_GROUP_ID", "ops-group");

    let out = tool(&env, &["check"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let kafka = line_of(&out, "OK   kafka:");
    assert!(
        kafka.contains("SASL_SSL: TLS 1.3, TLS13_")
            && kafka.contains("broker certificate CN=localhost, O=Tests (expires ")
            && kafka.contains("authenticated as alice with SCRAM-SHA-512"),
        "{kafka}"
    );

    let out = tool(&env, &["offsets"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("PARTITION"),
        "{}",
        text(&out.stdout)
    );
    let out = tool(&env, &["offsets", "--reset", "latest"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // `send` publishes through the same front (the producer is on our own layer).
    let out = tool(
        &env,
        &[
            "send",
            "--user",
            "alice",
            "--gpus",
            "1",
            "--hours",
            "1",
            "--request-id",
            "ops-1",
        ],
    );
    assert!(out.status.success(), "send: {}", text(&out.stderr));
    let mut worker = spawn(&env);
    wait_status(&db, "ops-1", "completed");
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn the_systemd_unit_passes_the_sasl_password_as_a_credential_file() {
    let unit = std::fs::read_to_string(common::repo_root().join("deploy/provision-worker.service"))
        .expect("read the unit");
    let wanted = [
        "#LoadCredential=kafka-sasl-password:/etc/provision-worker/kafka-sasl-password",
        "#Environment=KAFKA_SASL_PASSWORD_FILE=%d/kafka-sasl-password",
    ];
    for line in wanted {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line:?}");
    }
    // Uncommented as the header says, systemd accepts it.
    let dir = tempfile::tempdir().expect("dir");
    let enabled = unit
        .replace(wanted[0], &wanted[0][1..])
        .replace(wanted[1], &wanted[1][1..])
        .replace(
            "/usr/local/bin/provision-worker",
            env!("CARGO_BIN_EXE_provision-worker"),
        );
    let path = dir.path().join("provision-worker.service");
    std::fs::write(&path, enabled).expect("write the unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze (install systemd to check the unit)");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        text(&out.stderr)
    );
}

// ------------------------------------------------------------------------------------
// Text a peer controls

/// What a hostile broker slips into its error messages: a newline, a whole log line in the
/// worker's format, and a terminal escape (clear the screen).
const FORGED: &str =
    "refused\n2030-01-01 00:00:00 - provision_worker - INFO - forged by the broker\u{1b}[2J";
/// The same, as it must show: one line, the control characters escaped.
const FORGED_SHOWN: &str =
    "refused\\n2030-01-01 00:00:00 - provision_worker - INFO - forged by the broker\\u{1b}[2J";

#[test]
fn text_a_peer_controls_cannot_forge_log_lines_stderr_or_healthz() {
    // A refused login's error message, at start: the worker's error line, escaped.
    let front = FrontSettings {
        failure_message: Some(FORGED.to_owned()),
        session_lifetime_ms: 2000,
        ..FrontSettings::default()
    };
    let sb = SecureBroker::start(Protocol::SaslPlaintext, &front, false);
    sb.broker.create_topic(TOPIC, 1);
    let db = TempDb::new();
    let mut env = sasl_env(&sb, &db, "SASL_PLAINTEXT", "SCRAM-SHA-256");
    set(&mut env, "KAFKA_DLQ_TOPIC", "");
    let mut wrong = env.clone();
    set(&mut wrong, "KAFKA_SASL_PASSWORD", "wrong");
    let mut worker = spawn(&wrong);
    assert_eq!(worker.wait_exit(PROMPT_EXIT).code(), Some(1));
    let line = worker.wait_for_line("authentication failed", Duration::ZERO);
    assert!(
        line.ends_with(&format!(
            "authentication failed for user alice with SCRAM-SHA-256: {FORGED_SHOWN}"
        )),
        "{line}"
    );
    assert_nothing_forged("the worker's output", &worker.lines());

    // Mid-run, the same refusal in /healthz: one line, escaped.
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut env = env.clone();
    set(&mut env, "METRICS_ADDR", &metrics);
    let mut worker = spawn(&env);
    worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);
    sb.front().write_users(&[
        ("alice".into(), "rotated-secret".into()),
        ("feeder".into(), "feeder-secret".into()),
    ]);
    let (_, body) = wait_until(
        "/healthz to report the refusal",
        Duration::from_secs(30),
        || {
            healthz(&metrics)
                .filter(|(status, body)| *status == 503 && body.contains("authentication failed"))
        },
    );
    assert!(body.contains(FORGED_SHOWN), "{body:?}");
    assert_eq!(body.trim_end().lines().count(), 1, "{body:?}");
    assert!(!body.contains('\u{1b}'), "{body:?}");
    worker.wait_for_line(FORGED_SHOWN, Duration::from_secs(10));
    worker.signal("TERM");
    worker.wait_exit(Duration::from_secs(20));
    assert_nothing_forged("the worker's output", &worker.lines());

    // The mechanisms a broker lists, in `check` (stdout) and the worker's log.
    let front = FrontSettings {
        mechanisms: format!("SCRAM-SHA-512,{FORGED}"),
        ..FrontSettings::default()
    };
    let sb = SecureBroker::start(Protocol::SaslPlaintext, &front, false);
    let env = sasl_env(&sb, &db, "SASL_PLAINTEXT", "SCRAM-SHA-256");
    let out = tool(&env, &["check"]);
    let kafka = line_of(&out, "FAIL kafka:");
    assert!(
        kafka.contains(&format!(
            "does not enable SASL mechanism SCRAM-SHA-256; it enables SCRAM-SHA-512, {FORGED_SHOWN}: set KAFKA_SASL_MECHANISM"
        )),
        "{kafka}"
    );
    assert_nothing_forged("check's stdout", &lines_of(&out.stdout));
    assert_nothing_forged("check's stderr", &lines_of(&out.stderr));
    let line = exits_promptly_with(&env, "does not enable SASL mechanism");
    assert!(line.contains(FORGED_SHOWN), "{line}");

    // A broker certificate's subject, in `check`.
    let sb = SecureBroker::start_with(
        Protocol::Ssl,
        &FrontSettings::default(),
        false,
        Certs::generate(),
        "forged-subject",
    );
    let env = tls_env(&sb, &db, "ca.pem");
    let out = tool(&env, &["check"]);
    let kafka = line_of(&out, "OK   kafka:");
    let shown = FORGED_LINE_SUBJECT
        .replace('\n', "\\n")
        .replace('\u{1b}', "\\u{1b}");
    assert!(
        kafka.contains(&format!("broker certificate CN={shown}, O=Tests (expires ")),
        "{kafka}"
    );
    assert_nothing_forged("check's stdout", &lines_of(&out.stdout));
}

/// Fails if a line of `lines` is a forged one (it starts with the forged date) or holds a
/// terminal escape.
fn assert_nothing_forged(what: &str, lines: &[String]) {
    for line in lines {
        let line = line
            .split_once("] ")
            .map_or(line.as_str(), |(_, rest)| rest);
        assert!(
            !line.starts_with("2030-01-01") && !line.contains('\u{1b}'),
            "{what} has a forged line: {line:?}"
        );
    }
}

fn lines_of(bytes: &[u8]) -> Vec<String> {
    text(bytes).lines().map(str::to_owned).collect()
}

// ------------------------------------------------------------------------------------
// Files other users can read

#[test]
fn secret_files_other_users_can_read_are_warned_about_at_start_and_by_check() {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    let certs = Certs::generate();
    let dir = tempfile::tempdir().expect("dir");
    let password = dir.path().join("password");
    std::fs::write(&password, format!("{PASSWORD}\n")).expect("write the password");
    let key = dir.path().join("client.key");
    std::fs::copy(certs.path("client.key"), &key).expect("copy the key");
    chmod(&password, 0o644);
    // (Group access alone is no warning: keys are often shared with a group on purpose,
    // Debian's ssl-cert, a Kubernetes fsGroup.)
    chmod(&key, 0o604);
    let show = |p: &std::path::Path| p.display().to_string();
    let db = TempDb::new();
    // No broker is needed: the warnings come before any connection.
    let mut env = base_env("127.0.0.1:1", &db);
    for (k, v) in [
        ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL".to_owned()),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".to_owned()),
        ("KAFKA_SASL_USERNAME", "alice".to_owned()),
        ("KAFKA_SASL_PASSWORD_FILE", show(&password)),
        ("KAFKA_SSL_CA_LOCATION", certs.file("ca.pem")),
        ("KAFKA_SSL_CERTIFICATE_LOCATION", certs.file("client.pem")),
        ("KAFKA_SSL_KEY_LOCATION", show(&key)),
    ] {
        set(&mut env, k, &v);
    }
    let password_warning = format!(
        "KAFKA_SASL_PASSWORD_FILE={} can be read by other users (mode 0644) and holds the SASL password; restrict it with `chmod o-rwx {}`",
        show(&password),
        show(&password)
    );
    let key_warning = format!(
        "KAFKA_SSL_KEY_LOCATION={} can be read by other users (mode 0604) and holds the client certificate's private key; restrict it with `chmod o-rwx {}`",
        show(&key),
        show(&key)
    );

    let out = tool(&env, &["check"]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&password_warning), "{stderr}");
    assert!(stderr.contains(&key_warning), "{stderr}");
    let mut worker = spawn(&env);
    for warning in [&password_warning, &key_warning] {
        let line = worker.wait_for_line(warning, Duration::from_secs(10));
        assert!(line.contains(" - WARNING - "), "{line}");
    }
    drop(worker);

    // Owner (and group) only: nothing to say.
    chmod(&password, 0o600);
    chmod(&key, 0o640);
    let out = tool(&env, &["check"]);
    assert!(
        !text(&out.stderr).contains("other users"),
        "{}",
        text(&out.stderr)
    );

    // A `.env` holding the password, readable by others: warned about; one holding no secret
    // is not.
    env.retain(|(k, _)| k != "KAFKA_SASL_PASSWORD_FILE");
    let dotenv_warning = ".env can be read by other users (mode 0644) and holds KAFKA_SASL_PASSWORD; restrict it with `chmod o-rwx .env`, or put the password in a file named by KAFKA_SASL_PASSWORD_FILE";
    for (contents, mode, warned) in [
        (format!("KAFKA_SASL_PASSWORD={PASSWORD}\n"), 0o644, true),
        (format!("KAFKA_SASL_PASSWORD={PASSWORD}\n"), 0o600, false),
        (
            format!(
                "KAFKA_TOPIC={TOPIC}\nKAFKA_SASL_PASSWORD_FILE={}\n",
                show(&password)
            ),
            0o644,
            false,
        ),
    ] {
        let out = tool_with_dotenv(&env, &["check"], &contents, mode);
        let stderr = text(&out.stderr);
        assert_eq!(
            stderr.contains(dotenv_warning),
            warned,
            "mode {mode:o}, {contents:?}: {stderr}"
        );
        assert!(!stderr.contains(PASSWORD), "{stderr}");
    }
    let mut worker = WorkerProcess::command()
        .envs(
            &env.iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        )
        .dotenv(&format!("KAFKA_SASL_PASSWORD={PASSWORD}\n"))
        .spawn();
    worker.wait_for_line(dotenv_warning, Duration::from_secs(10));
}

// ------------------------------------------------------------------------------------
// Helpers

/// Worker settings for `sb` over TLS, trusting `ca` of its certificates.
fn tls_env(sb: &SecureBroker, db: &TempDb, ca: &str) -> Vec<(String, String)> {
    let mut env = base_env(&sb.addr(), db);
    env.push(("KAFKA_SECURITY_PROTOCOL".into(), "SSL".into()));
    env.push(("KAFKA_SSL_CA_LOCATION".into(), sb.certs.file(ca)));
    env
}

/// Worker settings for `sb` with SASL as alice (and the CA when `protocol` is SASL_SSL).
fn sasl_env(
    sb: &SecureBroker,
    db: &TempDb,
    protocol: &str,
    mechanism: &str,
) -> Vec<(String, String)> {
    let mut env = base_env(&sb.addr(), db);
    env.push(("KAFKA_SECURITY_PROTOCOL".into(), protocol.into()));
    env.push(("KAFKA_SASL_MECHANISM".into(), mechanism.into()));
    env.push(("KAFKA_SASL_USERNAME".into(), "alice".into()));
    env.push(("KAFKA_SASL_PASSWORD".into(), PASSWORD.into()));
    if protocol == "SASL_SSL" {
        env.push(("KAFKA_SSL_CA_LOCATION".into(), sb.certs.file("ca.pem")));
    }
    env
}

fn base_env(addr: &str, db: &TempDb) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db.url()),
        ("KAFKA_BOOTSTRAP_SERVERS", addr.to_owned()),
        ("KAFKA_GROUP_ID", GROUP.to_owned()),
        ("MOCK_PROVISION_DELAY_SECONDS", "0.1".to_owned()),
        ("WORKER_THREADS", "4".to_owned()),
        ("KAFKA_SESSION_TIMEOUT_MS", "6000".to_owned()),
        ("KAFKA_HEARTBEAT_INTERVAL_MS", "500".to_owned()),
        ("COMMIT_INTERVAL_MS", "200".to_owned()),
        ("KAFKA_STARTUP_TIMEOUT_SECONDS", "20".to_owned()),
        ("SHUTDOWN_TIMEOUT_SECONDS", "10".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.into(), value.into()));
}

fn spawn(env: &[(String, String)]) -> WorkerProcess {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    WorkerProcess::spawn(&pairs)
}

/// Starts the worker, expects exit code 1 within [`PROMPT_EXIT`] and returns its last line
/// containing `needle`.
fn exits_promptly_with(env: &[(String, String)], needle: &str) -> String {
    let started = Instant::now();
    let mut worker = spawn(env);
    let status = worker.wait_exit(PROMPT_EXIT);
    assert_eq!(status.code(), Some(1), "{}", worker.lines().join("\n"));
    assert!(started.elapsed() < PROMPT_EXIT);
    worker
        .lines()
        .into_iter()
        .rev()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}:\n{}", worker.lines().join("\n")))
}

/// Runs `provision-worker ARGS` to completion with exactly `env` (plus PATH).
fn tool(env: &[(String, String)], args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("a working directory");
    let out = Command::new(env!("CARGO_BIN_EXE_provision-worker"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .current_dir(dir.path())
        .output()
        .expect("run provision-worker");
    eprintln!(
        "$ provision-worker {}\n{}{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Like `tool`, in a working directory with a `.env` of `contents` and `mode`.
fn tool_with_dotenv(env: &[(String, String)], args: &[&str], contents: &str, mode: u32) -> Output {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("a working directory");
    let dotenv = dir.path().join(".env");
    std::fs::write(&dotenv, contents).expect("write .env");
    std::fs::set_permissions(&dotenv, std::fs::Permissions::from_mode(mode)).expect("chmod .env");
    let out = Command::new(env!("CARGO_BIN_EXE_provision-worker"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .current_dir(dir.path())
        .output()
        .expect("run provision-worker");
    eprintln!(
        "$ provision-worker {} (.env mode {mode:o})\n{}{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn line_of(out: &Output, prefix: &str) -> String {
    text(&out.stdout)
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{}", text(&out.stdout)))
        .to_owned()
}

fn request(id: &str) -> Vec<u8> {
    serde_json::json!({
        "request_id": id,
        "user_id": "alice",
        "gpu_count": 1,
        "duration_hours": 1,
    })
    .to_string()
    .into_bytes()
}

fn wait_status(db: &TempDb, id: &str, status: &str) {
    wait_until(&format!("{id} to be {status}"), JOIN_AND_WORK, || {
        (db.status_of(id).as_deref() == Some(status)).then_some(())
    });
}

/// GET /healthz: (status, body), or `None` while nothing answers.
fn healthz(addr: &str) -> Option<(u16, String)> {
    http_get(addr, "/healthz")
}

/// GET `path` from the metrics listener: (status, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Produces messages with librdkafka through `sb`'s secured port (as alice with SCRAM when
/// SASL is on); their (partition, offset).
fn produce_through(
    sb: &SecureBroker,
    protocol: Protocol,
    messages: &[(Option<i32>, Vec<u8>)],
) -> Vec<(i32, i64)> {
    let x = librdkafka_security(sb, protocol, "SCRAM-SHA-512");
    librdkafka_produce(sb, &x, TOPIC, messages)
}

/// Produces `(partition, value)` messages with librdkafka through `sb` with settings `x`;
/// their (partition, offset).
fn librdkafka_produce(
    sb: &SecureBroker,
    x: &[String],
    topic: &str,
    messages: &[(Option<i32>, Vec<u8>)],
) -> Vec<(i32, i64)> {
    let input: String = messages
        .iter()
        .map(|(p, v)| {
            let mut line = serde_json::json!({ "value": b64_encode(v) });
            if let Some(p) = p {
                line["partition"] = (*p).into();
            }
            format!("{line}\n")
        })
        .collect();
    let addr = sb.addr();
    let mut args = vec!["produce", "--bootstrap", &addr, "--topic", topic];
    for setting in x {
        args.extend(["-X", setting]);
    }
    python_tool(&args, input.as_bytes())
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
            (
                v["partition"].as_i64().expect("partition") as i32,
                v["offset"].as_i64().expect("offset"),
            )
        })
        .collect()
}

/// The group's committed offsets as librdkafka reads them through `sb`.
fn librdkafka_committed(
    sb: &SecureBroker,
    x: &[String],
    topic: &str,
) -> BTreeMap<i32, Option<i64>> {
    let addr = sb.addr();
    let mut args = vec![
        "committed",
        "--bootstrap",
        &addr,
        "--group",
        GROUP,
        "--topic",
        topic,
    ];
    for setting in x {
        args.extend(["-X", setting]);
    }
    let out = python_tool(&args, b"");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    v.as_object()
        .expect("an object")
        .iter()
        .map(|(p, o)| (p.parse().expect("partition"), o.as_i64()))
        .collect()
}

/// An RSA client key as PKCS#1 ("RSA PRIVATE KEY") with a certificate the test CA signed.
fn rsa_client(certs: &Certs) -> (String, String) {
    let dir = certs.dir();
    let pkcs8 = dir.join("rsa-pkcs8.key");
    let pkcs1 = dir.join("rsa-pkcs1.key");
    let show = |p: &std::path::Path| p.display().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &show(&pkcs8),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &show(&pkcs8),
        "-traditional",
        "-out",
        &show(&pkcs1),
    ]);
    let pem = std::fs::read_to_string(&pkcs1).expect("read the RSA key");
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{pem}");
    let csr = dir.join("rsa.csr");
    // Extensions make it an X.509 v3 certificate (webpki refuses v1).
    let ext = dir.join("rsa.ext");
    std::fs::write(&ext, "subjectAltName=DNS:rsa.client\n").expect("write rsa.ext");
    let cert = dir.join("rsa.pem");
    openssl(&[
        "req",
        "-new",
        "-key",
        &show(&pkcs8),
        "-subj",
        "/CN=rsa.client",
        "-out",
        &show(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &show(&csr),
        "-CA",
        &certs.file("ca.pem"),
        "-CAkey",
        &certs.file("ca.key"),
        "-days",
        "2",
        "-out",
        &show(&cert),
        "-extfile",
        &show(&ext),
    ]);
    (show(&cert), show(&pkcs1))
}
