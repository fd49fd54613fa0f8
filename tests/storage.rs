//! Storage faults and a backend that says no (issue 17): the real worker binary against
//! faults a real host and a real backend produce.
//!
//! - A failed fsync (fsyncgate): the shim in `tests/shim/fsync.c`, built here with `cc` and
//!   loaded into the worker with `LD_PRELOAD`, fails one sync of the `-wal` file with EIO.
//!   The worker must commit no offset that sync was to cover and exit 1, and a restart must
//!   complete every request exactly once.
//! - A storage stall longer than the session timeout (the same shim, sleeping in one sync):
//!   the worker keeps its group membership.
//! - A checkpoint by a backend connection under `synchronous=OFF`: the worker syncs the
//!   database file (counted by the shim) before it commits offsets.
//! - A row the backend set to a status of its own (`cancelled`), a trigger refusing a
//!   completion with `RAISE(ABORT)`, and with `RAISE(FAIL)` under load (group commit): the
//!   row is left untouched or ends `failed` with the trigger's message, the message is
//!   dead-lettered, and its partition moves on.
//! - A panic of the poller thread exits non-zero (through a seam read by debug builds only).
//!
//! Every wait has a deadline; committed offsets are read with an independent client
//! (rustfs-kafka's OffsetFetch).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Broker, Consumed, TempDb, WorkerProcess, librdkafka_consume, produce, wait_until};
use rusqlite::params;
use rustfs_kafka::client::KafkaClient;

/// The consumer group of every worker here (each test has its own broker).
const GROUP: &str = "storage";
/// A group join on tansu takes about half the session timeout.
const JOIN: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------------------------
// A failed fsync

#[test]
fn a_failed_fsync_of_the_wal_commits_nothing_it_covered_exits_1_and_a_restart_completes_each_request_once()
 {
    let topic = "fsync-fails";
    let broker = Broker::start();
    broker.create_topic(topic, 3);
    broker.create_topic(&dlq(topic), 1);
    let db = TempDb::new();
    let first: Vec<String> = (0..3).map(|i| format!("before-{i}")).collect();
    let second: Vec<String> = (0..6).map(|i| format!("covered-{i}")).collect();
    seed_pending(&db, first.iter().chain(&second));
    install_audit(&db);
    let shim = Shim::new(&db, "eio");

    let mut published = BTreeMap::new();
    publish(&broker, topic, &first, &mut published);
    let mut w = shim.worker(&broker, topic, &db, &[]);
    w.wait_for_line("Partitions assigned", JOIN);
    let mut offsets = OffsetReader::new(&broker.addr(), topic);
    let before = ends(&published);
    offsets.wait_for(&before, Duration::from_secs(30));

    // From now on the next sync of the -wal fails: the first one with something to cover
    // is the one for the requests published next.
    shim.arm();
    publish(&broker, topic, &second, &mut published);
    let status = w.wait_exit(Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(1),
        "a failed fsync must stop the worker with exit code 1"
    );
    let line = w.wait_for_line("Database sync failed", Duration::ZERO);
    assert!(
        line.contains("poc.db-wal") && line.contains("Input/output error"),
        "the log names the file and the error: {line}"
    );
    assert!(
        line.contains("stay uncommitted; stopping (exit code 1)"),
        "{line}"
    );
    assert!(
        shim.syncs()
            .iter()
            .any(|s| s.kind == "wal" && s.what == "eio"),
        "the shim failed a sync of the -wal file: {:?}",
        shim.syncs()
    );

    // The sync failed after some of the second batch were completed in the database: their
    // offsets, and everything after them, stay uncommitted.
    let completed: Vec<&String> = second
        .iter()
        .filter(|id| db.status_of(id).as_deref() == Some("completed"))
        .collect();
    assert!(
        !completed.is_empty(),
        "the failed sync was to cover completions of the second batch"
    );
    let committed = offsets.committed_within(Duration::from_secs(20));
    assert_eq!(
        committed, before,
        "no offset the failed sync was to cover may be committed"
    );

    // A restart recovers from what is on disk; Kafka redelivers the rest.
    let mut w = worker(&broker, topic, &db, &[]);
    let all = ends(&published);
    offsets.wait_for(&all, Duration::from_secs(60));
    w.signal("TERM");
    assert!(w.wait_exit(Duration::from_secs(30)).success());
    let completions = completions(&db);
    for id in first.iter().chain(&second) {
        assert_eq!(
            completions.get(id).copied().unwrap_or(0),
            1,
            "request {id} must be completed exactly once"
        );
    }
}

