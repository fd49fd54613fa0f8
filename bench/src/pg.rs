//! Scenario 8: the worker on PostgreSQL (issue 20), against PostgreSQL's own limit measured
//! in the same run.
//!
//! A private PostgreSQL 15 cluster for the invocation (crates/pg-testkit: initdb and pg_ctl
//! as the postgres user, `fsync` and `synchronous_commit` on, as in production); per run a
//! fresh database with the worker's table (sql/schema-postgresql.sql) and a `pending` row per
//! request, owned by the worker's user. The worker connects over TCP without TLS (as
//! pgbench does below), so both pay the same per-statement costs.
//!
//! Throughput: 20,000 requests at delay 0 with 8 threads, from the rows' own `updated_at`
//! (the worker's clock): first completion to last, as scenario 1. CPU from /proc: the
//! worker's, and the server's (the postmaster and its backends).
//!
//! The limit: pgbench, PostgreSQL's own load generator, right after the worker stopped, on
//! the same table and server: `UPDATE provision_requests SET status, updated_at WHERE
//! request_id = ...` of a random row, one statement per transaction (autocommit),
//! `synchronous_commit` on, prepared, for 5 s, with as many clients as the worker has
//! threads (the server's WAL flush then serves several commits at once, for pgbench as for
//! the worker); and with one client for context. Limit in requests/s = its transactions/s
//! ÷ 2 (a request is two transitions: claim, complete). Bar: throughput ≥ 0.6 × limit.
use std::path::Path;
use std::time::{Duration, Instant};

use blocking_postgres::{Client, Config, Password, SslMode};
use pg_testkit::{Options, PgCluster, SCRAM_PASSWORD};
use serde_json::json;

use crate::db::Verdict;
use crate::procs::{self, WorkerProc, WorkerSpec};
use crate::util::{Req, Res};
use crate::{Ctx, RunOut, mib, produce_all};

/// The invocation's cluster; stopped (and its directory removed) on drop.
pub struct Pg {
    cluster: PgCluster,
    schema: String,
}

/// How long each pgbench measurement runs.
const PGBENCH_SECONDS: u32 = 5;

impl Pg {
    pub fn start(root: &Path) -> Res<Pg> {
        let schema_path = root.join("sql/schema-postgresql.sql");
        let schema = std::fs::read_to_string(&schema_path)
            .map_err(|e| format!("read {}: {e}", schema_path.display()))?;
        // pg-testkit says what is missing by panicking; here it is an error like any other.
        let cluster = std::panic::catch_unwind(|| {
            PgCluster::start_with(Options {
                extra_conf: vec!["max_connections = 100".to_owned()],
                ..Options::default()
            })
        })
        .map_err(|p| {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            format!("cannot start a PostgreSQL cluster for scenario 8: {why}")
        })?;
        Ok(Pg { cluster, schema })
    }

    pub fn describe(&self) -> String {
        format!(
            "PostgreSQL 15 on 127.0.0.1:{} (postmaster {})",
            self.cluster.port(),
            self.cluster
                .postmaster_pid()
                .map_or("?".to_owned(), |p| p.to_string())
        )
    }

    fn client(&self, dbname: &str) -> Res<Client> {
        let mut config = Config::new(self.cluster.host(), "scram_user");
        config.port = self.cluster.port();
        config.dbname = Some(dbname.to_owned());
        config.password = Some(Password::new(SCRAM_PASSWORD));
        config.sslmode = SslMode::Disable;
        Client::connect(config).map_err(|e| format!("connect to {dbname}: {e}"))
    }

    fn url(&self, dbname: &str) -> String {
        format!(
            "postgresql://scram_user:{SCRAM_PASSWORD}@{}:{}/{dbname}?sslmode=disable",
            self.cluster.host(),
            self.cluster.port()
        )
    }

    /// CPU seconds of the server: the postmaster and its children now.
    fn server_cpu_seconds(&self) -> f64 {
        let Some(postmaster) = self.cluster.postmaster_pid() else {
            return f64::NAN;
        };
        let mut total = procs::process_cpu_seconds(postmaster);
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit(')')
                            .next()
                            .and_then(|rest| rest.split_whitespace().nth(1))
                            .and_then(|p| p.parse::<u32>().ok())
                    });
                if parent == Some(postmaster) {
                    total += procs::process_cpu_seconds(pid);
                }
            }
        }
        total
    }

    /// pgbench's transactions per second for `script` with `clients` connections.
    fn pgbench(&self, dir: &Path, dbname: &str, script: &str, clients: u32) -> Res<f64> {
        let file = dir.join("limit.sql");
        std::fs::write(&file, script).map_err(|e| format!("write {}: {e}", file.display()))?;
        let mut cmd = std::process::Command::new(self.cluster.program("pgbench"));
        cmd.args([
            "-n",
            "-M",
            "prepared",
            "-h",
            self.cluster.host(),
            "-p",
            &self.cluster.port().to_string(),
            "-U",
            "scram_user",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "-T",
            &PGBENCH_SECONDS.to_string(),
            "-f",
        ])
        .arg(&file)
        .arg(dbname)
        .env("PGPASSWORD", SCRAM_PASSWORD)
        .env("PGSSLMODE", "disable");
        let text = procs::run_with_deadline(cmd, "pgbench", Duration::from_secs(60))?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix("tps = ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .ok_or_else(|| format!("pgbench printed no tps line:\n{text}"))
    }
}

