//! The operator commands: `send`, `status`, `check`, `offsets`.
//!
//! Each is a short program on top of the library: `send` plays the backend (insert the
//! `pending` row, publish the message), `status` reads a row, `check` tries every dependency
//! once and says what works, `offsets` shows and moves the group's committed offsets.
//! Results go to stdout, errors to stderr; exit code 0 on success, 1 when something failed,
//! 2 for a bad configuration.
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blocking_kafka::admin::{Admin, GroupDescription, OutsideCommitError};
use blocking_kafka::{
    BatchCompression, Consumer, ConsumerSettings, KafkaError, Offset, OutRecord, Partition,
    ProduceError, Producer, ProducerSettings, Security, StartFrom, TopicState, printable,
};

use crate::cli::{Command, ResetTo};
use crate::config::{Config, Database, OffsetReset, PasswordSource, PostgresConfig};
use crate::pipeline::consumer_settings;
use crate::request::ProvisionRequest;
use crate::store::{PostgresOptions, Store, StoreError};

/// Runs one operator command and returns its exit code. `security` applies to every Kafka
/// connection the command opens.
pub fn run(config: &Config, security: Arc<Security>, command: Command) -> ExitCode {
    // INFO (the default) narrates the worker's progress, e.g. "database ... ready"; for a tool
    // that is noise around its result, which also goes to stdout. Warnings still show, and an
    // explicit DEBUG or TRACE is kept for troubleshooting.
    if config.log_level == log::LevelFilter::Info {
        log::set_max_level(log::LevelFilter::Warn);
    }
    let result = match command {
        Command::Send {
            user,
            gpus,
            hours,
            request_id,
        } => send(config, &security, user, gpus, hours, request_id),
        Command::Status {
            request_id,
            kubeconfig,
        } => status(config, &request_id, kubeconfig),
        Command::Check => return check(config, &security),
        Command::Offsets { reset } => offsets(config, &security, reset),
        Command::Run | Command::Help | Command::Version => {
            eprintln!("provision-worker: {command:?} is not an operator command");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // (It may hold a broker's text: group members' client ids and hosts.)
            eprintln!("provision-worker: {}", printable(&e.to_string()));
            ExitCode::from(1)
        }
    }
}

/// `check` with a configuration that did not load: the first check fails, the others cannot
/// run. Exit code 2, as for any bad configuration.
/// `error` is a `ConfigError` or a TLS file that cannot be used (`SecurityError`).
pub fn check_bad_config(error: &dyn fmt::Display) -> ExitCode {
    println!("FAIL configuration: {error}");
    for name in CHECKS.iter().skip(1) {
        println!("FAIL {name}: not checked (the configuration is invalid)");
    }
    ExitCode::from(2)
}

/// Why a command failed. `Display` says what to do about it.
#[derive(Debug)]
pub enum ToolError {
    Database(StoreError),
    Kafka(KafkaError),
    /// `status` and `offsets` never create the database file.
    NoDatabase {
        path: PathBuf,
    },
    NotFound {
        request_id: String,
        /// The SQLite file, or the PostgreSQL URL with its password masked.
        database: String,
    },
    NoKubeconfig {
        request_id: String,
        status: String,
    },
    /// The row was inserted, publishing failed, and the row was marked failed.
    Publish {
        request_id: String,
        error: ProduceError,
    },
    TopicMissing {
        topic: String,
        /// The variable that names it: `KAFKA_TOPIC` or `KAFKA_DLQ_TOPIC`.
        variable: &'static str,
    },
    GroupActive {
        group: String,
        members: Vec<String>,
    },
}

/// The names of `check`'s lines, in order.
const CHECKS: [&str; 6] = [
    "configuration",
    "database",
    "kafka",
    "topic",
    "dead-letter topic",
    "group coordinator",
];

