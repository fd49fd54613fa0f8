//! provision-bench: measures the release provision-worker from outside (issue 5).
//!
//! It starts its own tansu, and per run: a fresh topic, a fresh consumer group, a fresh
//! SQLite database (sql/schema.sql plus timing triggers, see db.rs) with the requests'
//! `pending` rows; it publishes the requests as the backend would and runs
//! target/release/provision-worker as a separate process. Times come from the triggers
//! (written inside the worker's own transactions), memory and CPU from /proc.
//!
//! Run it through scripts/bench.sh (which builds the worker in release mode first);
//! `--help` lists the options.
mod db;
mod pg;
mod procs;
mod tls;
mod util;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use rustfs_kafka::producer::{Producer, Record, RequiredAcks};
use serde_json::{Map, Value, json};

use db::{LimitKind, Monitor, Verdict};
use procs::{Broker, PerfRecord, ProcSnap, ThreadSampler, WorkerProc, WorkerSpec};
use util::{Res, make_requests, median_min_max, percentile, sleep_until, utc_text, wall_now};

const USAGE: &str = "\
provision-bench: benchmark of the release provision-worker (issue 5). Use scripts/bench.sh.

Options:
  --quick             CI smoke: scenario 1 with 2,000 requests, 1 run; exits 1 only if a
                      request is lost or processed twice, never because of speed
  --scenario N        run scenario N (1-8); repeat or comma-separate; default 1-6
  --runs N            runs per scenario (default 3; --quick: 1)
  --requests N        requests in scenario 1 (default 20000; --quick: 2000)
  --worker PATH       worker binary (default ROOT/target/release/provision-worker)
  --tansu PATH        tansu binary (default: ROOT/scripts/kafka-up.sh --path)
  --root PATH         the provision-worker checkout (default: the bench's parent directory)
  --out PATH          JSON lines file to append to (default ROOT/bench/results.jsonl)
  --worker-env K=V    extra environment for the worker (repeatable), e.g. KAFKA_FETCH_MAX_WAIT_MS=10
  --perf PATH         perf record (cpu-clock) the worker during the first run of scenario 1
                      (of scenario 6 when 1 is not selected)
  --perf-call-graph M perf's --call-graph mode (default none; e.g. dwarf,16384)
  --sample-threads    sample each worker thread's current system call every 2 ms during
                      the profiled run (as --perf): where wall time goes (running, futex,
                      fdatasync, ...)
  --keep              keep each run's directory (database, logs) under bench/target/runs
  --kubeconfig-bytes N  kubeconfig size for scenario 2's worker-SQL limit (default: the
                      mean stored in scenario 1's run, else 692, what the worker renders)

Scenarios:
  1 throughput: 20,000 requests, 6 partitions, delay 0, 8 threads; all produced before the
    worker starts; requests/s from the first row leaving pending to the last completed
  2 the limit: single-row UPDATE transactions/s with the worker's settings (WAL,
    synchronous=NORMAL, busy_timeout 5 s, one fdatasync of the -wal per second), divided by
    2 write transactions per request (claim, complete); throughput/limit per run, and the
    worker's CPU per request in scenario 1 divided by the time of one such transaction
  3 concurrency: 640 requests, delay 0.5 s, 64 threads; makespan against the ideal 5 s
  4 latency: 100 requests/s for 30 s, delay 0; produce -> provisioning / completed
  5 footprint: peak RSS (VmHWM) in 1 and 3, binary size, start to \"Kafka consumer started\"
  6 many in flight: 4,096 requests, delay 2 s, 1,024 threads; makespan against the ideal
    8 s, peak RSS, and the memory per worker thread (idle peak RSS with 1,024 threads
    against 8)
  7 TLS cost (only when asked for): scenario 1's run with the worker on PLAINTEXT and on
    SSL (stunnel4 in front of a second tansu; needs stunnel4 and openssl), order alternating;
    throughput and worker CPU per request of each, and TLS/plaintext ratios
  8 PostgreSQL (only when asked for): scenario 1's requests with the worker on a private
    PostgreSQL 15 (crates/pg-testkit; fsync and synchronous_commit on); throughput, worker
    and server CPU per request, peak RSS; then PostgreSQL's own limit on the same table:
    pgbench, single-row UPDATE commits/s with 8 clients (and 1), / 2 per request; bar:
    throughput >= 0.6 x limit
";

#[derive(Clone)]
struct Opts {
    root: PathBuf,
    worker: PathBuf,
    tansu: Option<PathBuf>,
    out: PathBuf,
    scenarios: Vec<u32>,
    runs: usize,
    quick: bool,
    requests: usize,
    worker_env: Vec<(String, String)>,
    perf: Option<PathBuf>,
    perf_call_graph: String,
    sample_threads: bool,
    keep: bool,
    kubeconfig_bytes: Option<usize>,
}

fn parse_args() -> Res<Opts> {
    let default_root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut root = default_root;
    let (mut worker, mut tansu, mut out) = (None, None, None);
    let mut scenarios = Vec::new();
    let (mut runs, mut requests) = (None, None);
    let mut o_quick = false;
    let mut worker_env = Vec::new();
    let mut perf = None;
    let mut perf_call_graph = String::new();
    let (mut sample_threads, mut keep) = (false, false);
    let mut kubeconfig_bytes = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--quick" => o_quick = true,
            "--keep" => keep = true,
            "--sample-threads" => sample_threads = true,
            "--scenario" => {
                for part in value("--scenario")?.split(',') {
                    let n: u32 = part
                        .trim()
                        .parse()
                        .map_err(|_| format!("--scenario: '{part}' is not a number 1-8"))?;
                    if !(1..=8).contains(&n) {
                        return Err(format!("--scenario: {n} is not one of 1-8"));
                    }
                    if !scenarios.contains(&n) {
                        scenarios.push(n);
                    }
                }
            }
            "--runs" => {
                let v = value("--runs")?;
                runs = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or(format!("--runs: '{v}' is not a positive number"))?,
                );
            }
            "--requests" => {
                let v = value("--requests")?;
                requests = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or(format!("--requests: '{v}' is not a positive number"))?,
                );
            }
            "--worker" => worker = Some(PathBuf::from(value("--worker")?)),
            "--tansu" => tansu = Some(PathBuf::from(value("--tansu")?)),
            "--root" => root = PathBuf::from(value("--root")?),
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--perf" => perf = Some(PathBuf::from(value("--perf")?)),
            "--perf-call-graph" => perf_call_graph = value("--perf-call-graph")?,
            "--kubeconfig-bytes" => {
                let v = value("--kubeconfig-bytes")?;
                kubeconfig_bytes = Some(
                    v.parse::<usize>()
                        .map_err(|_| format!("--kubeconfig-bytes: '{v}' is not a number"))?,
                );
            }
            "--worker-env" => {
                let kv = value("--worker-env")?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or(format!("--worker-env: '{kv}' is not KEY=VALUE"))?;
                worker_env.push((k.to_string(), v.to_string()));
            }
            other => return Err(format!("unknown argument '{other}' (see --help)")),
        }
    }
    let root =
        std::fs::canonicalize(&root).map_err(|e| format!("--root {}: {e}", root.display()))?;
    if o_quick && scenarios.iter().any(|s| *s != 1) {
        return Err("--quick runs scenario 1 only; drop --scenario".into());
    }
    if scenarios.is_empty() {
        scenarios = if o_quick {
            vec![1]
        } else {
            vec![1, 2, 3, 4, 5, 6]
        };
    }
    scenarios.sort();
    Ok(Opts {
        worker: worker.unwrap_or_else(|| root.join("target/release/provision-worker")),
        out: out.unwrap_or_else(|| root.join("bench/results.jsonl")),
        tansu,
        scenarios,
        runs: runs.unwrap_or(if o_quick { 1 } else { 3 }),
        requests: requests.unwrap_or(if o_quick { 2000 } else { 20_000 }),
        quick: o_quick,
        worker_env,
        perf,
        perf_call_graph,
        sample_threads,
        keep,
        kubeconfig_bytes,
        root,
    })
}

