//! The worker's contract, end to end: the real `provision-worker` binary against a private
//! tansu broker and a SQLite file, observed only from outside (rows, log lines, exit codes,
//! the dead-letter topic and the group's committed offsets as librdkafka reads them).
//!
//! The tests of a request's life, shutdown and bad input run twice (`on_both_databases!`):
//! on a SQLite file, under their own names, and on PostgreSQL, as `<name>::on_postgresql`
//! (a database of their own on a private PostgreSQL 15 cluster, reached with TLS checked by
//! name and SCRAM, through a `postgresql+asyncpg://` URL as the backend writes it).
//! PostgreSQL's own faults are in tests/postgres.rs.
//!
//! Every test starts its own broker and database, so tests never see each other's topics,
//! groups or rows. Every wait is a condition with a deadline.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::{
    Broker, Db, PgDb, TempDb, WorkerProcess, librdkafka_committed, librdkafka_consume, produce,
    wait_until,
};
use rusqlite::{Connection, OptionalExtension};

/// A test that runs twice: on a SQLite file under its own name, and on PostgreSQL as
/// `<name>::on_postgresql`, with `$db` a `&dyn Db` of each.
macro_rules! on_both_databases {
    ($(#[doc = $doc:literal])* fn $name:ident($db:ident) $body:block) => {
        $(#[doc = $doc])*
        #[test]
        fn $name() {
            let $db: &dyn Db = &TempDb::new();
            $body
        }

        mod $name {
            use super::*;

            $(#[doc = $doc])*
            #[test]
            fn on_postgresql() {
                let $db: &dyn Db = &PgDb::new();
                $body
            }
        }
    };
}

/// The topic most tests use (the worker's default name).
const TOPIC: &str = "provision-requests";
const DLQ: &str = "provision-requests.dlq";
const GROUP: &str = "worker-test-group";

/// A group join takes ~3 s on tansu with a 6 s session; a few requests take a few more.
const JOIN_AND_WORK: Duration = Duration::from_secs(45);
/// For a worker that must stop by itself (config error, startup failure, shutdown).
const EXIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------
// The normal life of requests

on_both_databases! {
    fn happy_path_over_three_partitions_completes_rows_logs_seed_lines_and_commits_log_end(db) {
        let broker = Broker::start();
        broker.create_topic(TOPIC, 3);
        // The user ids the kubeconfig must carry through YAML unchanged.
        let users = [
            "alice",
            "o'brien: \"#1\" & !!str *x",
            "ünïcødé 🚀 [a, b] {c: d}",
            "multi\nline: user # not a comment",
            "- dash",
            "bob",
        ];
        let ids: Vec<String> = (0..users.len()).map(|i| format!("req-happy-{i}")).collect();
        for (i, (id, user)) in ids.iter().zip(users).enumerate() {
            db.insert_pending(id, user, i as i64 + 1, 2);
        }

        let mut worker = spawn(
            &broker,
            db,
            TOPIC,
            &[("MOCK_PROVISION_DELAY_SECONDS", "0.2")],
        );
        worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);
        let mut log_end: BTreeMap<i32, Option<i64>> = BTreeMap::new();
        for (i, (id, user)) in ids.iter().zip(users).enumerate() {
            let partition = (i % 3) as i32;
            let (p, offset) = produce(
                &broker,
                TOPIC,
                Some(partition),
                None,
                request_json(id, user, i as i64 + 1, 2).as_bytes(),
                &[],
            );
            log_end.insert(p, Some(offset + 1));
        }
        assert_eq!(log_end.len(), 3, "messages went to all three partitions");

        wait_all_status(db, &ids, "completed", JOIN_AND_WORK);
        for (i, (id, user)) in ids.iter().zip(users).enumerate() {
            let row = db.row(id).expect("the row exists");
            assert_eq!(row.gpu_count, i as i64 + 1);
            assert_eq!(row.error_message, None, "{id}");
            let yaml = row
                .kubeconfig
                .as_deref()
                .expect("a completed row has a kubeconfig");
            let token = check_kubeconfig(yaml, user);
            let leaked: Vec<String> = worker
                .lines()
                .into_iter()
                .filter(|l| l.contains(&token))
                .collect();
            assert!(leaked.is_empty(), "the bearer token is logged: {leaked:?}");
        }

        // The seed's lines, in the seed's order, for one request whose user has no newline.
        let (id, user) = (&ids[0], users[0]);
        let lines = worker.lines();
        assert_in_order(
            &lines,
            &[
                &format!("Connecting to database: {}", db.shown_url()),
                "Database connection established",
                &format!("Connecting to Kafka: {}, topic: {TOPIC}", broker.addr()),
                "Kafka consumer started successfully",
                "🚀 Worker started - waiting for provision requests...",
                "Partitions assigned: [",
                &format!("Processing provision request: {id} (user={user}, gpus=1, duration=2h)"),
                &format!("Updated request {id} to status: provisioning"),
                "Simulating provisioning work for 0.2 seconds...",
                &format!("Updated request {id} to status: completed"),
                &format!("✅ Successfully provisioned request {id} for user {user}"),
            ],
        );
        let seed_line = lines
            .iter()
            .find(|l| l.contains(&format!("Updated request {id} to status: completed")))
            .expect("found above");
        assert!(
            is_log_line(seed_line, "INFO"),
            "not in the format `YYYY-MM-DD HH:MM:SS - <module> - INFO - <message>`: {seed_line:?}"
        );
        let malformed: Vec<&String> = lines
            .iter()
            .filter(|l| {
                !["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"]
                    .iter()
                    .any(|lvl| is_log_line(l, lvl))
            })
            // The newline user's log lines break in two; user_id_with_a_newline_cannot_forge_a_log_line
            // is the test for that, so this one stays about the rest.
            .filter(|l| !l.starts_with("line: user"))
            .collect();
        assert!(
            malformed.is_empty(),
            "lines not in the log format: {malformed:?}"
        );

        // Periodic commits reach the log end while the worker keeps running.
        wait_committed(&broker, GROUP, TOPIC, &log_end, JOIN_AND_WORK);

        worker.signal("INT");
        let status = worker.wait_exit(EXIT);
        assert_eq!(status.code(), Some(0), "SIGINT exits 0");
        assert_in_order(
            &worker.lines(),
            &["Shutting down:", "Left consumer group", "Worker stopped"],
        );
    }
}

#[test]
fn empty_db_file_gets_its_table_and_a_missing_row_is_inserted_from_the_message() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let db = TempDb::new();
    std::fs::File::create(db.path()).expect("create an empty database file");

    let mut worker = spawn(&broker, &db, TOPIC, &[]);
    worker.wait_for_line("Database connection established", EXIT);
    assert!(
        table_exists(&db),
        "the worker created provision_requests in the empty file"
    );
    let id = "req-no-row";
    assert_eq!(db.status_of(id), None);
    produce(
        &broker,
        TOPIC,
        Some(0),
        None,
        request_json(id, "carol", 3, 7).as_bytes(),
        &[],
    );

    wait_all_status(&db, &[id.to_owned()], "completed", JOIN_AND_WORK);
    let row = db.row(id).expect("the row was inserted");
    assert_eq!(
        (row.user_id.as_str(), row.gpu_count, row.duration_hours),
        ("carol", 3, 7),
        "the row comes from the message"
    );
    for ts in [&row.created_at, &row.updated_at] {
        assert!(
            is_sqlalchemy_timestamp(ts),
            "timestamp {ts:?} is not 'YYYY-MM-DD HH:MM:SS.ffffff'"
        );
    }
    assert!(row.created_at <= row.updated_at, "{row:?}");
    check_kubeconfig(row.kubeconfig.as_deref().expect("a kubeconfig"), "carol");
}

/// The database holds every kubeconfig token: a file the worker creates gives other users
/// no access, and an existing one that does is named in a warning at start.
#[test]
fn a_new_database_gives_others_no_access_and_an_open_one_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let kafka = format!("127.0.0.1:{}", closed_port());
    let start = |db: &TempDb| {
        let mut worker = spawn_without_broker(&kafka, db);
        worker.wait_for_line("Database connection established", EXIT);
        worker.signal("TERM");
        assert_eq!(worker.wait_exit(EXIT).code(), Some(0));
        worker
    };

    let fresh = TempDb::new();
    let worker = start(&fresh);
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", fresh.path().display());
        if let Ok(meta) = std::fs::metadata(&path) {
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{path} was created with mode {mode:04o}");
        } else {
            assert!(
                !suffix.is_empty(),
                "the database file {path} was not created"
            );
        }
    }
    assert_eq!(worker.count_lines("accessible to other users"), 0);

    let open = TempDb::new();
    open.insert_pending("req-open", "u", 1, 1);
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o644))
        .expect("chmod 644 the database");
    let worker = start(&open);
    let warning = worker
        .lines()
        .into_iter()
        .find(|l| l.contains("accessible to other users"))
        .unwrap_or_else(|| panic!("no warning; output:\n{}", worker.lines().join("\n")));
    assert!(is_log_line(&warning, "WARNING"), "{warning}");
    assert!(warning.contains("mode 0644"), "{warning}");
    assert!(
        warning.contains(&format!("chmod o-rwx {}", open.path().display())),
        "{warning}"
    );
}

