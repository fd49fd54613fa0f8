//! The worker on PostgreSQL: what only a server has. The table as SQLAlchemy creates it, a
//! backend's own table, passwords, TLS, the server restarted under the worker
//! (`pg_ctl restart -m fast`), connections killed (`pg_terminate_backend`), a row the
//! backend holds locked, a trigger that refuses, two workers (standing for two hosts) on one
//! database with one of them SIGKILLed, and the operator commands.
//!
//! The real binary against a private tansu and a private PostgreSQL 15 (crates/pg-testkit;
//! tests that restart or stop the server start a cluster of their own). What happened is
//! read through psql, and every status change through an audit trigger inside the worker's
//! own transactions. The request-life tests that run on both backends are in
//! tests/worker.rs (`::on_postgresql`).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::{PgCluster, SCRAM_PASSWORD, literal, roomy};
use common::{Broker, Db, PgDb, WorkerProcess, librdkafka_committed, produce, wait_until};

const TOPIC: &str = "provision-requests";
const DLQ: &str = "provision-requests.dlq";
const GROUP: &str = "pg-test-group";
const JOIN_AND_WORK: Duration = Duration::from_secs(60);
const EXIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------
// The table

#[test]
fn an_empty_database_gets_the_table_sqlalchemy_would_create_and_a_missing_row_is_inserted() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let db = PgDb::new();
    let mut worker = spawn(&broker, &db, &[]);
    worker.wait_for_line("Database connection established", EXIT);
    worker.wait_for_line("Created table provision_requests", EXIT);
    let types = db.psql(
        "SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position)
         FROM information_schema.columns WHERE table_name = 'provision_requests'",
    );
    assert_eq!(
        types,
        "request_id character varying, user_id character varying, gpu_count integer, \
         duration_hours integer, status character varying, kubeconfig text, \
         error_message text, created_at timestamp without time zone, \
         updated_at timestamp without time zone"
    );
    assert_eq!(
        db.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'provision_requests'"),
        "scram_user"
    );

    let id = "req-no-row";
    produce(
        &broker,
        TOPIC,
        Some(0),
        None,
        request_json(id, "carol", 3, 7).as_bytes(),
        &[],
    );
    wait_status(&db, &[id.to_owned()], "completed", JOIN_AND_WORK);
    let row = db.row(id).expect("the row was inserted from the message");
    assert_eq!(
        (row.user_id.as_str(), row.gpu_count, row.duration_hours),
        ("carol", 3, 7)
    );
    assert!(row.kubeconfig.is_some_and(|k| k.contains("carol")));
    // Timestamps in UTC, as SQLAlchemy stores datetime.utcnow(): within a minute of the
    // server's UTC clock.
    assert_eq!(
        db.psql(&format!(
            "SELECT abs(extract(epoch FROM (now() AT TIME ZONE 'UTC') - updated_at)) < 60
               AND created_at <= updated_at
             FROM provision_requests WHERE request_id = {}",
            literal(id)
        )),
        "t"
    );
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(EXIT).code(), Some(0));
}

