//! A librdkafka consumer-group member that lives as long as a test wants it to
//! ([`LibrdkafkaMember`], `interop/kafka_tool.py member`): it joins, "processes" what it
//! gets, commits what it processed (synchronously before a partition is revoked), and
//! reports each assignment, revocation and processed message, so a test can check it
//! against our own members in the same group.
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{POLL, b64_decode, interop_script, parse_json, wait_until};

/// What the member reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// Partitions given to it (all of them under an eager assignor, the added ones under a
    /// cooperative one).
    Assigned(Vec<i32>),
    /// Partitions it gave up, after committing what it processed of them.
    Revoked(Vec<i32>),
    /// Partitions it lost (its membership ended without a revocation).
    Lost(Vec<i32>),
    /// A message it processed: partition, offset, value.
    Processed(i32, i64, Vec<u8>),
    /// An error librdkafka reported (`fatal`: the consumer cannot go on).
    Error(String, bool),
    /// It closed its consumer (after `stop`).
    Closed,
}

/// A running `kafka_tool.py member`. Dropping it kills the process.
pub struct LibrdkafkaMember {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: Arc<Mutex<Vec<(Duration, MemberEvent)>>>,
    /// The threads reading its stdout and stderr; joined when it has exited.
    readers: Vec<JoinHandle<()>>,
}

impl LibrdkafkaMember {
    /// Starts a member of `group` reading `topic` at `bootstrap`, with `config` (librdkafka
    /// properties, e.g. `("partition.assignment.strategy", "cooperative-sticky")`) and
    /// `work` spent per message. `name` prefixes its log lines.
    pub fn start(
        name: &str,
        bootstrap: &str,
        group: &str,
        topic: &str,
        config: &[(&str, &str)],
        work: Duration,
    ) -> LibrdkafkaMember {
        let script = interop_script("kafka_tool.py");
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .args(["member", "--bootstrap", bootstrap, "--group", group])
            .args(["--topic", topic, "--work"])
            .arg(work.as_secs_f64().to_string());
        for (k, v) in config {
            cmd.arg("-X").arg(format!("{k}={v}"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not run {python} {}: {e}", script.display()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let started = Instant::now();
        let out = {
            let (events, name) = (Arc::clone(&events), name.to_owned());
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let Some(event) = parse_event(&line) else {
                        eprintln!("[{name}] {line}");
                        continue;
                    };
                    if !matches!(event, MemberEvent::Processed(..)) {
                        eprintln!("[{name}] {event:?}");
                    }
                    lock(&events).push((started.elapsed(), event));
                }
            })
        };
        let err = {
            let name = name.to_owned();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("[{name}] {line}");
                }
            })
        };
        LibrdkafkaMember {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            events,
            readers: vec![out, err],
        }
    }

    /// Everything it reported so far, with when (since it started).
    pub fn events(&self) -> Vec<(Duration, MemberEvent)> {
        lock(&self.events).clone()
    }

    /// The partitions it owns now, as its assignments and revocations say.
    pub fn owned(&self) -> BTreeSet<i32> {
        let mut owned = BTreeSet::new();
        for (_, e) in lock(&self.events).iter() {
            match e {
                MemberEvent::Assigned(p) => owned.extend(p.iter().copied()),
                MemberEvent::Revoked(p) | MemberEvent::Lost(p) => {
                    for x in p {
                        owned.remove(x);
                    }
                }
                _ => {}
            }
        }
        owned
    }

    /// The messages it processed: (partition, offset, value), in order.
    pub fn processed(&self) -> Vec<(i32, i64, Vec<u8>)> {
        lock(&self.events)
            .iter()
            .filter_map(|(_, e)| match e {
                MemberEvent::Processed(p, o, v) => Some((*p, *o, v.clone())),
                _ => None,
            })
            .collect()
    }

    /// Waits until `f` says yes about its events.
    pub fn wait_for(&self, what: &str, deadline: Duration, f: impl Fn(&LibrdkafkaMember) -> bool) {
        wait_until(&format!("{}: {what}", self.name), deadline, || {
            f(self).then_some(())
        });
    }

    /// Tells it to stop (commit, close the consumer: a dynamic member leaves the group)
    /// and waits for it to exit, at most `deadline`. Its events stay readable.
    pub fn stop(&mut self, deadline: Duration) -> ExitStatus {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the member") {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return status;
            }
            assert!(
                started.elapsed() < deadline,
                "{} did not stop within {deadline:?}",
                self.name
            );
            thread::sleep(POLL);
        }
    }

    /// Kills it (SIGKILL): it leaves nothing but its session behind.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LibrdkafkaMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn parse_event(line: &str) -> Option<MemberEvent> {
    if !line.starts_with('{') {
        return None;
    }
    let v = parse_json(line);
    let parts = |v: &Value| -> Vec<i32> {
        v["partitions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_i64)
                    .map(|p| p as i32)
                    .collect()
            })
            .unwrap_or_default()
    };
    Some(match v["event"].as_str()? {
        "assigned" => MemberEvent::Assigned(parts(&v)),
        "revoked" => MemberEvent::Revoked(parts(&v)),
        "lost" => MemberEvent::Lost(parts(&v)),
        "processed" => MemberEvent::Processed(
            v["partition"].as_i64()? as i32,
            v["offset"].as_i64()?,
            v["value"].as_str().map(b64_decode).unwrap_or_default(),
        ),
        "error" => MemberEvent::Error(
            v["error"].as_str().unwrap_or_default().to_owned(),
            v["fatal"].as_bool().unwrap_or(false),
        ),
        "closed" => MemberEvent::Closed,
        _ => return None,
    })
}