#[test]
fn a_failed_fsync_in_a_workers_own_write_stops_the_worker_at_once_with_exit_1() {
    let topic = "fsync-fails-in-a-write";
    let broker = Broker::start();
    broker.create_topic(topic, 1);
    broker.create_topic(&dlq(topic), 1);
    let db = TempDb::new();
    let first = vec!["before".to_owned()];
    let second: Vec<String> = (0..4).map(|i| format!("after-{i}")).collect();
    seed_pending(&db, first.iter().chain(&second));
    install_audit(&db);
    let shim = Shim::new(&db, "eio");
    let metrics_addr = free_addr();

    let mut published = BTreeMap::new();
    publish(&broker, topic, &first, &mut published);
    let mut w = shim.worker(&broker, topic, &db, &[("METRICS_ADDR", &metrics_addr)]);
    w.wait_for_line("Partitions assigned", JOIN);
    let mut offsets = OffsetReader::new(&broker.addr(), topic);
    let before = ends(&published);
    offsets.wait_for(&before, Duration::from_secs(30));

    // The backend checkpoints the whole WAL (its own fsyncs, in this process: the shim is
    // not loaded here). The next write the worker makes starts the WAL over, and SQLite
    // fsyncs the new WAL header in that write, on the worker's own thread: the shim fails
    // that fsync, so the worker's claim gets SQLITE_IOERR_FSYNC, not a sync of the poller's.
    let (busy, _, _): (i64, i64, i64) = db
        .conn()
        .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(busy, 0, "the checkpoint ran to the end");
    shim.arm();
    publish(&broker, topic, &second, &mut published);
    let status = w.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{:#?}", w.lines());
    let worker_line = w.wait_for_line("Database storage failed during", Duration::ZERO);
    assert!(
        worker_line.contains("leaving the request as it is (its offset stays uncommitted)"),
        "the worker gives up at once: {worker_line}"
    );
    let line = w.wait_for_line(
        "no more offsets are committed; stopping (exit code 1)",
        Duration::ZERO,
    );
    assert!(line.contains("ERROR"), "{line}");
    assert_eq!(
        w.count_lines("Database unavailable during"),
        0,
        "a fatal fault is not retried as a transient one"
    );
    assert!(
        shim.syncs()
            .iter()
            .any(|s| s.kind == "wal" && s.what == "eio"),
        "the shim failed a sync of the -wal file: {:?}",
        shim.syncs()
    );
    let committed = offsets.committed_within(Duration::from_secs(20));
    assert_eq!(committed, before, "nothing committed after the failure");

    // A restart recovers from what is on disk; Kafka redelivers the rest.
    let mut w = worker(&broker, topic, &db, &[]);
    offsets.wait_for(&ends(&published), Duration::from_secs(60));
    w.signal("TERM");
    assert!(w.wait_exit(Duration::from_secs(30)).success());
    let completions = completions(&db);
    for id in first.iter().chain(&second) {
        assert_eq!(
            completions.get(id).copied().unwrap_or(0),
            1,
            "request {id} must be completed exactly once"
        );
    }
}

// ------------------------------------------------------------------------------------
// A storage stall

#[test]
fn a_storage_stall_longer_than_the_session_timeout_keeps_the_group_membership() {
    let topic = "fsync-stalls";
    let broker = Broker::start();
    broker.create_topic(topic, 1);
    broker.create_topic(&dlq(topic), 1);
    let db = TempDb::new();
    let first = vec!["before".to_owned()];
    let second: Vec<String> = (0..3).map(|i| format!("stalled-{i}")).collect();
    seed_pending(&db, first.iter().chain(&second));
    // Longer than the 6 s session timeout: a poller blocked in the sync misses every
    // heartbeat for that long, and its coordinator may drop it.
    let stall = Duration::from_secs(9);
    let shim = Shim::new(&db, &format!("stall:{}", stall.as_millis()));
    let metrics_addr = free_addr();

    let mut published = BTreeMap::new();
    publish(&broker, topic, &first, &mut published);
    let mut w = shim.worker(&broker, topic, &db, &[("METRICS_ADDR", &metrics_addr)]);
    w.wait_for_line("Partitions assigned", JOIN);
    let mut offsets = OffsetReader::new(&broker.addr(), topic);
    offsets.wait_for(&ends(&published), Duration::from_secs(30));
    shim.arm();
    publish(&broker, topic, &second, &mut published);
    wait_until("the shim to stall a sync", Duration::from_secs(30), || {
        shim.syncs().iter().any(|s| s.what == "stall").then_some(())
    });
    // Throughout the stall, the worker confirms its membership with heartbeats: /healthz
    // fails once the membership is unconfirmed for a session timeout.
    let stalled_at = Instant::now();
    let mut probes = 0;
    while stalled_at.elapsed() < stall {
        let (status, body) = http_status(&metrics_addr, "/healthz");
        assert_eq!(
            status,
            200,
            "/healthz {:.1} s into the stall: {body}",
            stalled_at.elapsed().as_secs_f64()
        );
        probes += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(probes > 20, "{probes} probes");
    offsets.wait_for(&ends(&published), Duration::from_secs(60));
    w.signal("TERM");
    assert!(w.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(
        w.count_lines("Joining consumer group"),
        1,
        "the worker kept its membership through the stall"
    );
    for id in first.iter().chain(&second) {
        assert_eq!(db.status_of(id).as_deref(), Some("completed"), "{id}");
    }
}

// ------------------------------------------------------------------------------------
// A backend's checkpoint under synchronous=OFF

#[test]
fn after_a_checkpoint_under_synchronous_off_the_database_file_is_synced_before_the_commit() {
    let topic = "checkpoint-off";
    let broker = Broker::start();
    broker.create_topic(topic, 1);
    broker.create_topic(&dlq(topic), 1);
    let db = TempDb::new();
    let first: Vec<String> = (0..5).map(|i| format!("before-{i}")).collect();
    let second: Vec<String> = (0..5).map(|i| format!("after-{i}")).collect();
    seed_pending(&db, first.iter().chain(&second));
    let shim = Shim::new(&db, "none");

    let mut published = BTreeMap::new();
    publish(&broker, topic, &first, &mut published);
    // DEBUG: the worker logs each offset commit, for counting them.
    let mut w = shim.worker(&broker, topic, &db, &[("LOG_LEVEL", "DEBUG")]);
    w.wait_for_line("Partitions assigned", JOIN);
    let mut offsets = OffsetReader::new(&broker.addr(), topic);
    offsets.wait_for(&ends(&published), Duration::from_secs(30));

    // The backend checkpoints with synchronous=OFF: the completions are copied into the
    // database file, which nobody syncs, and the WAL may be rewound.
    let backend = db.conn();
    backend.pragma_update(None, "synchronous", "OFF").unwrap();
    let (busy, _log, copied): (i64, i64, i64) = backend
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(busy, 0);
    assert!(
        copied > 0,
        "the checkpoint copied pages into the database file"
    );
    let checkpointed_at = now_ns();

    publish(&broker, topic, &second, &mut published);
    offsets.wait_for(&ends(&published), Duration::from_secs(30));
    let committed_seen_at = now_ns();
    w.signal("TERM");
    assert!(w.wait_exit(Duration::from_secs(30)).success());

    let syncs = shim.syncs();
    let between = |kind: &str| {
        syncs.iter().any(|s| {
            s.kind == kind && s.what == "ok" && s.at > checkpointed_at && s.at < committed_seen_at
        })
    };
    assert!(
        between("db"),
        "the worker must sync the database file between the checkpoint and the commit \
         that followed it: {syncs:?}"
    );
    assert!(between("wal"), "and the -wal file: {syncs:?}");
    // Before each commit, not only this one: every sync the worker asks for fsyncs the -wal
    // and then the database file, so the database file is synced at least once at start and
    // once per commit (SQLite's own syncs, when it creates the file or checkpoints, would
    // only add to it).
    let commits = w.count_lines("Committed offsets [");
    assert!(commits >= 2, "{commits} commits");
    let db_syncs = syncs.iter().filter(|s| s.kind == "db").count();
    assert!(
        syncs.iter().all(|s| s.what == "ok"),
        "no sync failed: {syncs:?}"
    );
    assert!(
        db_syncs > commits,
        "{db_syncs} syncs of the database file for {commits} commits: {syncs:?}"
    );
    for id in first.iter().chain(&second) {
        assert_eq!(db.status_of(id).as_deref(), Some("completed"), "{id}");
    }
}

// ------------------------------------------------------------------------------------
// A backend that says no

#[test]
fn a_row_in_a_status_the_worker_does_not_own_is_left_untouched_and_its_partition_moves_past_it() {
    let topic = "foreign-status";
    let broker = Broker::start();
    broker.create_topic(topic, 1);
    broker.create_topic(&dlq(topic), 1);
    let db = TempDb::new();
    let ids: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
    seed_pending(&db, &ids);
    // The backend cancelled the first request before its message arrived.
    db.conn()
        .execute(
            "UPDATE provision_requests SET status = 'cancelled', updated_at = ?1
             WHERE request_id = 'r0'",
            params!["2001-02-03 04:05:06.000007"],
        )
        .unwrap();
    let cancelled = db.row("r0").unwrap();
    let mut published = BTreeMap::new();
    let values = publish(&broker, topic, &ids, &mut published);
    let metrics_addr = free_addr();
    let mut w = worker(&broker, topic, &db, &[("METRICS_ADDR", &metrics_addr)]);
    w.wait_for_line("Partitions assigned", JOIN);
    let mut offsets = OffsetReader::new(&broker.addr(), topic);
    offsets.wait_for(&ends(&published), Duration::from_secs(60));

    assert_eq!(
        db.row("r0").unwrap(),
        cancelled,
        "the cancelled row is untouched"
    );
    for id in &ids[1..] {
        assert_eq!(db.status_of(id).as_deref(), Some("completed"), "{id}");
    }
    assert_eq!(
        w.count_lines(
            "Request r0 has status \"cancelled\", which this worker does not own; leaving the \
             row unchanged and dead-lettering the message"
        ),
        1,
        "logged once"
    );
    let dead = librdkafka_consume(&broker, "dlq-reader", &dlq(topic), 1, JOIN);
    check_dead_letter(&dead[0], topic, 0, 0, &values["r0"], "\"cancelled\"");
    let text = http_get(&metrics_addr, "/metrics");
    assert!(
        text.contains("provision_requests_total{status=\"foreign_status\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("provision_db_refusals_total 1\n"), "{text}");
    w.signal("TERM");
    assert!(w.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn a_trigger_refusing_completion_gives_failed_with_its_message_and_the_partition_moves_on() {
    let topic = "refused";
    let broker = Broker::start();
    broker.create_topic(topic, 1);
    broker.create_topic(&dlq(topic), 1);
    let db = TempDb::new();
    let ids: Vec<String> = (0..4).map(|i| format!("r{i}")).collect();
    seed_pending(&db, &ids);
    db.conn()
        .execute_batch(
            "UPDATE provision_requests SET user_id = 'bob' WHERE request_id = 'r0';
             CREATE TRIGGER quota BEFORE UPDATE OF status ON provision_requests
             WHEN NEW.status = 'completed' AND NEW.user_id = 'bob'
             BEGIN SELECT RAISE(ABORT, 'gpu quota exceeded for bob'); END;",
        )
        .unwrap();
    let mut published = BTreeMap::new();
    let values = publish(&broker, topic, &ids, &mut published);
    let metrics_addr = free_addr();
    let mut w = worker(&broker, topic, &db, &[("METRICS_ADDR", &metrics_addr)]);
    w.wait_for_line("Partitions assigned", JOIN);
    let mut offsets = OffsetReader::new(&broker.addr(), topic);
    offsets.wait_for(&ends(&published), Duration::from_secs(60));

    let row = db.row("r0").unwrap();
    assert_eq!(row.status, "failed");
    assert_eq!(
        row.error_message.as_deref(),
        Some("refused by the database: gpu quota exceeded for bob")
    );
    assert_eq!(row.kubeconfig, None);
    for id in &ids[1..] {
        assert_eq!(db.status_of(id).as_deref(), Some("completed"), "{id}");
    }
    assert_eq!(
        w.count_lines(
            "Database refused the completion of request r0: gpu quota exceeded for bob; marked \
             it failed with that reason, and dead-lettering the message"
        ),
        1,
        "logged once"
    );
    let dead = librdkafka_consume(&broker, "dlq-reader", &dlq(topic), 1, JOIN);
    check_dead_letter(
        &dead[0],
        topic,
        0,
        0,
        &values["r0"],
        "gpu quota exceeded for bob",
    );
    let text = http_get(&metrics_addr, "/metrics");
    assert!(
        text.contains("provision_requests_total{status=\"refused\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("provision_db_refusals_total 1\n"), "{text}");
    w.signal("TERM");
    assert!(w.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn raise_fail_under_load_undoes_only_the_refused_completions() {
    let topic = "raise-fail";
    let broker = Broker::start();
    broker.create_topic(topic, 3);
    broker.create_topic(&dlq(topic), 1);
    let db = TempDb::new();
    let ids: Vec<String> = (0..300).map(|i| format!("r{i:03}")).collect();
    seed_pending(&db, &ids);
    install_audit(&db);
    // Every tenth request is bob's. The trigger runs after the update and after writing a
    // note of its own, and FAIL keeps both unless the worker undoes them.
    let bobs: Vec<&String> = ids.iter().step_by(10).collect();
    db.conn()
        .execute_batch(
            "UPDATE provision_requests SET user_id = 'bob' WHERE CAST(substr(request_id, 2)
               AS INTEGER) % 10 = 0;
             CREATE TABLE notes (note TEXT);
             CREATE TRIGGER quota AFTER UPDATE OF status ON provision_requests
             WHEN NEW.status = 'completed' AND NEW.user_id = 'bob' BEGIN
               INSERT INTO notes VALUES ('refusing ' || NEW.request_id);
               SELECT RAISE(FAIL, 'gpu quota exceeded for bob'); END;",
        )
        .unwrap();
    let mut published = BTreeMap::new();
    publish(&broker, topic, &ids, &mut published);
    // Zero delay and eight workers: completions queue for the writer and share
    // transactions (group commit).
    let mut w = worker(
        &broker,
        topic,
        &db,
        &[
            ("MOCK_PROVISION_DELAY_SECONDS", "0"),
            ("WORKER_THREADS", "8"),
        ],
    );
    w.wait_for_line("Partitions assigned", JOIN);
    let mut offsets = OffsetReader::new(&broker.addr(), topic);
    offsets.wait_for(&ends(&published), Duration::from_secs(90));
    w.signal("TERM");
    assert!(w.wait_exit(Duration::from_secs(30)).success());

    let completions = completions(&db);
    for id in &ids {
        let row = db.row(id).unwrap();
        if bobs.contains(&id) {
            assert_eq!(row.status, "failed", "{id}: its completion was refused");
            assert_eq!(
                row.error_message.as_deref(),
                Some("refused by the database: gpu quota exceeded for bob"),
                "{id}"
            );
            assert_eq!(completions.get(id), None, "{id} was never completed");
        } else {
            assert_eq!(row.status, "completed", "{id}");
            assert_eq!(completions.get(id), Some(&1), "{id} completed once");
        }
    }
    let notes: i64 = db
        .conn()
        .query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        notes, 0,
        "the trigger's own work is undone with its refusal"
    );
}

// ------------------------------------------------------------------------------------
// A panicking poller

#[test]
fn a_panic_of_the_poller_thread_exits_non_zero() {
    let topic = "poller-panics";
    let broker = Broker::start();
    broker.create_topic(topic, 1);
    broker.create_topic(&dlq(topic), 1);
    let db = TempDb::new();
    let ids = vec!["r0".to_owned()];
    seed_pending(&db, &ids);
    let mut published = BTreeMap::new();
    publish(&broker, topic, &ids, &mut published);
    let mut w = worker(
        &broker,
        topic,
        &db,
        &[("PROVISION_WORKER_TEST_PANIC_POLLER", "1")],
    );
    let status = w.wait_exit(JOIN);
    assert_eq!(status.code(), Some(1), "{:#?}", w.lines());
    let line = w.wait_for_line("the poller thread panicked", Duration::ZERO);
    assert!(line.contains("ERROR"), "{line}");
    let mut offsets = OffsetReader::new(&broker.addr(), topic);
    let committed = offsets.committed_within(Duration::from_secs(20));
    assert!(
        committed.get(&0).is_none_or(|o| *o == 0),
        "nothing committed past the message: {committed:?}"
    );
}

// ------------------------------------------------------------------------------------
// The shim

/// The fsync shim for one worker and its database: where its log goes and the file that
/// arms its fault.
struct Shim {
    dir: tempfile::TempDir,
    db: PathBuf,
    fault: String,
}

/// One sync the shim saw.
#[derive(Debug)]
struct Sync {
    kind: String,
    at: u128,
    what: String,
}

impl Shim {
    /// For `db`, which exists already (seeded): its full path, symlinks resolved, is what
    /// the worker's descriptors show.
    fn new(db: &TempDb, fault: &str) -> Shim {
        Shim {
            dir: tempfile::tempdir().unwrap(),
            db: std::fs::canonicalize(db.path()).unwrap(),
            fault: fault.to_owned(),
        }
    }

    /// A worker with the shim loaded.
    fn worker(
        &self,
        broker: &Broker,
        topic: &str,
        db: &TempDb,
        extra: &[(&str, &str)],
    ) -> WorkerProcess {
        let library = shim_library().display().to_string();
        let db_path = self.db.display().to_string();
        let log = self.log().display().to_string();
        let arm = self.arm_file().display().to_string();
        let mut envs = vec![
            ("LD_PRELOAD", library.as_str()),
            ("FSYNC_SHIM_DB", db_path.as_str()),
            ("FSYNC_SHIM_LOG", log.as_str()),
            ("FSYNC_SHIM_ARM", arm.as_str()),
            ("FSYNC_SHIM_FAULT", self.fault.as_str()),
        ];
        envs.extend_from_slice(extra);
        worker(broker, topic, db, &envs)
    }

    /// Injects the fault into the next sync of the -wal file.
    fn arm(&self) {
        std::fs::write(self.arm_file(), b"").unwrap();
    }

    fn syncs(&self) -> Vec<Sync> {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        text.lines()
            .map(|line| {
                let mut parts = line.split(' ');
                let (Some(kind), Some(at), Some(what)) = (parts.next(), parts.next(), parts.next())
                else {
                    panic!("a shim log line of three fields: {line:?}");
                };
                Sync {
                    kind: kind.to_owned(),
                    at: at.parse().unwrap(),
                    what: what.to_owned(),
                }
            })
            .collect()
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("syncs.log")
    }

    fn arm_file(&self) -> PathBuf {
        self.dir.path().join("armed")
    }
}

/// `tests/shim/fsync.c`, built once per test run with the system's C compiler. A missing
/// compiler fails the test that needs it, saying so.
fn shim_library() -> &'static Path {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        let source = common::repo_root().join("tests/shim/fsync.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libfsync_shim.so");
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg(&source)
            .arg("-ldl")
            .status()
            .unwrap_or_else(|e| panic!("run cc to build {}: {e}; install gcc", source.display()));
        assert!(status.success(), "cc failed to build {}", source.display());
        out
    })
}

// ------------------------------------------------------------------------------------
// Requests, the database, Kafka

fn dlq(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Inserts a pending row for each id, as the backend does.
fn seed_pending<'a>(db: &TempDb, ids: impl IntoIterator<Item = &'a String>) {
    for (i, id) in ids.into_iter().enumerate() {
        db.insert_pending(id, &format!("user-{}", i % 7), 1 + (i % 4) as i64, 1);
    }
}

/// Records every status a row takes, in order (the worker's schema check only looks at
/// `provision_requests`).
fn install_audit(db: &TempDb) {
    db.conn()
        .execute_batch(
            "CREATE TABLE status_audit (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 request_id TEXT NOT NULL, old TEXT, new TEXT NOT NULL);
             CREATE TRIGGER audit_update AFTER UPDATE OF status ON provision_requests BEGIN
                 INSERT INTO status_audit (request_id, old, new)
                 VALUES (NEW.request_id, OLD.status, NEW.status);
             END;",
        )
        .unwrap();
}

/// How many times the audit saw each request become `completed`.
fn completions(db: &TempDb) -> HashMap<String, usize> {
    let conn = db.conn();
    let mut stmt = conn
        .prepare("SELECT request_id, count(*) FROM status_audit WHERE new = 'completed' GROUP BY 1")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as usize)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Publishes one request message per id, round-robin over the topic's partitions, and
/// records where each landed in `published`; returns each message's value.
fn publish(
    broker: &Broker,
    topic: &str,
    ids: &[String],
    published: &mut BTreeMap<String, (i32, i64)>,
) -> HashMap<String, Vec<u8>> {
    let partitions = partition_count(broker, topic);
    let mut values = HashMap::new();
    for id in ids {
        let value = serde_json::json!({
            "request_id": id,
            "user_id": "someone",
            "gpu_count": 1,
            "duration_hours": 1,
        })
        .to_string()
        .into_bytes();
        let partition = published.len() as i32 % partitions;
        let at = produce(
            broker,
            topic,
            Some(partition),
            Some(id.as_bytes()),
            &value,
            &[],
        );
        values.insert(id.clone(), value);
        published.insert(id.clone(), at);
    }
    values
}

fn partition_count(broker: &Broker, topic: &str) -> i32 {
    let mut client = KafkaClient::new(vec![broker.addr()]);
    client.load_metadata(&[topic]).unwrap();
    client
        .topics()
        .partitions(topic)
        .map_or(0, |p| p.len() as i32)
}

/// The end offset (last + 1) of each partition the messages went to.
fn ends(published: &BTreeMap<String, (i32, i64)>) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for (p, o) in published.values() {
        let end = ends.entry(*p).or_insert(0);
        *end = (*end).max(o + 1);
    }
    ends
}

/// Checks a dead letter of a refused request: the request as the worker read it
/// (re-encoded: the same JSON value as the original), the usual headers, a reason naming
/// `why`.
fn check_dead_letter(
    dead: &Consumed,
    topic: &str,
    partition: i32,
    offset: i64,
    value: &[u8],
    why: &str,
) {
    let header = |name: &str| {
        dead.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| panic!("no header {name}: {dead:?}"))
    };
    let json = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).unwrap();
    let sent = dead.value.as_deref().expect("a value");
    assert_eq!(json(sent), json(value), "the request as read");
    assert_eq!(header("x-original-topic"), topic);
    assert_eq!(header("x-original-partition"), partition.to_string());
    assert_eq!(header("x-original-offset"), offset.to_string());
    let reason = header("x-dlq-reason");
    assert!(reason.contains(why), "{reason}");
}

/// The group's committed offsets, read with rustfs-kafka's OffsetFetch.
struct OffsetReader {
    client: KafkaClient,
    topic: String,
}

impl OffsetReader {
    fn new(bootstrap: &str, topic: &str) -> OffsetReader {
        let mut client = KafkaClient::new(vec![bootstrap.to_owned()]);
        client.set_client_id("storage-offset-reader".into());
        OffsetReader {
            client,
            topic: topic.to_owned(),
        }
    }

    /// Committed offset by partition (partitions with none are absent); `None` when the
    /// broker could not be asked.
    fn committed(&mut self) -> Option<BTreeMap<i32, i64>> {
        if self.client.topics().partitions(&self.topic).is_none() {
            self.client.load_metadata(&[&self.topic]).ok()?;
        }
        let offsets = self
            .client
            .fetch_group_topic_offset(GROUP, &self.topic)
            .ok()?;
        Some(
            offsets
                .into_iter()
                .filter(|o| o.offset >= 0)
                .map(|o| (o.partition, o.offset))
                .collect(),
        )
    }

    fn committed_within(&mut self, deadline: Duration) -> BTreeMap<i32, i64> {
        wait_until("the committed offsets", deadline, || self.committed())
    }

    /// Waits until the committed offsets are exactly `want`.
    fn wait_for(&mut self, want: &BTreeMap<i32, i64>, deadline: Duration) {
        let start = Instant::now();
        let mut last = None;
        loop {
            let now = self.committed();
            if now.as_ref() == Some(want) {
                return;
            }
            if now.is_some() {
                last = now;
            }
            assert!(
                start.elapsed() < deadline,
                "the committed offsets did not reach {want:?} within {deadline:?}; last seen \
                 {last:?}"
            );
            std::thread::sleep(common::POLL);
        }
    }
}

/// Starts a worker with the tests' settings; `extra` adds or overrides.
fn worker(broker: &Broker, topic: &str, db: &TempDb, extra: &[(&str, &str)]) -> WorkerProcess {
    let dlq = dlq(topic);
    let url = db.url();
    let addr = broker.addr();
    let mut cmd = WorkerProcess::command().envs(&[
        ("KAFKA_BOOTSTRAP_SERVERS", &addr),
        ("KAFKA_TOPIC", topic),
        ("KAFKA_GROUP_ID", GROUP),
        ("KAFKA_DLQ_TOPIC", &dlq),
        ("DATABASE_URL", &url),
        ("MOCK_PROVISION_DELAY_SECONDS", "0.05"),
        ("WORKER_THREADS", "4"),
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

/// One GET with std (the answer is small and the listener closes the connection):
/// the status and the body.
fn http_status(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line: {head}"));
    (status, body.to_owned())
}

/// The body of a GET that must answer 200.
fn http_get(addr: &str, path: &str) -> String {
    let (status, body) = http_status(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    body
}

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
