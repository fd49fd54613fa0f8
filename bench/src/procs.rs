//! The processes the bench drives (tansu, the worker, perf) and what /proc tells about them.
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::util::Res;

/// Sends a signal by name with kill(1): the bench has no libc binding, and a child's pid is
/// ours until we reap it, so it cannot have been recycled.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs a short command to completion within `timeout`; its output (stdout then stderr) on
/// success, a message naming `what` otherwise.
pub fn run_with_deadline(mut cmd: Command, what: &str, timeout: Duration) -> Res<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let readers: Vec<JoinHandle<String>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut r| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    })
    .collect();
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: did not finish within {timeout:?}"));
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("{what}: cannot wait for it: {e}")),
        }
    };
    let out: String = readers
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect();
    if status.success() {
        Ok(out)
    } else {
        Err(format!("{what} failed ({status}): {}", out.trim()))
    }
}

/// Clock ticks per second for /proc CPU times.
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The fields after `comm` in a /proc stat line (field 3, the state, is index 0).
fn stat_fields(text: &str) -> Option<Vec<&str>> {
    let close = text.rfind(')')?;
    Some(text[close + 1..].split_whitespace().collect())
}

/// utime + stime of a process or task, in seconds.
fn cpu_seconds_of(stat_path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    let f = stat_fields(&text)?;
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clk_tck())
}

pub fn process_cpu_seconds(pid: u32) -> f64 {
    cpu_seconds_of(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(f64::NAN)
}

pub fn self_cpu_seconds() -> f64 {
    cpu_seconds_of(Path::new("/proc/self/stat")).unwrap_or(f64::NAN)
}

/// Thread names with their number removed: "worker-7" → "worker-*", so a pool shows as one.
pub fn thread_group(name: &str) -> String {
    let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if trimmed.len() < name.len() {
        format!("{trimmed}*")
    } else {
        name.to_string()
    }
}

/// What /proc says about a process at one moment.
#[derive(Clone, Debug, Default)]
pub struct ProcSnap {
    /// utime + stime of the whole process (live and exited threads).
    pub cpu_s: f64,
    /// CPU seconds per live thread group (see [`thread_group`]).
    pub threads: BTreeMap<String, f64>,
    pub voluntary_cs: u64,
    pub involuntary_cs: u64,
    pub vm_hwm_kib: u64,
    pub vm_rss_kib: u64,
    /// Virtual size: thread stacks count here in full, in RSS only as far as they are used.
    pub vm_size_kib: u64,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    /// From /proc/PID/io: read and write system calls, bytes sent to the block layer.
    pub syscr: u64,
    pub syscw: u64,
    pub write_bytes: u64,
}

fn status_value(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn snapshot(pid: u32) -> ProcSnap {
    let mut snap = ProcSnap {
        cpu_s: process_cpu_seconds(pid),
        ..ProcSnap::default()
    };
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        snap.vm_hwm_kib = status_value(&status, "VmHWM:");
        snap.vm_rss_kib = status_value(&status, "VmRSS:");
        snap.vm_size_kib = status_value(&status, "VmSize:");
        snap.rss_anon_kib = status_value(&status, "RssAnon:");
        snap.rss_file_kib = status_value(&status, "RssFile:");
    }
    if let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
        snap.syscr = status_value(&io, "syscr:");
        snap.syscw = status_value(&io, "syscw:");
        snap.write_bytes = status_value(&io, "write_bytes:");
    }
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let dir = task.path();
            let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let cpu = cpu_seconds_of(&dir.join("stat")).unwrap_or(0.0);
            *snap.threads.entry(thread_group(name.trim())).or_insert(0.0) += cpu;
            if let Ok(st) = std::fs::read_to_string(dir.join("status")) {
                snap.voluntary_cs += status_value(&st, "voluntary_ctxt_switches:");
                snap.involuntary_cs += status_value(&st, "nonvoluntary_ctxt_switches:");
            }
        }
    }
    snap
}

/// A free TCP port on 127.0.0.1 (bound and released; tansu binds it right after).
pub fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("find a free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("find a free port: {e}"))
}

/// Our own tansu broker (memory storage) on a free port; stopped on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
    tansu: PathBuf,
    pub log: PathBuf,
}

impl Broker {
    pub fn start(tansu: &Path, dir: &Path) -> Res<Broker> {
        Broker::start_advertising(tansu, dir, None)
    }