/// The worker with a database and a Kafka address that may not answer (for start-up tests
/// that end before Kafka matters).
fn spawn_without_broker(kafka: &str, db: &TempDb) -> WorkerProcess {
    WorkerProcess::command()
        .env("KAFKA_BOOTSTRAP_SERVERS", kafka)
        .env("DATABASE_URL", &db.url())
        .env("KAFKA_STARTUP_TIMEOUT_SECONDS", "30")
        .spawn()
}

// ------------------------------------------------------------------------------------
// Configuration

#[test]
fn dotenv_alone_configures_the_worker() {
    let broker = Broker::start();
    broker.create_topic("dotenv-requests", 1);
    // No environment but PATH and HOME: everything comes from .env, including a relative
    // database URL that resolves in the worker's working directory.
    let dotenv = format!(
        "# written by the test\n\
         KAFKA_BOOTSTRAP_SERVERS={}\n\
         KAFKA_TOPIC=dotenv-requests\n\
         KAFKA_GROUP_ID=dotenv-group\n\
         DATABASE_URL=sqlite+aiosqlite:///./dotenv.db\n\
         MOCK_PROVISION_DELAY_SECONDS=0.3\n\
         KAFKA_SESSION_TIMEOUT_MS=6000\n\
         KAFKA_HEARTBEAT_INTERVAL_MS=1000\n\
         COMMIT_INTERVAL_MS=200\n",
        broker.addr()
    );
    let mut worker = WorkerProcess::command().dotenv(&dotenv).spawn();
    worker.wait_for_line(
        &format!(
            "Connecting to Kafka: {}, topic: dotenv-requests",
            broker.addr()
        ),
        EXIT,
    );
    worker.wait_for_line(
        "Connecting to database: sqlite+aiosqlite:///./dotenv.db",
        EXIT,
    );
    worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);
    let id = "req-dotenv";
    produce(
        &broker,
        "dotenv-requests",
        Some(0),
        None,
        request_json(id, "dave", 1, 1).as_bytes(),
        &[],
    );

    let db_path = worker.dir().join("dotenv.db");
    wait_until(
        "the .env-configured request to complete",
        JOIN_AND_WORK,
        || (raw_status(&db_path, id).as_deref() == Some("completed")).then_some(()),
    );
    worker.wait_for_line("Simulating provisioning work for 0.3 seconds...", EXIT);
    let committed = wait_committed(
        &broker,
        "dotenv-group",
        "dotenv-requests",
        &BTreeMap::from([(0, Some(1))]),
        JOIN_AND_WORK,
    );
    assert_eq!(committed[&0], Some(1));
}