/// Deadline of each Kafka request the tools make.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn send(
    config: &Config,
    security: &Arc<Security>,
    user: String,
    gpus: u32,
    hours: u32,
    request_id: Option<String>,
) -> Result<(), ToolError> {
    let req = ProvisionRequest {
        request_id: request_id.unwrap_or_else(new_request_id),
        user_id: user,
        gpu_count: gpus,
        duration_hours: hours,
    };
    // Serializing a struct of strings and integers cannot fail.
    let payload = serde_json::to_vec(&req).unwrap_or_default();
    // As the backend does: the row first, so the worker always finds it.
    let store = open(config, true)?;
    store.insert_pending(&req).map_err(ToolError::Database)?;
    let mut producer = Producer::new(ProducerSettings::for_topic(
        &tool_settings(config, security),
        &config.topic,
    ));
    // Keyed by request id, placed as the Java client places keys: a re-sent request lands
    // on the same partition, behind the first, whichever client the backend uses. Stamped
    // with the time of sending, so the end-to-end latency counts from here.
    let record = OutRecord {
        key: Some(bytes::Bytes::from(req.request_id.clone())),
        value: Some(bytes::Bytes::from(payload)),
        headers: Vec::new(),
    };
    let sent = producer.send(&record, BatchCompression::Gzip);
    if let Err(error) = sent {
        // A pending row without a message would wait forever; failed says what happened.
        let reason = format!("could not publish the request to Kafka: {error}");
        if let Err(e) = store.fail(&req.request_id, &reason) {
            log::warn!("could not mark request {} failed: {e}", req.request_id);
        }
        return Err(ToolError::Publish {
            request_id: req.request_id,
            error,
        });
    }
    println!("{}", req.request_id);
    eprintln!(
        "Published request {} to topic {}; follow it with: provision-worker status {}",
        req.request_id, config.topic, req.request_id
    );
    Ok(())
}

fn status(config: &Config, request_id: &str, kubeconfig: bool) -> Result<(), ToolError> {
    let store = open(config, false)?;
    let row = store
        .get(request_id)
        .map_err(ToolError::Database)?
        .ok_or_else(|| ToolError::NotFound {
            request_id: request_id.to_owned(),
            database: match &config.database {
                Database::Sqlite(path) => path.display().to_string(),
                Database::Postgres(_) => config.database_url.clone(),
            },
        })?;
    if kubeconfig {
        let Some(yaml) = row.kubeconfig else {
            return Err(ToolError::NoKubeconfig {
                request_id: row.request_id,
                status: row.status,
            });
        };
        print!("{yaml}");
        if !yaml.ends_with('\n') {
            println!();
        }
        return Ok(());
    }
    let kubeconfig = match &row.kubeconfig {
        Some(k) => format!("present ({} bytes; print it with --kubeconfig)", k.len()),
        None => "-".to_owned(),
    };
    for (name, value) in [
        ("request_id", row.request_id.as_str()),
        ("user_id", &row.user_id),
        ("gpu_count", &row.gpu_count.to_string()),
        ("duration_hours", &row.duration_hours.to_string()),
        ("status", &row.status),
        ("error_message", row.error_message.as_deref().unwrap_or("-")),
        ("created_at", &row.created_at),
        ("updated_at", &row.updated_at),
        ("kubeconfig", &kubeconfig),
    ] {
        println!("{:<15} {value}", format!("{name}:"));
    }
    Ok(())
}

