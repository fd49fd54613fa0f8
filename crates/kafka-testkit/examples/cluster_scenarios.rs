//! Runs the issue-16 scenarios with librdkafka through the fake cluster and prints each
//! partition's worst produce→receive time: the librdkafka column of the README's
//! Performance table.
//!
//! ```text
//! TANSU_BIN=... cargo run -p kafka-testkit --example cluster_scenarios -- [--runs N] [SCENARIO..]
//! ```
//! Scenarios: leader-away, leader-away-no-move, coordinator-away, slow-broker,
//! throttled-broker (default: all). With several runs, the median of each partition's worst
//! time is printed after the runs.
use std::time::Duration;

use kafka_testkit::cluster::Cluster;
use kafka_testkit::latency::{LatencyProbe, Scenario};

const TOPIC: &str = "probe";

fn main() {
    let mut runs = 1;
    let mut scenarios = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--runs" {
            runs = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--runs takes a number");
        } else {
            let scenario = Scenario::from_name(&arg).unwrap_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                panic!("unknown scenario {arg:?}; known: {}", names.join(", "))
            });
            scenarios.push(scenario);
        }
    }
    if scenarios.is_empty() {
        scenarios = Scenario::ALL.to_vec();
    }
    for scenario in scenarios {
        let mut worst: Vec<Vec<Duration>> = vec![Vec::new(); 3];
        for run in 1..=runs {
            let result = run_once(scenario);
            let when: Vec<String> = result
                .partitions
                .iter()
                .map(|(p, l)| format!("p{p} at {:.1} s", l.worst_at.as_secs_f64()))
                .collect();
            println!(
                "{} run {run}: {} (worst probes sent: {})",
                scenario.name(),
                result.summary(),
                when.join(", ")
            );
            for (p, l) in &result.partitions {
                assert_eq!(
                    l.missing,
                    0,
                    "{}: partition {p} lost probes",
                    scenario.name()
                );
                worst[*p as usize].push(l.worst);
            }
        }
        let medians: Vec<String> = worst
            .iter_mut()
            .map(|w| {
                w.sort();
                format!("{:.2}", w[w.len() / 2].as_secs_f64())
            })
            .collect();
        println!(
            "| {} | {} s (median of {runs}) |",
            scenario.description(),
            medians.join(" / ")
        );
    }
}

fn run_once(scenario: Scenario) -> kafka_testkit::latency::Latencies {
    let cluster = Cluster::start(3);
    cluster.create_topic(TOPIC, 3);
    let probe = LatencyProbe::start(&cluster, &scenario.bootstrap(&cluster), TOPIC, 3);
    cluster.schedule(scenario.steps(TOPIC)).wait();
    // A few seconds after the restore, so what follows it is measured too.
    std::thread::sleep(Duration::from_secs(3));
    let result = probe.finish();
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
    result
}