/// One run's numbers. `metrics` are aggregated (median, min-max) across runs; `info` is
/// reported per run only.
#[derive(Default)]
struct RunOut {
    metrics: BTreeMap<String, f64>,
    info: Map<String, Value>,
    verdict: Option<Verdict>,
    error: Option<String>,
}

impl RunOut {
    fn set(&mut self, k: &str, v: f64) {
        self.metrics.insert(k.to_string(), v);
    }
    fn get(&self, k: &str) -> f64 {
        self.metrics.get(k).copied().unwrap_or(f64::NAN)
    }
}

struct ScenarioOut {
    id: u32,
    name: &'static str,
    params: Value,
    runs: Vec<RunOut>,
}

impl ScenarioOut {
    fn metric(&self, k: &str) -> (f64, f64, f64) {
        let v: Vec<f64> = self.runs.iter().map(|r| r.get(k)).collect();
        median_min_max(&v)
    }
    fn sum_verdict(&self, f: impl Fn(&Verdict) -> usize) -> usize {
        self.runs
            .iter()
            .filter_map(|r| r.verdict.as_ref())
            .map(f)
            .sum()
    }
    fn integrity_failed(&self) -> bool {
        self.runs
            .iter()
            .any(|r| r.verdict.as_ref().is_some_and(|v| !v.ok()))
    }
    fn errors(&self) -> Vec<String> {
        self.runs.iter().filter_map(|r| r.error.clone()).collect()
    }
}

struct Ctx {
    o: Opts,
    broker: Broker,
    schema: String,
    nonce: String,
    work: PathBuf,
    t0: Instant,
}

impl Ctx {
    fn say(&self, msg: &str) {
        eprintln!("[{:6.1}s] {msg}", self.t0.elapsed().as_secs_f64());
    }

    fn run_dir(&self, label: &str) -> Res<PathBuf> {
        let dir = self.work.join(label);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        Ok(dir)
    }

    fn done_with(&self, dir: &Path, ok: bool) {
        if ok && !self.o.keep {
            let _ = std::fs::remove_dir_all(dir);
        } else {
            self.say(&format!("kept {}", dir.display()));
        }
    }

    fn producer(&self) -> Res<Producer> {
        Producer::from_hosts(vec![self.broker.addr()])
            .with_required_acks(RequiredAcks::One)
            .with_ack_timeout(Duration::from_secs(10))
            .with_client_id("provision-bench".to_owned())
            .create()
            .map_err(|e| format!("create a producer for {}: {e}", self.broker.addr()))
    }
}

fn check_confirms(confirms: &[rustfs_kafka::producer::ProduceConfirm], topic: &str) -> Res<()> {
    for t in confirms {
        for p in &t.partition_confirms {
            if let Err(code) = p.offset {
                return Err(format!(
                    "produce to {topic} partition {}: broker error {code:?}",
                    p.partition
                ));
            }
        }
    }
    Ok(())
}

/// Publishes every request, round-robin over the partitions, in batches.
fn produce_all(p: &mut Producer, topic: &str, reqs: &[util::Req], partitions: u32) -> Res<()> {
    let payloads: Vec<String> = reqs.iter().map(util::Req::json).collect();
    let idx: Vec<usize> = (0..payloads.len()).collect();
    for chunk in idx.chunks(1200) {
        let mut records: Vec<Record<(), &[u8]>> = chunk
            .iter()
            .map(|&i| {
                Record::from_value(topic, payloads[i].as_bytes())
                    .with_partition((i % partitions as usize) as i32)
            })
            .collect();
        // Grouped by partition, so each partition's batch is one record batch.
        records.sort_by_key(|r| r.partition);
        let confirms = p
            .send_all(&records)
            .map_err(|e| format!("produce to {topic}: {e}"))?;
        check_confirms(&confirms, topic)?;
    }
    Ok(())
}