/// A backend's own model: a surrogate key, a native ENUM for status (SQLAlchemy's `Enum`),
/// `uuid` request ids, `timestamptz`, an extra column with a default. The worker writes each
/// column in its type, and `status` reads the row back.
#[test]
fn a_backend_table_with_a_surrogate_key_an_enum_status_uuid_ids_and_timestamptz_works() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let db = PgDb::new();
    db.psql(
        "SET ROLE scram_user;
         CREATE TYPE request_status AS ENUM ('pending', 'provisioning', 'completed', 'failed', 'cancelled');
         CREATE TABLE provision_requests (
           id SERIAL PRIMARY KEY,
           request_id UUID NOT NULL UNIQUE,
           user_id VARCHAR(255) NOT NULL,
           gpu_count INTEGER NOT NULL,
           duration_hours SMALLINT NOT NULL,
           status request_status NOT NULL DEFAULT 'pending',
           kubeconfig TEXT,
           error_message TEXT,
           region VARCHAR(32) NOT NULL DEFAULT 'eu-west',
           created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
           updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now());",
    );
    let pending = "2f1c4a52-8d0e-4b51-9d8c-3b7e1a0f6c11";
    let missing = "6b0e2c1d-4f3a-4e2b-8c9d-0a1b2c3d4e5f";
    db.psql(&format!(
        "INSERT INTO provision_requests (request_id, user_id, gpu_count, duration_hours)
         VALUES ('{pending}', 'dora', 2, 1)"
    ));
    let mut worker = spawn(&broker, &db, &[]);
    worker.wait_for_line("Partitions assigned", JOIN_AND_WORK);
    for id in [pending, missing] {
        produce(
            &broker,
            TOPIC,
            Some(0),
            None,
            request_json(id, "dora", 2, 1).as_bytes(),
            &[],
        );
    }
    // Not a uuid: the database refuses the claim for good; the request ends, dead-lettering
    // off, and its partition moves on.
    produce(
        &broker,
        TOPIC,
        Some(0),
        None,
        request_json("not-a-uuid", "dora", 2, 1).as_bytes(),
        &[],
    );
    wait_status(
        &db,
        &[pending.to_owned(), missing.to_owned()],
        "completed",
        JOIN_AND_WORK,
    );
    worker.wait_for_line(
        "Database refused the claim of request not-a-uuid",
        JOIN_AND_WORK,
    );
    assert_eq!(
        db.psql(&format!(
            "SELECT region, created_at <= updated_at FROM provision_requests WHERE request_id = '{missing}'"
        )),
        "eu-west|t",
        "a row inserted by the claim gets the table's defaults and its timestamps"
    );
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(EXIT).code(), Some(0));

    let status = tool(&db, &broker, &["status", pending]);
    assert!(status.0, "status failed: {}", status.1);
    assert!(
        status.1.contains("status:         completed"),
        "{}",
        status.1
    );
    assert!(status.1.contains("user_id:        dora"), "{}", status.1);
}

#[test]
fn an_incomplete_table_is_refused_at_start_naming_the_missing_columns() {
    let db = PgDb::new();
    db.psql(
        "SET ROLE scram_user;
         CREATE TABLE provision_requests (request_id TEXT PRIMARY KEY, user_id TEXT,
           gpu_count INTEGER, duration_hours INTEGER, status TEXT, created_at TIMESTAMP)",
    );
    let mut worker = spawn_without_broker(&db, &[]);
    let status = worker.wait_exit(EXIT);
    assert_eq!(status.code(), Some(1), "{}", worker.lines().join("\n"));
    let line = worker.wait_for_line("without column(s)", EXIT);
    assert!(
        line.contains("kubeconfig, error_message, updated_at")
            && line.contains("sql/schema-postgresql.sql"),
        "{line}"
    );
}

// ------------------------------------------------------------------------------------
// Passwords and TLS

#[test]
fn a_wrong_password_stops_the_start_in_words_and_no_password_is_ever_shown() {
    let db = PgDb::new();
    db.ensure_schema();
    let url = db.url_with(Some("not-the-password"), &db.verify_full());
    let started = Instant::now();
    let mut worker = spawn_without_broker(&db, &[("DATABASE_URL", &url)]);
    let status = worker.wait_exit(EXIT);
    assert_eq!(status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a refused password is not waited for"
    );
    let line = worker.wait_for_line("cannot use PostgreSQL at", EXIT);
    assert!(
        line.contains("28P01") && line.contains("password"),
        "{line}"
    );
    assert_no_secret(&worker, &["not-the-password"]);
    assert!(
        worker
            .lines()
            .iter()
            .any(|l| l.contains("Connecting to database: postgresql+asyncpg://scram_user:***@")),
        "the URL is logged with its password masked"
    );

    // A URL the worker refuses is shown masked too (exit 2).
    let mut bad = WorkerProcess::spawn(&[(
        "DATABASE_URL",
        "postgresql+asyncpg://app:app-pw@127.0.0.1:notaport/app",
    )]);
    assert_eq!(bad.wait_exit(EXIT).code(), Some(2));
    bad.wait_for_line(
        "invalid DATABASE_URL=\"postgresql+asyncpg://app:***@127.0.0.1:notaport/app\"",
        EXIT,
    );
    assert_no_secret(&bad, &["app-pw"]);
}