#[test]
fn environment_wins_over_dotenv() {
    let broker = Broker::start();
    broker.create_topic("env-requests", 1);
    let db = TempDb::new();
    // Every value the environment also sets points somewhere useless; the delay is only here.
    let dotenv = "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1\n\
                  KAFKA_TOPIC=dotenv-requests\n\
                  DATABASE_URL=sqlite:////nonexistent-dir-for-test/dotenv.db\n\
                  WORKER_THREADS=abc\n\
                  MOCK_PROVISION_DELAY_SECONDS=0.3\n";
    let mut worker = WorkerProcess::command()
        .dotenv(dotenv)
        .envs(&[
            ("KAFKA_BOOTSTRAP_SERVERS", broker.addr().as_str()),
            ("KAFKA_TOPIC", "env-requests"),
            ("KAFKA_GROUP_ID", GROUP),
            ("DATABASE_URL", db.url().as_str()),
            ("WORKER_THREADS", "2"),
            ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("KAFKA_HEARTBEAT_INTERVAL_MS", "1000"),
        ])
        .spawn();
    worker.wait_for_line(&format!("Connecting to database: {}", db.url()), EXIT);
    worker.wait_for_line(
        &format!(
            "Connecting to Kafka: {}, topic: env-requests",
            broker.addr()
        ),
        EXIT,
    );
    worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);
    let id = "req-env";
    produce(
        &broker,
        "env-requests",
        Some(0),
        None,
        request_json(id, "erin", 1, 1).as_bytes(),
        &[],
    );
    wait_all_status(&db, &[id.to_owned()], "completed", JOIN_AND_WORK);
    // The one variable only .env sets still applies.
    worker.wait_for_line("Simulating provisioning work for 0.3 seconds...", EXIT);
}

#[test]
fn config_errors_exit_2_naming_the_variable_and_value() {
    for (name, value) in [
        ("WORKER_THREADS", "abc"),
        ("DATABASE_URL", "postgresql://x"),
    ] {
        let mut worker = WorkerProcess::command()
            .envs(&[
                (name, value),
                // Unreachable on purpose: a config error must stop the worker before Kafka.
                ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1"),
                ("KAFKA_STARTUP_TIMEOUT_SECONDS", "1"),
            ])
            .spawn();
        let status = worker.wait_exit(EXIT);
        let lines = worker.lines();
        assert_eq!(status.code(), Some(2), "{name}={value}: {lines:#?}");
        assert!(
            lines.iter().any(|l| l.contains(name) && l.contains(value)),
            "no line names {name} and {value:?}: {lines:#?}"
        );
    }
}

#[test]
fn help_lists_every_variable_with_its_default_and_version_prints_the_version() {
    let mut help = WorkerProcess::command().arg("--help").spawn();
    assert_eq!(help.wait_exit(EXIT).code(), Some(0));
    let lines = help.lines();
    // The issue's table: the contract inherited from the Python worker.
    let mut expected: Vec<(String, String)> = [
        ("DATABASE_URL", "sqlite+aiosqlite:///./poc.db"),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
        ("KAFKA_TOPIC", "provision-requests"),
        ("KAFKA_GROUP_ID", "provision-worker-group"),
        ("MOCK_PROVISION_DELAY_SECONDS", "5"),
        ("WORKER_THREADS", "8"),
        ("SHUTDOWN_TIMEOUT_SECONDS", "30"),
        ("KAFKA_AUTO_OFFSET_RESET", "earliest"),
        ("KAFKA_DLQ_TOPIC", "provision-requests.dlq"),
        ("LOG_LEVEL", "INFO"),
        ("KAFKA_STARTUP_TIMEOUT_SECONDS", "30"),
    ]
    .iter()
    .map(|&(n, d)| (n.to_owned(), d.to_owned()))
    .collect();
    // And every further variable the worker reads.
    for &(name, default, _) in provision_worker::config::VARIABLES {
        if !expected.iter().any(|(n, _)| n == name) {
            let default = if default.is_empty() {
                "(empty)"
            } else {
                default
            };
            expected.push((name.to_owned(), default.to_owned()));
        }
    }
    for (name, default) in &expected {
        let line = lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("--help does not list {name}:\n{}", lines.join("\n")));
        assert!(
            line.contains(&format!("default: {default}")),
            "--help gives {name} a default other than {default:?}: {line:?}"
        );
    }

    for flag in ["--version", "-V"] {
        let mut version = WorkerProcess::command().arg(flag).spawn();
        assert_eq!(version.wait_exit(EXIT).code(), Some(0), "{flag}");
        assert_eq!(
            version.lines(),
            vec![format!("provision-worker {}", env!("CARGO_PKG_VERSION"))],
            "{flag}"
        );
    }
}

// ------------------------------------------------------------------------------------
// Start-up failures

#[test]
fn kafka_unreachable_at_start_exits_1_naming_the_servers() {
    let db = TempDb::new();
    let closed = closed_port();
    let servers = format!("127.0.0.1:{closed}");
    let started = Instant::now();
    let mut worker = WorkerProcess::spawn(&[
        ("KAFKA_BOOTSTRAP_SERVERS", servers.as_str()),
        ("DATABASE_URL", db.url().as_str()),
        ("KAFKA_STARTUP_TIMEOUT_SECONDS", "2"),
    ]);
    let status = worker.wait_exit(EXIT);
    let elapsed = started.elapsed();
    let lines = worker.lines();
    assert_eq!(status.code(), Some(1), "{lines:#?}");
    assert!(
        elapsed < Duration::from_secs(10),
        "took {elapsed:?} with a 2 s startup timeout"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" - ERROR - ") && l.contains(&servers)),
        "no error line names {servers}: {lines:#?}"
    );
}

#[test]
fn db_path_not_writable_exits_1_naming_the_path() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing_dir = dir.path().join("does-not-exist").join("poc.db");
    let missing_dir = missing_dir.to_str().expect("a UTF-8 path").to_owned();
    for path in [missing_dir.as_str(), "/proc/provision-worker-test.db"] {
        let url = format!("sqlite:///{path}");
        let mut worker = WorkerProcess::spawn(&[
            ("DATABASE_URL", url.as_str()),
            ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1"),
            ("KAFKA_STARTUP_TIMEOUT_SECONDS", "1"),
        ]);
        let status = worker.wait_exit(EXIT);
        let lines = worker.lines();
        assert_eq!(status.code(), Some(1), "{path}: {lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains(" - ERROR - ") && l.contains(path)),
            "no error line names {path}: {lines:#?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("Connecting to Kafka")),
            "{path}: the database error must stop the worker before Kafka: {lines:#?}"
        );
    }
    assert!(
        !dir.path().join("does-not-exist").exists(),
        "the worker must not create missing directories"
    );
}