/// Polls `cond` every 2 ms until it holds; `Ok(false)` at the deadline. Fails at once if the
/// worker has exited.
fn wait_for(
    worker: &mut WorkerProc,
    monitor: &mut Monitor,
    timeout: Duration,
    mut cond: impl FnMut(&Monitor, &WorkerProc) -> bool,
) -> Res<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        monitor.poll()?;
        if cond(monitor, worker) {
            return Ok(true);
        }
        worker.check_alive()?;
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Per thread group: CPU seconds used between two snapshots.
fn thread_cpu_delta(a: &ProcSnap, b: &ProcSnap) -> Map<String, Value> {
    let mut m = Map::new();
    for (name, cpu) in &b.threads {
        let before = a.threads.get(name).copied().unwrap_or(0.0);
        m.insert(name.clone(), json!(round(cpu - before, 3)));
    }
    let live: f64 = b.threads.values().sum::<f64>() - a.threads.values().sum::<f64>();
    m.insert(
        "(other: exited threads, tick rounding)".into(),
        json!(round((b.cpu_s - a.cpu_s) - live, 3)),
    );
    m
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Scenarios 1 and 3: every request produced before the worker starts.
#[allow(clippy::too_many_arguments)]
fn batch_run(
    ctx: &Ctx,
    label: &str,
    n: usize,
    partitions: u32,
    delay_s: f64,
    threads: u32,
    deadline: Duration,
    triggers: bool,
    profile: bool,
) -> RunOut {
    let mut out = RunOut::default();
    let dir = match ctx.run_dir(label) {
        Ok(d) => d,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let result = batch_run_in(
        ctx, &mut out, &dir, label, n, partitions, delay_s, threads, deadline, triggers, profile,
    );
    if let Err(e) = result {
        ctx.say(&format!("{label}: {e}"));
        out.error = Some(e);
    }
    let ok = out.error.is_none() && out.verdict.as_ref().is_some_and(Verdict::ok);
    ctx.done_with(&dir, ok);
    out
}

#[allow(clippy::too_many_arguments)]
fn batch_run_in(
    ctx: &Ctx,
    out: &mut RunOut,
    dir: &Path,
    label: &str,
    n: usize,
    partitions: u32,
    delay_s: f64,
    threads: u32,
    deadline: Duration,
    triggers: bool,
    profile: bool,
) -> Res<()> {
    let db = dir.join("bench.db");
    let reqs = make_requests(n, wall_now().to_bits());
    db::create_db(&db, &ctx.schema, &reqs, triggers)?;
    let topic = format!("bench-{label}-{}", ctx.nonce);
    ctx.broker.create_topic(&topic, partitions)?;
    let mut producer = ctx.producer()?;
    let t = Instant::now();
    produce_all(&mut producer, &topic, &reqs, partitions)?;
    out.set("produce_s", t.elapsed().as_secs_f64());
    drop(producer);
    ctx.say(&format!(
        "{label}: {n} requests in {} ({} partitions) in {:.2} s; starting the worker",
        topic,
        partitions,
        t.elapsed().as_secs_f64()
    ));

    let mut monitor = if triggers {
        Monitor::open(&db)?
    } else {
        let parts = partitions as usize;
        let first = reqs.iter().take(parts).map(|r| r.id.clone()).collect();
        let last = (0..parts.min(n))
            .map(|p| reqs[(n - 1 - p) / parts * parts + p].id.clone())
            .collect();
        Monitor::open_probing(&db, first, last)?
    };
    let mut worker = WorkerProc::spawn(&WorkerSpec {
        bin: &ctx.o.worker,
        dir,
        db: &db,
        bootstrap: &ctx.broker.addr(),
        topic: &topic,
        group: &topic,
        delay_s,
        threads,
        log_level: "WARNING",
        extra_env: &ctx.o.worker_env,
    })?;
    let perf = match (&ctx.o.perf, profile) {
        (Some(path), true) => Some(PerfRecord::attach(
            worker.pid,
            path,
            &ctx.o.perf_call_graph,
        )?),
        _ => None,
    };

    // The group join (~3 s on tansu) is excluded: the clock starts at the first claim.
    if !wait_for(
        &mut worker,
        &mut monitor,
        Duration::from_secs(60),
        |m, _| m.first_seen.is_some(),
    )? {
        return Err(format!(
            "no request left pending within 60 s of starting the worker (group join stuck?); its last lines:\n{}",
            worker.log_tail()
        ));
    }
    // Sampled from the first claim on, so the group join's idle time is left out.
    let sampler = (profile && ctx.o.sample_threads)
        .then(|| ThreadSampler::start(worker.pid, Duration::from_millis(2)));
    let (s0, b0, me0) = (
        worker.snapshot(),
        procs::process_cpu_seconds(ctx.broker.pid()),
        procs::self_cpu_seconds(),
    );
    let finished = wait_for(&mut worker, &mut monitor, deadline, |m, _| m.completed >= n)?;
    let (s1, b1, me1) = (
        worker.snapshot(),
        procs::process_cpu_seconds(ctx.broker.pid()),
        procs::self_cpu_seconds(),
    );
    if !finished {
        let msg = format!(
            "{label}: only {} of {n} requests completed within {deadline:?} of the first claim ({:.0}/s); stopping",
            monitor.completed,
            monitor.completed as f64 / deadline.as_secs_f64()
        );
        ctx.say(&msg);
        out.info.insert("timeout".into(), json!(msg));
    }
    if let Some(s) = sampler {
        let states = s.finish();
        for (group, counts) in &states {
            let total: u64 = counts.values().sum();
            let mut v: Vec<(&String, &u64)> = counts.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1));
            let text: Vec<String> = v
                .iter()
                .take(6)
                .map(|(k, c)| format!("{k} {:.0}%", **c as f64 * 100.0 / total as f64))
                .collect();
            ctx.say(&format!(
                "{label}: thread {group} ({total} samples): {}",
                text.join(", ")
            ));
        }
        out.info.insert("thread_states".into(), json!(states));
    }
    if let Some(p) = perf {
        let path = p.out.clone();
        p.finish()?;
        ctx.say(&format!("{label}: perf data in {}", path.display()));
    }
    // The monitor's connection is closed before the worker stops, so the worker's last
    // connection checkpoints and removes the WAL on its own, as in a quiet deployment.
    let seen_completed = monitor.completed;
    drop(monitor);
    let status = worker.stop(Duration::from_secs(40))?;
    if !status.success() {
        out.error = Some(format!(
            "the worker exited with {status} after SIGTERM; its last lines:\n{}",
            worker.log_tail()
        ));
    }

    let verdict = db::verify(&db, triggers)?;
    let completed_rows = verdict
        .statuses
        .iter()
        .find(|(s, _)| s == "completed")
        .map_or(0, |(_, n)| *n);
    if completed_rows < seen_completed.min(n) {
        // Seen once (not reproduced since): rows the monitor had seen completed read as
        // pending after the worker exited. Keep the evidence.
        let files: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                        format!("{} ({len} bytes)", e.file_name().to_string_lossy())
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.error = Some(format!(
            "inconsistent database: the monitor saw {seen_completed} completions while the worker ran, but after it exited ({status}) only {completed_rows} rows read as completed; files: {}",
            files.join(", ")
        ));
    }
    let (window, done) = if triggers {
        let times = db::times(&db)?;
        let last = times.completed.last().copied().unwrap_or(f64::NAN);
        let gap = times
            .completed
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(0.0, f64::max);
        out.set("max_completion_gap_ms", gap * 1000.0);
        out.set("kubeconfig_bytes", times.kubeconfig_len);
        out.set(
            "transitions_per_transaction",
            times.transitions_per_timestamp,
        );
        (last - times.first, times.completed.len())
    } else {
        db::window_from_updated_at(&db)?
    };
    out.set("requests", n as f64);
    out.set("window_s", window);
    out.set("requests_per_s", done as f64 / window);
    if delay_s > 0.0 {
        out.set("ideal_s", n as f64 * delay_s / threads as f64);
        out.set("efficiency", (n as f64 * delay_s / threads as f64) / window);
    }
    let busy = (s1.cpu_s - s0.cpu_s).max(0.0);
    out.set("worker_cpu_us_per_request", busy / n as f64 * 1e6);
    out.set("worker_cpu_cores", busy / window);
    out.set("broker_cpu_us_per_request", (b1 - b0) / n as f64 * 1e6);
    out.set("bench_cpu_us_per_request", (me1 - me0) / n as f64 * 1e6);
    out.set("peak_rss_mib", mib(s1.vm_hwm_kib));
    out.set(
        "voluntary_switches_per_request",
        (s1.voluntary_cs - s0.voluntary_cs) as f64 / n as f64,
    );
    out.set(
        "write_syscalls_per_request",
        (s1.syscw - s0.syscw) as f64 / n as f64,
    );
    out.set(
        "disk_kib_per_request",
        (s1.write_bytes - s0.write_bytes) as f64 / n as f64 / 1024.0,
    );
    out.info.insert(
        "thread_cpu_s".into(),
        Value::Object(thread_cpu_delta(&s0, &s1)),
    );
    out.info.insert(
        "statuses".into(),
        json!(verdict.statuses.iter().cloned().collect::<BTreeMap<_, _>>()),
    );
    out.info.insert(
        "rss_at_end_kib".into(),
        json!({"anon": s1.rss_anon_kib, "file": s1.rss_file_kib}),
    );
    ctx.say(&format!(
        "{label} ({}): {done}/{n} completed in {window:.3} s = {:.0} req/s; worker CPU {:.0} µs/req ({:.2} cores); peak RSS {:.1} MiB; lost {}, duplicated {}, reclaimed {}",
        if triggers { "bench schema, with timing triggers" } else { "project schema" },
        done as f64 / window,
        busy / n as f64 * 1e6,
        busy / window,
        mib(s1.vm_hwm_kib),
        verdict.lost,
        verdict.duplicated,
        verdict.reclaimed
    ));
    if !verdict.ok() {
        ctx.say(&format!(
            "{label}: integrity problems, e.g. {:?}",
            verdict.examples
        ));
    }
    out.verdict = Some(verdict);
    Ok(())
}

/// Scenario 1's two runs as one: the project-schema run's metrics as they are, the
/// triggered run's with a `triggers_` prefix; integrity from both.
fn merge_s1(plain: RunOut, timed: RunOut) -> RunOut {
    let mut out = RunOut {
        metrics: plain.metrics,
        ..RunOut::default()
    };
    for (k, v) in timed.metrics {
        out.metrics.insert(format!("triggers_{k}"), v);
    }
    out.info
        .insert("project_schema".into(), Value::Object(plain.info));
    out.info.insert(
        "bench_schema_with_triggers".into(),
        Value::Object(timed.info),
    );
    let errors: Vec<String> = [plain.error, timed.error].into_iter().flatten().collect();
    out.error = (!errors.is_empty()).then(|| errors.join("; "));
    out.verdict = match (plain.verdict, timed.verdict) {
        (Some(p), Some(t)) => Some(Verdict {
            requests: p.requests + t.requests,
            lost: p.lost + t.lost,
            duplicated: t.duplicated,
            reclaimed: t.reclaimed,
            statuses: t.statuses,
            examples: [p.examples, t.examples].concat(),
        }),
        (p, t) => p.or(t),
    };
    out
}

