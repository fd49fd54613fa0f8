//! The running worker: the poller thread, the worker pool, and what connects them.
//!
//! ```text
//! poller ──jobs (bounded)──► worker 1..N ──► SQLite
//!   ▲                            │
//!   └────────done(partition, offset)
//! ```
//! One direction for work, one for acknowledgements. `run` opens the database and Kafka,
//! starts both sides, and waits; shutdown is passed in, so tests bring their own.
pub mod dead_letter;
mod poller;
pub mod tracker;
mod workers;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blocking_kafka::{
    Assignor, BackoffSettings, ClientIdentity, Consumer, ConsumerSettings, KafkaError, Password,
    Producer, ProducerSettings, RecordLimits, SaslSettings, Security, SecurityError, StartFrom,
    TlsSettings, TopicState,
};
use crossbeam_channel::Receiver;

use crate::config::{
    AssignmentStrategy, Config, Database, OffsetReset, PasswordSource, SaslMechanism,
};
use crate::metrics::{Metrics, MetricsServer};
use crate::provision::Provisioner;
use crate::store::{PostgresOptions, Store, StoreError};
use poller::{Poller, PollerSettings};
use workers::{Accepting, WorkerPool};

/// Why the worker stopped with an error.
#[derive(Debug)]
pub enum RunError {
    Database(StoreError),
    /// A sync of the database failed: commits may be lost, so the worker stops without
    /// committing the offsets the sync was to cover (exit code 1; `Restart=on-failure`
    /// restarts it, and it recovers from what is on disk).
    Durability(StoreError),
    /// A worker's database step failed with a fatal storage fault (a failed fsync of
    /// SQLite's own, say; the error in words): stopped as after a failed sync.
    Storage(String),
    Kafka(KafkaError),
    Thread(std::io::Error),
    /// The poller thread panicked: a bug. The worker stops (exit code 1) with nothing more
    /// committed.
    PollerPanicked,
    /// The metrics listener could not bind `METRICS_ADDR`.
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Database(e) => write!(f, "database: {e}"),
            RunError::Durability(e) => write!(f, "database sync failed: {e}"),
            RunError::Storage(e) => write!(f, "database storage failed: {e}"),
            // A TLS or SASL failure is its own sentence, e.g. "authentication failed for user
            // alice with SCRAM-SHA-512: ...", which operators and scripts look for as it is.
            RunError::Kafka(e) if e.is_security() => write!(f, "{e}"),
            RunError::Kafka(e) => write!(f, "kafka: {e}"),
            RunError::Thread(e) => write!(f, "cannot start a thread: {e}"),
            RunError::PollerPanicked => write!(
                f,
                "the poller thread panicked (a bug: please report it with the log above); \
                 stopped without committing anything more, so a restart redoes the unfinished \
                 work"
            ),
            RunError::Metrics { addr, source } => write!(
                f,
                "cannot serve metrics on METRICS_ADDR={addr}: {source} (pick a free port, or leave METRICS_ADDR empty to turn the listener off)"
            ),
        }
    }
}

impl std::error::Error for RunError {}

/// The most the last commit before a revocation or an exit (and leaving the group) waits
/// for the coordinator, when the request timeout is longer: a shutdown has the operator's
/// deadline, and a commit that does not land in time only means the next owner redoes that
/// work (nothing is lost).
const LAST_COMMIT_WAIT: Duration = Duration::from_secs(10);