#[test]
fn missing_topic_at_start_warns_keeps_running_and_processes_once_created() {
    let broker = Broker::start();
    let db = TempDb::new();
    let topic = "late-topic";
    let mut worker = spawn(&broker, &db, topic, &[]);
    let warning = worker.wait_for_line(&format!("Topic {topic} does not exist"), JOIN_AND_WORK);
    assert!(warning.contains(" - WARNING - "), "{warning}");
    worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);
    assert!(
        is_running(&worker),
        "the worker keeps running without its topic"
    );

    broker.create_topic(topic, 3);
    let id = "req-late";
    produce(
        &broker,
        topic,
        Some(2),
        None,
        request_json(id, "frank", 1, 1).as_bytes(),
        &[],
    );
    // The worker re-checks the topic every 5 s, then rejoins (~3 s).
    wait_all_status(&db, &[id.to_owned()], "completed", JOIN_AND_WORK);
}

// ------------------------------------------------------------------------------------
// Shutdown and crashes

on_both_databases! {
    fn sigterm_with_requests_in_flight_finishes_them_exits_0_and_restart_completes_all(db) {
        let broker = Broker::start();
        broker.create_topic(TOPIC, 3);
        let ids = insert_requests(db, "req-term", 9);
        let log_end = produce_requests(&broker, TOPIC, &ids, 3);
        let shutdown_timeout = Duration::from_secs(10);
        let mut worker = spawn(
            &broker,
            db,
            TOPIC,
            &[
                ("MOCK_PROVISION_DELAY_SECONDS", "2"),
                ("WORKER_THREADS", "3"),
                ("SHUTDOWN_TIMEOUT_SECONDS", "10"),
            ],
        );
        let in_flight = wait_until("three requests in flight", JOIN_AND_WORK, || {
            let rows = ids_with_status(db, "provisioning");
            (rows.len() == 3).then_some(rows)
        });

        let signalled = Instant::now();
        worker.signal("TERM");
        let status = worker.wait_exit(shutdown_timeout + Duration::from_secs(5));
        let took = signalled.elapsed();
        assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
        assert!(
            took < shutdown_timeout,
            "shutdown took {took:?}, longer than SHUTDOWN_TIMEOUT_SECONDS"
        );
        assert_in_order(
            &worker.lines(),
            &[
                "Shutdown signal received",
                "Shutting down: stopped fetching; waiting up to 10 s",
                &format!("Left consumer group {GROUP}"),
                "Worker stopped",
            ],
        );
        for id in &in_flight {
            assert_eq!(
                db.status_of(id).as_deref(),
                Some("completed"),
                "{id} was in flight at SIGTERM and must be finished before exit"
            );
        }
        let counts = db.count_by_status();
        assert_eq!(counts.get("provisioning"), None, "none stuck: {counts:?}");
        assert!(
            counts.get("pending").copied().unwrap_or(0) > 0,
            "the scenario needs queued, unstarted requests at SIGTERM: {counts:?}"
        );

        let mut restarted = spawn(&broker, db, TOPIC, &[]);
        wait_all_status(db, &ids, "completed", JOIN_AND_WORK);
        wait_committed(&broker, GROUP, TOPIC, &log_end, JOIN_AND_WORK);
        // What the first run finished was committed at shutdown, so nothing comes back.
        let redone: Vec<String> = restarted
            .lines()
            .into_iter()
            .filter(|l| l.contains("is already completed"))
            .collect();
        assert!(
            redone.is_empty(),
            "the restart saw requests the first run finished: {redone:#?}"
        );
        restarted.signal("TERM");
        assert_eq!(restarted.wait_exit(EXIT).code(), Some(0));
    }
}

on_both_databases! {
    fn shutdown_timeout_shorter_than_the_delay_exits_0_promptly_and_restart_completes_them(db) {
        let broker = Broker::start();
        broker.create_topic(TOPIC, 3);
        let ids = insert_requests(db, "req-slow", 3);
        produce_requests(&broker, TOPIC, &ids, 3);
        let mut worker = spawn(
            &broker,
            db,
            TOPIC,
            &[
                ("MOCK_PROVISION_DELAY_SECONDS", "30"),
                ("WORKER_THREADS", "3"),
                ("SHUTDOWN_TIMEOUT_SECONDS", "1"),
            ],
        );
        wait_all_status(db, &ids, "provisioning", JOIN_AND_WORK);

        let signalled = Instant::now();
        worker.signal("TERM");
        let status = worker.wait_exit(EXIT);
        let took = signalled.elapsed();
        assert_eq!(status.code(), Some(0));
        assert!(
            took < Duration::from_secs(5),
            "a 1 s shutdown timeout took {took:?}"
        );
        worker.wait_for_line("Shutdown timeout reached", EXIT);
        for id in &ids {
            assert_eq!(
                db.status_of(id).as_deref(),
                Some("provisioning"),
                "{id}: unfinished work stays provisioning"
            );
        }

        let _restarted = spawn(&broker, db, TOPIC, &[]);
        wait_all_status(db, &ids, "completed", JOIN_AND_WORK);
    }
}

on_both_databases! {
    fn sigkill_mid_run_then_restart_completes_all(db) {
        let broker = Broker::start();
        broker.create_topic(TOPIC, 3);
        let ids = insert_requests(db, "req-kill", 6);
        let log_end = produce_requests(&broker, TOPIC, &ids, 3);
        let mut worker = spawn(
            &broker,
            db,
            TOPIC,
            &[
                ("MOCK_PROVISION_DELAY_SECONDS", "1"),
                ("WORKER_THREADS", "2"),
            ],
        );
        wait_until(
            "one request done and others in flight",
            JOIN_AND_WORK,
            || {
                let counts = db.count_by_status();
                (counts.get("completed").copied().unwrap_or(0) >= 1
                    && counts.get("provisioning").copied().unwrap_or(0) >= 1)
                    .then_some(())
            },
        );
        worker.kill9();

        let _restarted = spawn(&broker, db, TOPIC, &[]);
        // The dead member holds its partitions until its 6 s session expires.
        wait_all_status(db, &ids, "completed", Duration::from_secs(60));
        wait_committed(&broker, GROUP, TOPIC, &log_end, JOIN_AND_WORK);
    }
}