/// Scenario 7: scenario 1's run with the worker on PLAINTEXT and on SSL, in alternating order,
/// against a second broker behind [`tls::TlsFront`] (same relay hop for both).
fn tls_cost(
    ctx: &Ctx,
    tansu: &Path,
    runs: usize,
    n: usize,
    deadline: Duration,
) -> Res<ScenarioOut> {
    let dir = ctx.work.join("s7-front");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let port = procs::free_port()?;
    let broker = Broker::start_advertising(tansu, &dir, Some(port))?;
    let front = tls::TlsFront::start(&dir, port, broker.port)?;
    let mut tctx = Ctx {
        o: ctx.o.clone(),
        broker,
        schema: ctx.schema.clone(),
        nonce: format!("{}tls", ctx.nonce),
        work: ctx.work.clone(),
        t0: ctx.t0,
    };
    let mut s7 = ScenarioOut {
        id: 7,
        name: "tls_cost",
        params: json!({"requests": n, "partitions": 6, "delay_s": 0, "worker_threads": 8,
            "tls": "stunnel4 (OpenSSL) in front of tansu; worker on rustls (ring)"}),
        runs: vec![],
    };
    for i in 0..runs {
        // The order alternates, so neither side always runs on a warmer machine.
        let order = if i % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let (mut plain, mut tls) = (RunOut::default(), RunOut::default());
        for secure in order {
            tctx.o.worker_env = [ctx.o.worker_env.clone(), front.worker_env(secure)].concat();
            let which = if secure { "tls" } else { "plain" };
            ctx.say(&format!(
                "scenario 7 (TLS cost), run {}/{runs}, {which}",
                i + 1
            ));
            let label = format!("s7-run{}-{which}", i + 1);
            let out = batch_run(&tctx, &label, n, 6, 0.0, 8, deadline, false, false);
            if secure {
                tls = out;
            } else {
                plain = out;
            }
        }
        s7.runs.push(merge_tls(plain, tls));
    }
    Ok(s7)
}

fn merge_tls(plain: RunOut, tls: RunOut) -> RunOut {
    let mut out = RunOut::default();
    for (k, v) in &plain.metrics {
        out.metrics.insert(format!("plain_{k}"), *v);
    }
    for (k, v) in &tls.metrics {
        out.metrics.insert(format!("tls_{k}"), *v);
    }
    out.set(
        "tls_throughput_ratio",
        tls.get("requests_per_s") / plain.get("requests_per_s"),
    );
    out.set(
        "tls_cpu_ratio",
        tls.get("worker_cpu_us_per_request") / plain.get("worker_cpu_us_per_request"),
    );
    out.info
        .insert("plaintext".into(), Value::Object(plain.info));
    out.info.insert("tls".into(), Value::Object(tls.info));
    let errors: Vec<String> = [plain.error, tls.error].into_iter().flatten().collect();
    out.error = (!errors.is_empty()).then(|| errors.join("; "));
    out.verdict = match (plain.verdict, tls.verdict) {
        (Some(p), Some(t)) => Some(Verdict {
            requests: p.requests + t.requests,
            lost: p.lost + t.lost,
            duplicated: p.duplicated + t.duplicated,
            reclaimed: p.reclaimed + t.reclaimed,
            statuses: t.statuses,
            examples: [p.examples, t.examples].concat(),
        }),
        (p, t) => p.or(t),
    };
    out
}

/// Scenario 1's numbers that scenario 2 relates to the limit.
struct S1Figures {
    requests_per_s: f64,
    worker_cpu_us_per_request: f64,
}