#[test]
fn the_password_can_come_from_database_password_file_and_is_never_logged() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let db = PgDb::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pg-password");
    std::fs::write(&file, format!("{SCRAM_PASSWORD}\n")).expect("write the password file");
    let ids = insert(&db, "req-file", 2);
    let mut worker = spawn(
        &broker,
        &db,
        &[
            ("DATABASE_URL", &db.url_with(None, &db.verify_full())),
            ("DATABASE_PASSWORD_FILE", file.to_str().expect("UTF-8")),
        ],
    );
    produce_all(&broker, &ids, 1);
    wait_status(&db, &ids, "completed", JOIN_AND_WORK);
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(EXIT).code(), Some(0));
    assert_no_secret(&worker, &[SCRAM_PASSWORD]);
}

/// `sslmode=verify-full` against a server whose certificate names another host: refused
/// before anything is sent, in words that name both, and not retried.
#[test]
fn tls_verify_full_with_a_wrong_host_name_is_refused_in_words() {
    let cluster = Arc::new(PgCluster::start_with(roomy()));
    let db = PgDb::on(cluster.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = wrong_name_certificate(&cluster, dir.path());
    let url = db.url_with(
        Some(SCRAM_PASSWORD),
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let mut worker = spawn_without_broker(&db, &[("DATABASE_URL", &url)]);
    assert_eq!(worker.wait_exit(EXIT).code(), Some(1));
    let line = worker.wait_for_line("cannot use PostgreSQL at", EXIT);
    assert!(
        line.contains("db.wrong.example")
            && line.contains("127.0.0.1")
            && line.contains("verify-full"),
        "the refusal names the certificate's host, ours and the mode: {line}"
    );
    // The same in `check`.
    let (ok, out) = tool_with(&db, None, &[("DATABASE_URL", &url)], &["check"]);
    assert!(!ok);
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL database:") && l.contains("db.wrong.example")),
        "{out}"
    );
    // With the name the certificate carries not reachable here, verify-ca (the chain only)
    // is the operator's way out, and it works.
    let url = db.url_with(
        Some(SCRAM_PASSWORD),
        &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
    );
    let mut worker = spawn_without_broker(&db, &[("DATABASE_URL", &url)]);
    worker.wait_for_line("Database connection established", EXIT);
}

/// A TLS file the URL names that cannot be used is a bad configuration, as Kafka's are:
/// exit 2 before anything connects, naming the setting; `check` says so in its first line.
#[test]
fn a_tls_file_that_cannot_be_used_is_a_bad_configuration() {
    let db = PgDb::new();
    let url = db.url_with(
        Some(SCRAM_PASSWORD),
        "sslmode=verify-full&sslrootcert=/no/such/ca.pem",
    );
    let mut worker = spawn_without_broker(&db, &[("DATABASE_URL", &url)]);
    assert_eq!(worker.wait_exit(EXIT).code(), Some(2));
    let line = worker.wait_for_line("sslrootcert", EXIT);
    assert!(line.contains("/no/such/ca.pem"), "{line}");
    let (ok, out) = tool_with(&db, None, &[("DATABASE_URL", &url)], &["check"]);
    assert!(!ok, "{out}");
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.starts_with("FAIL configuration:") && l.contains("sslrootcert")),
        "{out}"
    );
}

