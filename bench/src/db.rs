//! The bench's side of SQLite: a fresh database per run (the project's schema plus timing
//! triggers), the monitor that watches it, the final verification, and the single-writer
//! limit of scenario 2.
//!
//! Timing triggers: every change of `status` appends (request_id, status, time) to
//! `bench_transitions`, with `unixepoch('subsec')` (wall clock, millisecond resolution) read
//! inside the worker's own transaction. So each transition's time is when the worker wrote
//! it, not when a poller noticed, and each request's number of `completed` transitions is
//! countable. The cost: one extra row insert (no index, ~60 bytes) inside each of the
//! worker's write transactions, no extra transaction or fsync; scenario 2 measures the limit
//! both without the triggers (the number the ratio uses) and with them, so the cost is shown.
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};

use crate::util::{Req, Res, utc_text};

const TRIGGERS: &str = "
CREATE TABLE bench_transitions (
  request_id TEXT NOT NULL,
  status     TEXT NOT NULL,
  t          REAL NOT NULL,
  updated_at TEXT
);
CREATE TRIGGER bench_on_update AFTER UPDATE OF status ON provision_requests
BEGIN
  INSERT INTO bench_transitions (request_id, status, t, updated_at)
  VALUES (NEW.request_id, NEW.status, unixepoch('subsec'), NEW.updated_at);
END;
CREATE TRIGGER bench_on_insert AFTER INSERT ON provision_requests
WHEN NEW.status != 'pending'
BEGIN
  INSERT INTO bench_transitions (request_id, status, t, updated_at)
  VALUES (NEW.request_id, NEW.status, unixepoch('subsec'), NEW.updated_at);
END;
";

/// The worker's own transition statements (src/store.rs), for the "worker SQL" limit. A claim
/// of a `pending` row is this UPDATE alone (the worker inserts only when it matches no row).
const CLAIM_SQL: &str = "\
UPDATE provision_requests SET status = 'provisioning', updated_at = ?2
WHERE request_id = ?1 AND status IN ('pending', 'provisioning')";
const COMPLETE_SQL: &str = "\
UPDATE provision_requests SET status = 'completed', kubeconfig = ?2, updated_at = ?3
WHERE request_id = ?1 AND status = 'provisioning'";