/// Scenario 2, one run: the limits.
fn limit_run(ctx: &Ctx, label: &str, kubeconfig_len: usize, s1: Option<S1Figures>) -> RunOut {
    let mut out = RunOut::default();
    let dir = match ctx.run_dir(label) {
        Ok(d) => d,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let db = dir.join("limit.db");
    let interval = Duration::from_millis(1000);
    let r = (|| -> Res<()> {
        let measure = |kind, rows| db::measure_limit(&db, &ctx.schema, kind, rows, 2.0, interval);
        let plain = measure(LimitKind::Plain, 20_000)?;
        let trig = measure(LimitKind::WithTriggers, 20_000)?;
        let exact = measure(LimitKind::WorkerSql { kubeconfig_len }, 60_000)?;
        let exact_trig = measure(LimitKind::WorkerSqlWithTriggers { kubeconfig_len }, 60_000)?;
        let limit_rps = plain.tx_per_s() / 2.0;
        out.set("limit_tx_per_s", plain.tx_per_s());
        out.set("limit_requests_per_s", limit_rps);
        out.set("limit_with_triggers_tx_per_s", trig.tx_per_s());
        out.set(
            "trigger_cost_pct",
            (1.0 - trig.tx_per_s() / plain.tx_per_s()) * 100.0,
        );
        out.set("worker_sql_requests_per_s", exact.tx_per_s() / 2.0);
        out.set(
            "worker_sql_with_triggers_requests_per_s",
            exact_trig.tx_per_s() / 2.0,
        );
        out.set("worker_sql_claim_us", exact.claim_us);
        out.set("worker_sql_complete_us", exact.complete_us);
        let update_us = 1e6 / plain.tx_per_s();
        out.set("update_us", update_us);
        out.set("fsyncs", plain.fsyncs as f64);
        if let Some(s1) = &s1 {
            let rps = s1.requests_per_s;
            out.set("throughput_requests_per_s", rps);
            out.set("ratio", rps / limit_rps);
            out.set("ratio_to_worker_sql", rps / (exact.tx_per_s() / 2.0));
            // The CPU bar of issue 11: the worker's CPU per request (scenario 1, project
            // schema) in units of one single-row UPDATE transaction, both from this run.
            out.set("worker_cpu_us_per_request", s1.worker_cpu_us_per_request);
            out.set(
                "cpu_per_request_in_updates",
                s1.worker_cpu_us_per_request / update_us,
            );
        }
        ctx.say(&format!(
            "{label}: single-row UPDATE {:.0} tx/s = {:.0} req/s at 2 tx/req (with triggers {:.0} tx/s, {:+.1} %); the worker's SQL on one thread {:.0} req/s (with triggers {:.0}){}",
            plain.tx_per_s(),
            limit_rps,
            trig.tx_per_s(),
            -(1.0 - trig.tx_per_s() / plain.tx_per_s()) * 100.0,
            exact.tx_per_s() / 2.0,
            exact_trig.tx_per_s() / 2.0,
            s1.as_ref()
                .map(|s1| format!(
                    "; throughput/limit = {:.3}; worker CPU per request = {:.2} UPDATE transactions",
                    s1.requests_per_s / limit_rps,
                    s1.worker_cpu_us_per_request / update_us
                ))
                .unwrap_or_default()
        ));
        Ok(())
    })();
    if let Err(e) = r {
        ctx.say(&format!("{label}: {e}"));
        out.error = Some(e);
    }
    ctx.done_with(&dir, out.error.is_none());
    out
}

/// Scenario 4, one run: a paced producer against a running worker.
fn latency_run(ctx: &Ctx, label: &str, rate: f64, seconds: f64) -> RunOut {
    let mut out = RunOut::default();
    let dir = match ctx.run_dir(label) {
        Ok(d) => d,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    if let Err(e) = latency_run_in(ctx, &mut out, &dir, label, rate, seconds) {
        ctx.say(&format!("{label}: {e}"));
        out.error = Some(e);
    }
    let ok = out.error.is_none() && out.verdict.as_ref().is_some_and(Verdict::ok);
    ctx.done_with(&dir, ok);
    out
}

fn latency_run_in(
    ctx: &Ctx,
    out: &mut RunOut,
    dir: &Path,
    label: &str,
    rate: f64,
    seconds: f64,
) -> Res<()> {
    const PARTITIONS: u32 = 6;
    let n = (rate * seconds).round() as usize;
    let warm = PARTITIONS as usize;
    let reqs = make_requests(warm + n, wall_now().to_bits());
    let db = dir.join("bench.db");
    // The backend inserts each pending row before it publishes; inserting them all up front
    // keeps the bench's own writes out of the measured window.
    db::create_db(&db, &ctx.schema, &reqs, true)?;
    let topic = format!("bench-{label}-{}", ctx.nonce);
    ctx.broker.create_topic(&topic, PARTITIONS)?;
    let mut producer = ctx.producer()?;
    let mut monitor = Monitor::open(&db)?;
    let mut worker = WorkerProc::spawn(&WorkerSpec {
        bin: &ctx.o.worker,
        dir,
        db: &db,
        bootstrap: &ctx.broker.addr(),
        topic: &topic,
        group: &topic,
        delay_s: 0.0,
        threads: 8,
        log_level: "WARNING",
        extra_env: &ctx.o.worker_env,
    })?;
    // Warm-up: one request per partition; when all are completed the group is joined and
    // every partition is being fetched.
    let payloads: Vec<String> = reqs.iter().map(util::Req::json).collect();
    for (i, p) in payloads[..warm].iter().enumerate() {
        producer
            .send(&Record::from_value(&topic, p.as_bytes()).with_partition(i as i32))
            .map_err(|e| format!("produce to {topic}: {e}"))?;
    }
    if !wait_for(
        &mut worker,
        &mut monitor,
        Duration::from_secs(60),
        |m, _| m.completed >= warm,
    )? {
        return Err(format!(
            "the {warm} warm-up requests were not completed within 60 s (group join stuck?); the worker's last lines:\n{}",
            worker.log_tail()
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    ctx.say(&format!(
        "{label}: worker ready; producing {n} requests at {rate}/s"
    ));

    let s0 = worker.snapshot();
    let mut produced_at = Vec::with_capacity(n);
    let mut send_ms = Vec::with_capacity(n);
    let start = Instant::now();
    let wall_start = wall_now();
    for (i, p) in payloads[warm..].iter().enumerate() {
        sleep_until(start + Duration::from_secs_f64(i as f64 / rate));
        let t = wall_now();
        let s = Instant::now();
        producer
            .send(
                &Record::from_value(&topic, p.as_bytes())
                    .with_partition((i % PARTITIONS as usize) as i32),
            )
            .map_err(|e| format!("produce to {topic}: {e}"))?;
        send_ms.push(s.elapsed().as_secs_f64() * 1000.0);
        produced_at.push(t);
        if i % 100 == 0 {
            worker.check_alive()?;
        }
    }
    let produce_s = wall_now() - wall_start;
    let finished = wait_for(
        &mut worker,
        &mut monitor,
        Duration::from_secs(30),
        |m, _| m.completed >= warm + n,
    )?;
    let s1 = worker.snapshot();
    if !finished {
        out.info.insert(
            "timeout".into(),
            json!(format!(
                "only {} of {} completed within 30 s of the last produce",
                monitor.completed,
                warm + n
            )),
        );
    }
    drop(monitor);
    let status = worker.stop(Duration::from_secs(40))?;
    if !status.success() {
        out.error = Some(format!(
            "the worker exited with {status} after SIGTERM; its last lines:\n{}",
            worker.log_tail()
        ));
    }
    let verdict = db::verify(&db, true)?;
    let times = db::times(&db)?;
    let (mut to_prov, mut to_done) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (r, t) in reqs[warm..].iter().zip(&produced_at) {
        if let Some((p, d)) = times.per_request.get(&r.id) {
            if let Some(p) = p {
                to_prov.push((p - t) * 1000.0);
            }
            if let Some(d) = d {
                to_done.push((d - t) * 1000.0);
            }
        }
    }
    for v in [&mut to_prov, &mut to_done, &mut send_ms] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    out.set("produced_per_s", n as f64 / produce_s);
    out.set("provisioning_p50_ms", percentile(&to_prov, 0.50));
    out.set("provisioning_p99_ms", percentile(&to_prov, 0.99));
    out.set(
        "provisioning_max_ms",
        to_prov.last().copied().unwrap_or(f64::NAN),
    );
    out.set("completed_p50_ms", percentile(&to_done, 0.50));
    out.set("completed_p99_ms", percentile(&to_done, 0.99));
    out.set(
        "completed_max_ms",
        to_done.last().copied().unwrap_or(f64::NAN),
    );
    out.set("send_p50_ms", percentile(&send_ms, 0.50));
    out.set("send_p99_ms", percentile(&send_ms, 0.99));
    out.set("peak_rss_mib", mib(s1.vm_hwm_kib));
    out.set(
        "worker_cpu_cores",
        (s1.cpu_s - s0.cpu_s) / produce_s.max(1e-9),
    );
    ctx.say(&format!(
        "{label}: produce→provisioning p50 {:.1} / p99 {:.1} / max {:.1} ms; produce→completed p50 {:.1} / p99 {:.1} / max {:.1} ms; lost {}, duplicated {}",
        out.get("provisioning_p50_ms"),
        out.get("provisioning_p99_ms"),
        out.get("provisioning_max_ms"),
        out.get("completed_p50_ms"),
        out.get("completed_p99_ms"),
        out.get("completed_max_ms"),
        verdict.lost,
        verdict.duplicated
    ));
    out.verdict = Some(verdict);
    Ok(())
}

/// Scenario 6, one run: 4,096 requests of 2 s on 1,024 threads (as scenario 3), then the
/// worker idle with 1,024 threads and with 8, for the memory each thread costs.
fn many_in_flight_run(ctx: &Ctx, label: &str, profile: bool) -> RunOut {
    const THREADS: u32 = 1024;
    const FEW: u32 = 8;
    let mut out = batch_run(
        ctx,
        label,
        4096,
        6,
        2.0,
        THREADS,
        Duration::from_secs(60),
        true,
        profile,
    );
    let many = startup_run(ctx, &format!("{label}-idle-{THREADS}"), THREADS);
    let few = startup_run(ctx, &format!("{label}-idle-{FEW}"), FEW);
    let (many_mib, few_mib) = (many.get("idle_rss_mib"), few.get("idle_rss_mib"));
    out.set("idle_rss_many_threads_mib", many_mib);
    out.set("idle_rss_few_threads_mib", few_mib);
    out.set(
        "rss_per_thread_kib",
        (many_mib - few_mib) * 1024.0 / f64::from(THREADS - FEW),
    );
    out.set(
        "idle_vm_size_many_threads_mib",
        many.get("idle_vm_size_mib"),
    );
    let errors: Vec<String> = [out.error.take(), many.error, few.error]
        .into_iter()
        .flatten()
        .collect();
    out.error = (!errors.is_empty()).then(|| errors.join("; "));
    ctx.say(&format!(
        "{label}: makespan {:.2} s (efficiency {:.3}); peak RSS {:.1} MiB; idle peak RSS {many_mib:.1} MiB with {THREADS} threads, {few_mib:.1} MiB with {FEW}: {:.1} KiB per thread",
        out.get("window_s"),
        out.get("efficiency"),
        out.get("peak_rss_mib"),
        out.get("rss_per_thread_kib")
    ));
    out
}

/// Scenario 5, one run: start-up time on an empty topic.
fn startup_run(ctx: &Ctx, label: &str, threads: u32) -> RunOut {
    let mut out = RunOut::default();
    let dir = match ctx.run_dir(label) {
        Ok(d) => d,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let r = (|| -> Res<()> {
        let db = dir.join("bench.db");
        db::create_db(&db, &ctx.schema, &[], false)?;
        let topic = format!("bench-{label}-{}", ctx.nonce);
        ctx.broker.create_topic(&topic, 6)?;
        // INFO here (and only here): the measurement is the time to a log line.
        let mut worker = WorkerProc::spawn(&WorkerSpec {
            bin: &ctx.o.worker,
            dir: &dir,
            db: &db,
            bootstrap: &ctx.broker.addr(),
            topic: &topic,
            group: &topic,
            delay_s: 0.0,
            threads,
            log_level: "INFO",
            extra_env: &ctx.o.worker_env,
        })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let (started, assigned) = loop {
            let (s, a) = {
                let l = worker.log.lock().unwrap_or_else(|p| p.into_inner());
                (l.consumer_started, l.partitions_assigned)
            };
            if let (Some(s), Some(a)) = (s, a) {
                break (s, a);
            }
            worker.check_alive()?;
            if Instant::now() >= deadline {
                return Err(format!(
                    "the worker did not print both \"Kafka consumer started successfully\" and \"Partitions assigned\" within 30 s; its last lines:\n{}",
                    worker.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let snap = worker.snapshot();
        let status = worker.stop(Duration::from_secs(40))?;
        if !status.success() {
            return Err(format!("the worker exited with {status} after SIGTERM"));
        }
        out.set(
            "startup_ms",
            (started - worker.spawned).as_secs_f64() * 1000.0,
        );
        out.set(
            "to_partitions_assigned_ms",
            (assigned - worker.spawned).as_secs_f64() * 1000.0,
        );
        out.set("idle_rss_mib", mib(snap.vm_hwm_kib));
        out.set("idle_vm_size_mib", mib(snap.vm_size_kib));
        ctx.say(&format!(
            "{label}: consumer started after {:.1} ms, partitions assigned after {:.0} ms, idle peak RSS {:.1} MiB",
            out.get("startup_ms"),
            out.get("to_partitions_assigned_ms"),
            out.get("idle_rss_mib")
        ));
        Ok(())
    })();
    if let Err(e) = r {
        ctx.say(&format!("{label}: {e}"));
        out.error = Some(e);
    }
    ctx.done_with(&dir, out.error.is_none());
    out
}

fn git_rev(root: &Path) -> String {
    let run = |args: &[&str]| {
        let mut c = Command::new("git");
        c.arg("-C").arg(root).args(args);
        procs::run_with_deadline(c, "git", Duration::from_secs(10)).unwrap_or_default()
    };
    let rev = run(&["rev-parse", "--short", "HEAD"]).trim().to_string();
    let dirty = !run(&["status", "--porcelain", "--untracked-files=no"])
        .trim()
        .is_empty();
    if dirty { format!("{rev}+dirty") } else { rev }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{cores} cores, {model}, {:.0} GiB",
        mem_kib as f64 / 1048576.0
    )
}

fn stats_json(s: &ScenarioOut) -> Map<String, Value> {
    let mut keys: Vec<&String> = s.runs.iter().flat_map(|r| r.metrics.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut m = Map::new();
    for k in keys {
        let (med, lo, hi) = s.metric(k);
        m.insert(
            k.clone(),
            json!({"median": round(med, 4), "min": round(lo, 4), "max": round(hi, 4)}),
        );
    }
    m
}

fn fmt3(v: (f64, f64, f64), digits: usize) -> (String, String) {
    let f = |x: f64| {
        if x.is_finite() {
            format!("{x:.digits$}")
        } else {
            "-".into()
        }
    };
    (f(v.0), format!("{} – {}", f(v.1), f(v.2)))
}

fn print_table(results: &[ScenarioOut], extra: &Map<String, Value>, runs: usize) {
    // (scenario, label, metric key, digits, bar)
    let rows: &[(u32, &str, &str, usize, &str)] = &[
        (1, "throughput (requests/s)", "requests_per_s", 0, ""),
        (
            1,
            "worker CPU per request (µs)",
            "worker_cpu_us_per_request",
            0,
            "",
        ),
        (1, "worker CPU in use (cores)", "worker_cpu_cores", 2, ""),
        (
            1,
            "broker CPU per request (µs)",
            "broker_cpu_us_per_request",
            0,
            "",
        ),
        (
            1,
            "disk writes per request (KiB)",
            "disk_kib_per_request",
            1,
            "",
        ),
        (1, "peak RSS (MiB)", "peak_rss_mib", 1, "≤ 16"),
        (
            1,
            "with timing triggers: throughput (requests/s)",
            "triggers_requests_per_s",
            0,
            "",
        ),
        (
            1,
            "with timing triggers: longest pause (ms)",
            "triggers_max_completion_gap_ms",
            0,
            "",
        ),
        (
            1,
            "with timing triggers: transitions per transaction",
            "triggers_transitions_per_transaction",
            2,
            "",
        ),
        (
            1,
            "with timing triggers: peak RSS (MiB)",
            "triggers_peak_rss_mib",
            1,
            "≤ 16",
        ),
        (
            2,
            "SQLite limit: single-row UPDATE tx/s",
            "limit_tx_per_s",
            0,
            "",
        ),
        (
            2,
            "limit in requests/s (2 tx per request)",
            "limit_requests_per_s",
            0,
            "",
        ),
        (2, "throughput / limit", "ratio", 3, "≥ 0.60"),
        (
            7,
            "PLAINTEXT: throughput (requests/s)",
            "plain_requests_per_s",
            0,
            "",
        ),
        (
            7,
            "SSL: throughput (requests/s)",
            "tls_requests_per_s",
            0,
            "",
        ),
        (
            7,
            "throughput SSL / PLAINTEXT",
            "tls_throughput_ratio",
            3,
            "",
        ),
        (
            7,
            "PLAINTEXT: worker CPU per request (µs)",
            "plain_worker_cpu_us_per_request",
            0,
            "",
        ),
        (
            7,
            "SSL: worker CPU per request (µs)",
            "tls_worker_cpu_us_per_request",
            0,
            "",
        ),
        (
            7,
            "worker CPU per request SSL / PLAINTEXT",
            "tls_cpu_ratio",
            3,
            "",
        ),
        (
            2,
            "worker CPU per request (µs, scenario 1)",
            "worker_cpu_us_per_request",
            0,
            "",
        ),
        (
            2,
            "worker CPU per request ÷ one UPDATE transaction",
            "cpu_per_request_in_updates",
            2,
            "≤ 2.5",
        ),
        (
            2,
            "(the UPDATE with the timing triggers, tx/s)",
            "limit_with_triggers_tx_per_s",
            0,
            "",
        ),
        (
            2,
            "(worker's own SQL on one thread, requests/s)",
            "worker_sql_requests_per_s",
            0,
            "",
        ),
        (
            2,
            "(throughput / worker's own SQL on one thread)",
            "ratio_to_worker_sql",
            3,
            "",
        ),
        (
            2,
            "(µs per single-row UPDATE transaction)",
            "update_us",
            1,
            "",
        ),
        (
            2,
            "(µs per claim: BEGIN IMMEDIATE, UPDATE, COMMIT)",
            "worker_sql_claim_us",
            1,
            "",
        ),
        (
            2,
            "(µs per completion: UPDATE with kubeconfig)",
            "worker_sql_complete_us",
            1,
            "",
        ),
        (3, "makespan (s, ideal 5.0)", "window_s", 2, ""),
        (
            3,
            "efficiency (ideal / makespan)",
            "efficiency",
            3,
            "≥ 0.95",
        ),
        (3, "peak RSS (MiB)", "peak_rss_mib", 1, "≤ 16"),
        (
            3,
            "transitions per transaction",
            "transitions_per_transaction",
            2,
            "",
        ),
        (
            4,
            "produce → provisioning p50 (ms)",
            "provisioning_p50_ms",
            1,
            "",
        ),
        (
            4,
            "produce → provisioning p99 (ms)",
            "provisioning_p99_ms",
            1,
            "≤ 30",
        ),
        (
            4,
            "produce → provisioning max (ms)",
            "provisioning_max_ms",
            1,
            "",
        ),
        (4, "produce → completed p50 (ms)", "completed_p50_ms", 1, ""),
        (4, "produce → completed p99 (ms)", "completed_p99_ms", 1, ""),
        (4, "produce → completed max (ms)", "completed_max_ms", 1, ""),
        (
            5,
            "start → \"Kafka consumer started\" (ms)",
            "startup_ms",
            1,
            "",
        ),
        (
            5,
            "(start → \"Partitions assigned\", group join, ms)",
            "to_partitions_assigned_ms",
            0,
            "",
        ),
        (5, "idle peak RSS (MiB)", "idle_rss_mib", 1, ""),
        (6, "makespan (s, ideal 8.0)", "window_s", 2, ""),
        (
            6,
            "efficiency (ideal / makespan)",
            "efficiency",
            3,
            "≥ 0.90",
        ),
        (6, "peak RSS (MiB)", "peak_rss_mib", 1, ""),
        (
            6,
            "worker CPU per request (µs)",
            "worker_cpu_us_per_request",
            0,
            "",
        ),
        (
            6,
            "idle peak RSS, 1,024 threads (MiB)",
            "idle_rss_many_threads_mib",
            1,
            "",
        ),
        (
            6,
            "idle peak RSS, 8 threads (MiB)",
            "idle_rss_few_threads_mib",
            1,
            "",
        ),
        (
            6,
            "memory per worker thread (KiB of RSS)",
            "rss_per_thread_kib",
            1,
            "",
        ),
        (
            6,
            "idle virtual size, 1,024 threads (MiB)",
            "idle_vm_size_many_threads_mib",
            0,
            "",
        ),
        (8, "throughput (requests/s)", "requests_per_s", 0, ""),
        (
            8,
            "worker CPU per request (µs)",
            "worker_cpu_us_per_request",
            0,
            "",
        ),
        (
            8,
            "server CPU per request (µs)",
            "server_cpu_us_per_request",
            0,
            "",
        ),
        (8, "peak RSS (MiB)", "peak_rss_mib", 1, ""),
        (
            8,
            "pgbench single-row UPDATE, 8 clients (tx/s)",
            "limit_tx_per_s",
            0,
            "",
        ),
        (
            8,
            "limit in requests/s (2 tx per request)",
            "limit_requests_per_s",
            0,
            "",
        ),
        (8, "throughput / limit", "ratio", 3, "≥ 0.60"),
        (
            8,
            "(pgbench with 1 client, tx/s)",
            "limit_one_client_tx_per_s",
            0,
            "",
        ),
    ];
    println!();
    println!(
        "{:<3} {:<48} {:>10}  {:<21} bar",
        "#", "metric", "median", "min – max"
    );
    println!("{}", "-".repeat(92));
    for s in results {
        for (id, label, key, digits, bar) in rows {
            if *id != s.id || !s.runs.iter().any(|r| r.metrics.contains_key(*key)) {
                continue;
            }
            let (med, range) = fmt3(s.metric(key), *digits);
            println!("{id:<3} {label:<48} {med:>10}  {range:<21} {bar}");
        }
        if s.id == 5
            && let Some(size) = extra.get("binary_mb").and_then(Value::as_f64)
        {
            println!(
                "{:<3} {:<48} {:>10}  {:<21} ≤ 6",
                5,
                "binary size (MB, stripped)",
                format!("{size:.2}"),
                ""
            );
        }
        if s.id == 8 {
            println!(
                "{:<3} {:<48} {:>10}  {:<21} 0",
                s.id,
                "lost (all runs)",
                s.sum_verdict(|v| v.lost),
                ""
            );
        }
        if s.id <= 4 || s.id == 6 {
            let lost = s.sum_verdict(|v| v.lost);
            let dup = s.sum_verdict(|v| v.duplicated);
            let re = s.sum_verdict(|v| v.reclaimed);
            println!(
                "{:<3} {:<48} {:>10}  {:<21} 0/0/0",
                s.id,
                "lost / duplicated / reclaimed (all runs)",
                format!("{lost}/{dup}/{re}"),
                ""
            );
        }
    }
    println!("{}", "-".repeat(92));
    println!("median of {runs} run(s) each; min – max across runs");
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("provision-bench: {e}");
            std::process::exit(2);
        }
    };
    match run(o) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("provision-bench: error: {e}");
            std::process::exit(2);
        }
    }
}

fn run(o: Opts) -> Res<i32> {
    let t0 = Instant::now();
    if !o.worker.is_file() {
        return Err(format!(
            "no worker binary at {}; build it with `cargo build --release` (scripts/bench.sh does)",
            o.worker.display()
        ));
    }
    let tansu = match &o.tansu {
        Some(t) => t.clone(),
        None => {
            let mut c = Command::new(o.root.join("scripts/kafka-up.sh"));
            c.arg("--path");
            PathBuf::from(
                procs::run_with_deadline(
                    c,
                    "scripts/kafka-up.sh --path",
                    Duration::from_secs(300),
                )?
                .lines()
                .next()
                .unwrap_or("")
                .trim(),
            )
        }
    };
    let schema_path = o.root.join("sql/schema.sql");
    let schema = std::fs::read_to_string(&schema_path)
        .map_err(|e| format!("read {}: {e}", schema_path.display()))?;
    // A directory of its own per invocation: two benches at once (several people work in
    // this tree) must never share a database path.
    let work = o.root.join("bench/target/runs").join(format!(
        "{}-{}",
        utc_text(SystemTime::now())[..19].replace([' ', ':'], "-"),
        std::process::id()
    ));
    std::fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;
    let broker = Broker::start(&tansu, &work)?;
    let nonce = format!("{:x}", (wall_now() * 1000.0) as u64 % 0xffffff);
    let ctx = Ctx {
        o,
        broker,
        schema,
        nonce,
        work,
        t0,
    };
    let machine = machine();
    let git = git_rev(&ctx.o.root);
    ctx.say(&format!(
        "tansu on {} (pid {}); worker {}; machine: {machine}; git {git}",
        ctx.broker.addr(),
        ctx.broker.pid(),
        ctx.o.worker.display()
    ));
    let runs = ctx.o.runs;
    let want = |s: u32| ctx.o.scenarios.contains(&s);
    let n1 = ctx.o.requests;
    let (d1, d3) = if ctx.o.quick {
        (Duration::from_secs(600), Duration::from_secs(120))
    } else {
        (Duration::from_secs(150), Duration::from_secs(60))
    };

    let mut results: Vec<ScenarioOut> = Vec::new();
    let mut s1 = ScenarioOut {
        id: 1,
        name: "throughput",
        params: json!({"requests": n1, "partitions": 6, "delay_s": 0, "worker_threads": 8}),
        runs: vec![],
    };
    let mut s2 = ScenarioOut {
        id: 2,
        name: "sqlite_limit",
        params: json!({"statement": "UPDATE provision_requests SET status=?, updated_at=? WHERE request_id=?",
            "journal_mode": "WAL", "synchronous": "NORMAL", "busy_timeout_ms": 5000,
            "wal_fdatasync_every_ms": 1000, "tx_per_request": 2, "seconds": 2.0}),
        runs: vec![],
    };
    // Scenarios 1 and 2 alternate, so each ratio compares a throughput with the limit
    // measured right after it on the same disk.
    for i in 0..runs {
        if want(1) {
            let label = format!("s1-run{}", i + 1);
            ctx.say(&format!("scenario 1 (throughput), run {}/{runs}", i + 1));
            // The project's schema first (the headline number), then the bench's schema with
            // the timing triggers (transition counts: lost / duplicated; completion gaps).
            let plain = batch_run(
                &ctx,
                &format!("{label}-plain"),
                n1,
                6,
                0.0,
                8,
                d1,
                false,
                i == 0,
            );
            let timed = batch_run(
                &ctx,
                &format!("{label}-triggers"),
                n1,
                6,
                0.0,
                8,
                d1,
                true,
                false,
            );
            s1.runs.push(merge_s1(plain, timed));
        }
        if want(2) {
            let label = format!("s2-run{}", i + 1);
            ctx.say(&format!("scenario 2 (SQLite limit), run {}/{runs}", i + 1));
            let s1_run = s1.runs.get(i);
            let kube = ctx.o.kubeconfig_bytes.unwrap_or_else(|| {
                s1_run
                    .map(|r| r.get("triggers_kubeconfig_bytes"))
                    .filter(|v| v.is_finite())
                    .unwrap_or(692.0) as usize
            });
            let figures = s1_run
                .map(|r| S1Figures {
                    requests_per_s: r.get("requests_per_s"),
                    worker_cpu_us_per_request: r.get("worker_cpu_us_per_request"),
                })
                .filter(|f| f.requests_per_s.is_finite());
            s2.runs.push(limit_run(&ctx, &label, kube, figures));
        }
    }
    if want(1) {
        results.push(s1);
    }
    if want(2) {
        results.push(s2);
    }
    if want(3) {
        let mut s3 = ScenarioOut {
            id: 3,
            name: "concurrency",
            params: json!({"requests": 640, "partitions": 6, "delay_s": 0.5, "worker_threads": 64, "ideal_s": 5.0}),
            runs: vec![],
        };
        for i in 0..runs {
            ctx.say(&format!("scenario 3 (concurrency), run {}/{runs}", i + 1));
            s3.runs.push(batch_run(
                &ctx,
                &format!("s3-run{}", i + 1),
                640,
                6,
                0.5,
                64,
                d3,
                true,
                false,
            ));
        }
        results.push(s3);
    }
    if want(4) {
        let mut s4 = ScenarioOut {
            id: 4,
            name: "latency",
            params: json!({"rate_per_s": 100, "seconds": 30, "partitions": 6, "delay_s": 0, "worker_threads": 8,
                "worker_fetch_max_wait_ms": ctx.o.worker_env.iter().find(|(k, _)| k == "KAFKA_FETCH_MAX_WAIT_MS")
                    .map(|(_, v)| v.clone()).unwrap_or_else(|| "worker default".into())}),
            runs: vec![],
        };
        for i in 0..runs {
            ctx.say(&format!("scenario 4 (latency), run {}/{runs}", i + 1));
            s4.runs
                .push(latency_run(&ctx, &format!("s4-run{}", i + 1), 100.0, 30.0));
        }
        results.push(s4);
    }
    let mut extra = Map::new();
    if want(5) {
        let mut s5 = ScenarioOut {
            id: 5,
            name: "footprint",
            params: json!({"worker": ctx.o.worker.display().to_string()}),
            runs: vec![],
        };
        for i in 0..runs {
            ctx.say(&format!("scenario 5 (start-up), run {}/{runs}", i + 1));
            s5.runs
                .push(startup_run(&ctx, &format!("s5-run{}", i + 1), 8));
        }
        let size = std::fs::metadata(&ctx.o.worker)
            .map(|m| m.len())
            .unwrap_or(0);
        extra.insert("binary_bytes".into(), json!(size));
        extra.insert("binary_mb".into(), json!(round(size as f64 / 1e6, 3)));
        if let Ok(out) = Command::new("file").arg("-b").arg(&ctx.o.worker).output() {
            extra.insert(
                "binary_file".into(),
                json!(String::from_utf8_lossy(&out.stdout).trim()),
            );
        }
        for r in &results {
            if r.id == 1 || r.id == 3 {
                let (med, lo, hi) = r.metric("peak_rss_mib");
                extra.insert(
                    format!("peak_rss_mib_scenario{}", r.id),
                    json!({"median": round(med, 2), "min": round(lo, 2), "max": round(hi, 2)}),
                );
            }
        }
        results.push(s5);
    }
    if want(6) {
        let mut s6 = ScenarioOut {
            id: 6,
            name: "many_in_flight",
            params: json!({"requests": 4096, "partitions": 6, "delay_s": 2.0, "worker_threads": 1024, "ideal_s": 8.0,
                "idle_threads_compared": [1024, 8]}),
            runs: vec![],
        };
        for i in 0..runs {
            ctx.say(&format!(
                "scenario 6 (many in flight), run {}/{runs}",
                i + 1
            ));
            // Profiled only when scenario 1 (which is profiled first) is not selected.
            let profile = i == 0 && !want(1);
            s6.runs.push(many_in_flight_run(
                &ctx,
                &format!("s6-run{}", i + 1),
                profile,
            ));
        }
        results.push(s6);
    }

    if want(7) {
        results.push(tls_cost(&ctx, &tansu, runs, n1, d1)?);
    }

    if want(8) {
        let pg = pg::Pg::start(&ctx.o.root)?;
        ctx.say(&pg.describe());
        let mut s8 = ScenarioOut {
            id: 8,
            name: "postgresql",
            params: json!({"requests": n1, "partitions": 6, "delay_s": 0, "worker_threads": 8,
                "database": "PostgreSQL 15, fsync on, synchronous_commit on, TCP without TLS",
                "limit": "pgbench -M prepared -T 5: UPDATE provision_requests SET status, updated_at WHERE request_id (random row), 8 clients (and 1); / 2 per request"}),
            runs: vec![],
        };
        for i in 0..runs {
            ctx.say(&format!("scenario 8 (PostgreSQL), run {}/{runs}", i + 1));
            s8.runs
                .push(pg::run(&ctx, &pg, &format!("s8-run{}", i + 1), n1, 8, d1));
        }
        results.push(s8);
    }

    // One JSON line per scenario, to stdout and to the results file.
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ctx.o.out)
        .map_err(|e| format!("open {}: {e}", ctx.o.out.display()))?;
    let when = utc_text(SystemTime::now());
    println!();
    for s in &results {
        let mut line = Map::new();
        line.insert("scenario".into(), json!(s.id));
        line.insert("name".into(), json!(s.name));
        line.insert("time_utc".into(), json!(when));
        line.insert("git".into(), json!(git));
        line.insert("machine".into(), json!(machine));
        line.insert("quick".into(), json!(ctx.o.quick));
        line.insert("runs".into(), json!(s.runs.len()));
        line.insert("params".into(), s.params.clone());
        if !ctx.o.worker_env.is_empty() {
            line.insert(
                "worker_env".into(),
                json!(
                    ctx.o
                        .worker_env
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                ),
            );
        }
        line.insert("metrics".into(), Value::Object(stats_json(s)));
        line.insert(
            "per_run_metrics".into(),
            json!(
                s.runs
                    .iter()
                    .map(|r| r
                        .metrics
                        .iter()
                        .map(|(k, v)| (k.clone(), json!(round(*v, 4))))
                        .collect::<Map<_, _>>())
                    .collect::<Vec<_>>()
            ),
        );
        if s.id == 8 {
            line.insert("lost".into(), json!(s.sum_verdict(|v| v.lost)));
        }
        if s.id <= 4 || s.id == 6 {
            line.insert("lost".into(), json!(s.sum_verdict(|v| v.lost)));
            line.insert("duplicated".into(), json!(s.sum_verdict(|v| v.duplicated)));
            line.insert("reclaimed".into(), json!(s.sum_verdict(|v| v.reclaimed)));
        }
        if s.id == 5 {
            for (k, v) in &extra {
                line.insert(k.clone(), v.clone());
            }
        }
        let infos: Vec<Value> = s
            .runs
            .iter()
            .map(|r| Value::Object(r.info.clone()))
            .collect();
        if infos
            .iter()
            .any(|i| i.as_object().is_some_and(|o| !o.is_empty()))
        {
            line.insert("per_run_info".into(), json!(infos));
        }
        let errors = s.errors();
        line.insert(
            "ok".into(),
            json!(errors.is_empty() && !s.integrity_failed()),
        );
        if !errors.is_empty() {
            line.insert("errors".into(), json!(errors));
        }
        let text = Value::Object(line).to_string();
        println!("{text}");
        writeln!(file, "{text}").map_err(|e| format!("write {}: {e}", ctx.o.out.display()))?;
    }
    print_table(&results, &extra, runs);
    println!(
        "machine: {machine}; git {git}; total bench time {:.0} s; results appended to {}",
        ctx.t0.elapsed().as_secs_f64(),
        ctx.o.out.display()
    );

    // The invocation's directory goes unless a run was kept (failed, or --keep).
    let kept = std::fs::read_dir(&ctx.work)
        .map(|d| d.flatten().any(|e| e.path().is_dir()))
        .unwrap_or(true);
    let work = ctx.work.clone();
    drop(ctx.broker);
    if !kept {
        let _ = std::fs::remove_dir_all(&work);
    }
    let integrity = results.iter().any(ScenarioOut::integrity_failed);
    let errors: Vec<String> = results.iter().flat_map(ScenarioOut::errors).collect();
    if integrity {
        eprintln!("provision-bench: FAILED: a request was lost or processed twice (see above)");
        return Ok(1);
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("provision-bench: error: {e}");
        }
        // The smoke fails only on lost or duplicated requests; a run that could not be
        // measured at all (broker, worker crash) is still an error.
        return Ok(if ctx.o.quick { 1 } else { 2 });
    }
    Ok(0)
}
