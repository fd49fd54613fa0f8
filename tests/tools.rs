//! The operator commands against a real broker and database: `send` and `status` carry a
//! request through the whole flow, `check` names what works and what does not, `offsets`
//! shows lag and refuses to move offsets under a live group.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use blocking_kafka::admin::{Admin, OutsideCommitError};
use blocking_kafka::{BackoffSettings, ConsumerSettings, Offset, Partition, StartFrom};

use common::{Broker, TempDb, WorkerProcess, librdkafka_committed, produce, wait_until};

const TOPIC: &str = "provision-requests";
const DLQ: &str = "provision-requests.dlq";
const GROUP: &str = "provision-worker-group";

#[test]
fn send_then_the_worker_then_status_show_the_whole_flow() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 3);
    let db = TempDb::new();
    let env = env(&broker.addr(), &db);

    let out = tool(
        &env,
        &["send", "--user", "alice", "--gpus", "4", "--hours", "2"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let id = stdout.trim();
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the id on stdout: {stdout:?}"
    );
    assert_eq!(id.len(), 36, "a UUID: {id:?}");
    let row = db.row(id).expect("send inserted the row");
    assert_eq!(
        (row.user_id.as_str(), row.gpu_count, row.duration_hours),
        ("alice", 4, 2)
    );
    assert_eq!(row.status, "pending");

    let pending = tool(&env, &["status", id]);
    assert!(pending.status.success());
    assert!(text(&pending.stdout).contains("status:         pending"));

    let mut worker = spawn_worker(&env);
    wait_until(
        "the worker to complete the sent request",
        Duration::from_secs(30),
        || (db.status_of(id).as_deref() == Some("completed")).then_some(()),
    );
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).success());

    let done = tool(&env, &["status", id]);
    let shown = text(&done.stdout);
    assert!(done.status.success(), "{}", text(&done.stderr));
    for expected in [
        &format!("request_id:     {id}") as &str,
        "user_id:        alice",
        "gpu_count:      4",
        "status:         completed",
        "kubeconfig:     present (",
    ] {
        assert!(
            shown.contains(expected),
            "{expected:?} missing from:\n{shown}"
        );
    }
    assert!(
        !shown.contains("token"),
        "status must not print the token:\n{shown}"
    );

    let kubeconfig = tool(&env, &["status", id, "--kubeconfig"]);
    assert!(kubeconfig.status.success());
    let yaml = text(&kubeconfig.stdout);
    assert_eq!(Some(yaml.as_str()), row_kubeconfig(&db, id).as_deref());
    assert!(yaml.contains("apiVersion"), "{yaml}");
}