on_both_databases! {
    fn second_sigterm_exits_at_once_with_130(db) {
        let broker = Broker::start();
        broker.create_topic(TOPIC, 1);
        let ids = insert_requests(db, "req-twice", 1);
        produce_requests(&broker, TOPIC, &ids, 1);
        let mut worker = spawn(
            &broker,
            db,
            TOPIC,
            &[
                ("MOCK_PROVISION_DELAY_SECONDS", "60"),
                ("SHUTDOWN_TIMEOUT_SECONDS", "60"),
            ],
        );
        worker.wait_for_line("Simulating provisioning work for 60 seconds", JOIN_AND_WORK);
        let first = Instant::now();
        worker.signal("TERM");
        worker.wait_for_line("Shutting down:", EXIT);
        // A person insisting: the second signal comes more than a second after the first
        // (signals within a second are one request; see the test below).
        wait_until("a second and a bit after the first signal", EXIT, || {
            (first.elapsed() > Duration::from_millis(1200)).then_some(())
        });
        assert!(
            is_running(&worker),
            "the first SIGTERM waits for the request"
        );

        let second = Instant::now();
        worker.signal("TERM");
        let status = worker.wait_exit(Duration::from_secs(5));
        let took = second.elapsed();
        assert_eq!(status.code(), Some(130));
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert_eq!(
            db.status_of(&ids[0]).as_deref(),
            Some("provisioning"),
            "the interrupted request stays provisioning, to be redelivered"
        );
    }
}