#[test]
fn a_server_down_at_start_is_waited_for_then_exit_1_naming_it() {
    let db = PgDb::new();
    let port = common::free_port();
    let url = format!("postgresql://scram_user:{SCRAM_PASSWORD}@127.0.0.1:{port}/x");
    let started = Instant::now();
    let mut worker = spawn_without_broker(
        &db,
        &[
            ("DATABASE_URL", &url),
            ("KAFKA_STARTUP_TIMEOUT_SECONDS", "3"),
        ],
    );
    assert_eq!(worker.wait_exit(EXIT).code(), Some(1));
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(3), "gave up after {took:?}");
    let line = worker.wait_for_line(" - ERROR - ", EXIT);
    assert!(
        line.contains(&format!("cannot use PostgreSQL at 127.0.0.1:{port}")),
        "{line}"
    );
}

// ------------------------------------------------------------------------------------
// The server's faults

/// `pg_ctl restart -m fast` while requests are processed: every session is ended (57P01),
/// the server is away for a moment, the pool reconnects; requests are delayed and retried,
/// none fails, none is lost, none is completed twice, and the offsets reach the log end.
#[test]
fn a_server_restart_mid_run_delays_requests_and_loses_none() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 3);
    let cluster = Arc::new(PgCluster::start_with(roomy()));
    let db = PgDb::on(cluster.clone());
    let ids = insert(&db, "req-restart", 150);
    add_audit(&db);
    let log_end = produce_all(&broker, &ids, 3);
    let mut worker = spawn(
        &broker,
        &db,
        &[
            ("MOCK_PROVISION_DELAY_SECONDS", "0.05"),
            ("WORKER_THREADS", "4"),
        ],
    );
    wait_until("some requests completed", JOIN_AND_WORK, || {
        (completed(&db) >= 10).then_some(())
    });
    cluster.restart();
    let after_restart = completed(&db);
    assert!(
        after_restart < ids.len(),
        "the restart came too late to matter"
    );
    wait_status(&db, &ids, "completed", JOIN_AND_WORK);
    wait_committed(&broker, &log_end);
    assert_each_completed_once(&db, &ids);
    assert!(
        worker.count_lines("Database unavailable during") >= 1,
        "the restart was seen and retried"
    );
    assert_no_errors(&worker);
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(EXIT).code(), Some(0));
}

/// The worker's sessions killed by `pg_terminate_backend` again and again (an operator, a
/// failover proxy): each killed connection is dropped and replaced, nothing is lost or
/// completed twice.
#[test]
fn connections_killed_with_pg_terminate_backend_are_replaced_and_lose_nothing() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 3);
    let db = PgDb::new();
    let ids = insert(&db, "req-kill-conn", 150);
    add_audit(&db);
    let log_end = produce_all(&broker, &ids, 3);
    let mut worker = spawn(
        &broker,
        &db,
        &[
            ("MOCK_PROVISION_DELAY_SECONDS", "0.05"),
            ("WORKER_THREADS", "4"),
        ],
    );
    wait_until("some requests completed", JOIN_AND_WORK, || {
        (completed(&db) >= 10).then_some(())
    });
    let mut killed = 0;
    while completed(&db) < ids.len() && killed < 40 {
        let n: usize = db
            .psql(&format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = '{}' AND application_name = 'provision-worker'",
                db.name()
            ))
            .parse()
            .expect("a count");
        killed += n;
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(killed > 0, "no session of the worker was killed");
    wait_status(&db, &ids, "completed", JOIN_AND_WORK);
    wait_committed(&broker, &log_end);
    assert_each_completed_once(&db, &ids);
    assert_no_errors(&worker);
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(EXIT).code(), Some(0));
}

