//! librdkafka's worst produce→receive time per partition through the fake cluster
//! (`interop/latency_probe.py`), so a scenario can be run with librdkafka and with the
//! worker side by side, and [`Scenario`]: the issue-16 scenarios as timelines both run.
//!
//! ```no_run
//! use kafka_testkit::cluster::Cluster;
//! use kafka_testkit::latency::{LatencyProbe, Scenario};
//!
//! let cluster = Cluster::start(3);
//! cluster.create_topic("probe", 3);
//! let scenario = Scenario::LeaderAway;
//! let probe = LatencyProbe::start(&cluster, &scenario.bootstrap(&cluster), "probe", 3);
//! cluster.schedule(scenario.steps("probe")).wait();
//! let result = probe.finish();
//! println!("{}", result.summary());
//! ```
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{Cluster, Step};
use crate::{interop_script, parse_json};

/// librdkafka's `fetch.wait.max.ms` for the probe: the worker's `KAFKA_FETCH_MAX_WAIT_MS`
/// default, so both hold an empty fetch alike (tansu holds one for about half of it; at
/// librdkafka's own 500 ms every partition's worst time would be ~250 ms, faults or not).
pub const FETCH_MAX_WAIT_MS: &str = "40";
/// How long the probe may take to join its group and see every partition flow.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it waits, after stopping, for every probe it sent.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A running librdkafka probe: a consumer in its own group on the cluster, a producer
/// writing to tansu directly. Dropping it without [`LatencyProbe::finish`] kills it.
pub struct LatencyProbe {
    child: Child,
    /// The probe's stdin: "stop" ends the measured window. `None` once sent.
    stdin: Option<ChildStdin>,
    /// JSON lines the probe prints, read by `reader`.
    lines: Receiver<Value>,
    reader: Option<JoinHandle<()>>,
}

/// The measured window's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Latencies {
    pub partitions: BTreeMap<i32, PartitionLatency>,
    /// How long the measured window lasted (ready to the end of the drain).
    pub window: Duration,
}

/// One partition's probes in the measured window.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionLatency {
    /// The worst time from send to receive (a probe never received: until the drain ended).
    pub worst: Duration,
    /// When the worst probe was sent, from the start of the window.
    pub worst_at: Duration,
    pub produced: u64,
    pub received: u64,
    pub missing: u64,
}

/// The scenarios of issue 16 on a 3-broker cluster with a 3-partition topic (partition p
/// led by broker p % 3 + 1, broker 1 the coordinator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Nothing happens for 10 s: the reference row.
    Healthy,
    /// Broker 2 (leads p1) unreachable for 20 s; p1's leadership moves to broker 3 after 3 s.
    LeaderAway,
    /// Broker 2 unreachable for 20 s, no leader move: p1 waits for its broker.
    LeaderAwayNoMove,
    /// Broker 1 (coordinator, leads p0) unreachable for 25 s, the bootstrap list naming only
    /// it; the coordinator and p0 move to broker 2 after 2 s.
    CoordinatorAway,
    /// Broker 3 (leads p2) answers every request 8 s late, for 30 s.
    SlowBroker,
    /// Broker 3 throttles every answer by 2 s (and mutes the connection that long), for 30 s.
    ThrottledBroker,
}

impl LatencyProbe {
    /// Starts the probe on `topic` (with `partitions` partitions) of `cluster`, its consumer
    /// bootstrapping from `bootstrap`, and returns once every partition flows (the measured
    /// window starts then). Panics if that takes over a minute.
    pub fn start(cluster: &Cluster, bootstrap: &str, topic: &str, partitions: i32) -> LatencyProbe {
        LatencyProbe::start_with(cluster, bootstrap, topic, partitions, &[])
    }