fn sql_err(what: &str) -> impl Fn(rusqlite::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

pub fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// The worker's connection settings: WAL, synchronous=NORMAL, busy timeout 5 s.
fn configure(conn: &Connection) -> Res<()> {
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sql_err("set busy_timeout"))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(sql_err("set journal_mode=WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("SQLite refused WAL mode (got {mode})"));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql_err("set synchronous=NORMAL"))
}

/// A fresh database at `path`: `schema`, optionally the timing triggers, and a `pending` row
/// per request, checkpointed so the worker starts with an empty WAL.
pub fn create_db(path: &Path, schema: &str, reqs: &[Req], triggers: bool) -> Res<()> {
    remove_db(path);
    let mut conn = Connection::open(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    configure(&conn)?;
    conn.execute_batch(schema)
        .map_err(sql_err("apply sql/schema.sql"))?;
    if triggers {
        conn.execute_batch(TRIGGERS)
            .map_err(sql_err("create the timing triggers"))?;
    }
    let tx = conn.transaction().map_err(sql_err("begin"))?;
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO provision_requests
                   (request_id, user_id, gpu_count, duration_hours, status, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
            )
            .map_err(sql_err("prepare insert"))?;
        for r in reqs {
            stmt.execute(params![
                r.id,
                r.user,
                r.gpus,
                r.hours,
                utc_text(SystemTime::now())
            ])
            .map_err(sql_err("insert a pending row"))?;
        }
    }
    tx.commit().map_err(sql_err("commit the pending rows"))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(sql_err("checkpoint"))?;
    Ok(())
}

/// Watches the run's progress.
///
/// With the timing triggers it reads `bench_transitions` incrementally (only rows after the
/// last one seen), a few microseconds per poll however large the table grows. Without them
/// (the project's schema unchanged) it probes a handful of rows by primary key (the first
/// and last request of each partition) and confirms with one full count at the end, so it
/// never scans the table while the worker runs.
pub struct Monitor {
    conn: Connection,
    probes: Option<Probes>,
    last_rowid: i64,
    pub completed: usize,
    pub claimed: usize,
    pub first_seen: Option<Instant>,
}

struct Probes {
    first: Vec<String>,
    last: Vec<String>,
    next_count: Instant,
}

impl Monitor {
    /// For a database with the timing triggers.
    pub fn open(path: &Path) -> Res<Monitor> {
        let conn = Connection::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(sql_err("set busy_timeout"))?;
        Ok(Monitor {
            conn,
            probes: None,
            last_rowid: 0,
            completed: 0,
            claimed: 0,
            first_seen: None,
        })
    }

    /// For a database without triggers: `first` and `last` are the first and last request
    /// ids of each partition.
    pub fn open_probing(path: &Path, first: Vec<String>, last: Vec<String>) -> Res<Monitor> {
        let mut m = Monitor::open(path)?;
        m.probes = Some(Probes {
            first,
            last,
            next_count: Instant::now(),
        });
        Ok(m)
    }

    fn count_status(&self, ids: &[String], status_clause: &str) -> Res<usize> {
        let mut n = 0;
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT count(*) FROM provision_requests WHERE request_id = ?1 AND {status_clause}"
            ))
            .map_err(sql_err("monitor probe"))?;
        for id in ids {
            let c: i64 = stmt
                .query_row(params![id], |r| r.get(0))
                .map_err(sql_err("monitor probe"))?;
            n += c as usize;
        }
        Ok(n)
    }

    pub fn poll(&mut self) -> Res<()> {
        if self.probes.is_some() {
            return self.poll_probes();
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT rowid, status FROM bench_transitions WHERE rowid > ?1")
            .map_err(sql_err("monitor query"))?;
        let mut rows = stmt
            .query(params![self.last_rowid])
            .map_err(sql_err("monitor query"))?;
        while let Some(row) = rows.next().map_err(sql_err("monitor query"))? {
            let rowid: i64 = row.get(0).map_err(sql_err("monitor row"))?;
            let status: String = row.get(1).map_err(sql_err("monitor row"))?;
            self.last_rowid = self.last_rowid.max(rowid);
            match status.as_str() {
                "completed" => self.completed += 1,
                "provisioning" => self.claimed += 1,
                _ => {}
            }
            if self.first_seen.is_none() {
                self.first_seen = Some(Instant::now());
            }
        }
        Ok(())
    }

    fn poll_probes(&mut self) -> Res<()> {
        let p = self.probes.as_ref().expect("probing monitor");
        let (first, last, next_count) = (p.first.clone(), p.last.clone(), p.next_count);
        if self.first_seen.is_none() {
            if self.count_status(&first, "status != 'pending'")? > 0 {
                self.first_seen = Some(Instant::now());
            }
            return Ok(());
        }
        // The full count only when every partition's last request is done, then at most
        // every 100 ms.
        let now = Instant::now();
        if now >= next_count && self.count_status(&last, "status = 'completed'")? == last.len() {
            let c: i64 = self
                .conn
                .query_row(
                    "SELECT count(*) FROM provision_requests WHERE status = 'completed'",
                    [],
                    |r| r.get(0),
                )
                .map_err(sql_err("monitor count"))?;
            self.completed = c as usize;
            if let Some(p) = self.probes.as_mut() {
                p.next_count = now + Duration::from_millis(100);
            }
        }
        Ok(())
    }
}

/// Throughput window without triggers, from the rows' own `updated_at` (the worker's clock,
/// microseconds): from the first to the last completion, and the number of completed rows.
/// With delay 0 the first completion follows the first claim by well under a millisecond.
pub fn window_from_updated_at(path: &Path) -> Res<(f64, usize)> {
    let conn = Connection::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sql_err("set busy_timeout"))?;
    let (lo, hi, n): (Option<String>, Option<String>, i64) = conn
        .query_row(
            "SELECT min(updated_at), max(updated_at), count(*) FROM provision_requests WHERE status = 'completed'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(sql_err("read updated_at"))?;
    let secs = |t: &str| -> Option<f64> {
        // 'YYYY-MM-DD HH:MM:SS.ffffff': the time of day is enough within one run, plus the
        // day number for runs across midnight.
        let (date, time) = t.split_once(' ')?;
        let day: f64 = date.rsplit('-').next()?.parse().ok()?;
        let mut parts = time.split(':');
        let h: f64 = parts.next()?.parse().ok()?;
        let m: f64 = parts.next()?.parse().ok()?;
        let s: f64 = parts.next()?.parse().ok()?;
        Some(day * 86_400.0 + h * 3600.0 + m * 60.0 + s)
    };
    match (lo.as_deref().and_then(secs), hi.as_deref().and_then(secs)) {
        (Some(a), Some(b)) => Ok((b - a, n as usize)),
        _ => Err("no completed rows to time".into()),
    }
}

/// The verdict on one run: every request completed exactly once.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub requests: usize,
    /// Rows whose status is not `completed` at the end (never finished: lost).
    pub lost: usize,
    /// Requests with more than one `completed` transition.
    pub duplicated: usize,
    /// Requests claimed (`provisioning`) more than once: started twice.
    pub reclaimed: usize,
    /// Rows by final status.
    pub statuses: Vec<(String, usize)>,
    /// A few offending request ids, for the report.
    pub examples: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reclaimed == 0
    }
}