/// The backend holds a row locked (a long transaction of its own) for longer than the
/// worker's `lock_timeout` (5 s): that request waits, is retried and completes once the lock
/// is released; nothing fails, and the other requests go on meanwhile.
#[test]
fn a_row_the_backend_holds_locked_delays_its_request_and_fails_nothing() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let db = PgDb::new();
    db.insert_pending("req-locked", "lou", 1, 1);
    db.insert_pending("req-free", "lou", 1, 1);
    let mut worker = spawn(&broker, &db, &[("WORKER_THREADS", "2")]);
    worker.wait_for_line("Partitions assigned: [", JOIN_AND_WORK);
    let hold = Duration::from_secs(10);
    let mut backend = db
        .cluster()
        .psql_command(
            db.name(),
            &format!(
                "BEGIN; SELECT 1 FROM provision_requests WHERE request_id = 'req-locked' FOR UPDATE; \
                 SELECT pg_sleep({}); COMMIT;",
                hold.as_secs()
            ),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("start the backend's psql");
    wait_until("the backend to hold the row", EXIT, || {
        (db.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE a.query LIKE '%pg_sleep%' AND l.mode = 'RowShareLock'",
        ) != "0")
            .then_some(())
    });
    let locked = Instant::now();
    produce_all(
        &broker,
        &["req-locked".to_owned(), "req-free".to_owned()],
        1,
    );
    wait_status(&db, &["req-free".to_owned()], "completed", JOIN_AND_WORK);
    let line = worker.wait_for_line(
        "Database unavailable during claim of request req-locked",
        JOIN_AND_WORK,
    );
    assert!(
        line.contains("55P03"),
        "the lock timeout, sorted transient: {line}"
    );
    assert_eq!(db.status_of("req-locked").as_deref(), Some("pending"));
    assert!(locked.elapsed() < hold, "the lock was held all along");
    assert!(backend.wait().expect("psql").success());
    wait_status(&db, &["req-locked".to_owned()], "completed", JOIN_AND_WORK);
    assert_no_errors(&worker);
}

/// A trigger of the backend refuses a completion (RAISE EXCEPTION): as with SQLite, the
/// request ends `failed` with the trigger's words after three tries, is dead-lettered, and
/// its partition moves on.
#[test]
fn a_trigger_refusing_completion_gives_failed_with_its_words_and_the_partition_moves_on() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    broker.create_topic(DLQ, 1);
    let db = PgDb::new();
    db.ensure_schema();
    db.psql(
        "CREATE FUNCTION quota() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.status = 'completed' AND NEW.user_id = 'bob' THEN
             RAISE EXCEPTION 'gpu quota exceeded for %', NEW.user_id;
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER quota BEFORE UPDATE ON provision_requests
           FOR EACH ROW EXECUTE FUNCTION quota();",
    );
    db.insert_pending("req-bob", "bob", 1, 1);
    db.insert_pending("req-ann", "ann", 1, 1);
    let mut worker = spawn(&broker, &db, &[("KAFKA_DLQ_TOPIC", DLQ)]);
    let log_end = produce_all(&broker, &["req-bob".to_owned(), "req-ann".to_owned()], 1);
    wait_status(&db, &["req-ann".to_owned()], "completed", JOIN_AND_WORK);
    let row = wait_until("req-bob to fail", JOIN_AND_WORK, || {
        db.row("req-bob").filter(|r| r.status == "failed")
    });
    assert_eq!(
        row.error_message.as_deref(),
        Some("refused by the database: gpu quota exceeded for bob")
    );
    worker.wait_for_line(
        "Dead-lettered refused request at partition 0",
        JOIN_AND_WORK,
    );
    wait_committed(&broker, &log_end);
}

// ------------------------------------------------------------------------------------
// Scaling out