on_both_databases! {
    /// `timeout(1)` and some supervisors send SIGTERM to the worker and then to its process
    /// group, milliseconds apart: one request to stop, which must still be graceful.
    fn two_sigterms_milliseconds_apart_are_one_graceful_shutdown(db) {
        let broker = Broker::start();
        broker.create_topic(TOPIC, 1);
        let ids = insert_requests(db, "req-echo", 1);
        produce_requests(&broker, TOPIC, &ids, 1);
        let mut worker = spawn(
            &broker,
            db,
            TOPIC,
            &[
                ("MOCK_PROVISION_DELAY_SECONDS", "3"),
                ("SHUTDOWN_TIMEOUT_SECONDS", "30"),
            ],
        );
        worker.wait_for_line("Simulating provisioning work for 3 seconds", JOIN_AND_WORK);
        // One `kill` with the pid twice: two signals back to back, as timeout(1) sends them.
        let pid = worker.pid().to_string();
        let status = std::process::Command::new("kill")
            .args(["-s", "TERM", &pid, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill failed: {status}");

        let status = worker.wait_exit(Duration::from_secs(30));
        assert_eq!(
            status.code(),
            Some(0),
            "two signals together are one graceful shutdown, not exit 130; output:\n{}",
            worker.lines().join("\n")
        );
        assert_eq!(worker.count_lines("Second signal received"), 0);
        assert_in_order(
            &worker.lines(),
            &[
                "Shutdown signal received",
                "Shutting down:",
                "Updated request req-echo-0 to status: completed",
                "Worker stopped",
            ],
        );
        assert_eq!(db.status_of(&ids[0]).as_deref(), Some("completed"));
    }
}

// ------------------------------------------------------------------------------------
// Bad input, redelivery, a busy database

on_both_databases! {
    fn bad_messages_are_dead_lettered_with_reasons_while_good_ones_complete_and_offsets_pass_them(db) {
        let broker = Broker::start();
        broker.create_topic(TOPIC, 1);
        broker.create_topic(DLQ, 1);
        // Rows exist for two of the bad messages: they must end `failed` with the reason.
        db.insert_pending("bad-zero-gpus", "u", 1, 1);
        db.insert_pending("bad-empty-user", "u", 1, 1);
        let goods = ["good-1", "good-2", "good-3", "good-4"];
        for id in goods {
            db.insert_pending(id, "gina", 1, 1);
        }
        // (key, value, what the reason must say); `None` reason: a good message.
        let messages: Vec<Input> = [
            (None, request_json("good-1", "gina", 1, 1).into_bytes(), None),
            (
                Some(b"key-of-bad".as_slice()),
                b"this is not json {".to_vec(),
                Some("not valid JSON"),
            ),
            (
                None,
                br#"{"request_id":"bad-missing","user_id":"u","gpu_count":1}"#.to_vec(),
                Some(r#"missing field "duration_hours""#),
            ),
            (None, request_json("good-2", "gina", 1, 1).into_bytes(), None),
            (
                None,
                br#"{"request_id":"bad-type","user_id":"u","gpu_count":"four","duration_hours":1}"#
                    .to_vec(),
                Some(r#"field "gpu_count" must be"#),
            ),
            (
                None,
                br#"{"request_id":"bad-zero-gpus","user_id":"u","gpu_count":0,"duration_hours":1}"#
                    .to_vec(),
                Some(r#""gpu_count" must be from 1 to"#),
            ),
            (
                None,
                br#"{"request_id":"bad-huge","user_id":"u","gpu_count":1000000000,"duration_hours":1}"#
                    .to_vec(),
                Some("found 1000000000"),
            ),
            (None, request_json("good-3", "gina", 1, 1).into_bytes(), None),
            (
                None,
                br#"{"request_id":"bad-empty-user","user_id":"","gpu_count":1,"duration_hours":1}"#
                    .to_vec(),
                Some(r#""user_id" must not be empty"#),
            ),
            (
                None,
                b"{\"request_id\":\"bad-utf8\",\"user_id\":\"\xff\xfe\",\"gpu_count\":1,\"duration_hours\":1}"
                    .to_vec(),
                Some("not valid UTF-8"),
            ),
            (None, request_json("good-4", "gina", 1, 1).into_bytes(), None),
        ]
        .into_iter()
        .map(|(key, value, reason)| Input { key, value, reason })
        .collect();
        let mut worker = spawn(
            &broker,
            db,
            TOPIC,
            &[("KAFKA_DLQ_TOPIC", DLQ), ("WORKER_THREADS", "2")],
        );
        worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);
        let mut bad_by_offset: HashMap<i64, &Input> = HashMap::new();
        let mut last = 0;
        for input in &messages {
            let (_, offset) = produce(&broker, TOPIC, Some(0), input.key, &input.value, &[]);
            if input.reason.is_some() {
                bad_by_offset.insert(offset, input);
            }
            last = offset;
        }

        let good_ids: Vec<String> = goods.iter().map(|s| (*s).to_owned()).collect();
        wait_all_status(db, &good_ids, "completed", JOIN_AND_WORK);
        for id in ["bad-zero-gpus", "bad-empty-user"] {
            let row = wait_until("the bad message's row to fail", JOIN_AND_WORK, || {
                db.row(id).filter(|r| r.status == "failed")
            });
            let error = row.error_message.unwrap_or_default();
            assert!(
                !error.is_empty()
                    && error.contains(if id == "bad-zero-gpus" {
                        "gpu_count"
                    } else {
                        "user_id"
                    }),
                "{id}: error_message {error:?} does not give the reason"
            );
            assert_eq!(row.kubeconfig, None);
        }
        for id in ["bad-missing", "bad-type", "bad-huge"] {
            assert_eq!(
                db.status_of(id),
                None,
                "a bad message without a row must not create one"
            );
        }

        // Offsets pass the bad messages: the partition did not stall on any of them.
        wait_committed(
            &broker,
            GROUP,
            TOPIC,
            &BTreeMap::from([(0, Some(last + 1))]),
            JOIN_AND_WORK,
        );
        assert_eq!(
            worker.count_lines(&format!("to {DLQ}: ")),
            bad_by_offset.len(),
            "one dead-letter log line per bad message"
        );

        let dead = librdkafka_consume(
            &broker,
            "dlq-reader",
            DLQ,
            bad_by_offset.len(),
            Duration::from_secs(30),
        );
        let mut seen = Vec::new();
        for record in &dead {
            let header = |name: &str| -> String {
                let values: Vec<&Option<Vec<u8>>> = record
                    .headers
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v)
                    .collect();
                assert_eq!(values.len(), 1, "header {name} once in {record:?}");
                String::from_utf8(values[0].clone().unwrap_or_default()).expect("a UTF-8 header")
            };
            let offset: i64 = header("x-original-offset")
                .parse()
                .expect("x-original-offset is a number");
            let input = bad_by_offset
                .get(&offset)
                .unwrap_or_else(|| panic!("dead letter for offset {offset}, not a bad message"));
            let reason = input.reason.expect("only bad messages are in the map");
            assert_eq!(
                record.value.as_deref(),
                Some(input.value.as_slice()),
                "the original bytes, unchanged"
            );
            assert_eq!(record.key.as_deref(), input.key, "the original key");
            assert_eq!(header("x-original-topic"), TOPIC);
            assert_eq!(header("x-original-partition"), "0");
            let got = header("x-dlq-reason");
            assert!(
                got.contains(reason),
                "offset {offset}: x-dlq-reason {got:?} does not say {reason:?}"
            );
            worker.wait_for_line(
                &format!("Dead-lettered invalid message at partition 0 offset {offset} to {DLQ}: "),
                EXIT,
            );
            seen.push(offset);
        }
        seen.sort_unstable();
        let mut want: Vec<i64> = bad_by_offset.keys().copied().collect();
        want.sort_unstable();
        assert_eq!(seen, want, "every bad message dead-lettered exactly once");
    }
}

on_both_databases! {
    fn redelivered_request_of_a_final_row_changes_nothing(db) {
        let broker = Broker::start();
        broker.create_topic(TOPIC, 1);
        let done = "req-done-once";
        let cancelled = "req-failed-by-backend";
        db.insert_pending(done, "hank", 2, 3);
        db.insert_pending(cancelled, "hank", 2, 3);
        // As the backend would fail it.
        db.execute(&format!(
            "UPDATE provision_requests SET status = 'failed', \
             error_message = 'cancelled by backend' WHERE request_id = '{cancelled}'"
        ));
        let cancelled_before = db.row(cancelled).expect("the row");

        let mut worker = spawn(&broker, db, TOPIC, &[]);
        worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);
        let message = request_json(done, "hank", 2, 3);
        produce(&broker, TOPIC, Some(0), None, message.as_bytes(), &[]);
        wait_all_status(db, &[done.to_owned()], "completed", JOIN_AND_WORK);
        let first = db.row(done).expect("the row");

        // The same message again (a producer retry, a replay), then one for the failed row.
        produce(&broker, TOPIC, Some(0), None, message.as_bytes(), &[]);
        let (_, last) = produce(
            &broker,
            TOPIC,
            Some(0),
            None,
            request_json(cancelled, "hank", 2, 3).as_bytes(),
            &[],
        );
        worker.wait_for_line(
            &format!("Request {done} is already completed"),
            JOIN_AND_WORK,
        );
        worker.wait_for_line(
            &format!("Request {cancelled} is already failed"),
            JOIN_AND_WORK,
        );
        // Acknowledged: the offsets move past both.
        wait_committed(
            &broker,
            GROUP,
            TOPIC,
            &BTreeMap::from([(0, Some(last + 1))]),
            JOIN_AND_WORK,
        );
        assert_eq!(
            db.row(done).expect("the row"),
            first,
            "updated_at and kubeconfig unchanged"
        );
        assert_eq!(db.row(cancelled).expect("the row"), cancelled_before);
        assert_eq!(
            worker.count_lines(&format!("Processing provision request: {done} ")),
            2,
            "the redelivery was seen"
        );
        assert_eq!(
            worker.count_lines(&format!("Updated request {done} to status: completed")),
            1
        );
    }
}

on_both_databases! {
    fn user_id_with_a_newline_cannot_forge_a_log_line(db) {
        let broker = Broker::start();
        broker.create_topic(TOPIC, 1);
        // A valid user id (any content is allowed) that, logged verbatim, reads as a second line.
        let forged = "2001-01-01 00:00:00 - provision_worker::provision - INFO - \
                      ✅ Successfully provisioned request forged for user admin";
        let user = format!("mallory\n{forged}");
        let id = "req-newline-user";
        db.insert_pending(id, &user, 1, 1);
        let mut worker = spawn(&broker, db, TOPIC, &[]);
        produce(
            &broker,
            TOPIC,
            Some(0),
            None,
            request_json(id, &user, 1, 1).as_bytes(),
            &[],
        );
        wait_all_status(db, &[id.to_owned()], "completed", JOIN_AND_WORK);
        check_kubeconfig(
            db.row(id)
                .and_then(|r| r.kubeconfig)
                .as_deref()
                .expect("a kubeconfig"),
            &user,
        );
        worker.signal("TERM");
        assert_eq!(worker.wait_exit(EXIT).code(), Some(0));

        let lines = worker.lines();
        let forged_lines: Vec<&String> = lines.iter().filter(|l| l.starts_with("2001-")).collect();
        assert!(
            forged_lines.is_empty(),
            "a user id wrote its own log line(s): {forged_lines:#?}"
        );
    }
}

#[test]
fn backend_holding_the_write_lock_longer_than_the_busy_timeout_delays_but_fails_nothing() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let db = TempDb::new();
    let ids = insert_requests(&db, "req-locked", 3);
    let mut worker = spawn(&broker, &db, TOPIC, &[("WORKER_THREADS", "2")]);
    worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);

    // The backend's own connection takes the write lock and sits on it.
    let backend = db.conn();
    backend
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let locked = Instant::now();
    let hold = Duration::from_secs(7);
    produce_requests(&broker, TOPIC, &ids, 1);
    worker.wait_for_line("Processing provision request", JOIN_AND_WORK);
    // Hold the lock for longer than the worker's 5 s busy timeout, watching that nothing
    // fails meanwhile.
    wait_until("the lock to have been held long enough", hold * 2, || {
        assert!(
            !db.count_by_status().contains_key("failed"),
            "a request failed while the lock was held"
        );
        (locked.elapsed() >= hold).then_some(())
    });
    assert_eq!(
        db.count_by_status().get("pending").copied(),
        Some(3),
        "nothing moved while the lock was held"
    );
    backend.execute_batch("COMMIT").expect("release the lock");

    wait_all_status(&db, &ids, "completed", JOIN_AND_WORK);
    assert!(
        worker.count_lines("Database unavailable during claim") >= 1,
        "the worker should have hit SQLITE_BUSY and retried"
    );
    let errors: Vec<String> = worker
        .lines()
        .into_iter()
        .filter(|l| l.contains(" - ERROR - "))
        .collect();
    assert!(
        errors.is_empty(),
        "a busy database is transient, not an error: {errors:#?}"
    );
}

#[test]
fn backend_holding_the_write_lock_at_start_up_delays_the_worker_but_does_not_stop_it() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let db = TempDb::new();
    let ids = insert_requests(&db, "req-locked-at-start", 1);
    produce_requests(&broker, TOPIC, &ids, 1);

    // The backend is mid-transaction when the worker starts, for longer than the 5 s busy
    // timeout. A busy database is transient: the worker must wait, not exit.
    let backend = db.conn();
    backend
        .execute_batch("PRAGMA journal_mode = WAL; BEGIN IMMEDIATE")
        .expect("take the write lock");
    let locked = Instant::now();
    let worker = spawn(&broker, &db, TOPIC, &[]);
    let hold = Duration::from_secs(7);
    wait_until("the lock to have been held long enough", hold * 2, || {
        assert!(
            is_running(&worker),
            "the worker stopped while the backend held the write lock; its output:\n{}",
            worker.lines().join("\n")
        );
        (locked.elapsed() >= hold).then_some(())
    });
    backend.execute_batch("COMMIT").expect("release the lock");

    wait_all_status(&db, &ids, "completed", JOIN_AND_WORK);
}