/// Without the triggers (`triggers` false) only lost requests can be seen: rows not
/// `completed`; with them, each request's transitions are counted too.
pub fn verify(path: &Path, triggers: bool) -> Res<Verdict> {
    let conn = Connection::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sql_err("set busy_timeout"))?;
    let mut v = Verdict::default();
    let mut stmt = conn
        .prepare("SELECT status, count(*) FROM provision_requests GROUP BY status ORDER BY status")
        .map_err(sql_err("count statuses"))?;
    v.statuses = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize))
        })
        .map_err(sql_err("count statuses"))?
        .collect::<Result<_, _>>()
        .map_err(sql_err("count statuses"))?;
    v.requests = v.statuses.iter().map(|(_, n)| n).sum();
    v.lost = v
        .statuses
        .iter()
        .filter(|(s, _)| s != "completed")
        .map(|(_, n)| n)
        .sum();
    if !triggers {
        return Ok(v);
    }
    let per_request = "SELECT p.request_id, p.status,
            coalesce(sum(t.status = 'completed'), 0) AS done,
            coalesce(sum(t.status = 'provisioning'), 0) AS claims
         FROM provision_requests p LEFT JOIN bench_transitions t USING (request_id)
         GROUP BY p.request_id";
    let mut stmt = conn
        .prepare(&format!(
            "SELECT request_id, status, done, claims FROM ({per_request})
             WHERE done > 1 OR claims > 1 OR status != 'completed' OR done != 1"
        ))
        .map_err(sql_err("count transitions"))?;
    let bad = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(sql_err("count transitions"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql_err("count transitions"))?;
    for (id, status, done, claims) in bad {
        if done > 1 {
            v.duplicated += 1;
        }
        if claims > 1 {
            v.reclaimed += 1;
        }
        if status == "completed" && done == 0 {
            // Completed without a recorded transition: cannot happen with the triggers in
            // place; count it as lost so it is not silently accepted.
            v.lost += 1;
        }
        if v.examples.len() < 5 {
            v.examples.push(format!(
                "{id}: status {status}, {claims} claim(s), {done} completion(s)"
            ));
        }
    }
    Ok(v)
}

/// Transition times of one run (wall-clock seconds).
pub struct Times {
    /// The first row leaving `pending`.
    pub first: f64,
    /// Every `completed` transition, ascending.
    pub completed: Vec<f64>,
    /// Per request: first `provisioning`, first `completed`.
    pub per_request: HashMap<String, (Option<f64>, Option<f64>)>,
    /// Average length of the stored kubeconfig.
    pub kubeconfig_len: f64,
    /// Transitions per distinct `updated_at` the worker wrote: the worker takes the time once
    /// per write transaction, so this is (up to microsecond collisions) the mean number of
    /// transitions per transaction, i.e. the mean batch of group commit (1 without it).
    pub transitions_per_timestamp: f64,
}

pub fn times(path: &Path) -> Res<Times> {
    let conn = Connection::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sql_err("set busy_timeout"))?;
    let first: Option<f64> = conn
        .query_row("SELECT min(t) FROM bench_transitions", [], |r| r.get(0))
        .map_err(sql_err("first transition"))?;
    let mut stmt = conn
        .prepare("SELECT request_id, status, t FROM bench_transitions ORDER BY t")
        .map_err(sql_err("read transitions"))?;
    let mut completed = Vec::new();
    let mut per_request: HashMap<String, (Option<f64>, Option<f64>)> = HashMap::new();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, f64>(2)?,
            ))
        })
        .map_err(sql_err("read transitions"))?;
    for row in rows {
        let (id, status, t) = row.map_err(sql_err("read transitions"))?;
        let e = per_request.entry(id).or_default();
        match status.as_str() {
            "provisioning" => {
                e.0.get_or_insert(t);
            }
            "completed" => {
                e.1.get_or_insert(t);
                completed.push(t);
            }
            _ => {}
        }
    }
    let kubeconfig_len: Option<f64> = conn
        .query_row(
            "SELECT avg(length(kubeconfig)) FROM provision_requests WHERE kubeconfig IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql_err("kubeconfig length"))?
        .flatten();
    let (transitions, timestamps): (f64, f64) = conn
        .query_row(
            "SELECT count(*), count(DISTINCT updated_at) FROM bench_transitions",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sql_err("count transactions"))?;
    Ok(Times {
        transitions_per_timestamp: transitions / timestamps,
        first: first.unwrap_or(f64::NAN),
        completed,
        per_request,
        kubeconfig_len: kubeconfig_len.unwrap_or(f64::NAN),
    })
}