/// Two worker processes, standing for two hosts, in one consumer group on one database;
/// one is SIGKILLed mid-run. The other takes its partitions once its session expires:
/// every request completes, none twice, and only requests the killed one had in flight are
/// claimed again.
#[test]
fn two_workers_on_one_database_and_a_sigkill_of_one_lose_nothing_and_complete_nothing_twice() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 4);
    let db = PgDb::new();
    let ids = insert(&db, "req-two", 300);
    add_audit(&db);
    let threads = 3;
    let settings = [
        ("MOCK_PROVISION_DELAY_SECONDS", "0.1"),
        ("WORKER_THREADS", "3"),
    ];
    let mut first = spawn(&broker, &db, &settings);
    let mut second = spawn(&broker, &db, &settings);
    for worker in [&mut first, &mut second] {
        worker.wait_for_line("Partitions assigned: [", JOIN_AND_WORK);
    }
    let log_end = produce_all(&broker, &ids, 4);
    wait_until("both workers to complete requests", JOIN_AND_WORK, || {
        (first.count_lines("to status: completed") >= 5
            && second.count_lines("to status: completed") >= 5)
            .then_some(())
    });
    first.kill9();
    wait_status(&db, &ids, "completed", Duration::from_secs(90));
    wait_committed(&broker, &log_end);
    assert_each_completed_once(&db, &ids);
    let claims = claims_per_request(&db);
    let reclaimed: Vec<(&String, &usize)> = claims.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        reclaimed.len() <= threads && reclaimed.iter().all(|(_, n)| **n == 2),
        "only what the killed worker had in flight ({threads} threads) is claimed again: {reclaimed:?}"
    );
    assert_no_errors(&second);
    second.signal("TERM");
    assert_eq!(second.wait_exit(EXIT).code(), Some(0));
}

// ------------------------------------------------------------------------------------
// Operator commands

#[test]
fn send_status_and_check_work_on_postgresql_and_show_no_password() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    broker.create_topic(DLQ, 1);
    let db = PgDb::new();

    // check before anything exists: the table is missing, and check does not create it.
    let (ok, out) = tool(&db, &broker, &["check"]);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("OK   database:"))
        .unwrap_or_else(|| panic!("no database line:\n{out}"));
    for needle in [
        "PostgreSQL 15.",
        "TLS 1.3",
        "certificate checked: CA and host name",
        "authenticated as scram_user with SCRAM-SHA-256-PLUS",
        "synchronous_commit=on",
        "fsync=on",
        "does not exist yet",
    ] {
        assert!(line.contains(needle), "{needle:?} not in {line}");
    }
    assert!(!db.table_exists(), "check created the table");
    assert!(
        out.contains("DATABASE_URL=postgresql+asyncpg://scram_user:***@"),
        "{out}"
    );

    // status of a request in a database without the table: an error, nothing created.
    let (ok, out) = tool(&db, &broker, &["status", "nope"]);
    assert!(
        !ok && out.contains("has no table provision_requests"),
        "{out}"
    );
    assert!(!db.table_exists());

    let (ok, out) = tool(
        &db,
        &broker,
        &["send", "--user", "alice", "--gpus", "4", "--hours", "2"],
    );
    assert!(ok, "{out}");
    let id = out
        .lines()
        .next()
        .expect("the request id")
        .trim()
        .to_owned();
    assert_eq!(db.status_of(&id).as_deref(), Some("pending"));
    let mut worker = spawn(&broker, &db, &[]);
    wait_status(&db, std::slice::from_ref(&id), "completed", JOIN_AND_WORK);
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(EXIT).code(), Some(0));
    let (ok, out) = tool(&db, &broker, &["status", &id]);
    assert!(ok && out.contains("status:         completed"), "{out}");
    let (ok, out) = tool(&db, &broker, &["status", &id, "--kubeconfig"]);
    assert!(ok && out.contains("apiVersion: v1"), "{out}");
    let (ok, out) = tool(&db, &broker, &["status", "nope"]);
    assert!(
        !ok && out.contains("no request \"nope\" in postgresql+asyncpg://scram_user:***@"),
        "{out}"
    );
    let (ok, out) = tool(&db, &broker, &["check"]);
    assert!(
        ok && out.contains("has every column the worker needs"),
        "{out}"
    );
    assert!(!out.contains(SCRAM_PASSWORD), "{out}");
}