    /// [`LatencyProbe::start`] with extra librdkafka settings for the consumer (after the
    /// probe's own, `fetch.wait.max.ms` [`FETCH_MAX_WAIT_MS`], so they can override it).
    pub fn start_with(
        cluster: &Cluster,
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> LatencyProbe {
        let script = interop_script("latency_probe.py");
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let group = format!("latency-probe-{topic}");
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .args(["--bootstrap", bootstrap])
            .args(["--produce-bootstrap", &cluster.tansu().addr()])
            .args(["--topic", topic, "--group", &group])
            .args(["--partitions", &partitions.to_string()])
            .args(["--ready-timeout", &READY_TIMEOUT.as_secs().to_string()])
            .args(["--drain-timeout", &DRAIN_TIMEOUT.as_secs().to_string()]);
        cmd.args(["-X", &format!("fetch.wait.max.ms={FETCH_MAX_WAIT_MS}")]);
        for (key, value) in config {
            cmd.arg("-X").arg(format!("{key}={value}"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("could not run {python} {}: {e}", script.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        let reader = thread::Builder::new()
            .name("latency-probe-stdout".to_owned())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(parse_json(&line)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the probe's reader thread");
        let mut probe = LatencyProbe {
            child,
            stdin,
            lines,
            reader: Some(reader),
        };
        probe.expect_event("ready", READY_TIMEOUT + Duration::from_secs(10));
        probe
    }

    /// Ends the measured window, waits for the probes in flight, and returns the result.
    pub fn finish(mut self) -> Latencies {
        if let Some(mut stdin) = self.stdin.take() {
            // A probe that already exited shows up below, without a result.
            let _ = stdin.write_all(b"stop\n");
        }
        let result = self.expect_event("result", DRAIN_TIMEOUT + Duration::from_secs(30));
        let status = self.child.wait().expect("wait for latency_probe.py");
        assert!(status.success(), "latency_probe.py exited with {status}");
        let partitions = result["partitions"]
            .as_object()
            .expect("result.partitions is an object")
            .iter()
            .map(|(p, v)| {
                let ms = |field: &str| {
                    v[field]
                        .as_f64()
                        .unwrap_or_else(|| panic!("{field} is not a number in {v}"))
                };
                let count = |field: &str| {
                    v[field]
                        .as_u64()
                        .unwrap_or_else(|| panic!("{field} is not a count in {v}"))
                };
                let latency = PartitionLatency {
                    worst: Duration::from_secs_f64(ms("worst_ms") / 1000.0),
                    worst_at: Duration::from_secs_f64(ms("worst_at_s")),
                    produced: count("produced"),
                    received: count("received"),
                    missing: count("missing"),
                };
                (p.parse().expect("a partition number"), latency)
            })
            .collect();
        let window = result["window_s"].as_f64().expect("window_s is a number");
        Latencies {
            partitions,
            window: Duration::from_secs_f64(window),
        }
    }

    /// Waits for the probe's next line with `"event": event`; panics if the probe exits or
    /// `deadline` passes first.
    fn expect_event(&mut self, event: &str, deadline: Duration) -> Value {
        let start = Instant::now();
        loop {
            let left = deadline.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["event"] == event => return v,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("latency_probe.py printed no {event:?} within {deadline:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait for latency_probe.py");
                    panic!(
                        "latency_probe.py exited ({status}) before {event:?}; its stderr is above \
                         (if confluent_kafka is missing: python3 -m pip install -r \
                         tests/requirements.txt)"
                    )
                }
            }
        }
    }
}

impl Drop for LatencyProbe {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Latencies {
    /// "p0 0.02 s / p1 3.81 s / p2 0.02 s", the worst time per partition.
    pub fn summary(&self) -> String {
        self.partitions
            .iter()
            .map(|(p, l)| format!("p{p} {:.2} s", l.worst.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// The worst time of partition `p`; panics if the probe did not report it.
    pub fn worst(&self, p: i32) -> Duration {
        self.partition(p).worst
    }

    pub fn partition(&self, p: i32) -> &PartitionLatency {
        self.partitions
            .get(&p)
            .unwrap_or_else(|| panic!("no result for partition {p}: {self:?}"))
    }
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Healthy,
        Scenario::LeaderAway,
        Scenario::LeaderAwayNoMove,
        Scenario::CoordinatorAway,
        Scenario::SlowBroker,
        Scenario::ThrottledBroker,
    ];

    /// A short name for tables and command lines.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Healthy => "healthy",
            Scenario::LeaderAway => "leader-away",
            Scenario::LeaderAwayNoMove => "leader-away-no-move",
            Scenario::CoordinatorAway => "coordinator-away",
            Scenario::SlowBroker => "slow-broker",
            Scenario::ThrottledBroker => "throttled-broker",
        }
    }

    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// What happens to the cluster, in words (for tables).
    pub fn description(self) -> &'static str {
        match self {
            Scenario::Healthy => "nothing happens (10 s)",
            Scenario::LeaderAway => {
                "broker 2 (leads p1) unreachable for 20 s; p1's leadership moves to broker 3 after 3 s"
            }
            Scenario::LeaderAwayNoMove => {
                "broker 2 (leads p1) unreachable for 20 s, no leader move"
            }
            Scenario::CoordinatorAway => {
                "broker 1 (coordinator, leads p0) unreachable for 25 s, bootstrap list naming only it; \
                 coordinator and p0 move to broker 2 after 2 s"
            }
            Scenario::SlowBroker => "broker 3 (leads p2) answers every request after 8 s, for 30 s",
            Scenario::ThrottledBroker => {
                "broker 3 (leads p2) throttles every answer by 2 s (connection muted 2 s), for 30 s"
            }
        }
    }

    /// The bootstrap list clients use: broker 1 alone for the coordinator scenario, every
    /// broker otherwise.
    pub fn bootstrap(self, cluster: &Cluster) -> String {
        match self {
            Scenario::CoordinatorAway => cluster.addr(1),
            _ => cluster.bootstrap(),
        }
    }

    /// The timeline, for [`Cluster::schedule`]; it ends with the broker restored.
    pub fn steps(self, topic: &str) -> Vec<(Duration, Step)> {
        let s = Duration::from_secs;
        match self {
            Scenario::Healthy => vec![(s(10), Step::Restore(1))],
            Scenario::LeaderAway => vec![
                (s(0), Step::Cut(2)),
                (s(3), Step::MoveLeader(topic.to_owned(), 1, 3)),
                (s(20), Step::Restore(2)),
            ],
            Scenario::LeaderAwayNoMove => vec![(s(0), Step::Cut(2)), (s(20), Step::Restore(2))],
            Scenario::CoordinatorAway => vec![
                (s(0), Step::Cut(1)),
                (s(2), Step::MoveCoordinator(2)),
                (s(2), Step::MoveLeader(topic.to_owned(), 0, 2)),
                (s(25), Step::Restore(1)),
            ],
            Scenario::SlowBroker => vec![(s(0), Step::Delay(3, s(8))), (s(30), Step::Restore(3))],
            Scenario::ThrottledBroker => {
                vec![(s(0), Step::Throttle(3, s(2))), (s(30), Step::Restore(3))]
            }
        }
    }
}