// ------------------------------------------------------------------------------------
// Helpers

/// One message of the bad-input test.
struct Input {
    key: Option<&'static [u8]>,
    value: Vec<u8>,
    /// What the dead-letter reason must say; `None` for a valid request.
    reason: Option<&'static str>,
}

/// Starts the worker against `broker`, `db` and `topic` with settings fit for tests
/// (6 s session, quick commits, 0.2 s delay, no dead-letter topic); `overrides` replace or
/// add variables.
fn spawn(broker: &Broker, db: &dyn Db, topic: &str, overrides: &[(&str, &str)]) -> WorkerProcess {
    let addr = broker.addr();
    let url = db.url();
    let base: [(&str, &str); 12] = [
        ("KAFKA_BOOTSTRAP_SERVERS", &addr),
        ("KAFKA_TOPIC", topic),
        ("KAFKA_GROUP_ID", GROUP),
        ("DATABASE_URL", &url),
        ("MOCK_PROVISION_DELAY_SECONDS", "0.2"),
        ("WORKER_THREADS", "4"),
        ("KAFKA_DLQ_TOPIC", ""),
        ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_HEARTBEAT_INTERVAL_MS", "1000"),
        ("COMMIT_INTERVAL_MS", "200"),
        ("KAFKA_STARTUP_TIMEOUT_SECONDS", "20"),
        ("SHUTDOWN_TIMEOUT_SECONDS", "10"),
    ];
    let mut cmd = WorkerProcess::command();
    for (name, value) in base {
        if !overrides.iter().any(|(n, _)| *n == name) {
            cmd = cmd.env(name, value);
        }
    }
    cmd.envs(overrides).spawn()
}

/// A request message as the backend publishes it.
fn request_json(id: &str, user: &str, gpus: i64, hours: i64) -> String {
    serde_json::json!({
        "request_id": id,
        "user_id": user,
        "gpu_count": gpus,
        "duration_hours": hours,
    })
    .to_string()
}

/// Inserts `n` pending rows `<prefix>-<i>` and returns their ids.
fn insert_requests(db: &dyn Db, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for id in &ids {
        db.insert_pending(id, "user", 1, 1);
    }
    ids
}