    /// Like `start`; with `advertised`, metadata names 127.0.0.1:`advertised` instead of the
    /// broker's own port (scenario 6 puts its TLS front there).
    pub fn start_advertising(tansu: &Path, dir: &Path, advertised: Option<u16>) -> Res<Broker> {
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised_url = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
        let log = dir.join("tansu.log");
        let out = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("create {}: {e}", log.display()))?;
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised_url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start tansu ({}): {e}", tansu.display()))?;
        let mut broker = Broker {
            child,
            port,
            tansu: tansu.to_owned(),
            log,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return Ok(broker);
            }
            if let Ok(Some(status)) = broker.child.try_wait() {
                return Err(format!(
                    "tansu exited during start-up ({status}); see {}",
                    broker.log.display()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "tansu did not accept connections on {addr} within 30 s; see {}",
                    broker.log.display()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn create_topic(&self, name: &str, partitions: u32) -> Res<()> {
        let mut cmd = Command::new(&self.tansu);
        cmd.args([
            "topic",
            "create",
            name,
            "--partitions",
            &partitions.to_string(),
        ])
        .args(["--broker", &format!("tcp://{}", self.addr())]);
        run_with_deadline(
            cmd,
            &format!("tansu topic create {name}"),
            Duration::from_secs(30),
        )
        .map(drop)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the worker printed that the bench cares about.
#[derive(Default)]
pub struct WorkerLog {
    pub consumer_started: Option<Instant>,
    pub partitions_assigned: Option<Instant>,
    pub tail: VecDeque<String>,
    pub lines: u64,
}

impl WorkerLog {
    pub fn tail_text(&self) -> String {
        if self.tail.is_empty() {
            "(the worker printed nothing)".into()
        } else {
            self.tail.iter().cloned().collect::<Vec<_>>().join("\n")
        }
    }
}

/// How to run the worker for one measurement.
pub struct WorkerSpec<'a> {
    pub bin: &'a Path,
    pub dir: &'a Path,
    pub db: &'a Path,
    pub bootstrap: &'a str,
    pub topic: &'a str,
    pub group: &'a str,
    pub delay_s: f64,
    pub threads: u32,
    pub log_level: &'a str,
    pub extra_env: &'a [(String, String)],
}

/// The release worker as a child process, with its output read by two threads.
pub struct WorkerProc {
    child: Child,
    pub pid: u32,
    pub spawned: Instant,
    pub log: Arc<Mutex<WorkerLog>>,
    exited: Option<ExitStatus>,
}

impl WorkerProc {
    pub fn spawn(spec: &WorkerSpec) -> Res<WorkerProc> {
        let mut cmd = Command::new(spec.bin);
        // A clean environment, and a directory without a `.env`, so nothing of the caller's
        // configuration leaks in.
        cmd.env_clear()
            .current_dir(spec.dir)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", format!("sqlite:///{}", spec.db.display()))
            .env("KAFKA_BOOTSTRAP_SERVERS", spec.bootstrap)
            .env("KAFKA_TOPIC", spec.topic)
            .env("KAFKA_GROUP_ID", spec.group)
            .env("MOCK_PROVISION_DELAY_SECONDS", spec.delay_s.to_string())
            .env("WORKER_THREADS", spec.threads.to_string())
            .env("KAFKA_DLQ_TOPIC", "")
            .env("KAFKA_SESSION_TIMEOUT_MS", "6000")
            .env("LOG_LEVEL", spec.log_level);
        for (k, v) in spec.extra_env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start the worker ({}): {e}", spec.bin.display()))?;
        let log = Arc::new(Mutex::new(WorkerLog::default()));
        let outs: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for out in outs.into_iter().flatten() {
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let now = Instant::now();
                    let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                    if l.consumer_started.is_none()
                        && line.contains("Kafka consumer started successfully")
                    {
                        l.consumer_started = Some(now);
                    }
                    if l.partitions_assigned.is_none() && line.contains("Partitions assigned") {
                        l.partitions_assigned = Some(now);
                    }
                    l.lines += 1;
                    l.tail.push_back(line);
                    if l.tail.len() > 30 {
                        l.tail.pop_front();
                    }
                }
            });
        }
        Ok(WorkerProc {
            pid: child.id(),
            child,
            spawned,
            log,
            exited: None,
        })
    }

    pub fn log_tail(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tail_text()
    }

    /// An error if the worker has exited (it never should on its own).
    pub fn check_alive(&mut self) -> Res<()> {
        if self.exited.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exited = Some(status);
        }
        match self.exited {
            None => Ok(()),
            Some(status) => Err(format!(
                "the worker exited on its own ({status}); its last lines:\n{}",
                self.log_tail()
            )),
        }
    }