/// Scenario 8, one run.
pub fn run(ctx: &Ctx, pg: &Pg, label: &str, n: usize, threads: u32, deadline: Duration) -> RunOut {
    let mut out = RunOut::default();
    let dir = match ctx.run_dir(label) {
        Ok(d) => d,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    if let Err(e) = run_in(ctx, pg, &mut out, &dir, label, n, threads, deadline) {
        ctx.say(&format!("{label}: {e}"));
        out.error = Some(e);
    }
    let ok = out.error.is_none() && out.verdict.as_ref().is_some_and(Verdict::ok);
    ctx.done_with(&dir, ok);
    out
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    ctx: &Ctx,
    pg: &Pg,
    out: &mut RunOut,
    dir: &Path,
    label: &str,
    n: usize,
    threads: u32,
    deadline: Duration,
) -> Res<()> {
    let dbname = pg.cluster.create_database("scram_user");
    let mut client = pg.client(&dbname)?;
    let sql = |e: blocking_postgres::Error| format!("{dbname}: {e}");
    client.batch_execute(&pg.schema).map_err(sql)?;
    // Ids pgbench can compute: `<prefix>-<8 digits>`.
    let prefix = format!("b{}-{label}", ctx.nonce);
    let reqs: Vec<Req> = (0..n)
        .map(|i| Req {
            id: format!("{prefix}-{i:08}"),
            user: format!("bench-user-{}", i % 97),
            gpus: 1 + (i % 8) as u32,
            hours: 1 + (i % 24) as u32,
        })
        .collect();
    for chunk in reqs.chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|r| {
                format!(
                    "('{}', '{}', {}, {}, 'pending', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')",
                    r.id, r.user, r.gpus, r.hours
                )
            })
            .collect();
        client
            .batch_execute(&format!(
                "INSERT INTO provision_requests \
                 (request_id, user_id, gpu_count, duration_hours, status, created_at, updated_at) \
                 VALUES {}",
                values.join(", ")
            ))
            .map_err(sql)?;
    }
    client
        .batch_execute("ANALYZE provision_requests")
        .map_err(sql)?;
    // The inserts' dirty pages written now, not by a checkpoint during the measurement.
    pg.cluster.psql("CHECKPOINT");

    let topic = format!("bench-{label}-{}", ctx.nonce);
    ctx.broker.create_topic(&topic, 6)?;
    let mut producer = ctx.producer()?;
    produce_all(&mut producer, &topic, &reqs, 6)?;
    drop(producer);
    ctx.say(&format!(
        "{label}: {n} requests in {topic} and database {dbname}; starting the worker"
    ));
    let env = [
        ctx.o.worker_env.clone(),
        vec![("DATABASE_URL".to_owned(), pg.url(&dbname))],
    ]
    .concat();
    let mut worker = WorkerProc::spawn(&WorkerSpec {
        bin: &ctx.o.worker,
        dir,
        // Replaced by DATABASE_URL in `extra_env`.
        db: &dir.join("unused.db"),
        bootstrap: &ctx.broker.addr(),
        topic: &topic,
        group: &topic,
        delay_s: 0.0,
        threads,
        log_level: "WARNING",
        extra_env: &env,
    })?;

    // Polled every 100 ms: each look scans the table, and more often would load the server
    // being measured.
    let mut counts = |client: &mut Client| -> Res<(usize, usize)> {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE status <> 'pending'), \
                        count(*) FILTER (WHERE status = 'completed') FROM provision_requests",
                &[],
            )
            .map_err(sql)?;
        let started: i64 = row.get(0).map_err(sql)?;
        let done: i64 = row.get(1).map_err(sql)?;
        Ok((started as usize, done as usize))
    };
    let wait = |client: &mut Client,
                worker: &mut WorkerProc,
                timeout: Duration,
                counts: &mut dyn FnMut(&mut Client) -> Res<(usize, usize)>,
                until: &dyn Fn((usize, usize)) -> bool|
     -> Res<bool> {
        let end = Instant::now() + timeout;
        loop {
            if until(counts(client)?) {
                return Ok(true);
            }
            worker.check_alive()?;
            if Instant::now() >= end {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    if !wait(
        &mut client,
        &mut worker,
        Duration::from_secs(60),
        &mut counts,
        &|(s, _)| s > 0,
    )? {
        return Err(format!(
            "no request left pending within 60 s of starting the worker; its last lines:\n{}",
            worker.log_tail()
        ));
    }
    let (s0, server0) = (worker.snapshot(), pg.server_cpu_seconds());
    let finished = wait(&mut client, &mut worker, deadline, &mut counts, &|(
        _,
        d,
    )| {
        d >= n
    })?;
    let (s1, server1) = (worker.snapshot(), pg.server_cpu_seconds());
    if !finished {
        out.info.insert(
            "timeout".into(),
            json!(format!("not every request completed within {deadline:?}")),
        );
    }
    let status = worker.stop(Duration::from_secs(40))?;
    if !status.success() {
        out.error = Some(format!(
            "the worker exited with {status} after SIGTERM; its last lines:\n{}",
            worker.log_tail()
        ));
    }

    let row = client
        .query_one(
            "SELECT count(*), coalesce(extract(epoch FROM max(updated_at) - min(updated_at)), 0)::float8::text \
             FROM provision_requests WHERE status = 'completed'",
            &[],
        )
        .map_err(sql)?;
    let done = row.get::<i64>(0).map_err(sql)? as usize;
    let window: f64 = row
        .get::<String>(1)
        .map_err(sql)?
        .parse()
        .map_err(|e| format!("the completion window: {e}"))?;
    let statuses: Vec<(String, usize)> = client
        .query(
            "SELECT status::text, count(*) FROM provision_requests GROUP BY 1 ORDER BY 1",
            &[],
        )
        .map_err(sql)?
        .iter()
        .map(|r| Ok((r.get::<String>(0)?, r.get::<i64>(1)? as usize)))
        .collect::<Result<_, blocking_postgres::Error>>()
        .map_err(sql)?;
    let rps = done as f64 / window;
    out.set("requests", n as f64);
    out.set("window_s", window);
    out.set("requests_per_s", rps);
    let busy = (s1.cpu_s - s0.cpu_s).max(0.0);
    out.set("worker_cpu_us_per_request", busy / n as f64 * 1e6);
    out.set("worker_cpu_cores", busy / window);
    out.set(
        "server_cpu_us_per_request",
        (server1 - server0) / n as f64 * 1e6,
    );
    out.set("peak_rss_mib", mib(s1.vm_hwm_kib));
    out.info.insert(
        "statuses".into(),
        json!(
            statuses
                .iter()
                .cloned()
                .collect::<std::collections::BTreeMap<_, _>>()
        ),
    );

    // The limit, on the same table and server, right after.
    let script = format!(
        "\\set i random(0, {})\n\
         UPDATE provision_requests SET status = 'provisioning', updated_at = now() AT TIME ZONE 'UTC' \
         WHERE request_id = '{prefix}-' || lpad(:i::text, 8, '0');\n",
        n - 1
    );
    let tps = pg.pgbench(dir, &dbname, &script, threads)?;
    let tps_one = pg.pgbench(dir, &dbname, &script, 1)?;
    let limit = tps / 2.0;
    out.set("limit_tx_per_s", tps);
    out.set("limit_requests_per_s", limit);
    out.set("limit_one_client_tx_per_s", tps_one);
    out.set("ratio", rps / limit);
    out.set("ratio_to_one_client", rps / (tps_one / 2.0));
    out.set("update_us", 1e6 / tps);
    ctx.say(&format!(
        "{label}: {done}/{n} completed in {window:.3} s = {rps:.0} req/s; worker CPU {:.0} µs/req ({:.2} cores), server CPU {:.0} µs/req; peak RSS {:.1} MiB; pgbench single-row UPDATE: {tps:.0} tx/s with {threads} clients ({tps_one:.0} with one) = {limit:.0} req/s; throughput/limit = {:.3}",
        busy / n as f64 * 1e6,
        busy / window,
        (server1 - server0) / n as f64 * 1e6,
        mib(s1.vm_hwm_kib),
        rps / limit
    ));
    let lost = n.saturating_sub(done);
    out.verdict = Some(Verdict {
        requests: n,
        lost,
        statuses,
        ..Verdict::default()
    });
    Ok(())
}