/// What scenario 2 measures on one database.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LimitKind {
    /// `UPDATE ... SET status, updated_at WHERE request_id = ?`, one per transaction, on the
    /// project's schema: the definition of the limit.
    Plain,
    /// The same on the bench's schema (with the timing triggers): shows what they cost.
    WithTriggers,
    /// The worker's exact statements, single-threaded: claim (its UPDATE in BEGIN IMMEDIATE) then
    /// complete with a kubeconfig of the given length: the best the worker's SQL can do.
    WorkerSql { kubeconfig_len: usize },
    /// The same with the timing triggers: what the worker's SQL can do on the bench's schema.
    WorkerSqlWithTriggers { kubeconfig_len: usize },
}

pub struct LimitResult {
    pub transactions: u64,
    pub seconds: f64,
    pub fsyncs: u64,
    /// Worker SQL only: mean wall time of a claim (BEGIN IMMEDIATE, UPDATE, COMMIT) and of a
    /// completion (UPDATE with the kubeconfig), in microseconds.
    pub claim_us: f64,
    pub complete_us: f64,
}

impl LimitResult {
    pub fn tx_per_s(&self) -> f64 {
        self.transactions as f64 / self.seconds
    }
}

/// Single-writer transactions per second for `seconds`, with the worker's settings and one
/// fdatasync of the `-wal` file per `commit_interval` (the worker's `make_durable` before
/// each offset commit).
pub fn measure_limit(
    path: &Path,
    schema: &str,
    kind: LimitKind,
    rows: usize,
    seconds: f64,
    commit_interval: Duration,
) -> Res<LimitResult> {
    let reqs = crate::util::make_requests(rows, 0x5eed ^ rows as u64);
    let triggers = matches!(
        kind,
        LimitKind::WithTriggers | LimitKind::WorkerSqlWithTriggers { .. }
    );
    create_db(path, schema, &reqs, triggers)?;
    let conn = Connection::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    configure(&conn)?;
    let wal = {
        let mut p = std::fs::canonicalize(path)
            .map_err(|e| format!("resolve {}: {e}", path.display()))?
            .into_os_string();
        p.push("-wal");
        PathBuf::from(p)
    };
    let kube = match kind {
        LimitKind::WorkerSql { kubeconfig_len }
        | LimitKind::WorkerSqlWithTriggers { kubeconfig_len } => "k".repeat(kubeconfig_len),
        _ => String::new(),
    };
    let mut transactions = 0u64;
    let mut fsyncs = 0u64;
    let (mut claim_s, mut complete_s) = (0.0f64, 0.0f64);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut next_sync = start + commit_interval;
    let mut i = 0usize;
    while Instant::now() < end {
        match kind {
            LimitKind::Plain | LimitKind::WithTriggers => {
                let r = &reqs[i % reqs.len()];
                let status = if (i / reqs.len()).is_multiple_of(2) {
                    "provisioning"
                } else {
                    "completed"
                };
                conn.prepare_cached(
                    "UPDATE provision_requests SET status = ?1, updated_at = ?2 WHERE request_id = ?3",
                )
                .and_then(|mut s| s.execute(params![status, utc_text(SystemTime::now()), r.id]))
                .map_err(sql_err("limit update"))?;
                transactions += 1;
            }
            LimitKind::WorkerSql { .. } | LimitKind::WorkerSqlWithTriggers { .. } => {
                let Some(r) = reqs.get(i) else {
                    return Err(format!(
                        "the worker-SQL limit ran out of its {rows} rows before {seconds} s; raise the row count"
                    ));
                };
                let t_claim = Instant::now();
                conn.execute_batch("BEGIN IMMEDIATE")
                    .map_err(sql_err("limit begin"))?;
                conn.prepare_cached(CLAIM_SQL)
                    .and_then(|mut s| s.execute(params![r.id, utc_text(SystemTime::now())]))
                    .map_err(sql_err("limit claim"))?;
                conn.execute_batch("COMMIT")
                    .map_err(sql_err("limit commit"))?;
                let t_complete = Instant::now();
                claim_s += (t_complete - t_claim).as_secs_f64();
                conn.prepare_cached(COMPLETE_SQL)
                    .and_then(|mut s| s.execute(params![r.id, kube, utc_text(SystemTime::now())]))
                    .map_err(sql_err("limit complete"))?;
                complete_s += t_complete.elapsed().as_secs_f64();
                transactions += 2;
            }
        }
        i += 1;
        if Instant::now() >= next_sync {
            sync_wal(&wal)?;
            fsyncs += 1;
            next_sync += commit_interval;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(conn);
    remove_db(path);
    let requests = (transactions / 2).max(1) as f64;
    Ok(LimitResult {
        transactions,
        seconds: elapsed,
        fsyncs,
        claim_us: claim_s / requests * 1e6,
        complete_us: complete_s / requests * 1e6,
    })
}

fn sync_wal(wal: &Path) -> Res<()> {
    match File::open(wal) {
        Ok(f) => f
            .sync_data()
            .map_err(|e| format!("fdatasync {}: {e}", wal.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("open {}: {e}", wal.display())),
    }
}