/// Produces a message for each id, round-robin over `partitions`; returns the log end of
/// each partition as the group's committed offsets should read once all are done.
fn produce_requests(
    broker: &Broker,
    topic: &str,
    ids: &[String],
    partitions: i32,
) -> BTreeMap<i32, Option<i64>> {
    let mut log_end = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let partition = i as i32 % partitions;
        let message = request_json(id, "user", 1, 1);
        let (p, offset) = produce(
            broker,
            topic,
            Some(partition),
            None,
            message.as_bytes(),
            &[],
        );
        log_end.insert(p, Some(offset + 1));
    }
    log_end
}

/// Waits until every row in `ids` has `status`.
fn wait_all_status(db: &dyn Db, ids: &[String], status: &str, deadline: Duration) {
    let start = Instant::now();
    loop {
        let statuses: Vec<(String, Option<String>)> = ids
            .iter()
            .map(|id| (id.clone(), db.status_of(id)))
            .collect();
        if statuses.iter().all(|(_, s)| s.as_deref() == Some(status)) {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "not every request is {status} after {deadline:?}: {statuses:?}"
        );
        std::thread::sleep(common::POLL * 5);
    }
}

/// The ids of the rows with `status`.
fn ids_with_status(db: &dyn Db, status: &str) -> Vec<String> {
    db.all_rows()
        .into_values()
        .filter(|r| r.status == status)
        .map(|r| r.request_id)
        .collect()
}

/// Polls the group's committed offsets (through librdkafka) until they equal `want`.
fn wait_committed(
    broker: &Broker,
    group: &str,
    topic: &str,
    want: &BTreeMap<i32, Option<i64>>,
    deadline: Duration,
) -> BTreeMap<i32, Option<i64>> {
    let start = Instant::now();
    loop {
        let got = librdkafka_committed(broker, group, topic);
        if &got == want {
            return got;
        }
        assert!(
            start.elapsed() < deadline,
            "group {group} committed {got:?} on {topic}, want {want:?} (the log end)"
        );
        // Each look starts a Python process: don't spin.
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Checks a kubeconfig parses as YAML, has the expected shape and carries `user` unchanged;
/// returns its bearer token.
fn check_kubeconfig(yaml: &str, user: &str) -> String {
    let doc: serde_yaml::Value = serde_yaml::from_str(yaml)
        .unwrap_or_else(|e| panic!("the kubeconfig is not YAML ({e}):\n{yaml}"));
    let text = |v: &serde_yaml::Value, what: &str| -> String {
        v.as_str()
            .unwrap_or_else(|| panic!("{what} is not a string in:\n{yaml}"))
            .to_owned()
    };
    assert_eq!(text(&doc["apiVersion"], "apiVersion"), "v1");
    assert_eq!(text(&doc["kind"], "kind"), "Config");
    let server = text(&doc["clusters"][0]["cluster"]["server"], "server");
    assert!(server.starts_with("https://"), "server {server:?}");
    let ca = text(
        &doc["clusters"][0]["cluster"]["certificate-authority-data"],
        "certificate-authority-data",
    );
    assert!(!ca.is_empty());
    assert_eq!(text(&doc["users"][0]["name"], "users[0].name"), user);
    assert_eq!(
        text(&doc["contexts"][0]["context"]["user"], "context user"),
        user
    );
    let current = text(&doc["current-context"], "current-context");
    assert_eq!(
        text(&doc["contexts"][0]["name"], "context name"),
        current,
        "current-context names the context"
    );
    let token = text(&doc["users"][0]["user"]["token"], "token");
    assert!(token.len() >= 16, "token {token:?} is too short");
    token
}

/// Asserts each of `needles` is in some line, each after the previous one's line.
fn assert_in_order(lines: &[String], needles: &[&str]) {
    let mut from = 0;
    for needle in needles {
        match lines[from..].iter().position(|l| l.contains(needle)) {
            Some(i) => from += i + 1,
            None => panic!(
                "no line containing {needle:?} after line {from} (in order {needles:#?}); output:\n{}",
                lines.join("\n")
            ),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS - <module> - <level> - <message>`.
fn is_log_line(line: &str, level: &str) -> bool {
    let Some((time, rest)) = line.split_at_checked(19) else {
        return false;
    };
    let shape = time.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        10 => b == b' ',
        13 | 16 => b == b':',
        _ => b.is_ascii_digit(),
    });
    let Some(rest) = rest.strip_prefix(" - ") else {
        return false;
    };
    let Some((module, rest)) = rest.split_once(" - ") else {
        return false;
    };
    shape && !module.is_empty() && !module.contains(' ') && rest.starts_with(&format!("{level} - "))
}

/// `YYYY-MM-DD HH:MM:SS.ffffff`, as SQLAlchemy writes a DateTime into SQLite.
fn is_sqlalchemy_timestamp(ts: &str) -> bool {
    ts.len() == 26
        && ts.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b' ',
            13 | 16 => b == b':',
            19 => b == b'.',
            _ => b.is_ascii_digit(),
        })
}

fn table_exists(db: &TempDb) -> bool {
    db.path().exists()
        && db
            .conn()
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'provision_requests'",
                [],
                |_| Ok(()),
            )
            .optional()
            .expect("query sqlite_master")
            .is_some()
}

/// The status of `id` in the database at `path`, if the file, table and row exist.
fn raw_status(path: &std::path::Path, id: &str) -> Option<String> {
    if !path.exists() {
        return None;
    }
    let conn = Connection::open(path).ok()?;
    conn.busy_timeout(Duration::from_secs(5)).ok()?;
    conn.query_row(
        "SELECT status FROM provision_requests WHERE request_id = ?1",
        [id],
        |r| r.get(0),
    )
    .optional()
    .ok()
    .flatten()
}

/// A port nothing listens on (bound a moment ago, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// True while the process runs: it exists and is not a zombie waiting to be reaped.
fn is_running(worker: &WorkerProcess) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", worker.pid())) else {
        return false;
    };
    // "PID (COMM) STATE ...": COMM may contain spaces, so read after the last ')'.
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    !state.starts_with('Z') && !state.starts_with('X')
}
