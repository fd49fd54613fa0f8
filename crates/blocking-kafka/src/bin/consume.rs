//! blocking-kafka-consume: joins a consumer group, reads a number of records of one topic,
//! commits them and leaves; one line per record on stdout. A small program on nothing but
//! the library's public API (PLAINTEXT only), for trying the client out and for measuring
//! it from outside: `--report-peak-rss` prints the process's peak resident set at the end
//! (`VmHWM` of /proc/self/status, Linux), which tests/memory.rs holds to its bound.
//!
//! ```text
//! blocking-kafka-consume --bootstrap HOST:PORT --topic TOPIC --group GROUP --count N
//!     [--from earliest|latest] [--whole BYTES] [--prefix BYTES] [--timeout SECONDS]
//!     [--report-peak-rss]
//! ```
//!
//! Each record is a line `partition offset value_len held_len`, where `held_len` is how much
//! of the value the client held (a prefix, for a value above the record limits); records
//! given up undecoded are `partition offset undecoded last=LAST reason=REASON`.
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blocking_kafka::{
    Assignor, BackoffSettings, Consumer, ConsumerSettings, GroupSignal, Partition, RecordLimits,
    Security, StartFrom,
};

/// What the command line asked for.
struct Args {
    bootstrap: String,
    topic: String,
    group: String,
    count: usize,
    from: StartFrom,
    limits: RecordLimits,
    timeout: Duration,
    report_peak_rss: bool,
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("blocking-kafka-consume: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blocking-kafka-consume: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let deadline = Instant::now() + args.timeout;
    let mut consumer = Consumer::new(ConsumerSettings {
        bootstrap: args.bootstrap.split(',').map(str::to_owned).collect(),
        client_id: "blocking-kafka-consume".to_owned(),
        group_id: args.group.clone(),
        group_instance_id: None,
        assignors: Assignor::DEFAULT.to_vec(),
        topic: args.topic.clone(),
        session_timeout: Duration::from_secs(6),
        rebalance_timeout: Duration::from_secs(6),
        heartbeat_interval: Duration::from_millis(500),
        fetch_max_wait: Duration::from_millis(200),
        request_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        retry_backoff: BackoffSettings::RETRY,
        reconnect_backoff: BackoffSettings::RECONNECT,
        start_from: args.from,
        security: Arc::new(Security::plaintext()),
        record_limits: args.limits,
    });
    // Between connection attempts: sleep the backoff, never cancelled.
    let wait = |backoff: Duration| {
        std::thread::sleep(backoff);
        false
    };
    consumer
        .connect(deadline, &wait)
        .map_err(|e| e.to_string())?;
    consumer.join().map_err(|e| e.to_string())?;
    let mut seen = 0;
    while seen < args.count {
        if Instant::now() >= deadline {
            return Err(format!(
                "read {seen} of {} records of {} within {:?}",
                args.count, args.topic, args.timeout
            ));
        }
        match consumer.heartbeat().map_err(|e| e.to_string())? {
            GroupSignal::Rejoin(why) => {
                eprintln!("blocking-kafka-consume: rejoining the group: {why}");
                consumer.revoke();
                consumer.join().map_err(|e| e.to_string())?;
                continue;
            }
            // Nothing of a partition is held between calls here: what was taken away can
            // be let go at once.
            GroupSignal::Changed(change) => consumer.revoked(&change.revoked),
            GroupSignal::Fine | GroupSignal::NotDue => {}
        }
        let messages = consumer.fetch();
        if messages.is_empty() {
            // Nothing waiting: wait for the consumer's threads to report (at most a moment,
            // to look at the deadline and the group again).
            if let Ok(event) = consumer.events().recv_timeout(Duration::from_millis(100)) {
                consumer.handle(event);
            }
            continue;
        }
        for m in &messages {
            match &m.undecoded {
                Some(u) => println!(
                    "{} {} undecoded last={} reason={}",
                    m.partition, m.offset, u.last, u.reason
                ),
                None => println!(
                    "{} {} {} {}",
                    m.partition,
                    m.offset,
                    m.value_len,
                    m.value.as_ref().map_or(0, |v| v.len())
                ),
            }
        }
        seen += messages.len();
        // Each partition's next offset: everything before it was printed.
        let positions: Vec<(Partition, _)> = consumer
            .assigned()
            .into_iter()
            .filter_map(|p| Some((p, consumer.position(p)?)))
            .collect();
        consumer.commit(&positions).map_err(|e| e.to_string())?;
    }
    // Leaving is a courtesy to the rest of the group: its failure changes nothing here.
    if let Err(e) = consumer.leave() {
        eprintln!("blocking-kafka-consume: leaving the group: {e}");
    }
    if args.report_peak_rss {
        println!("peak_rss_kib {}", peak_rss_kib()?);
    }
    Ok(())
}

/// This process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status for --report-peak-rss: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmHWM line in /proc/self/status (is this Linux?)".to_owned())
}

fn parse(mut raw: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut bootstrap = None;
    let mut topic = None;
    let mut group = None;
    let mut count = None;
    let mut from = StartFrom::Earliest;
    let mut limits = RecordLimits::default();
    let mut timeout = Duration::from_secs(120);
    let mut report_peak_rss = false;
    while let Some(flag) = raw.next() {
        if flag == "--report-peak-rss" {
            report_peak_rss = true;
            continue;
        }
        let value = raw.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{what} must be a whole number, not {value:?}"))
        };
        match flag.as_str() {
            "--bootstrap" => bootstrap = Some(value.clone()),
            "--topic" => topic = Some(value.clone()),
            "--group" => group = Some(value.clone()),
            "--count" => count = Some(number("--count")? as usize),
            "--whole" => limits.whole = number("--whole")? as usize,
            "--prefix" => limits.prefix = number("--prefix")? as usize,
            "--timeout" => timeout = Duration::from_secs(number("--timeout")?),
            "--from" => {
                from = match value.as_str() {
                    "earliest" => StartFrom::Earliest,
                    "latest" => StartFrom::Latest,
                    other => return Err(format!("--from takes earliest or latest, not {other}")),
                }
            }
            other => {
                return Err(format!(
                    "unknown argument {other}; use --bootstrap, --topic, --group, --count, --from, --whole, --prefix, --timeout or --report-peak-rss"
                ));
            }
        }
    }
    let missing = |name: &str| format!("{name} is required");
    Ok(Args {
        bootstrap: bootstrap.ok_or_else(|| missing("--bootstrap"))?,
        topic: topic.ok_or_else(|| missing("--topic"))?,
        group: group.ok_or_else(|| missing("--group"))?,
        count: count.ok_or_else(|| missing("--count"))?,
        from,
        limits,
        timeout,
        report_peak_rss,
    })
}