// ------------------------------------------------------------------------------------
// Helpers

/// The worker against `broker` and `db` with settings fit for tests; `overrides` replace
/// or add variables.
fn spawn(broker: &Broker, db: &PgDb, overrides: &[(&str, &str)]) -> WorkerProcess {
    let addr = broker.addr();
    let url = db.url();
    let base: [(&str, &str); 11] = [
        ("KAFKA_BOOTSTRAP_SERVERS", &addr),
        ("KAFKA_TOPIC", TOPIC),
        ("KAFKA_GROUP_ID", GROUP),
        ("DATABASE_URL", &url),
        ("MOCK_PROVISION_DELAY_SECONDS", "0.2"),
        ("WORKER_THREADS", "4"),
        ("KAFKA_DLQ_TOPIC", ""),
        ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_HEARTBEAT_INTERVAL_MS", "1000"),
        ("COMMIT_INTERVAL_MS", "200"),
        ("KAFKA_STARTUP_TIMEOUT_SECONDS", "20"),
    ];
    let mut cmd = WorkerProcess::command();
    for (name, value) in base {
        if !overrides.iter().any(|(n, _)| *n == name) {
            cmd = cmd.env(name, value);
        }
    }
    cmd.envs(overrides).spawn()
}

/// The worker for tests that end before Kafka matters (a closed port for the broker).
fn spawn_without_broker(db: &PgDb, overrides: &[(&str, &str)]) -> WorkerProcess {
    let kafka = format!("127.0.0.1:{}", common::free_port());
    let url = db.url();
    let mut cmd = WorkerProcess::command()
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka)
        .env("KAFKA_STARTUP_TIMEOUT_SECONDS", "30");
    if !overrides.iter().any(|(n, _)| *n == "DATABASE_URL") {
        cmd = cmd.env("DATABASE_URL", &url);
    }
    cmd.envs(overrides).spawn()
}

/// Runs an operator command; whether it succeeded, and stdout and stderr together.
fn tool(db: &PgDb, broker: &Broker, args: &[&str]) -> (bool, String) {
    tool_with(db, Some(broker), &[], args)
}

fn tool_with(
    db: &PgDb,
    broker: Option<&Broker>,
    overrides: &[(&str, &str)],
    args: &[&str],
) -> (bool, String) {
    let kafka = broker.map_or_else(
        || format!("127.0.0.1:{}", common::free_port()),
        Broker::addr,
    );
    let url = db.url();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_provision-worker"));
    common::clean_env(&mut cmd)
        .args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka)
        .env("KAFKA_TOPIC", TOPIC)
        .env("KAFKA_GROUP_ID", GROUP)
        .env("KAFKA_DLQ_TOPIC", DLQ);
    if !overrides.iter().any(|(n, _)| *n == "DATABASE_URL") {
        cmd.env("DATABASE_URL", &url);
    }
    let out = cmd
        .envs(overrides.iter().copied())
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run provision-worker");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

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
fn insert(db: &PgDb, prefix: &str, n: usize) -> Vec<String> {
    db.ensure_schema();
    db.psql(&format!(
        "INSERT INTO provision_requests
           (request_id, user_id, gpu_count, duration_hours, status, created_at, updated_at)
         SELECT '{prefix}-' || i, 'user', 1, 1, 'pending', now() AT TIME ZONE 'UTC',
                now() AT TIME ZONE 'UTC'
         FROM generate_series(0, {}) AS i",
        n - 1
    ));
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Produces a message per id, round-robin over `partitions`; the log end of each.
fn produce_all(broker: &Broker, ids: &[String], partitions: i32) -> BTreeMap<i32, Option<i64>> {
    let mut log_end = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let (p, offset) = produce(
            broker,
            TOPIC,
            Some(i as i32 % partitions),
            None,
            request_json(id, "user", 1, 1).as_bytes(),
            &[],
        );
        log_end.insert(p, Some(offset + 1));
    }
    log_end
}