/// Runs the worker until `shutdown` receives (or its sender is dropped), then drains,
/// commits, leaves the group and returns. `security` comes from [`security`], built once at
/// start (a TLS file that cannot be used is a configuration error, found before this).
pub fn run(
    config: &Config,
    security: Arc<Security>,
    shutdown: Receiver<()>,
) -> Result<(), RunError> {
    // The URL with its password masked.
    log::info!("Connecting to database: {}", config.database_url);
    let Some(store) = open_store(config, &shutdown)? else {
        log::info!("Shutdown requested during start-up; exiting");
        return Ok(());
    };
    let store = Arc::new(store);
    log::info!("Database connection established");
    report_stuck_rows(&store, config);
    let metrics = Arc::new(Metrics::new(
        &config.topic,
        &config.group_id,
        config.session_timeout,
    ));
    // Started before Kafka so that /healthz explains a slow start; dropped (stopped and
    // joined) when `run` returns, whichever way.
    let _metrics_server = match config.metrics_addr {
        Some(addr) => {
            let store = store.clone();
            // Any query proves the file opens and reads; a row that cannot exist keeps it cheap.
            let db = Box::new(move || store.get("").map(drop).map_err(|e| e.to_string()));
            Some(
                MetricsServer::start(addr, metrics.clone(), db)
                    .map_err(|source| RunError::Metrics { addr, source })?,
            )
        }
        None => None,
    };

    log::info!(
        "Connecting to Kafka: {}, topic: {}",
        config.bootstrap_servers.join(","),
        config.topic
    );
    let settings = consumer_settings(config, &security);
    // The dead-letter producer shares the consumer's settings, its `Security` included, so
    // TLS and SASL apply to its connections too.
    let mut dead_letters = config
        .dlq_topic
        .as_ref()
        .map(|topic| Producer::new(ProducerSettings::for_topic(&settings, topic)));
    let mut consumer = Consumer::new(settings);
    let deadline = Instant::now() + config.startup_timeout;
    let cancelled = |wait: Duration| shutdown.recv_timeout(wait).is_ok();
    if !consumer
        .connect(deadline, &cancelled)
        .map_err(RunError::Kafka)?
    {
        log::info!("Shutdown requested during start-up; exiting");
        return Ok(());
    }
    match consumer.topic_state() {
        Ok(TopicState::Missing) => log::warn!(
            "Topic {} does not exist yet; the worker will wait for it (create it with 3 partitions, or set KAFKA_TOPIC)",
            config.topic
        ),
        Ok(TopicState::Partitions(p)) => {
            log::debug!("Topic {} has {} partition(s)", config.topic, p.len());
        }
        Err(e) => log::warn!("Could not read metadata of topic {}: {e}", config.topic),
    }
    if let Some(producer) = dead_letters.as_mut() {
        check_dead_letter_topic(producer, &config.bootstrap_servers.join(","));
    }
    // From here on the dead-letter producer runs on a thread of its own: a slow or absent
    // broker holds up its dead letters, not the poller.
    let dead_letters = match dead_letters {
        Some(p) => Some(p.spawn("kafka-dead-letters").map_err(RunError::Thread)?),
        None => None,
    };
    log::info!("Kafka consumer started successfully");

    // Twice the workers: enough that a worker finishing a job finds the next one waiting,
    // small enough that a revocation drops little already-fetched work.
    let (job_tx, job_rx) = crossbeam_channel::bounded(config.worker_threads * 2);
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let (abort_tx, abort_rx) = crossbeam_channel::bounded::<()>(0);
    let accepting = Arc::new(Accepting::default());
    let provisioner = Arc::new(Provisioner {
        store: store.clone(),
        delay: config.provision_delay,
        abort: abort_rx,
        metrics: metrics.clone(),
    });
    let pool = WorkerPool::start(
        config.worker_threads,
        provisioner,
        job_rx,
        done_tx,
        accepting.clone(),
    )
    .map_err(RunError::Thread)?;

    let poller = Poller {
        settings: PollerSettings {
            topic: config.topic.clone(),
            group_id: config.group_id.clone(),
            dlq_topic: config.dlq_topic.clone(),
            dlq_max_bytes: config.dlq_max_bytes,
            commit_interval: config.commit_interval,
            shutdown_timeout: config.shutdown_timeout,
            rebalance_timeout: config.rebalance_timeout,
            last_commit_wait: config.request_timeout.min(LAST_COMMIT_WAIT),
        },
        consumer,
        store,
        jobs: job_tx,
        done: done_rx,
        shutdown,
        abort: Some(abort_tx),
        accepting,
        metrics,
        dead_letters,
    };
    log::info!("\u{1f680} Worker started - waiting for provision requests...");
    let handle = std::thread::Builder::new()
        .name("poller".into())
        .spawn(move || poller.run())
        .map_err(RunError::Thread)?;
    let result = match handle.join() {
        Ok(r) => r,
        // The panic message is already on stderr; the offsets the poller held uncommitted
        // stay so, and the exit code tells the supervisor to restart the worker.
        Err(_) => Err(RunError::PollerPanicked),
    };
    // The poller dropped the only job sender when it returned: workers finish and exit.
    pool.join();
    log::info!("Worker stopped");
    result
}