    pub fn snapshot(&self) -> ProcSnap {
        snapshot(self.pid)
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit; SIGKILL and an error otherwise.
    pub fn stop(&mut self, timeout: Duration) -> Res<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        signal(self.pid, "TERM");
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exited = Some(status);
                    return Ok(status);
                }
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    self.exited = self.child.wait().ok();
                    return Err(format!(
                        "the worker did not exit within {timeout:?} of SIGTERM (killed); its last lines:\n{}",
                        self.log_tail()
                    ));
                }
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("wait for the worker: {e}")),
            }
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}

/// `perf record` attached to a process; stopped (SIGINT, so it writes its file) by `finish`.
pub struct PerfRecord {
    child: Child,
    pub out: PathBuf,
}

impl PerfRecord {
    pub fn attach(pid: u32, out: &Path, call_graph: &str) -> Res<PerfRecord> {
        let mut cmd = Command::new("perf");
        cmd.args(["record", "-q", "-e", "cpu-clock", "-F", "1999"]);
        if !call_graph.is_empty() {
            cmd.args(["--call-graph", call_graph]);
        }
        let child = cmd
            .args(["-p", &pid.to_string(), "-o"])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start perf record: {e}"))?;
        Ok(PerfRecord {
            child,
            out: out.to_owned(),
        })
    }

    pub fn finish(mut self) -> Res<()> {
        signal(self.child.id(), "INT");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err("perf record did not stop within 60 s of SIGINT".into());
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("wait for perf: {e}")),
            }
        }
    }
}

/// A sampling view of where the worker's threads spend wall time: every `period`, each
/// thread's current system call (from /proc/PID/task/TID/syscall) or "running" (user space).
/// Costs about one file read per thread per sample, so it is only on with --sample-threads.
pub struct ThreadSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<BTreeMap<String, BTreeMap<String, u64>>>,
}

fn syscall_name(nr: u64) -> String {
    let name = match nr {
        0 => "read",
        1 => "write",
        3 => "close",
        7 => "poll",
        8 => "lseek",
        17 => "pread64",
        18 => "pwrite64",
        19 => "readv",
        20 => "writev",
        23 => "select",
        24 => "sched_yield",
        35 => "nanosleep",
        44 => "sendto",
        45 => "recvfrom",
        46 => "sendmsg",
        47 => "recvmsg",
        72 => "fcntl",
        74 => "fsync",
        75 => "fdatasync",
        202 => "futex",
        228 => "clock_gettime",
        230 => "clock_nanosleep",
        232 => "epoll_wait",
        257 => "openat",
        270 => "pselect6",
        271 => "ppoll",
        281 => "epoll_pwait",
        _ => return format!("syscall {nr}"),
    };
    name.to_string()
}

impl ThreadSampler {
    pub fn start(pid: u32, period: Duration) -> ThreadSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            // (thread group, state) -> samples; for futex waits the state is the word, and
            // `waiters` remembers which threads ever waited on each word.
            let mut raw: BTreeMap<(String, String), u64> = BTreeMap::new();
            let mut waiters: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
                    for task in tasks.flatten() {
                        let dir = task.path();
                        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
                        let Ok(sc) = std::fs::read_to_string(dir.join("syscall")) else {
                            continue;
                        };
                        let mut fields = sc.split_whitespace();
                        let first = fields.next().unwrap_or("");
                        let what = match first.parse::<u64>() {
                            Ok(202) => {
                                let word = format!("futex {}", fields.next().unwrap_or("?"));
                                waiters
                                    .entry(word.clone())
                                    .or_default()
                                    .insert(task.file_name().to_string_lossy().into_owned());
                                word
                            }
                            Ok(nr) => syscall_name(nr),
                            Err(_) => first.to_string(), // "running"
                        };
                        *raw.entry((thread_group(name.trim()), what)).or_insert(0) += 1;
                    }
                }
                next += period;
                crate::util::sleep_until(next);
            }
            // A futex word waited on by several threads is a contended lock (or a condition
            // many wait on); a word only one thread waits on is that thread parking (e.g.
            // crossbeam's channel receivers park on their own word).
            let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
            for ((group, what), c) in raw {
                let state = match waiters.get(&what) {
                    Some(tids) if tids.len() > 1 => {
                        format!("futex (shared word, {} threads)", tids.len())
                    }
                    Some(_) => "futex (own word: parked)".to_string(),
                    None => what,
                };
                *counts.entry(group).or_default().entry(state).or_insert(0) += c;
            }
            counts
        });
        ThreadSampler { stop, handle }
    }

    /// Per thread group, per state: the number of samples.
    pub fn finish(self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}