fn completed(db: &PgDb) -> usize {
    db.count_by_status().get("completed").copied().unwrap_or(0) as usize
}

fn wait_status(db: &PgDb, ids: &[String], status: &str, deadline: Duration) {
    wait_until(
        &format!("{} request(s) {status}", ids.len()),
        deadline,
        || {
            let rows = db.all_rows();
            ids.iter()
                .all(|id| rows.get(id).is_some_and(|r| r.status == status))
                .then_some(())
        },
    );
}

fn wait_committed(broker: &Broker, want: &BTreeMap<i32, Option<i64>>) {
    wait_until(
        "the committed offsets to reach the log end",
        JOIN_AND_WORK,
        || {
            let got = librdkafka_committed(broker, GROUP, TOPIC);
            if &got == want {
                Some(())
            } else {
                std::thread::sleep(Duration::from_millis(300));
                None
            }
        },
    );
}

/// Every insert and status change of a row, written by a trigger inside the transaction
/// that made it.
fn add_audit(db: &PgDb) {
    db.ensure_schema();
    db.psql(
        "CREATE TABLE audit (request_id text, old text, new text);
         GRANT ALL ON audit TO scram_user;
         CREATE FUNCTION audit_status() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO audit VALUES (NEW.request_id,
             CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status);
           RETURN NEW;
         END $$;
         CREATE TRIGGER audit AFTER INSERT OR UPDATE OF status ON provision_requests
           FOR EACH ROW EXECUTE FUNCTION audit_status();",
    );
}

fn transitions_into(db: &PgDb, status: &str) -> HashMap<String, usize> {
    db.psql(&format!(
        "SELECT request_id, count(*) FROM audit WHERE new = '{status}' GROUP BY request_id"
    ))
    .lines()
    .filter_map(|l| l.split_once('|'))
    .map(|(id, n)| (id.to_owned(), n.parse().expect("a count")))
    .collect()
}

fn claims_per_request(db: &PgDb) -> HashMap<String, usize> {
    transitions_into(db, "provisioning")
}

fn assert_each_completed_once(db: &PgDb, ids: &[String]) {
    let completions = transitions_into(db, "completed");
    for id in ids {
        assert_eq!(
            completions.get(id).copied(),
            Some(1),
            "{id} completed {:?} times",
            completions.get(id)
        );
    }
    assert_eq!(
        db.psql("SELECT count(*) FROM audit WHERE old IN ('completed', 'failed')"),
        "0",
        "a final row changed"
    );
}

fn assert_no_errors(worker: &WorkerProcess) {
    let errors: Vec<String> = worker
        .lines()
        .into_iter()
        .filter(|l| l.contains(" - ERROR - "))
        .collect();
    assert!(
        errors.is_empty(),
        "transient faults are not errors: {errors:#?}"
    );
}

fn assert_no_secret(worker: &WorkerProcess, secrets: &[&str]) {
    for line in worker.lines() {
        for secret in secrets {
            assert!(!line.contains(secret), "a password in the output: {line}");
        }
    }
}

/// A CA of its own and a server certificate it signs for `db.wrong.example` only, installed
/// in `cluster`; returns the CA's file.
fn wrong_name_certificate(cluster: &PgCluster, dir: &std::path::Path) -> std::path::PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "wrong-name test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
    let ca_file = dir.join("wrong-name-ca.crt");
    std::fs::write(&ca_file, ca_cert.pem()).expect("write the CA");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("a server key");
    let mut params =
        CertificateParams::new(vec!["db.wrong.example".to_owned()]).expect("parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, "db.wrong.example");
    let cert = params
        .signed_by(&key, &issuer)
        .expect("sign the server certificate");
    cluster.install_server_certificate(&cert.pem(), &key.serialize_pem());
    ca_file
}