/// Says at start when the dead-letter topic is missing: invalid messages would then wait,
/// holding their partition's offset, until it exists (nothing is lost, but the partition
/// stops committing).
fn check_dead_letter_topic(producer: &mut Producer, servers: &str) {
    let topic = producer.topic().to_owned();
    match producer.topic_state() {
        Ok(TopicState::Missing) => log::warn!(
            "Dead-letter topic {topic} does not exist; an invalid message will wait for it, holding its partition's committed offset. Create it, e.g. `kafka-topics.sh --bootstrap-server {servers} --create --topic {topic} --partitions 1`, or set KAFKA_DLQ_TOPIC to an existing topic (empty turns dead-lettering off)"
        ),
        Ok(TopicState::Partitions(p)) => {
            log::debug!("Dead-letter topic {topic} has {} partition(s)", p.len());
        }
        Err(e) => log::warn!("Could not read metadata of dead-letter topic {topic}: {e}"),
    }
}

/// Opens the database, waiting out a lock held by another process (the backend in the middle
/// of a long write) instead of failing: a busy database delays the worker, never stops it.
/// A PostgreSQL server that is down, restarting or full is waited for as long as an
/// unreachable broker, `KAFKA_STARTUP_TIMEOUT_SECONDS`; then the worker exits 1 saying why
/// (a wrong host must not leave it waiting forever). `None` when shutdown was requested
/// meanwhile.
fn open_store(config: &Config, shutdown: &Receiver<()>) -> Result<Option<Store>, RunError> {
    let mut backoff = Duration::from_millis(200);
    let deadline = Instant::now() + config.startup_timeout;
    loop {
        let (opened, waits_forever) = match &config.database {
            // Writes all go through the store's one write connection; the pool only serves
            // reads (start-up checks, the health check), so two connections are plenty.
            Database::Sqlite(path) => (Store::open(path, 2), true),
            // Each worker thread writes on a connection of its own; one more for reads.
            Database::Postgres(pg) => (
                Store::open_postgres(
                    pg,
                    PostgresOptions {
                        // Invariant: at most 1024 threads (config), so this fits.
                        pool_size: config.worker_threads as u32 + 1,
                        create_table: true,
                    },
                ),
                false,
            ),
        };
        match opened {
            Ok(store) => return Ok(Some(store)),
            Err(e) if e.is_transient() && (waits_forever || Instant::now() < deadline) => {
                log::warn!("{e}");
                if shutdown.recv_timeout(backoff).is_ok() {
                    return Ok(None);
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(RunError::Database(e)),
        }
    }
}

/// The Kafka layer's security settings from the configuration: the TLS files are read and
/// checked now, so one that cannot be used is reported at start, naming its variable.
pub fn security(config: &Config) -> Result<Arc<Security>, SecurityError> {
    let tls = config.security.tls.as_ref().map(|t| TlsSettings {
        ca_location: t.ca_location.clone(),
        client_identity: t.client_identity.as_ref().map(|c| ClientIdentity {
            certificate_location: c.certificate_location.clone(),
            key_location: c.key_location.clone(),
        }),
        verify_hostname: t.verify_hostname,
    });
    let sasl = config.security.sasl.as_ref().map(|s| SaslSettings {
        mechanism: match s.mechanism {
            SaslMechanism::Plain => blocking_kafka::SaslMechanism::Plain,
            SaslMechanism::ScramSha256 => blocking_kafka::SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512 => blocking_kafka::SaslMechanism::ScramSha512,
        },
        username: s.username.clone(),
        password: match &s.password_source {
            PasswordSource::Variable => Password::fixed(s.password.expose().to_owned()),
            PasswordSource::File(path) => {
                Password::from_file(path.clone(), s.password.expose().to_owned())
            }
        },
    });
    let security = Security::new(tls, sasl)?;
    if security.skips_hostname_verification() {
        log::warn!(
            "KAFKA_SSL_ENDPOINT_IDENTIFICATION=none: broker certificates are checked against the trusted CAs but not against the brokers' host names, so any holder of a certificate from those CAs can pose as the broker; use this only for testing"
        );
    }
    // (`Config::from_env` reads `.env` in the working directory.)
    for warning in crate::exposure::warnings(config, std::path::Path::new(".env")) {
        log::warn!("{warning}");
    }
    Ok(Arc::new(security))
}

/// Checks the database's settings that name files (PostgreSQL's `sslrootcert`, `sslcert`,
/// `sslkey`): read now, so that one that cannot be used is a bad configuration (exit 2), as
/// Kafka's TLS files are. Nothing to check for SQLite.
pub fn database_settings(config: &Config) -> Result<(), StoreError> {
    match &config.database {
        Database::Sqlite(_) => Ok(()),
        Database::Postgres(pg) => Store::check_postgres_settings(pg),
    }
}

pub fn consumer_settings(config: &Config, security: &Arc<Security>) -> ConsumerSettings {
    ConsumerSettings {
        bootstrap: config.bootstrap_servers.clone(),
        client_id: config.client_id.clone(),
        group_id: config.group_id.clone(),
        group_instance_id: config.group_instance_id.clone(),
        assignors: config
            .assignment_strategy
            .iter()
            .map(|s| match s {
                AssignmentStrategy::CooperativeSticky => Assignor::CooperativeSticky,
                AssignmentStrategy::Range => Assignor::Range,
            })
            .collect(),
        topic: config.topic.clone(),
        session_timeout: config.session_timeout,
        rebalance_timeout: config.rebalance_timeout,
        heartbeat_interval: config.heartbeat_interval,
        fetch_max_wait: config.fetch_max_wait,
        request_timeout: config.request_timeout,
        connect_timeout: config.connect_timeout,
        retry_backoff: BackoffSettings {
            initial: config.retry_backoff.0,
            max: config.retry_backoff.1,
        },
        reconnect_backoff: BackoffSettings {
            initial: config.reconnect_backoff.0,
            max: config.reconnect_backoff.1,
        },
        start_from: match config.auto_offset_reset {
            OffsetReset::Earliest => StartFrom::Earliest,
            OffsetReset::Latest => StartFrom::Latest,
        },
        security: security.clone(),
        // A value longer than any request is held only as far as its dead letter can take.
        record_limits: RecordLimits {
            whole: crate::request::MAX_MESSAGE_BYTES,
            prefix: config.dlq_max_bytes,
        },
    }
}

/// Rows `provisioning` for longer than a request can take: a crash left them, and their
/// messages will be redelivered (their offsets were never committed). Reported at start.
fn report_stuck_rows(store: &Store, config: &Config) {
    let older_than = config.provision_delay + config.shutdown_timeout;
    match store.stale_provisioning(older_than) {
        Ok(rows) if rows.is_empty() => {}
        Ok(rows) => {
            let ids: Vec<&str> = rows
                .iter()
                .take(10)
                .map(|r| r.request_id.as_str())
                .collect();
            log::warn!(
                "{} request(s) have been provisioning for more than {} s (e.g. {}); a crash interrupted them and Kafka will redeliver their messages",
                rows.len(),
                crate::provision::format_seconds(older_than),
                ids.join(", ")
            );
        }
        Err(e) => log::warn!("Could not check for stuck requests: {e}"),
    }
}