#[test]
fn send_that_cannot_publish_marks_its_row_failed() {
    let db = TempDb::new();
    let env = env("127.0.0.1:1", &db);
    let out = tool(
        &env,
        &[
            "send",
            "--user",
            "bob",
            "--gpus",
            "1",
            "--hours",
            "1",
            "--request-id",
            "r-1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("request r-1 was stored but not published, and is now marked failed"),
        "{}",
        text(&out.stderr)
    );
    let row = db.row("r-1").expect("the row is there");
    assert_eq!(row.status, "failed");
    assert!(row.error_message.unwrap().contains("could not publish"));
}

#[test]
fn status_of_a_missing_request_or_database_fails_without_creating_anything() {
    let db = TempDb::new();
    let env = env("127.0.0.1:1", &db);
    let out = tool(&env, &["status", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("does not exist; check DATABASE_URL"));
    assert!(!db.path().exists(), "status created the database");

    db.insert_pending("p-1", "u", 1, 1);
    let out = tool(&env, &["status", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no request \"nope\""));
    let out = tool(&env, &["status", "p-1", "--kubeconfig"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("has no kubeconfig (status pending)"));
}

#[test]
fn check_prints_one_line_per_check_and_passes_only_when_all_do() {
    let broker = Broker::start();
    let db = TempDb::new();
    let env = env(&broker.addr(), &db);

    // No topics yet: two failures, exit code 1, and no database file left behind.
    let out = tool(&env, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    check_lines(
        &out,
        &[
            ("OK", "configuration"),
            ("OK", "database: "),
            ("OK", "kafka"),
            ("FAIL", "topic: topic provision-requests does not exist"),
            (
                "FAIL",
                "dead-letter topic: topic provision-requests.dlq does not exist",
            ),
            ("OK", "group coordinator"),
        ],
    );
    assert!(!db.path().exists(), "check created the database");

    broker.create_topic(TOPIC, 3);
    broker.create_topic(DLQ, 1);
    db.insert_pending("r", "u", 1, 1);
    let out = tool(&env, &["check"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).lines().all(|l| l.starts_with("OK   ")));
    assert!(text(&out.stdout).contains("provision-requests has 3 partition(s)"));

    // Nothing answers: the Kafka checks fail and say why.
    let out = tool(&self::env("127.0.0.1:1", &db), &["check"]);
    assert_eq!(out.status.code(), Some(1));
    check_lines(
        &out,
        &[
            ("OK", "configuration"),
            ("OK", "database"),
            ("FAIL", "kafka: cannot reach Kafka at 127.0.0.1:1"),
            ("FAIL", "topic: not checked"),
            ("FAIL", "dead-letter topic: not checked"),
            ("FAIL", "group coordinator: not checked"),
        ],
    );

    // A bad configuration is the first failed check; exit code 2 as for any bad config.
    let mut bad = env.clone();
    bad.push(("WORKER_THREADS".into(), "many".into()));
    let out = tool(&bad, &["check"]);
    assert_eq!(out.status.code(), Some(2));
    let first = text(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        first.starts_with("FAIL configuration: invalid WORKER_THREADS"),
        "{first}"
    );
}

#[test]
fn offsets_show_lag_and_reset_only_when_the_group_is_empty() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 3);
    let db = TempDb::new();
    let env = env(&broker.addr(), &db);
    for i in 0..3 {
        let value =
            format!(r#"{{"request_id":"o-{i}","user_id":"u","gpu_count":1,"duration_hours":1}}"#);
        produce(&broker, TOPIC, Some(0), None, value.as_bytes(), &[]);
    }

    let before = tool(&env, &["offsets"]);
    assert!(before.status.success(), "{}", text(&before.stderr));
    assert_eq!(row_of(&before, 0), ["0", "-", "3", "-"]);

    let mut worker = spawn_worker(&env);
    wait_until("three completed requests", Duration::from_secs(30), || {
        (db.count_by_status().get("completed") == Some(&3)).then_some(())
    });
    wait_until("the offsets committed", Duration::from_secs(20), || {
        let out = tool(&env, &["offsets"]);
        (row_of(&out, 0) == ["0", "3", "3", "0"]).then_some(())
    });

    // While the worker is a member, a reset is refused and changes nothing.
    let refused = tool(&env, &["offsets", "--reset", "earliest"]);
    assert_eq!(refused.status.code(), Some(1));
    let message = text(&refused.stderr);
    assert!(
        message.contains("refusing to move the offsets of consumer group provision-worker-group: it has 1 active member(s)"),
        "{message}"
    );
    assert!(
        message.contains("stop every worker of the group first"),
        "{message}"
    );
    // The coordinator itself refuses a commit from outside a live group (the guard for a
    // worker joining between our look at the group and our commit).
    let mut admin = Admin::new(&ConsumerSettings {
        bootstrap: vec![broker.addr()],
        client_id: "tools-test".into(),
        group_id: GROUP.into(),
        group_instance_id: None,
        assignors: blocking_kafka::Assignor::DEFAULT.to_vec(),
        topic: TOPIC.into(),
        session_timeout: Duration::from_secs(6),
        rebalance_timeout: Duration::from_secs(6),
        heartbeat_interval: Duration::from_secs(1),
        fetch_max_wait: Duration::from_millis(100),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        retry_backoff: BackoffSettings::RETRY,
        reconnect_backoff: BackoffSettings::RECONNECT,
        start_from: StartFrom::Earliest,
        security: Default::default(),
        record_limits: Default::default(),
    });
    let outside = admin.commit_outside_group(&[(Partition(0), Offset(0))]);
    assert!(
        matches!(outside, Err(OutsideCommitError::GroupActive { .. })),
        "{outside:?}"
    );
    assert_eq!(librdkafka_committed(&broker, GROUP, TOPIC)[&0], Some(3));

    // A clean stop leaves the group; then the reset goes through.
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).success());
    let reset = tool(&env, &["offsets", "--reset", "earliest"]);
    assert!(reset.status.success(), "{}", text(&reset.stderr));
    assert!(text(&reset.stdout).contains("partition 0: 3 -> 0"));
    assert_eq!(row_of(&reset, 0), ["0", "0", "3", "3"]);

    let to_two = tool(&env, &["offsets", "--reset", "2"]);
    assert!(to_two.status.success(), "{}", text(&to_two.stderr));
    // Partitions 1 and 2 are empty: 2 is past their end and is clamped to it.
    assert!(
        text(&to_two.stdout).contains("partition 1: offset 2 is outside its log (0..0); using 0")
    );
    assert_eq!(row_of(&to_two, 0), ["0", "2", "3", "1"]);

    // The independent client reads what we committed.
    let committed = librdkafka_committed(&broker, GROUP, TOPIC);
    assert_eq!(committed[&0], Some(2));
    assert_eq!(committed[&1], Some(0));

    let latest = tool(&env, &["offsets", "--reset", "latest"]);
    assert!(latest.status.success());
    assert_eq!(row_of(&latest, 0), ["0", "3", "3", "0"]);
}

/// The worker's environment for `broker_addr` and `db`, with quick timings.
fn env(broker_addr: &str, db: &TempDb) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db.url()),
        ("KAFKA_BOOTSTRAP_SERVERS", broker_addr.to_owned()),
        ("MOCK_PROVISION_DELAY_SECONDS", "0".to_owned()),
        ("WORKER_THREADS", "2".to_owned()),
        ("KAFKA_SESSION_TIMEOUT_MS", "6000".to_owned()),
        ("KAFKA_HEARTBEAT_INTERVAL_MS", "500".to_owned()),
        ("COMMIT_INTERVAL_MS", "100".to_owned()),
        ("KAFKA_STARTUP_TIMEOUT_SECONDS", "2".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Runs `provision-worker ARGS` to completion with exactly `env` (plus PATH), in a fresh
/// directory so no `.env` applies; stdout and stderr stay apart.
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

fn spawn_worker(env: &[(String, String)]) -> WorkerProcess {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    WorkerProcess::spawn(&pairs)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts `check`'s lines, in order: each starts with its verdict and contains its text.
fn check_lines(out: &Output, expected: &[(&str, &str)]) {
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stdout}");
    for (line, (verdict, contains)) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(&format!("{verdict:<4} ")) && line.contains(contains),
            "expected {verdict} ... {contains:?}, got {line:?}"
        );
    }
}

/// The columns of partition `p`'s row in `offsets` output.
fn row_of(out: &Output, p: i32) -> Vec<String> {
    let stdout = text(&out.stdout);
    let table = stdout
        .split_once("PARTITION")
        .map(|(_, t)| t.to_owned())
        .unwrap_or_default();
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cols| cols.len() == 4 && cols[0] == p.to_string())
        .unwrap_or_default()
}

fn row_kubeconfig(db: &TempDb, id: &str) -> Option<String> {
    db.row(id).and_then(|r| r.kubeconfig)
}