/// Runs every check once, printing `OK` or `FAIL` per line; exit code 0 only if all pass.
fn check(config: &Config, security: &Arc<Security>) -> ExitCode {
    let mut lines: Vec<(&str, Result<String, String>)> = Vec::new();
    lines.push((
        CHECKS[0],
        Ok(format!(
            "DATABASE_URL={}, KAFKA_BOOTSTRAP_SERVERS={}, topic {}, group {}, {}",
            config.database_url,
            config.bootstrap_servers.join(","),
            config.topic,
            config.group_id,
            describe_security(config, security)
        )),
    ));
    lines.push((
        CHECKS[1],
        match &config.database {
            Database::Sqlite(path) => check_database(path),
            Database::Postgres(pg) => check_postgres(pg),
        },
    ));

    let settings = tool_settings(config, security);
    let mut consumer = Consumer::new(settings.clone());
    match consumer.connect(Instant::now(), &|_| false) {
        Ok(_) => {
            let session = match consumer.session_info() {
                Ok(info) => info.to_string(),
                Err(e) => format!("(could not describe the connection: {e})"),
            };
            lines.push((
                CHECKS[2],
                Ok(format!(
                    "a broker answers at {} ({session})",
                    settings.bootstrap.join(",")
                )),
            ));
            lines.push((
                CHECKS[3],
                check_topic(&mut consumer, &config.topic, "KAFKA_TOPIC"),
            ));
            lines.push((
                CHECKS[4],
                match &config.dlq_topic {
                    None => Ok("disabled (KAFKA_DLQ_TOPIC is empty)".to_owned()),
                    // Through the producer, the way the worker's dead letters go.
                    Some(dlq) => check_dead_letter_topic(&settings, dlq),
                },
            ));
            lines.push((CHECKS[5], check_coordinator(&settings)));
        }
        Err(e) => {
            lines.push((CHECKS[2], Err(e.to_string())));
            for name in &CHECKS[3..] {
                lines.push((name, Err("not checked (Kafka is unreachable)".to_owned())));
            }
        }
    }

    // One line per check, whatever a broker put in the text (a coordinator's host name, a
    // group's state, certificate names): escaped.
    let mut all_ok = true;
    for (name, result) in lines {
        match result {
            Ok(detail) => println!("OK   {name}: {}", printable(&detail)),
            Err(reason) => {
                all_ok = false;
                println!("FAIL {name}: {}", printable(&reason));
            }
        }
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn check_database(path: &Path) -> Result<String, String> {
    if path.exists() {
        // The same checks the worker makes at start: WAL, schema, unique key, writable.
        let store = Store::open(path, 1).map_err(|e| e.to_string())?;
        drop(store);
        return Ok(format!(
            "{} opens, is in wal mode, has the provision_requests schema and is writable",
            path.display()
        ));
    }
    // Do not create it here: a check should leave no trace. Prove that the worker could.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let probe = dir.join(format!(".provision-worker-check-{}", std::process::id()));
    match std::fs::File::create_new(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(format!(
                "{} does not exist yet; the worker will create it (directory {} is writable)",
                path.display(),
                dir.display()
            ))
        }
        Err(e) => Err(format!(
            "{} does not exist and cannot be created in {}: {e}; create the directory or point DATABASE_URL elsewhere",
            path.display(),
            dir.display()
        )),
    }
}

/// Connects as the worker does and reports the server, the TLS session, who we are, whether
/// commits are durable, and the table (checked as at the worker's start, never created). A
/// server with `fsync` off fails the check: a crash of its host may lose commits the worker
/// has acknowledged to Kafka.
fn check_postgres(config: &PostgresConfig) -> Result<String, String> {
    let report = Store::postgres_report(config).map_err(|e| e.to_string())?;
    let tls = match &report.tls {
        Some(tls) => format!(
            "{}, {}, certificate checked: {}",
            tls.version, tls.cipher_suite, tls.verified
        ),
        None => "no TLS".to_owned(),
    };
    let server_default = if report.server_synchronous_commit == report.synchronous_commit {
        String::new()
    } else {
        format!(
            "; the server's own default is synchronous_commit={}, so the backend's commits may \
             be lost in a crash, not the worker's",
            report.server_synchronous_commit
        )
    };
    let summary = format!(
        "PostgreSQL {} at {} ({tls}; authenticated as {} with {}); synchronous_commit={} for \
         the worker's sessions{server_default}; fsync={}",
        report.server_version,
        config.addr(),
        report.user,
        report.auth,
        report.synchronous_commit,
        report.fsync
    );
    if report.fsync != "on" {
        return Err(format!(
            "{summary}: with fsync off a crash of the server's host can lose commits the worker \
             has acknowledged to Kafka; turn fsync on"
        ));
    }
    match report.table {
        Ok(table) => Ok(format!("{summary}; {table}")),
        Err(e) => Err(format!("{summary}; {e}")),
    }
}

fn check_topic(
    consumer: &mut Consumer,
    topic: &str,
    variable: &'static str,
) -> Result<String, String> {
    match consumer.topic_state() {
        Ok(TopicState::Partitions(p)) => Ok(format!("{topic} has {} partition(s)", p.len())),
        Ok(TopicState::Missing) => Err(ToolError::TopicMissing {
            topic: topic.to_owned(),
            variable,
        }
        .to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn check_dead_letter_topic(settings: &ConsumerSettings, topic: &str) -> Result<String, String> {
    let mut producer = Producer::new(ProducerSettings::for_topic(settings, topic));
    match producer.topic_state() {
        Ok(TopicState::Partitions(p)) => Ok(format!("{topic} has {} partition(s)", p.len())),
        Ok(TopicState::Missing) => Err(format!(
            "{}; until it exists, an invalid message holds its partition's offset",
            ToolError::TopicMissing {
                topic: topic.to_owned(),
                variable: "KAFKA_DLQ_TOPIC",
            }
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn check_coordinator(settings: &ConsumerSettings) -> Result<String, String> {
    let mut admin = Admin::new(settings);
    let group = admin.describe_group().map_err(|e| e.to_string())?;
    Ok(format!(
        "{} answers for group {} ({})",
        group.coordinator,
        settings.group_id,
        describe_state(&group)
    ))
}

fn offsets(
    config: &Config,
    security: &Arc<Security>,
    reset: Option<ResetTo>,
) -> Result<(), ToolError> {
    let settings = tool_settings(config, security);
    let mut consumer = Consumer::new(settings.clone());
    consumer
        .connect(Instant::now() + REQUEST_TIMEOUT, &|d| {
            std::thread::sleep(d);
            false
        })
        .map_err(ToolError::Kafka)?;
    let partitions = match consumer.topic_state().map_err(ToolError::Kafka)? {
        TopicState::Partitions(p) => p,
        TopicState::Missing => {
            return Err(ToolError::TopicMissing {
                topic: config.topic.clone(),
                variable: "KAFKA_TOPIC",
            });
        }
    };
    let mut admin = Admin::new(&settings);
    let group = admin.describe_group().map_err(ToolError::Kafka)?;
    let ends = consumer
        .log_offsets(&partitions, StartFrom::Latest)
        .map_err(ToolError::Kafka)?;

    if let Some(reset) = reset {
        let refusal = |members: Vec<String>| ToolError::GroupActive {
            group: config.group_id.clone(),
            members,
        };
        if !group.members.is_empty() {
            return Err(refusal(
                group
                    .members
                    .iter()
                    .map(|m| match (m.client_id.as_str(), m.client_host.as_str()) {
                        ("", _) => m.member_id.clone(),
                        (client, "") => client.to_owned(),
                        (client, host) => format!("{client} on {host}"),
                    })
                    .collect(),
            ));
        }
        let starts = consumer
            .log_offsets(&partitions, StartFrom::Earliest)
            .map_err(ToolError::Kafka)?;
        let before = consumer.committed(&partitions).map_err(ToolError::Kafka)?;
        let mut targets = Vec::new();
        for p in &partitions {
            let (start, end) = (offset_of(&starts, *p), offset_of(&ends, *p));
            let to = match reset {
                ResetTo::Earliest => start,
                ResetTo::Latest => end,
                ResetTo::Offset(o) => o.clamp(start, end.max(start)),
            };
            if let ResetTo::Offset(o) = reset
                && o != to
            {
                println!(
                    "partition {p}: offset {o} is outside its log ({start}..{end}); using {to}"
                );
            }
            let from = before
                .get(p)
                .copied()
                .flatten()
                .map_or("-".to_owned(), |o| o.to_string());
            println!("partition {p}: {from} -> {to}");
            targets.push((*p, Offset(to)));
        }
        match admin.commit_outside_group(&targets) {
            Ok(()) => {}
            // Someone joined between the look and the commit.
            Err(OutsideCommitError::GroupActive { .. }) => return Err(refusal(Vec::new())),
            Err(OutsideCommitError::Kafka(e)) => return Err(ToolError::Kafka(e)),
        }
        println!(
            "Moved the committed offsets of group {} on topic {}",
            config.group_id, config.topic
        );
        println!();
    }

    let committed = consumer.committed(&partitions).map_err(ToolError::Kafka)?;
    println!(
        "group {} on topic {} ({})",
        config.group_id,
        config.topic,
        describe_state(&group)
    );
    println!(
        "{:<10} {:>12} {:>12} {:>10}",
        "PARTITION", "COMMITTED", "LOG-END", "LAG"
    );
    let mut uncommitted = false;
    for p in &partitions {
        let end = offset_of(&ends, *p);
        let (c, lag) = match committed.get(p).copied().flatten() {
            Some(c) => (c.0.to_string(), (end - c.0).max(0).to_string()),
            None => {
                uncommitted = true;
                ("-".to_owned(), "-".to_owned())
            }
        };
        println!("{:<10} {c:>12} {end:>12} {lag:>10}", p.0);
    }
    if uncommitted {
        let from = match config.auto_offset_reset {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        };
        println!(
            "-: nothing committed; the group starts there at the {from} offset (KAFKA_AUTO_OFFSET_RESET)"
        );
    }
    Ok(())
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolError::Database(e) => write!(f, "{e}"),
            ToolError::Kafka(e) => write!(f, "{e}"),
            ToolError::NoDatabase { path } => write!(
                f,
                "database {} does not exist; check DATABASE_URL (the worker creates the file when it starts)",
                path.display()
            ),
            ToolError::NotFound {
                request_id,
                database,
            } => write!(
                f,
                "no request {request_id:?} in {database}; check the id, or DATABASE_URL if the backend writes elsewhere"
            ),
            ToolError::NoKubeconfig { request_id, status } => write!(
                f,
                "request {request_id} has no kubeconfig (status {status}); one is stored when it completes"
            ),
            ToolError::Publish { request_id, error } => write!(
                f,
                "request {request_id} was stored but not published, and is now marked failed: {error}"
            ),
            ToolError::TopicMissing { topic, variable } => write!(
                f,
                "topic {topic} does not exist; create it (e.g. `kafka-topics.sh --create --topic {topic}`) or set {variable}"
            ),
            ToolError::GroupActive { group, members } => {
                write!(
                    f,
                    "refusing to move the offsets of consumer group {group}: "
                )?;
                if members.is_empty() {
                    write!(f, "it has active members")?;
                } else {
                    write!(
                        f,
                        "it has {} active member(s) ({})",
                        members.len(),
                        members.join(", ")
                    )?;
                }
                write!(
                    f,
                    "; stop every worker of the group first (a worker that was killed stays a member until its session times out)"
                )
            }
        }
    }
}

impl std::error::Error for ToolError {}

/// The worker's consumer settings, with the tools' own request deadline.
fn tool_settings(config: &Config, security: &Arc<Security>) -> ConsumerSettings {
    ConsumerSettings {
        request_timeout: REQUEST_TIMEOUT,
        ..consumer_settings(config, security)
    }
}

/// "security SASL_SSL (SCRAM-SHA-512 as alice, password from file /run/...; CAs from
/// /etc/...: CN=... (expires ...); client certificate /etc/...: CN=... (expires ...; names
/// ...))": what is configured, and which CA and client certificate the files hold (as new
/// connections use them), never a secret.
fn describe_security(config: &Config, security: &Security) -> String {
    let s = &config.security;
    let mut parts = Vec::new();
    if let Some(sasl) = &s.sasl {
        let password = match &sasl.password_source {
            PasswordSource::Variable => "password set".to_owned(),
            PasswordSource::File(path) => format!("password from file {}", path.display()),
        };
        parts.push(format!(
            "{} as {}, {password}",
            sasl.mechanism.as_str(),
            sasl.username
        ));
        if s.sends_password_in_clear() {
            parts.push("password sent in clear: KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT=true".to_owned());
        }
    }
    if let Some(tls) = &s.tls {
        let files = security.tls_files();
        let held = |what: Option<&String>| what.map(|d| format!(": {d}")).unwrap_or_default();
        parts.push(match &tls.ca_location {
            Some(ca) => format!(
                "CAs from {}{}",
                ca.display(),
                held(files.as_ref().and_then(|f| f.trusted.as_ref()))
            ),
            None => "built-in CA roots".to_owned(),
        });
        if let Some(id) = &tls.client_identity {
            parts.push(format!(
                "client certificate {}{}",
                id.certificate_location.display(),
                held(files.as_ref().and_then(|f| f.client_certificate.as_ref()))
            ));
        }
        if !tls.verify_hostname {
            parts.push("host names not verified".to_owned());
        }
    }
    if parts.is_empty() {
        format!("security {}", s.protocol.as_str())
    } else {
        format!("security {} ({})", s.protocol.as_str(), parts.join("; "))
    }
}

/// Opens the database for one command. Unless `create`, a SQLite file must be there and a
/// PostgreSQL table too: reading a status must not create either.
fn open(config: &Config, create: bool) -> Result<Store, ToolError> {
    match &config.database {
        Database::Sqlite(path) => {
            if !create && !path.exists() {
                return Err(ToolError::NoDatabase {
                    path: path.to_owned(),
                });
            }
            Store::open(path, 1)
        }
        Database::Postgres(pg) => Store::open_postgres(
            pg,
            PostgresOptions {
                pool_size: 1,
                create_table: create,
            },
        ),
    }
    .map_err(ToolError::Database)
}

/// "Stable, 2 members: worker on /10.0.0.5, ..." or "Empty, no members".
fn describe_state(group: &GroupDescription) -> String {
    let state = if group.state.is_empty() {
        "unknown state"
    } else {
        &group.state
    };
    // The state is the coordinator's text.
    let state = printable(state);
    if group.members.is_empty() {
        format!("{state}, no members")
    } else {
        format!("{state}, {} member(s)", group.members.len())
    }
}

fn offset_of(offsets: &std::collections::HashMap<Partition, Offset>, p: Partition) -> i64 {
    offsets.get(&p).map_or(0, |o| o.0)
}

/// A random (version 4) UUID, the form the backend uses for request ids.
fn new_request_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = new_request_id();
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('4'), "{id}");
        assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn refusal_names_the_members_and_what_to_do() {
        let e = ToolError::GroupActive {
            group: "g".into(),
            members: vec!["w1 on /10.0.0.1".into()],
        };
        let text = e.to_string();
        assert!(
            text.contains("1 active member(s) (w1 on /10.0.0.1)"),
            "{text}"
        );
        assert!(text.contains("stop every worker"), "{text}");
        assert!(!text.ends_with('.'));
    }
}
