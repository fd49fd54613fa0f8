//! Configuration from the environment and `.env`: defaults, validation; `DATABASE_URL` is
//! parsed in `database.rs`.
//!
//! Every variable is read and validated here, once, into a typed [`Config`], so nothing
//! downstream parses a string or re-checks a range. The variable names and their defaults
//! are a contract inherited from the Python worker; [`VARIABLES`] is the single table that
//! both the loader and `--help` read, so the documented defaults cannot drift from the real
//! ones.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

mod database;

pub use database::{Database, DatabasePassword, MASK, PostgresConfig, mask_password};

/// The validated settings of one worker process.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `DATABASE_URL` as given (trimmed), its password masked ([`mask_password`]): for the
    /// log line "Connecting to database: <url>" and `check`. The URL itself is never kept.
    pub database_url: String,
    /// The SQLite file or PostgreSQL server `DATABASE_URL` names (with
    /// `DATABASE_PASSWORD_FILE`).
    pub database: Database,
    /// `host:port` entries, each with a port (`:9092` added where none was given).
    pub bootstrap_servers: Vec<String>,
    pub topic: String,
    pub group_id: String,
    /// `KAFKA_GROUP_INSTANCE_ID`: static membership (KIP-345) when set; `None` when empty.
    pub group_instance_id: Option<String>,
    /// `KAFKA_PARTITION_ASSIGNMENT_STRATEGY`, in order of preference; never empty, no
    /// strategy twice.
    pub assignment_strategy: Vec<AssignmentStrategy>,
    pub provision_delay: Duration,
    pub worker_threads: usize,
    pub shutdown_timeout: Duration,
    pub auto_offset_reset: OffsetReset,
    /// `None` when `KAFKA_DLQ_TOPIC` is set to the empty string.
    pub dlq_topic: Option<String>,
    pub log_level: log::LevelFilter,
    pub startup_timeout: Duration,
    pub session_timeout: Duration,
    /// Always shorter than `session_timeout`.
    pub heartbeat_interval: Duration,
    pub rebalance_timeout: Duration,
    pub commit_interval: Duration,
    pub fetch_max_wait: Duration,
    /// Deadline of every Kafka request (`KAFKA_REQUEST_TIMEOUT_MS`).
    pub request_timeout: Duration,
    /// Deadline of a TCP connect and TLS handshake (`KAFKA_SOCKET_CONNECTION_SETUP_TIMEOUT_MS`).
    pub connect_timeout: Duration,
    /// `KAFKA_RETRY_BACKOFF_MS` → `KAFKA_RETRY_BACKOFF_MAX_MS`; the maximum is never below the first.
    pub retry_backoff: (Duration, Duration),
    /// `KAFKA_RECONNECT_BACKOFF_MS` → `KAFKA_RECONNECT_BACKOFF_MAX_MS`; likewise.
    pub reconnect_backoff: (Duration, Duration),
    pub client_id: String,
    /// `None` when `METRICS_ADDR` is empty or unset.
    pub metrics_addr: Option<SocketAddr>,
    /// How every Kafka connection is secured (TLS, SASL): `KAFKA_SECURITY_PROTOCOL` and the
    /// `KAFKA_SASL_*` and `KAFKA_SSL_*` variables, checked against each other.
    pub security: SecurityConfig,
    /// The largest dead letter we produce (`KAFKA_DLQ_MAX_BYTES`); a larger original is cut.
    pub dlq_max_bytes: usize,
}

/// `KAFKA_SECURITY_PROTOCOL`: librdkafka's `security.protocol` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

/// `KAFKA_SASL_MECHANISM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

/// A value that must never be shown: `Debug` prints `<redacted>`, and there is no `Display`.
/// Wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Where the SASL password came from, for `check` ("set" or "from file"), never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// `KAFKA_SASL_PASSWORD`.
    Variable,
    /// `KAFKA_SASL_PASSWORD_FILE`, read once at start.
    File(PathBuf),
}

/// The validated security settings. Invariant: `sasl` is `Some` exactly when the protocol
/// is `SASL_PLAINTEXT` or `SASL_SSL`, and `tls` exactly when it is `SSL` or `SASL_SSL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityConfig {
    pub protocol: SecurityProtocol,
    pub sasl: Option<SaslConfig>,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslConfig {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
    pub password_source: PasswordSource,
    /// `KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT=true`: the operator accepts PLAIN over
    /// `SASL_PLAINTEXT`, which sends the password in clear (refused otherwise).
    pub plain_cleartext_allowed: bool,
}

/// TLS files are only named here; they are read and parsed when the connections are set up
/// at start, and a file that cannot be used is reported then, as a configuration error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// `KAFKA_SSL_CA_LOCATION`; `None`: the compiled-in Mozilla roots.
    pub ca_location: Option<PathBuf>,
    /// `KAFKA_SSL_CERTIFICATE_LOCATION` and `KAFKA_SSL_KEY_LOCATION`, for mutual TLS; both or
    /// neither.
    pub client_identity: Option<ClientIdentity>,
    /// `KAFKA_SSL_ENDPOINT_IDENTIFICATION=https` (the default): the broker's certificate must
    /// name the host we connect to. `none` turns that off.
    pub verify_hostname: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub certificate_location: PathBuf,
    pub key_location: PathBuf,
}

/// A partition assignment strategy, as librdkafka's `partition.assignment.strategy` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignmentStrategy {
    /// `cooperative-sticky`: cooperative rebalancing (KIP-429), only moving partitions stop.
    CooperativeSticky,
    /// `range`: eager rebalancing, every partition of every member stops.
    Range,
}

/// Where a consumer group starts on a partition that has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

/// Why the configuration could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A variable holds a value outside what it accepts.
    Invalid {
        name: &'static str,
        value: String,
        /// What the variable accepts, phrased to follow "expected".
        expected: String,
    },
    /// A variable in the process environment is not valid UTF-8.
    NotUnicode { name: &'static str },
    /// The `.env` file exists but could not be read.
    DotenvRead { path: PathBuf, reason: String },
    /// The `.env` file has a line dotenvy cannot parse; `line` is 1-based when it could be located.
    DotenvSyntax { path: PathBuf, line: Option<usize> },
    /// The `.env` file starts with a UTF-8 byte-order mark, which dotenvy reads as part of the first name.
    DotenvByteOrderMark { path: PathBuf },
    /// PLAIN over `SASL_PLAINTEXT` (the password in clear) without
    /// `KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT=true`.
    PasswordInClear,
}

/// One row per variable: (name, default shown to users, description); used by `--help` and the README.
///
/// An empty default means the feature is off unless the variable is set.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    DATABASE_URL,
    DATABASE_PASSWORD_FILE,
    KAFKA_BOOTSTRAP_SERVERS,
    KAFKA_TOPIC,
    KAFKA_GROUP_ID,
    KAFKA_GROUP_INSTANCE_ID,
    KAFKA_PARTITION_ASSIGNMENT_STRATEGY,
    MOCK_PROVISION_DELAY_SECONDS,
    WORKER_THREADS,
    SHUTDOWN_TIMEOUT_SECONDS,
    KAFKA_AUTO_OFFSET_RESET,
    KAFKA_DLQ_TOPIC,
    LOG_LEVEL,
    KAFKA_STARTUP_TIMEOUT_SECONDS,
    KAFKA_SESSION_TIMEOUT_MS,
    KAFKA_HEARTBEAT_INTERVAL_MS,
    KAFKA_REBALANCE_TIMEOUT_MS,
    COMMIT_INTERVAL_MS,
    KAFKA_FETCH_MAX_WAIT_MS,
    KAFKA_REQUEST_TIMEOUT_MS,
    KAFKA_SOCKET_CONNECTION_SETUP_TIMEOUT_MS,
    KAFKA_RETRY_BACKOFF_MS,
    KAFKA_RETRY_BACKOFF_MAX_MS,
    KAFKA_RECONNECT_BACKOFF_MS,
    KAFKA_RECONNECT_BACKOFF_MAX_MS,
    KAFKA_CLIENT_ID,
    METRICS_ADDR,
    KAFKA_SECURITY_PROTOCOL,
    KAFKA_SASL_MECHANISM,
    KAFKA_SASL_USERNAME,
    KAFKA_SASL_PASSWORD,
    KAFKA_SASL_PASSWORD_FILE,
    KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT,
    KAFKA_SSL_CA_LOCATION,
    KAFKA_SSL_CERTIFICATE_LOCATION,
    KAFKA_SSL_KEY_LOCATION,
    KAFKA_SSL_ENDPOINT_IDENTIFICATION,
    KAFKA_DLQ_MAX_BYTES,
];

impl Config {
    /// Reads the process environment, then `.env` in the working directory for variables the
    /// environment lacks. The process environment is never modified.
    pub fn from_env() -> Result<Config, ConfigError> {
        // `from_sources` sees variables through an `Option`, which cannot tell "unset" from
        // "not UTF-8"; check for the latter first so a mangled value is reported, not ignored.
        for &(name, _, _) in VARIABLES {
            if let Err(std::env::VarError::NotUnicode(_)) = std::env::var(name) {
                return Err(ConfigError::NotUnicode { name });
            }
        }
        Config::from_sources(&|name| std::env::var(name).ok(), Some(Path::new(".env")))
    }

    /// Same as [`Config::from_env`] with explicit sources (tests): `env` wins over the file at
    /// `dotenv_path`. A missing file is fine; `None` skips the file altogether.
    pub fn from_sources(
        env: &dyn Fn(&str) -> Option<String>,
        dotenv_path: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let dotenv = match dotenv_path {
            Some(path) => read_dotenv(path)?,
            None => HashMap::new(),
        };
        let sources = Sources { env, dotenv };

        let database_url = sources.value(DATABASE_URL);
        let password_file = match sources
            .raw(DATABASE_PASSWORD_FILE)
            .filter(|f| !f.is_empty())
        {
            Some(file) => {
                let file = PathBuf::from(file);
                read_password_file(DATABASE_PASSWORD_FILE, "database password", &file)?;
                Some(file)
            }
            None => None,
        };
        let database = database::parse(&database_url, password_file)?;
        let database_url = mask_password(&database_url);
        let bootstrap_servers = parse_bootstrap_servers(&sources.value(KAFKA_BOOTSTRAP_SERVERS))?;
        let topic = parse_topic(KAFKA_TOPIC, &sources.value(KAFKA_TOPIC))?;
        let group_id = sources.value(KAFKA_GROUP_ID);
        let group_instance_id = parse_group_instance_id(&sources.value(KAFKA_GROUP_INSTANCE_ID))?;
        let assignment_strategy =
            parse_assignment_strategy(&sources.value(KAFKA_PARTITION_ASSIGNMENT_STRATEGY))?;
        let provision_delay = parse_seconds(
            MOCK_PROVISION_DELAY_SECONDS,
            &sources.value(MOCK_PROVISION_DELAY_SECONDS),
        )?;
        let worker_threads = parse_whole(
            WORKER_THREADS,
            &sources.value(WORKER_THREADS),
            1,
            1024,
            "a whole number",
        )?;
        let shutdown_timeout = parse_seconds(
            SHUTDOWN_TIMEOUT_SECONDS,
            &sources.value(SHUTDOWN_TIMEOUT_SECONDS),
        )?;
        let auto_offset_reset = parse_offset_reset(&sources.value(KAFKA_AUTO_OFFSET_RESET))?;
        let dlq_topic = parse_dlq_topic(sources.raw(KAFKA_DLQ_TOPIC), &topic)?;
        let log_level = parse_log_level(&sources.value(LOG_LEVEL))?;
        let startup_timeout = parse_seconds(
            KAFKA_STARTUP_TIMEOUT_SECONDS,
            &sources.value(KAFKA_STARTUP_TIMEOUT_SECONDS),
        )?;
        let session_ms = parse_ms(
            KAFKA_SESSION_TIMEOUT_MS,
            &sources.value(KAFKA_SESSION_TIMEOUT_MS),
            1000,
            3_600_000,
        )?;
        let heartbeat_ms =
            parse_heartbeat_ms(&sources.value(KAFKA_HEARTBEAT_INTERVAL_MS), session_ms)?;
        let rebalance_ms = parse_ms(
            KAFKA_REBALANCE_TIMEOUT_MS,
            &sources.value(KAFKA_REBALANCE_TIMEOUT_MS),
            1000,
            MAX_WIRE_MS,
        )?;
        let commit_ms = parse_ms(
            COMMIT_INTERVAL_MS,
            &sources.value(COMMIT_INTERVAL_MS),
            10,
            60_000,
        )?;
        let fetch_max_wait_ms = parse_ms(
            KAFKA_FETCH_MAX_WAIT_MS,
            &sources.value(KAFKA_FETCH_MAX_WAIT_MS),
            1,
            10_000,
        )?;
        let request_timeout_ms = parse_ms(
            KAFKA_REQUEST_TIMEOUT_MS,
            &sources.value(KAFKA_REQUEST_TIMEOUT_MS),
            1000,
            MAX_REQUEST_TIMEOUT_MS,
        )?;
        let connect_timeout_ms = parse_ms(
            KAFKA_SOCKET_CONNECTION_SETUP_TIMEOUT_MS,
            &sources.value(KAFKA_SOCKET_CONNECTION_SETUP_TIMEOUT_MS),
            100,
            MAX_REQUEST_TIMEOUT_MS,
        )?;
        let retry_backoff =
            parse_backoff(&sources, KAFKA_RETRY_BACKOFF_MS, KAFKA_RETRY_BACKOFF_MAX_MS)?;
        let reconnect_backoff = parse_backoff(
            &sources,
            KAFKA_RECONNECT_BACKOFF_MS,
            KAFKA_RECONNECT_BACKOFF_MAX_MS,
        )?;
        let client_id = sources.value(KAFKA_CLIENT_ID);
        let metrics_addr = parse_metrics_addr(&sources.value(METRICS_ADDR))?;
        let security = parse_security(&sources)?;
        let dlq_max_bytes = parse_whole(
            KAFKA_DLQ_MAX_BYTES,
            &sources.value(KAFKA_DLQ_MAX_BYTES),
            MIN_DLQ_MAX_BYTES,
            MAX_DLQ_MAX_BYTES,
            "a whole number of bytes",
        )?;

        Ok(Config {
            database_url,
            database,
            bootstrap_servers,
            topic,
            group_id,
            group_instance_id,
            assignment_strategy,
            provision_delay,
            // Invariant: at most 1024, so the conversion cannot truncate.
            worker_threads: worker_threads as usize,
            shutdown_timeout,
            auto_offset_reset,
            dlq_topic,
            log_level,
            startup_timeout,
            session_timeout: Duration::from_millis(session_ms),
            heartbeat_interval: Duration::from_millis(heartbeat_ms),
            rebalance_timeout: Duration::from_millis(rebalance_ms),
            commit_interval: Duration::from_millis(commit_ms),
            fetch_max_wait: Duration::from_millis(fetch_max_wait_ms),
            request_timeout: Duration::from_millis(request_timeout_ms),
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            retry_backoff,
            reconnect_backoff,
            client_id,
            metrics_addr,
            security,
            // Invariant: at most MAX_DLQ_MAX_BYTES, so the conversion cannot truncate.
            dlq_max_bytes: dlq_max_bytes as usize,
        })
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid {
                name,
                value,
                expected,
            } => write!(f, "invalid {name}={value:?}: expected {expected}"),
            ConfigError::NotUnicode { name } => write!(
                f,
                "invalid {name}: the value is not valid UTF-8; set it to plain text"
            ),
            ConfigError::DotenvRead { path, reason } => write!(
                f,
                "cannot read {}: {reason}; fix its permissions or remove it",
                path.display()
            ),
            ConfigError::DotenvSyntax {
                path,
                line: Some(line),
            } => write!(
                f,
                "cannot parse {} at line {line}: expected NAME=value with any quotes closed; fix or remove the line",
                path.display()
            ),
            ConfigError::DotenvSyntax { path, line: None } => write!(
                f,
                "cannot parse {}: a line is not NAME=value or has an unclosed quote; fix or remove it",
                path.display()
            ),
            ConfigError::DotenvByteOrderMark { path } => write!(
                f,
                "cannot parse {}: it starts with a byte-order mark; save it as UTF-8 without BOM",
                path.display()
            ),
            ConfigError::PasswordInClear => write!(
                f,
                "refusing to send the SASL password in clear: KAFKA_SASL_MECHANISM=PLAIN over KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT sends it unencrypted on every connection and every re-authentication; set KAFKA_SECURITY_PROTOCOL=SASL_SSL (as managed services do), or KAFKA_SASL_MECHANISM=SCRAM-SHA-256 or SCRAM-SHA-512 (which never send the password), or {}=true to accept it on a network you trust",
                KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT.0
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value itself: only for the code that sends it to the broker.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for Secret {}

impl SecurityProtocol {
    /// The name as `KAFKA_SECURITY_PROTOCOL` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl SaslMechanism {
    /// The name as Kafka (and `KAFKA_SASL_MECHANISM`) spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl SecurityConfig {
    /// No TLS, no SASL: what the worker does when nothing is configured.
    pub fn plaintext() -> SecurityConfig {
        SecurityConfig {
            protocol: SecurityProtocol::Plaintext,
            sasl: None,
            tls: None,
        }
    }

    /// True when the SASL password goes to the broker in clear: PLAIN over `SASL_PLAINTEXT`
    /// (only ever with `KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT=true`).
    pub fn sends_password_in_clear(&self) -> bool {
        !self.protocol.uses_tls()
            && self
                .sasl
                .as_ref()
                .is_some_and(|s| s.mechanism == SaslMechanism::Plain)
    }
}

/// The largest number of seconds any `*_SECONDS` variable accepts. A day is far beyond any
/// sensible delay or timeout, and the bound keeps `Duration` conversion from overflowing.
const MAX_SECONDS: f64 = 86_400.0;

/// Kafka's protocol carries timeouts as signed 32-bit milliseconds.
const MAX_WIRE_MS: u64 = i32::MAX as u64;

/// An hour: a request that takes longer is a hung broker, whatever the link.
const MAX_REQUEST_TIMEOUT_MS: u64 = 3_600_000;
/// A minute between attempts at most: longer, and an outage's end goes unnoticed too long.
const MAX_BACKOFF_MS: u64 = 60_000;

/// Kafka refuses topic names longer than this.
const MAX_TOPIC_CHARS: usize = 249;

/// One row of [`VARIABLES`]: (name, default, description). The loader reads each variable
/// through its row, so a default cannot differ from the one `--help` shows.
type Var = (&'static str, &'static str, &'static str);

const DATABASE_URL: Var = (
    "DATABASE_URL",
    "sqlite+aiosqlite:///./poc.db",
    "the database shared with the backend: a SQLite URL (sqlite:///relative.db, sqlite:////absolute.db) or a PostgreSQL URL (postgresql://user:password@host:5432/db, also postgresql+asyncpg:// etc.)",
);
const DATABASE_PASSWORD_FILE: Var = (
    "DATABASE_PASSWORD_FILE",
    "",
    "file holding the PostgreSQL password (trailing newline stripped; read again before each login), instead of one in DATABASE_URL",
);
const KAFKA_BOOTSTRAP_SERVERS: Var = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "localhost:9092",
    "comma-separated Kafka brokers as host:port (port 9092 when omitted)",
);
const KAFKA_TOPIC: Var = (
    "KAFKA_TOPIC",
    "provision-requests",
    "topic to consume provisioning requests from",
);
const KAFKA_GROUP_ID: Var = (
    "KAFKA_GROUP_ID",
    "provision-worker-group",
    "consumer group shared by all workers",
);
const KAFKA_GROUP_INSTANCE_ID: Var = (
    "KAFKA_GROUP_INSTANCE_ID",
    "",
    "static group membership: this worker's own stable id in the group (its host name, say; letters, digits, '.', '_', '-', at most 249); restarted within the session timeout it gets its partitions back without a rebalance; empty: dynamic membership",
);
const KAFKA_PARTITION_ASSIGNMENT_STRATEGY: Var = (
    "KAFKA_PARTITION_ASSIGNMENT_STRATEGY",
    "cooperative-sticky,range",
    "partition assignment strategies offered to the group, in order of preference: cooperative-sticky (only partitions that move stop in a rebalance) and/or range (every partition stops)",
);
const MOCK_PROVISION_DELAY_SECONDS: Var = (
    "MOCK_PROVISION_DELAY_SECONDS",
    "5",
    "simulated provisioning time per request, in seconds (fractions allowed, at most 86400)",
);
const WORKER_THREADS: Var = (
    "WORKER_THREADS",
    "8",
    "requests provisioned at the same time (1 to 1024)",
);
const SHUTDOWN_TIMEOUT_SECONDS: Var = (
    "SHUTDOWN_TIMEOUT_SECONDS",
    "30",
    "how long a shutdown waits for requests in progress, in seconds",
);
const KAFKA_AUTO_OFFSET_RESET: Var = (
    "KAFKA_AUTO_OFFSET_RESET",
    "earliest",
    "where to start when the group has no committed offset: earliest or latest",
);
const KAFKA_DLQ_TOPIC: Var = (
    "KAFKA_DLQ_TOPIC",
    "provision-requests.dlq",
    "topic for messages that are not valid requests; empty disables it",
);
const LOG_LEVEL: Var = (
    "LOG_LEVEL",
    "INFO",
    "TRACE, DEBUG, INFO, WARNING, ERROR or CRITICAL",
);
const KAFKA_STARTUP_TIMEOUT_SECONDS: Var = (
    "KAFKA_STARTUP_TIMEOUT_SECONDS",
    "30",
    "how long startup waits for the broker before giving up, in seconds",
);
const KAFKA_SESSION_TIMEOUT_MS: Var = (
    "KAFKA_SESSION_TIMEOUT_MS",
    "10000",
    "consumer group session timeout, in milliseconds (1000 to 3600000)",
);
const KAFKA_HEARTBEAT_INTERVAL_MS: Var = (
    "KAFKA_HEARTBEAT_INTERVAL_MS",
    "3000",
    "consumer group heartbeat interval, in milliseconds (at least 100, below the session timeout)",
);
const KAFKA_REBALANCE_TIMEOUT_MS: Var = (
    "KAFKA_REBALANCE_TIMEOUT_MS",
    "60000",
    "how long the group waits for members to rejoin during a rebalance, in milliseconds",
);
const COMMIT_INTERVAL_MS: Var = (
    "COMMIT_INTERVAL_MS",
    "1000",
    "how often finished offsets are committed, in milliseconds (10 to 60000)",
);
const KAFKA_FETCH_MAX_WAIT_MS: Var = (
    "KAFKA_FETCH_MAX_WAIT_MS",
    "40",
    "how long the broker may hold a fetch open waiting for data, in milliseconds (1 to 10000)",
);
const KAFKA_REQUEST_TIMEOUT_MS: Var = (
    "KAFKA_REQUEST_TIMEOUT_MS",
    "30000",
    "deadline of every Kafka request, in milliseconds (1000 to 3600000); produce requests give the broker a little less",
);
const KAFKA_SOCKET_CONNECTION_SETUP_TIMEOUT_MS: Var = (
    "KAFKA_SOCKET_CONNECTION_SETUP_TIMEOUT_MS",
    "10000",
    "deadline of a TCP connect and TLS handshake to a broker, in milliseconds (100 to 3600000)",
);
const KAFKA_RETRY_BACKOFF_MS: Var = (
    "KAFKA_RETRY_BACKOFF_MS",
    "100",
    "first wait before a failed request is tried again (metadata, finding the coordinator), in milliseconds (1 to 60000)",
);
const KAFKA_RETRY_BACKOFF_MAX_MS: Var = (
    "KAFKA_RETRY_BACKOFF_MAX_MS",
    "1000",
    "the wait doubles up to this, in milliseconds (at least KAFKA_RETRY_BACKOFF_MS, at most 60000)",
);
const KAFKA_RECONNECT_BACKOFF_MS: Var = (
    "KAFKA_RECONNECT_BACKOFF_MS",
    "50",
    "first wait before a broker that could not be reached is tried again, in milliseconds (1 to 60000)",
);
const KAFKA_RECONNECT_BACKOFF_MAX_MS: Var = (
    "KAFKA_RECONNECT_BACKOFF_MAX_MS",
    "1000",
    "the wait doubles up to this, in milliseconds (at least KAFKA_RECONNECT_BACKOFF_MS, at most 60000)",
);
const KAFKA_CLIENT_ID: Var = (
    "KAFKA_CLIENT_ID",
    "provision-worker",
    "client id the broker shows in its logs and metrics",
);
const METRICS_ADDR: Var = (
    "METRICS_ADDR",
    "",
    "address for the metrics endpoint, such as 127.0.0.1:9464; empty turns it off",
);
const KAFKA_SECURITY_PROTOCOL: Var = (
    "KAFKA_SECURITY_PROTOCOL",
    "PLAINTEXT",
    "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (any case): TLS and/or SASL on every Kafka connection",
);
const KAFKA_SASL_MECHANISM: Var = (
    "KAFKA_SASL_MECHANISM",
    "PLAIN",
    "SASL mechanism when SASL is on: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
);
const KAFKA_SASL_USERNAME: Var = (
    "KAFKA_SASL_USERNAME",
    "",
    "SASL user name; required when SASL is on",
);
const KAFKA_SASL_PASSWORD: Var = (
    "KAFKA_SASL_PASSWORD",
    "",
    "SASL password (or use KAFKA_SASL_PASSWORD_FILE); required when SASL is on",
);
const KAFKA_SASL_PASSWORD_FILE: Var = (
    "KAFKA_SASL_PASSWORD_FILE",
    "",
    "file holding the SASL password (trailing newline stripped), instead of KAFKA_SASL_PASSWORD",
);
const KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT: Var = (
    "KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT",
    "false",
    "true: allow KAFKA_SASL_MECHANISM=PLAIN over SASL_PLAINTEXT, which sends the password in clear (refused otherwise)",
);
const KAFKA_SSL_CA_LOCATION: Var = (
    "KAFKA_SSL_CA_LOCATION",
    "",
    "PEM file of CA certificates to trust; empty: the built-in Mozilla roots",
);
const KAFKA_SSL_CERTIFICATE_LOCATION: Var = (
    "KAFKA_SSL_CERTIFICATE_LOCATION",
    "",
    "PEM client certificate chain for mutual TLS (with KAFKA_SSL_KEY_LOCATION)",
);
const KAFKA_SSL_KEY_LOCATION: Var = (
    "KAFKA_SSL_KEY_LOCATION",
    "",
    "PEM private key (PKCS#8, RSA or EC) of the client certificate, for mutual TLS",
);
const KAFKA_SSL_ENDPOINT_IDENTIFICATION: Var = (
    "KAFKA_SSL_ENDPOINT_IDENTIFICATION",
    "https",
    "https: the broker certificate must match its host name; none: not checked (testing only)",
);
const KAFKA_DLQ_MAX_BYTES: Var = (
    "KAFKA_DLQ_MAX_BYTES",
    "1000000",
    "largest dead letter produced, in bytes (1024 to 16777216); a larger original is cut",
);

/// Below this a dead letter could not hold its own headers.
const MIN_DLQ_MAX_BYTES: u64 = 1024;
/// Every oversized message keeps up to this much in memory while it waits to be
/// dead-lettered; 16 MiB is already far above any broker's default `max.message.bytes`.
const MAX_DLQ_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// The process environment and the `.env` entries, with the environment taking precedence.
struct Sources<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Wiped when dropped: it may hold `KAFKA_SASL_PASSWORD`.
    dotenv: HashMap<String, String>,
}

impl Drop for Sources<'_> {
    fn drop(&mut self) {
        self.dotenv.values_mut().for_each(Zeroize::zeroize);
    }
}

impl Sources<'_> {
    /// The trimmed value, or `None` when the variable is set nowhere. A variable present in the
    /// environment hides the `.env` entry even when empty, as dotenvy's own loader does.
    fn raw(&self, var: Var) -> Option<String> {
        (self.env)(var.0)
            .or_else(|| self.dotenv.get(var.0).cloned())
            .map(|value| value.trim().to_string())
    }

    /// The value exactly as set, untrimmed (for passwords, where spaces may matter).
    fn untrimmed(&self, var: Var) -> Option<String> {
        (self.env)(var.0).or_else(|| self.dotenv.get(var.0).cloned())
    }

    /// The value to parse: the trimmed value, or the default when unset or empty.
    fn value(&self, var: Var) -> String {
        match self.raw(var) {
            Some(value) if !value.is_empty() => value,
            _ => var.1.to_string(),
        }
    }
}

fn invalid(var: Var, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: var.0,
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// Reads `.env` without touching the process environment.
fn read_dotenv(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let read_error = |err: dotenvy::Error| ConfigError::DotenvRead {
        path: path.to_path_buf(),
        reason: err.to_string(),
    };
    let entries = match dotenvy::from_path_iter(path) {
        Ok(entries) => entries,
        Err(err) if err.not_found() => return Ok(HashMap::new()),
        Err(err) => return Err(read_error(err)),
    };
    let mut vars = HashMap::new();
    for entry in entries {
        match entry {
            // dotenvy's own loader lets the first declaration of a name win; so do we.
            Ok((name, value)) => {
                vars.entry(name).or_insert(value);
            }
            Err(dotenvy::Error::LineParse(bad_line, _)) => {
                return Err(dotenv_syntax_error(path, &bad_line));
            }
            Err(err) => return Err(read_error(err)),
        }
    }
    Ok(vars)
}

/// Builds the error for a line dotenvy rejected. dotenvy reports the line's text but not its
/// number, so the file is read again to find it; the text itself is not shown because `.env`
/// files hold secrets.
fn dotenv_syntax_error(path: &Path, bad_line: &str) -> ConfigError {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // `from_path_iter`, unlike dotenvy's loaders, keeps a byte-order mark, which then makes
    // the first line unparseable; name the real cause instead of "line 1".
    if text.starts_with('\u{feff}') && bad_line.starts_with('\u{feff}') {
        return ConfigError::DotenvByteOrderMark {
            path: path.to_path_buf(),
        };
    }
    // A multi-line (quoted) entry is reported as a whole; its first line is where it starts.
    let first = bad_line.lines().next().unwrap_or_default();
    let line = text
        .lines()
        .position(|candidate| candidate.trim_end() == first.trim_end())
        .map(|index| index + 1);
    ConfigError::DotenvSyntax {
        path: path.to_path_buf(),
        line,
    }
}

/// Splits, trims and completes `host[:port]` entries; IPv6 hosts go in brackets.
fn parse_bootstrap_servers(value: &str) -> Result<Vec<String>, ConfigError> {
    let expected = "comma-separated host:port entries like broker1:9092,broker2:9092 \
                    (port 1 to 65535, 9092 when omitted; IPv6 as [::1]:9092)";
    let mut servers = Vec::new();
    for entry in value.split(',').map(str::trim) {
        let (host, port) = split_host_port(entry)
            .ok_or_else(|| invalid(KAFKA_BOOTSTRAP_SERVERS, value, expected))?;
        let port = match port {
            None => 9092,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(invalid(KAFKA_BOOTSTRAP_SERVERS, value, expected)),
            },
        };
        servers.push(format!("{host}:{port}"));
    }
    Ok(servers)
}

/// Splits one bootstrap entry into a host and an optional port, or `None` if it is malformed.
fn split_host_port(entry: &str) -> Option<(&str, Option<&str>)> {
    if let Some(bracketed) = entry.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']')?;
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        let host = &entry[..inside.len() + 2];
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    let (host, port) = match entry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (entry, None),
    };
    // Host names and IPv4 addresses only; this also catches `kafka://...` and unbracketed IPv6.
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    host_ok.then_some((host, port))
}

/// A Kafka topic name as the broker accepts it.
fn parse_topic(var: Var, value: &str) -> Result<String, ConfigError> {
    let legal = value.chars().count() <= MAX_TOPIC_CHARS
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !legal {
        return Err(invalid(
            var,
            value,
            "a Kafka topic name: 1 to 249 characters from A-Z a-z 0-9 . _ -",
        ));
    }
    Ok(value.to_string())
}

fn parse_dlq_topic(raw: Option<String>, topic: &str) -> Result<Option<String>, ConfigError> {
    let value = match raw {
        None => KAFKA_DLQ_TOPIC.1.to_string(),
        Some(value) if value.is_empty() => return Ok(None),
        Some(value) => value,
    };
    let dlq = parse_topic(KAFKA_DLQ_TOPIC, &value).map_err(|_| {
        invalid(
            KAFKA_DLQ_TOPIC,
            &value,
            "a Kafka topic name (1 to 249 characters from A-Z a-z 0-9 . _ -), or empty to disable dead-lettering",
        )
    })?;
    // Dead letters written to the topic we consume would come straight back, forever.
    if dlq == topic {
        return Err(invalid(
            KAFKA_DLQ_TOPIC,
            &value,
            "a topic other than KAFKA_TOPIC, or empty to disable dead-lettering",
        ));
    }
    Ok(Some(dlq))
}

/// Seconds as a float (`5`, `0.25`), from 0 to [`MAX_SECONDS`].
fn parse_seconds(var: Var, value: &str) -> Result<Duration, ConfigError> {
    match value.parse::<f64>() {
        // The range check also rejects NaN and the infinities.
        Ok(seconds) if (0.0..=MAX_SECONDS).contains(&seconds) => {
            Ok(Duration::from_secs_f64(seconds))
        }
        _ => Err(invalid(
            var,
            value,
            "a number of seconds from 0 to 86400, fractions allowed",
        )),
    }
}

/// A whole number in `min..=max`; `unit` names it in the error ("a whole number of milliseconds").
fn parse_whole(var: Var, value: &str, min: u64, max: u64, unit: &str) -> Result<u64, ConfigError> {
    match value.parse::<u64>() {
        Ok(number) if (min..=max).contains(&number) => Ok(number),
        _ => Err(invalid(var, value, format!("{unit} from {min} to {max}"))),
    }
}

fn parse_ms(var: Var, value: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    parse_whole(var, value, min, max, "a whole number of milliseconds")
}

/// A backoff's first wait and its maximum, which is never below the first (librdkafka and
/// the Java client raise it silently; a typo there is better said).
fn parse_backoff(
    sources: &Sources<'_>,
    first: Var,
    max: Var,
) -> Result<(Duration, Duration), ConfigError> {
    let first_ms = parse_ms(first, &sources.value(first), 1, MAX_BACKOFF_MS)?;
    let value = sources.value(max);
    let max_ms = match value.parse::<u64>() {
        Ok(ms) if (first_ms..=MAX_BACKOFF_MS).contains(&ms) => ms,
        _ => {
            return Err(invalid(
                max,
                &value,
                format!(
                    "a whole number of milliseconds from {first_ms} (no less than {}={first_ms}) to {MAX_BACKOFF_MS}",
                    first.0
                ),
            ));
        }
    };
    Ok((
        Duration::from_millis(first_ms),
        Duration::from_millis(max_ms),
    ))
}

/// The heartbeat must be shorter than the session, or the coordinator expires the member
/// between two heartbeats.
fn parse_heartbeat_ms(value: &str, session_ms: u64) -> Result<u64, ConfigError> {
    let max = session_ms - 1;
    match value.parse::<u64>() {
        Ok(ms) if (100..=max).contains(&ms) => Ok(ms),
        _ => Err(invalid(
            KAFKA_HEARTBEAT_INTERVAL_MS,
            value,
            format!(
                "a whole number of milliseconds from 100 to {max} (less than KAFKA_SESSION_TIMEOUT_MS={session_ms})"
            ),
        )),
    }
}

/// Kafka's rule for a `group.instance.id` (the same as for a topic name): 1 to 249 of
/// ASCII letters, digits, '.', '_' and '-', not "." or "..". Empty: dynamic membership.
fn parse_group_instance_id(value: &str) -> Result<Option<String>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    let legal = value.len() <= 249
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !legal {
        return Err(invalid(
            KAFKA_GROUP_INSTANCE_ID,
            value,
            "at most 249 ASCII letters, digits, '.', '_' or '-' (Kafka's rule for group.instance.id), unique to this worker, such as its host name; or empty for dynamic membership",
        ));
    }
    Ok(Some(value.to_owned()))
}

/// A comma-separated list of `cooperative-sticky` and `range`, in order of preference,
/// each at most once (spaces around the names and any case allowed).
fn parse_assignment_strategy(value: &str) -> Result<Vec<AssignmentStrategy>, ConfigError> {
    let expected = "a comma-separated list of cooperative-sticky and range, in order of preference, each at most once (default cooperative-sticky,range)";
    let mut out = Vec::new();
    for name in value.split(',') {
        let strategy = match name.trim().to_ascii_lowercase().as_str() {
            "cooperative-sticky" => AssignmentStrategy::CooperativeSticky,
            "range" => AssignmentStrategy::Range,
            _ => {
                return Err(invalid(
                    KAFKA_PARTITION_ASSIGNMENT_STRATEGY,
                    value,
                    expected,
                ));
            }
        };
        if out.contains(&strategy) {
            return Err(invalid(
                KAFKA_PARTITION_ASSIGNMENT_STRATEGY,
                value,
                expected,
            ));
        }
        out.push(strategy);
    }
    Ok(out)
}

fn parse_offset_reset(value: &str) -> Result<OffsetReset, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "earliest" => Ok(OffsetReset::Earliest),
        "latest" => Ok(OffsetReset::Latest),
        _ => Err(invalid(
            KAFKA_AUTO_OFFSET_RESET,
            value,
            "earliest or latest",
        )),
    }
}

/// Python's level names, plus `TRACE` and `WARN`; `CRITICAL` has no `log` equivalent and maps
/// to `ERROR`.
fn parse_log_level(value: &str) -> Result<log::LevelFilter, ConfigError> {
    match value.to_ascii_uppercase().as_str() {
        "TRACE" => Ok(log::LevelFilter::Trace),
        "DEBUG" => Ok(log::LevelFilter::Debug),
        "INFO" => Ok(log::LevelFilter::Info),
        "WARNING" | "WARN" => Ok(log::LevelFilter::Warn),
        "ERROR" | "CRITICAL" => Ok(log::LevelFilter::Error),
        _ => Err(invalid(
            LOG_LEVEL,
            value,
            "one of TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL",
        )),
    }
}

fn parse_metrics_addr(value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse::<SocketAddr>().map(Some).map_err(|_| {
        invalid(
            METRICS_ADDR,
            value,
            "an IP address and port like 127.0.0.1:9464, or empty to turn metrics off",
        )
    })
}

/// `KAFKA_SECURITY_PROTOCOL` with the SASL and TLS variables it needs. A SASL or TLS
/// variable set for a protocol that does not use it is an error: the operator meant to turn
/// security on, and silently connecting in plaintext would send credentials or data in clear.
fn parse_security(sources: &Sources<'_>) -> Result<SecurityConfig, ConfigError> {
    let value = sources.value(KAFKA_SECURITY_PROTOCOL);
    let protocol = match value.to_ascii_uppercase().as_str() {
        "PLAINTEXT" => SecurityProtocol::Plaintext,
        "SSL" => SecurityProtocol::Ssl,
        "SASL_PLAINTEXT" => SecurityProtocol::SaslPlaintext,
        "SASL_SSL" => SecurityProtocol::SaslSsl,
        _ => {
            return Err(invalid(
                KAFKA_SECURITY_PROTOCOL,
                &value,
                "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
            ));
        }
    };
    let set = |var: Var| sources.raw(var).filter(|v| !v.is_empty());
    let unused = |var: Var, needs: &str| {
        let value = if var == KAFKA_SASL_PASSWORD {
            "<redacted>".to_owned()
        } else {
            set(var).unwrap_or_default()
        };
        invalid(
            var,
            &value,
            format!(
                "it unset, since KAFKA_SECURITY_PROTOCOL={} does not use {needs} (set KAFKA_SECURITY_PROTOCOL to {} to use it)",
                protocol.as_str(),
                if needs == "SASL" {
                    "SASL_SSL or SASL_PLAINTEXT"
                } else {
                    "SSL or SASL_SSL"
                }
            ),
        )
    };

    let sasl_vars = [
        KAFKA_SASL_MECHANISM,
        KAFKA_SASL_USERNAME,
        KAFKA_SASL_PASSWORD,
        KAFKA_SASL_PASSWORD_FILE,
        KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT,
    ];
    let sasl = if protocol.uses_sasl() {
        Some(parse_sasl(sources)?)
    } else {
        if let Some(var) = sasl_vars.into_iter().find(|v| set(*v).is_some()) {
            return Err(unused(var, "SASL"));
        }
        None
    };

    let tls_vars = [
        KAFKA_SSL_CA_LOCATION,
        KAFKA_SSL_CERTIFICATE_LOCATION,
        KAFKA_SSL_KEY_LOCATION,
        KAFKA_SSL_ENDPOINT_IDENTIFICATION,
    ];
    let tls = if protocol.uses_tls() {
        let identification = sources.value(KAFKA_SSL_ENDPOINT_IDENTIFICATION);
        let verify_hostname = match identification.to_ascii_lowercase().as_str() {
            "https" => true,
            "none" => false,
            _ => {
                return Err(invalid(
                    KAFKA_SSL_ENDPOINT_IDENTIFICATION,
                    &identification,
                    "https (check the broker's host name against its certificate) or none",
                ));
            }
        };
        let certificate = set(KAFKA_SSL_CERTIFICATE_LOCATION).map(PathBuf::from);
        let key = set(KAFKA_SSL_KEY_LOCATION).map(PathBuf::from);
        let client_identity = match (certificate, key) {
            (Some(certificate_location), Some(key_location)) => Some(ClientIdentity {
                certificate_location,
                key_location,
            }),
            (None, None) => None,
            (Some(c), None) => {
                return Err(invalid(
                    KAFKA_SSL_CERTIFICATE_LOCATION,
                    &c.display().to_string(),
                    "it together with KAFKA_SSL_KEY_LOCATION (the certificate's private key), or neither",
                ));
            }
            (None, Some(k)) => {
                return Err(invalid(
                    KAFKA_SSL_KEY_LOCATION,
                    &k.display().to_string(),
                    "it together with KAFKA_SSL_CERTIFICATE_LOCATION (the client certificate), or neither",
                ));
            }
        };
        Some(TlsConfig {
            ca_location: set(KAFKA_SSL_CA_LOCATION).map(PathBuf::from),
            client_identity,
            verify_hostname,
        })
    } else {
        if let Some(var) = tls_vars.into_iter().find(|v| set(*v).is_some()) {
            return Err(unused(var, "TLS"));
        }
        None
    };
    let security = SecurityConfig {
        protocol,
        sasl,
        tls,
    };
    // Why refused by default: PLAIN carries the password itself, so without TLS anyone on
    // the network path reads it, at every connection and re-authentication. librdkafka
    // allows it; every managed service uses SASL_SSL instead. Checked last, so a setting
    // that is plainly wrong is reported first.
    if security.sends_password_in_clear()
        && !security
            .sasl
            .as_ref()
            .is_some_and(|s| s.plain_cleartext_allowed)
    {
        return Err(ConfigError::PasswordInClear);
    }
    Ok(security)
}

fn parse_sasl(sources: &Sources<'_>) -> Result<SaslConfig, ConfigError> {
    let value = sources.value(KAFKA_SASL_MECHANISM);
    let mechanism = match value.to_ascii_uppercase().as_str() {
        "PLAIN" => SaslMechanism::Plain,
        "SCRAM-SHA-256" => SaslMechanism::ScramSha256,
        "SCRAM-SHA-512" => SaslMechanism::ScramSha512,
        _ => {
            return Err(invalid(
                KAFKA_SASL_MECHANISM,
                &value,
                "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
            ));
        }
    };
    let username = sources.value(KAFKA_SASL_USERNAME);
    if username.is_empty() {
        return Err(invalid(
            KAFKA_SASL_USERNAME,
            "",
            "the SASL user name, since KAFKA_SECURITY_PROTOCOL uses SASL",
        ));
    }
    // The password is taken as it is, untrimmed: spaces may be part of it.
    let from_variable = sources
        .untrimmed(KAFKA_SASL_PASSWORD)
        .filter(|p| !p.is_empty());
    let file = sources
        .raw(KAFKA_SASL_PASSWORD_FILE)
        .filter(|f| !f.is_empty())
        .map(PathBuf::from);
    let (password, password_source) = match (from_variable, file) {
        (Some(_), Some(file)) => {
            return Err(invalid(
                KAFKA_SASL_PASSWORD_FILE,
                &file.display().to_string(),
                "either KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both; unset one",
            ));
        }
        (Some(p), None) => (p, PasswordSource::Variable),
        (None, Some(file)) => (
            read_password_file(KAFKA_SASL_PASSWORD_FILE, "SASL password", &file)?,
            PasswordSource::File(file),
        ),
        (None, None) => {
            return Err(invalid(
                KAFKA_SASL_PASSWORD,
                "",
                "the SASL password in KAFKA_SASL_PASSWORD or a file named by KAFKA_SASL_PASSWORD_FILE, since KAFKA_SECURITY_PROTOCOL uses SASL",
            ));
        }
    };
    let allowed = sources.value(KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT);
    let plain_cleartext_allowed = match allowed.to_ascii_lowercase().as_str() {
        "true" => true,
        "false" => false,
        _ => {
            return Err(invalid(
                KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT,
                &allowed,
                "true or false",
            ));
        }
    };
    Ok(SaslConfig {
        mechanism,
        username,
        password: Secret(password),
        password_source,
        plain_cleartext_allowed,
    })
}

/// Reads a password file once, at start; a trailing newline (as `echo` writes, or a text
/// editor) is not part of the password. `what` names the password in errors.
fn read_password_file(var: Var, what: &str, path: &Path) -> Result<String, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|e| {
        invalid(
            var,
            &shown,
            format!("a readable file holding the {what} ({e})"),
        )
    })?;
    // The file's bytes are wiped once the password is copied out of them.
    let text = Zeroizing::new(text);
    let text = std::str::from_utf8(&text).map_err(|_| {
        invalid(
            var,
            &shown,
            format!("a file holding the {what} as UTF-8 text"),
        )
    })?;
    let password = text.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err(invalid(
            var,
            &shown,
            format!("a file holding the {what}; this one is empty"),
        ));
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_sources(&|name| vars.get(name).cloned(), None)
    }

    fn load_with_dotenv(
        vars: &[(&str, &str)],
        dotenv: &str,
    ) -> (Result<Config, ConfigError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(dotenv.as_bytes())
            .unwrap();
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let result = Config::from_sources(&|name| vars.get(name).cloned(), Some(&path));
        (result, dir)
    }

    fn check_url(input: &str, expected: Result<&str, &str>) {
        let actual = database::parse(input, None);
        match (expected, actual) {
            (Ok(path), Ok(actual)) => assert_eq!(
                actual,
                Database::Sqlite(PathBuf::from(path)),
                "input {input:?}"
            ),
            (Err(fragment), Err(err)) => {
                let message = err.to_string();
                assert!(
                    message.starts_with(&format!("invalid DATABASE_URL={input:?}: expected")),
                    "{message}"
                );
                assert!(message.contains(fragment), "{input:?}: {message}");
            }
            (expected, actual) => panic!("{input:?}: expected {expected:?}, got {actual:?}"),
        }
    }

    #[test]
    fn defaults_match_the_python_worker() {
        let config = load(&[]).unwrap();
        assert_eq!(config.database_url, "sqlite+aiosqlite:///./poc.db");
        assert_eq!(config.database, Database::Sqlite(PathBuf::from("./poc.db")));
        assert_eq!(config.bootstrap_servers, vec!["localhost:9092"]);
        assert_eq!(config.topic, "provision-requests");
        assert_eq!(config.group_id, "provision-worker-group");
        assert_eq!(config.group_instance_id, None);
        assert_eq!(
            config.assignment_strategy,
            [
                AssignmentStrategy::CooperativeSticky,
                AssignmentStrategy::Range
            ]
        );
        assert_eq!(config.provision_delay, Duration::from_secs(5));
        assert_eq!(config.worker_threads, 8);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(config.auto_offset_reset, OffsetReset::Earliest);
        assert_eq!(config.dlq_topic.as_deref(), Some("provision-requests.dlq"));
        assert_eq!(config.log_level, log::LevelFilter::Info);
        assert_eq!(config.startup_timeout, Duration::from_secs(30));
        assert_eq!(config.session_timeout, Duration::from_millis(10_000));
        assert_eq!(config.heartbeat_interval, Duration::from_millis(3_000));
        assert_eq!(config.rebalance_timeout, Duration::from_millis(60_000));
        assert_eq!(config.commit_interval, Duration::from_millis(1_000));
        assert_eq!(config.fetch_max_wait, Duration::from_millis(40));
        assert_eq!(config.client_id, "provision-worker");
        assert_eq!(config.metrics_addr, None);
        assert_eq!(config.security, SecurityConfig::plaintext());
        assert_eq!(config.dlq_max_bytes, 1_000_000);
    }

    #[test]
    fn sasl_ssl_with_scram_and_mutual_tls() {
        let config = load(&[
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
            ("KAFKA_SASL_USERNAME", "alice"),
            ("KAFKA_SASL_PASSWORD", " p w "),
            ("KAFKA_SSL_CA_LOCATION", "/etc/ca.pem"),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", "/etc/client.pem"),
            ("KAFKA_SSL_KEY_LOCATION", "/etc/client.key"),
            ("KAFKA_SSL_ENDPOINT_IDENTIFICATION", "NONE"),
        ])
        .unwrap();
        let security = config.security;
        assert_eq!(security.protocol, SecurityProtocol::SaslSsl);
        let sasl = security.sasl.unwrap();
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
        assert_eq!(sasl.username, "alice");
        assert_eq!(sasl.password.expose(), " p w ", "passwords are not trimmed");
        assert_eq!(sasl.password_source, PasswordSource::Variable);
        let tls = security.tls.unwrap();
        assert_eq!(tls.ca_location, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(
            tls.client_identity,
            Some(ClientIdentity {
                certificate_location: PathBuf::from("/etc/client.pem"),
                key_location: PathBuf::from("/etc/client.key"),
            })
        );
        assert!(!tls.verify_hostname);
    }

    #[test]
    fn sasl_defaults_to_plain_and_ssl_to_hostname_checks_and_built_in_roots() {
        let config = load(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_USERNAME", "bob"),
            ("KAFKA_SASL_PASSWORD", "pw"),
        ])
        .unwrap();
        assert_eq!(
            config.security.sasl.unwrap().mechanism,
            SaslMechanism::Plain
        );
        let config = load(&[("KAFKA_SECURITY_PROTOCOL", "SSL")]).unwrap();
        assert_eq!(config.security.sasl, None);
        assert_eq!(
            config.security.tls,
            Some(TlsConfig {
                ca_location: None,
                client_identity: None,
                verify_hostname: true,
            })
        );
    }

    #[test]
    fn plain_over_sasl_plaintext_is_refused_unless_allowed_in_so_many_words() {
        let sasl_plaintext = [
            ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
            ("KAFKA_SASL_USERNAME", "bob"),
            ("KAFKA_SASL_PASSWORD", "pw"),
        ];
        // PLAIN, named or by default: refused, naming the better choice and the opt-in.
        for mechanism in [None, Some("PLAIN"), Some("plain")] {
            let mut vars = sasl_plaintext.to_vec();
            vars.extend(mechanism.map(|m| ("KAFKA_SASL_MECHANISM", m)));
            let err = load(&vars).unwrap_err();
            assert_eq!(err, ConfigError::PasswordInClear, "{vars:?}");
            let text = err.to_string();
            assert!(
                text.starts_with("refusing to send the SASL password in clear: KAFKA_SASL_MECHANISM=PLAIN over KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT"),
                "{text}"
            );
            for fragment in [
                "KAFKA_SECURITY_PROTOCOL=SASL_SSL",
                "KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT=true",
            ] {
                assert!(text.contains(fragment), "{fragment:?} missing: {text}");
            }
            assert!(!text.contains("pw"), "{text}");
        }
        // Opted in: allowed, and said so.
        let mut vars = sasl_plaintext.to_vec();
        vars.push(("KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT", "TRUE"));
        let config = load(&vars).unwrap();
        assert!(config.security.sends_password_in_clear());
        assert!(config.security.sasl.unwrap().plain_cleartext_allowed);
        // SCRAM never sends the password, and TLS hides it: no opt-in needed.
        let mut vars = sasl_plaintext.to_vec();
        vars.push(("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"));
        assert!(!load(&vars).unwrap().security.sends_password_in_clear());
        let mut vars = sasl_plaintext.to_vec();
        vars[0] = ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL");
        assert!(!load(&vars).unwrap().security.sends_password_in_clear());
        // Anything but true or false is a mistake, and so is the variable without SASL.
        let mut vars = sasl_plaintext.to_vec();
        vars.push(("KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT", "yes"));
        let err = load(&vars).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "invalid KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT=\"yes\": expected true or false"
            ),
            "{err}"
        );
        let err = load(&[("KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT", "true")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT="),
            "{err}"
        );
    }

    #[test]
    fn password_file_is_read_once_with_its_trailing_newline_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret \r\n").unwrap();
        let path = file.to_str().unwrap();
        let config = load(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_USERNAME", "alice"),
            ("KAFKA_SASL_PASSWORD_FILE", path),
        ])
        .unwrap();
        let sasl = config.security.sasl.unwrap();
        assert_eq!(sasl.password.expose(), "s3cret ");
        assert_eq!(sasl.password_source, PasswordSource::File(file.clone()));

        let both = load(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_USERNAME", "alice"),
            ("KAFKA_SASL_PASSWORD", "x"),
            ("KAFKA_SASL_PASSWORD_FILE", path),
        ])
        .unwrap_err()
        .to_string();
        assert!(both.contains("not both"), "{both}");

        let missing = dir.path().join("absent");
        let err = load(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_USERNAME", "alice"),
            ("KAFKA_SASL_PASSWORD_FILE", missing.to_str().unwrap()),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("invalid KAFKA_SASL_PASSWORD_FILE="),
            "{err}"
        );
        assert!(err.contains("readable file"), "{err}");
    }

    #[test]
    fn security_settings_that_do_not_fit_together_are_refused() {
        // (variables, the variable the error names, a fragment of what it says to do)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case<'_>] = &[
            (
                &[("KAFKA_SECURITY_PROTOCOL", "TLS")],
                "KAFKA_SECURITY_PROTOCOL",
                "SASL_SSL",
            ),
            (
                &[
                    ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                    ("KAFKA_SASL_PASSWORD", "x"),
                ],
                "KAFKA_SASL_USERNAME",
                "user name",
            ),
            (
                &[
                    ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                    ("KAFKA_SASL_USERNAME", "a"),
                ],
                "KAFKA_SASL_PASSWORD",
                "KAFKA_SASL_PASSWORD_FILE",
            ),
            (
                &[
                    ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                    ("KAFKA_SASL_MECHANISM", "GSSAPI"),
                ],
                "KAFKA_SASL_MECHANISM",
                "SCRAM-SHA-512",
            ),
            (
                &[("KAFKA_SASL_USERNAME", "a")],
                "KAFKA_SASL_USERNAME",
                "SASL_SSL",
            ),
            (
                &[("KAFKA_SASL_MECHANISM", "PLAIN")],
                "KAFKA_SASL_MECHANISM",
                "SASL",
            ),
            (
                &[("KAFKA_SSL_CA_LOCATION", "/ca.pem")],
                "KAFKA_SSL_CA_LOCATION",
                "SSL or SASL_SSL",
            ),
            (
                &[
                    ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
                    ("KAFKA_SASL_USERNAME", "a"),
                    ("KAFKA_SASL_PASSWORD", "b"),
                    ("KAFKA_SSL_CA_LOCATION", "/ca.pem"),
                ],
                "KAFKA_SSL_CA_LOCATION",
                "SSL or SASL_SSL",
            ),
            (
                &[
                    ("KAFKA_SECURITY_PROTOCOL", "SSL"),
                    ("KAFKA_SSL_CERTIFICATE_LOCATION", "/c.pem"),
                ],
                "KAFKA_SSL_CERTIFICATE_LOCATION",
                "KAFKA_SSL_KEY_LOCATION",
            ),
            (
                &[
                    ("KAFKA_SECURITY_PROTOCOL", "SSL"),
                    ("KAFKA_SSL_KEY_LOCATION", "/k.pem"),
                ],
                "KAFKA_SSL_KEY_LOCATION",
                "KAFKA_SSL_CERTIFICATE_LOCATION",
            ),
            (
                &[
                    ("KAFKA_SECURITY_PROTOCOL", "SSL"),
                    ("KAFKA_SSL_ENDPOINT_IDENTIFICATION", "yes"),
                ],
                "KAFKA_SSL_ENDPOINT_IDENTIFICATION",
                "none",
            ),
            (
                &[("KAFKA_DLQ_MAX_BYTES", "1023")],
                "KAFKA_DLQ_MAX_BYTES",
                "1024 to 16777216",
            ),
            (
                &[("KAFKA_DLQ_MAX_BYTES", "16777217")],
                "KAFKA_DLQ_MAX_BYTES",
                "1024",
            ),
        ];
        for (vars, name, fragment) in cases {
            let err = load(vars)
                .expect_err(&format!("{vars:?} accepted"))
                .to_string();
            assert!(
                err.starts_with(&format!("invalid {name}=")),
                "{vars:?}: {err}"
            );
            assert!(err.contains(fragment), "{vars:?}: {err}");
            assert!(!err.ends_with('.'), "{err}");
        }
    }

    #[test]
    fn the_password_is_wiped_when_its_secret_is_dropped() {
        fn wiped_on_drop<T: ZeroizeOnDrop>(_: &T) {}
        let config = load(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_USERNAME", "alice"),
            ("KAFKA_SASL_PASSWORD", "hunter2-secret"),
        ])
        .unwrap();
        let sasl = config.security.sasl.unwrap();
        wiped_on_drop(&sasl.password);
    }

    #[test]
    fn the_password_never_shows_in_debug_output_or_errors() {
        let config = load(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_USERNAME", "alice"),
            ("KAFKA_SASL_PASSWORD", "hunter2-secret"),
        ])
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let err = load(&[("KAFKA_SASL_PASSWORD", "hunter2-secret")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2-secret"), "{err}");
    }

    #[test]
    fn variables_table_lists_every_variable_once_with_the_contract_defaults() {
        let expected = [
            ("DATABASE_URL", "sqlite+aiosqlite:///./poc.db"),
            ("DATABASE_PASSWORD_FILE", ""),
            ("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            ("KAFKA_TOPIC", "provision-requests"),
            ("KAFKA_GROUP_ID", "provision-worker-group"),
            ("KAFKA_GROUP_INSTANCE_ID", ""),
            (
                "KAFKA_PARTITION_ASSIGNMENT_STRATEGY",
                "cooperative-sticky,range",
            ),
            ("MOCK_PROVISION_DELAY_SECONDS", "5"),
            ("WORKER_THREADS", "8"),
            ("SHUTDOWN_TIMEOUT_SECONDS", "30"),
            ("KAFKA_AUTO_OFFSET_RESET", "earliest"),
            ("KAFKA_DLQ_TOPIC", "provision-requests.dlq"),
            ("LOG_LEVEL", "INFO"),
            ("KAFKA_STARTUP_TIMEOUT_SECONDS", "30"),
            ("KAFKA_SESSION_TIMEOUT_MS", "10000"),
            ("KAFKA_HEARTBEAT_INTERVAL_MS", "3000"),
            ("KAFKA_REBALANCE_TIMEOUT_MS", "60000"),
            ("COMMIT_INTERVAL_MS", "1000"),
            ("KAFKA_FETCH_MAX_WAIT_MS", "40"),
            ("KAFKA_REQUEST_TIMEOUT_MS", "30000"),
            ("KAFKA_SOCKET_CONNECTION_SETUP_TIMEOUT_MS", "10000"),
            ("KAFKA_RETRY_BACKOFF_MS", "100"),
            ("KAFKA_RETRY_BACKOFF_MAX_MS", "1000"),
            ("KAFKA_RECONNECT_BACKOFF_MS", "50"),
            ("KAFKA_RECONNECT_BACKOFF_MAX_MS", "1000"),
            ("KAFKA_CLIENT_ID", "provision-worker"),
            ("METRICS_ADDR", ""),
            ("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
            ("KAFKA_SASL_MECHANISM", "PLAIN"),
            ("KAFKA_SASL_USERNAME", ""),
            ("KAFKA_SASL_PASSWORD", ""),
            ("KAFKA_SASL_PASSWORD_FILE", ""),
            ("KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT", "false"),
            ("KAFKA_SSL_CA_LOCATION", ""),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", ""),
            ("KAFKA_SSL_KEY_LOCATION", ""),
            ("KAFKA_SSL_ENDPOINT_IDENTIFICATION", "https"),
            ("KAFKA_DLQ_MAX_BYTES", "1000000"),
        ];
        let actual: Vec<(&str, &str)> = VARIABLES.iter().map(|&(n, d, _)| (n, d)).collect();
        assert_eq!(actual, expected);
        assert!(
            VARIABLES
                .iter()
                .all(|(_, _, description)| !description.is_empty())
        );
    }

    #[test]
    fn every_variable_set_to_a_valid_value_is_used() {
        let config = load(&[
            ("DATABASE_URL", "sqlite:////var/lib/poc.db"),
            ("KAFKA_BOOTSTRAP_SERVERS", " a:1 , b , [::1]:9093 "),
            ("KAFKA_TOPIC", "t.1"),
            ("KAFKA_GROUP_ID", "g"),
            ("KAFKA_GROUP_INSTANCE_ID", "edge-host_07.example"),
            (
                "KAFKA_PARTITION_ASSIGNMENT_STRATEGY",
                " Range , cooperative-sticky",
            ),
            ("MOCK_PROVISION_DELAY_SECONDS", "0.25"),
            ("WORKER_THREADS", "1024"),
            ("SHUTDOWN_TIMEOUT_SECONDS", "0"),
            ("KAFKA_AUTO_OFFSET_RESET", "LATEST"),
            ("KAFKA_DLQ_TOPIC", "dead"),
            ("LOG_LEVEL", "warning"),
            ("KAFKA_STARTUP_TIMEOUT_SECONDS", "1.5"),
            ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("KAFKA_HEARTBEAT_INTERVAL_MS", "5999"),
            ("KAFKA_REBALANCE_TIMEOUT_MS", "1000"),
            ("COMMIT_INTERVAL_MS", "10"),
            ("KAFKA_FETCH_MAX_WAIT_MS", "10000"),
            ("KAFKA_REQUEST_TIMEOUT_MS", "60000"),
            ("KAFKA_SOCKET_CONNECTION_SETUP_TIMEOUT_MS", "100"),
            ("KAFKA_RETRY_BACKOFF_MS", "250"),
            ("KAFKA_RETRY_BACKOFF_MAX_MS", "250"),
            ("KAFKA_RECONNECT_BACKOFF_MS", "1"),
            ("KAFKA_RECONNECT_BACKOFF_MAX_MS", "60000"),
            ("KAFKA_CLIENT_ID", "me"),
            ("METRICS_ADDR", "127.0.0.1:9464"),
        ])
        .unwrap();
        assert_eq!(config.request_timeout, Duration::from_secs(60));
        assert_eq!(config.connect_timeout, Duration::from_millis(100));
        assert_eq!(
            config.retry_backoff,
            (Duration::from_millis(250), Duration::from_millis(250))
        );
        assert_eq!(
            config.reconnect_backoff,
            (Duration::from_millis(1), Duration::from_secs(60))
        );
        assert_eq!(
            config.database,
            Database::Sqlite(PathBuf::from("/var/lib/poc.db"))
        );
        assert_eq!(config.bootstrap_servers, ["a:1", "b:9092", "[::1]:9093"]);
        assert_eq!(config.topic, "t.1");
        assert_eq!(config.group_id, "g");
        assert_eq!(
            config.group_instance_id.as_deref(),
            Some("edge-host_07.example")
        );
        assert_eq!(
            config.assignment_strategy,
            [
                AssignmentStrategy::Range,
                AssignmentStrategy::CooperativeSticky
            ]
        );
        assert_eq!(config.provision_delay, Duration::from_millis(250));
        assert_eq!(config.worker_threads, 1024);
        assert_eq!(config.shutdown_timeout, Duration::ZERO);
        assert_eq!(config.auto_offset_reset, OffsetReset::Latest);
        assert_eq!(config.dlq_topic.as_deref(), Some("dead"));
        assert_eq!(config.log_level, log::LevelFilter::Warn);
        assert_eq!(config.startup_timeout, Duration::from_millis(1500));
        assert_eq!(config.session_timeout, Duration::from_millis(6000));
        assert_eq!(config.heartbeat_interval, Duration::from_millis(5999));
        assert_eq!(config.rebalance_timeout, Duration::from_millis(1000));
        assert_eq!(config.commit_interval, Duration::from_millis(10));
        assert_eq!(config.fetch_max_wait, Duration::from_millis(10_000));
        assert_eq!(config.client_id, "me");
        assert_eq!(config.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn every_bad_value_is_reported_with_its_variable_and_value() {
        let cases: &[(&str, &str)] = &[
            ("DATABASE_URL", "postgresql://localhost/db"),
            ("DATABASE_URL", "mysql://localhost/db"),
            ("DATABASE_PASSWORD_FILE", "/no/such/file"),
            ("KAFKA_BOOTSTRAP_SERVERS", "host:0"),
            ("KAFKA_BOOTSTRAP_SERVERS", "host:65536"),
            ("KAFKA_BOOTSTRAP_SERVERS", "host:"),
            ("KAFKA_BOOTSTRAP_SERVERS", "a,,b"),
            ("KAFKA_BOOTSTRAP_SERVERS", "a,"),
            ("KAFKA_BOOTSTRAP_SERVERS", "kafka://a:9092"),
            ("KAFKA_BOOTSTRAP_SERVERS", "::1"),
            ("KAFKA_BOOTSTRAP_SERVERS", "[::1"),
            ("KAFKA_BOOTSTRAP_SERVERS", "[nonsense]:9092"),
            ("KAFKA_TOPIC", "bad topic"),
            ("KAFKA_TOPIC", ".."),
            ("KAFKA_GROUP_INSTANCE_ID", "host 1"),
            ("KAFKA_GROUP_INSTANCE_ID", "worker@host"),
            ("KAFKA_GROUP_INSTANCE_ID", ".."),
            ("KAFKA_PARTITION_ASSIGNMENT_STRATEGY", "roundrobin"),
            ("KAFKA_PARTITION_ASSIGNMENT_STRATEGY", "range,range"),
            ("KAFKA_PARTITION_ASSIGNMENT_STRATEGY", "range,"),
            ("KAFKA_PARTITION_ASSIGNMENT_STRATEGY", "sticky"),
            ("MOCK_PROVISION_DELAY_SECONDS", "abc"),
            ("MOCK_PROVISION_DELAY_SECONDS", "-1"),
            ("MOCK_PROVISION_DELAY_SECONDS", "NaN"),
            ("MOCK_PROVISION_DELAY_SECONDS", "inf"),
            ("MOCK_PROVISION_DELAY_SECONDS", "86400.5"),
            ("WORKER_THREADS", "abc"),
            ("WORKER_THREADS", "0"),
            ("WORKER_THREADS", "1025"),
            ("WORKER_THREADS", "2.5"),
            ("SHUTDOWN_TIMEOUT_SECONDS", "-0.1"),
            ("KAFKA_AUTO_OFFSET_RESET", "none"),
            ("KAFKA_DLQ_TOPIC", "bad/topic"),
            ("KAFKA_DLQ_TOPIC", "provision-requests"),
            ("LOG_LEVEL", "VERBOSE"),
            ("KAFKA_STARTUP_TIMEOUT_SECONDS", "soon"),
            ("KAFKA_SESSION_TIMEOUT_MS", "999"),
            ("KAFKA_SESSION_TIMEOUT_MS", "3600001"),
            ("KAFKA_HEARTBEAT_INTERVAL_MS", "99"),
            ("KAFKA_HEARTBEAT_INTERVAL_MS", "10000"),
            ("KAFKA_REBALANCE_TIMEOUT_MS", "999"),
            ("KAFKA_REBALANCE_TIMEOUT_MS", "2147483648"),
            ("COMMIT_INTERVAL_MS", "9"),
            ("COMMIT_INTERVAL_MS", "60001"),
            ("KAFKA_FETCH_MAX_WAIT_MS", "0"),
            ("KAFKA_FETCH_MAX_WAIT_MS", "10001"),
            ("KAFKA_REQUEST_TIMEOUT_MS", "999"),
            ("KAFKA_REQUEST_TIMEOUT_MS", "3600001"),
            ("KAFKA_REQUEST_TIMEOUT_MS", "30s"),
            ("KAFKA_SOCKET_CONNECTION_SETUP_TIMEOUT_MS", "99"),
            ("KAFKA_RETRY_BACKOFF_MS", "0"),
            ("KAFKA_RETRY_BACKOFF_MS", "60001"),
            // Below the first wait (100 by default).
            ("KAFKA_RETRY_BACKOFF_MAX_MS", "99"),
            ("KAFKA_RETRY_BACKOFF_MAX_MS", "60001"),
            ("KAFKA_RECONNECT_BACKOFF_MS", "-1"),
            ("KAFKA_RECONNECT_BACKOFF_MAX_MS", "49"),
            ("METRICS_ADDR", "localhost:9464"),
        ];
        for &(name, value) in cases {
            let err = load(&[(name, value)]).expect_err(&format!("{name}={value} accepted"));
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("invalid {name}={value:?}: expected ")),
                "{name}={value}: {message}"
            );
            assert!(!message.ends_with('.'), "{message}");
        }
    }

    #[test]
    fn error_message_says_what_is_accepted() {
        let err = load(&[("WORKER_THREADS", "abc")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid WORKER_THREADS=\"abc\": expected a whole number from 1 to 1024"
        );
        let err = load(&[
            ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("KAFKA_HEARTBEAT_INTERVAL_MS", "6000"),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid KAFKA_HEARTBEAT_INTERVAL_MS=\"6000\": expected a whole number of \
             milliseconds from 100 to 5999 (less than KAFKA_SESSION_TIMEOUT_MS=6000)"
        );
    }

    #[test]
    fn empty_or_blank_values_mean_the_default() {
        let config = load(&[
            ("WORKER_THREADS", ""),
            ("KAFKA_TOPIC", "   "),
            ("LOG_LEVEL", "\t"),
        ])
        .unwrap();
        assert_eq!(config.worker_threads, 8);
        assert_eq!(config.topic, "provision-requests");
        assert_eq!(config.log_level, log::LevelFilter::Info);
    }

    #[test]
    fn seconds_accept_any_float_spelling_in_range() {
        for (value, expected) in [
            ("0.001", Duration::from_millis(1)),
            ("-0", Duration::ZERO),
            ("1e2", Duration::from_secs(100)),
            ("86400", Duration::from_secs(86_400)),
        ] {
            let config = load(&[("MOCK_PROVISION_DELAY_SECONDS", value)]).unwrap();
            assert_eq!(config.provision_delay, expected, "{value}");
        }
    }

    #[test]
    fn empty_dlq_topic_disables_dead_lettering() {
        assert_eq!(load(&[("KAFKA_DLQ_TOPIC", "")]).unwrap().dlq_topic, None);
        assert_eq!(load(&[("KAFKA_DLQ_TOPIC", "  ")]).unwrap().dlq_topic, None);
    }

    #[test]
    fn values_are_trimmed() {
        let config = load(&[("WORKER_THREADS", " 4 "), ("KAFKA_GROUP_ID", " g ")]).unwrap();
        assert_eq!(config.worker_threads, 4);
        assert_eq!(config.group_id, "g");
    }

    #[test]
    fn log_levels_accept_python_names_in_any_case() {
        for (value, level) in [
            ("trace", log::LevelFilter::Trace),
            ("Debug", log::LevelFilter::Debug),
            ("INFO", log::LevelFilter::Info),
            ("WARN", log::LevelFilter::Warn),
            ("warning", log::LevelFilter::Warn),
            ("ERROR", log::LevelFilter::Error),
            ("critical", log::LevelFilter::Error),
        ] {
            assert_eq!(load(&[("LOG_LEVEL", value)]).unwrap().log_level, level);
        }
    }

    #[test]
    fn environment_wins_over_dotenv() {
        let (config, _dir) = load_with_dotenv(
            &[("WORKER_THREADS", "3")],
            "WORKER_THREADS=5\nKAFKA_TOPIC=from-file\n",
        );
        let config = config.unwrap();
        assert_eq!(config.worker_threads, 3);
        assert_eq!(config.topic, "from-file");
    }

    #[test]
    fn dotenv_alone_configures_the_worker() {
        let (config, _dir) = load_with_dotenv(
            &[],
            "# comment\nexport KAFKA_TOPIC=\"quoted\"\nKAFKA_DLQ_TOPIC=\nDATABASE_URL='sqlite:///x.db'\n",
        );
        let config = config.unwrap();
        assert_eq!(config.topic, "quoted");
        assert_eq!(config.dlq_topic, None);
        assert_eq!(config.database, Database::Sqlite(PathBuf::from("x.db")));
    }

    /// Azure Event Hubs' SASL user name is the literal `$ConnectionString`. In `.env`, as in
    /// a shell, only single quotes keep it: dotenvy expands `$ConnectionString` unquoted or
    /// in double quotes (to nothing, as no such variable is set). README's example quotes it.
    #[test]
    fn event_hubs_user_name_survives_dotenv_only_in_single_quotes() {
        let user = |line: &str| {
            let contents = format!(
                "KAFKA_SECURITY_PROTOCOL=SASL_SSL\nKAFKA_SASL_MECHANISM=PLAIN\nKAFKA_SASL_PASSWORD='Endpoint=sb://x/;SharedAccessKey=k'\n{line}\n"
            );
            let (config, _dir) = load_with_dotenv(&[], &contents);
            config.map(|c| c.security.sasl.map(|s| s.username))
        };
        assert_eq!(
            user("KAFKA_SASL_USERNAME='$ConnectionString'").unwrap(),
            Some("$ConnectionString".to_owned())
        );
        // Unquoted, dotenvy expands it to an empty name, which is refused (SASL needs a
        // user name) instead of failing at the broker; in double quotes dotenvy refuses the
        // line. Either way the worker stops at start and says where.
        let err = user("KAFKA_SASL_USERNAME=$ConnectionString")
            .expect_err("an empty user name")
            .to_string();
        assert!(err.contains("KAFKA_SASL_USERNAME"), "{err}");
        let err = user("KAFKA_SASL_USERNAME=\"$ConnectionString\"")
            .expect_err("a line dotenvy refuses")
            .to_string();
        assert!(err.contains(".env"), "{err}");
    }

    #[test]
    fn first_declaration_in_dotenv_wins_like_dotenvy() {
        let (config, _dir) = load_with_dotenv(&[], "WORKER_THREADS=2\nWORKER_THREADS=7\n");
        assert_eq!(config.unwrap().worker_threads, 2);
    }

    #[test]
    fn missing_dotenv_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_sources(&|_| None, Some(&dir.path().join(".env"))).unwrap();
        assert_eq!(config.worker_threads, 8);
    }

    #[test]
    fn malformed_dotenv_names_the_file_and_line() {
        let (result, dir) = load_with_dotenv(&[], "KAFKA_TOPIC=a\n\n# ok\nnot a line\n");
        let err = result.unwrap_err();
        let path = dir.path().join(".env");
        assert_eq!(
            err,
            ConfigError::DotenvSyntax {
                path: path.clone(),
                line: Some(4)
            }
        );
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("line 4"), "{message}");
    }

    #[test]
    fn dotenv_with_unclosed_quote_is_an_error() {
        let (result, _dir) = load_with_dotenv(&[], "KAFKA_TOPIC=\"open\n");
        assert!(
            matches!(result, Err(ConfigError::DotenvSyntax { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn dotenv_byte_order_mark_is_named() {
        let (result, _dir) = load_with_dotenv(&[], "\u{feff}KAFKA_TOPIC=a\n");
        assert!(
            matches!(result, Err(ConfigError::DotenvByteOrderMark { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn unreadable_dotenv_is_an_error() {
        // A directory where the file should be: opening works, reading fails.
        let dir = tempfile::tempdir().unwrap();
        let result = Config::from_sources(&|_| None, Some(dir.path()));
        assert!(
            matches!(result, Err(ConfigError::DotenvRead { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn database_urls() {
        check_url("sqlite:///relative.db", Ok("relative.db"));
        check_url("sqlite+aiosqlite:///./poc.db", Ok("./poc.db"));
        check_url(
            "sqlite+pysqlite:///../backend/poc.db",
            Ok("../backend/poc.db"),
        );
        check_url("sqlite:////abs/path.db", Ok("/abs/path.db"));
        check_url("SQLite:///upper.db", Ok("upper.db"));
        check_url("sqlite:///poc.db?timeout=5&uri=true", Ok("poc.db"));
        check_url("sqlite:///my%20data.db", Ok("my data.db"));
        check_url("sqlite:///what%3F.db", Ok("what?.db"));
        check_url("sqlite:///caf%C3%A9.db", Ok("café.db"));
        check_url("sqlite:///100%.db", Ok("100%.db"));
        check_url("sqlite:///bad%zz.db", Ok("bad%zz.db"));
        check_url("sqlite://", Err("not an in-memory database"));
        check_url("sqlite:///", Err("not an in-memory database"));
        check_url("sqlite:///:memory:", Err("not an in-memory database"));
        check_url("sqlite+aiosqlite://", Err("not an in-memory database"));
        check_url("sqlite:///?mode=memory", Err("not an in-memory database"));
        check_url("sqlite://host/poc.db", Err("sqlite:///./poc.db"));
        check_url("sqlite:///nul%00.db", Err("sqlite:///./poc.db"));
        check_url("sqlite:///bad%FF.db", Err("sqlite:///./poc.db"));
        check_url("mysql://localhost/db", Err("sqlite:///./poc.db"));
        check_url("sqlite+asyncpg:///x.db", Err("sqlite:///./poc.db"));
        check_url("./poc.db", Err("sqlite:///./poc.db"));
        check_url("/abs/poc.db", Err("sqlite:///./poc.db"));
        check_url("sqlite:poc.db", Err("sqlite:///./poc.db"));
    }

    #[test]
    fn database_url_is_kept_as_given_for_the_log_line() {
        let config = load(&[("DATABASE_URL", " sqlite:///./x.db ")]).unwrap();
        assert_eq!(config.database_url, "sqlite:///./x.db");
    }

    #[test]
    fn a_postgresql_url_is_kept_with_its_password_masked_and_a_bad_one_shown_so() {
        let url = "postgresql+asyncpg://app:app-pw@127.0.0.1:5432/app";
        let config = load(&[("DATABASE_URL", url)]).unwrap();
        assert_eq!(
            config.database_url,
            "postgresql+asyncpg://app:***@127.0.0.1:5432/app"
        );
        assert!(matches!(config.database, Database::Postgres(_)));
        assert!(!format!("{config:?}").contains("app-pw"));
        let err = load(&[("DATABASE_URL", "postgresql+asyncpg://app:app-pw@db:x/app")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid DATABASE_URL=\"postgresql+asyncpg://app:***@db:x/app\""),
            "{err}"
        );
    }

    #[test]
    fn the_database_password_file_is_checked_at_start_and_used_by_postgresql_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pg-password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let shown = file.display().to_string();
        let config = load(&[
            ("DATABASE_URL", "postgresql://app@db/app"),
            ("DATABASE_PASSWORD_FILE", &shown),
        ])
        .unwrap();
        let Database::Postgres(pg) = &config.database else {
            panic!("{:?}", config.database);
        };
        assert_eq!(pg.password, Some(DatabasePassword::File(file.clone())));
        std::fs::write(&file, "\n").unwrap();
        let empty = load(&[
            ("DATABASE_URL", "postgresql://app@db/app"),
            ("DATABASE_PASSWORD_FILE", &shown),
        ])
        .unwrap_err()
        .to_string();
        assert!(empty.contains("this one is empty"), "{empty}");
        std::fs::write(&file, "s3cret").unwrap();
        let sqlite = load(&[("DATABASE_PASSWORD_FILE", &shown)])
            .unwrap_err()
            .to_string();
        assert!(
            sqlite.contains("SQLite file, which has no password"),
            "{sqlite}"
        );
    }

    #[test]
    fn dotenv_and_read_errors_end_without_a_period() {
        let errors = [
            ConfigError::NotUnicode { name: "LOG_LEVEL" },
            ConfigError::DotenvRead {
                path: PathBuf::from(".env"),
                reason: "denied".into(),
            },
            ConfigError::DotenvSyntax {
                path: PathBuf::from(".env"),
                line: None,
            },
            ConfigError::DotenvByteOrderMark {
                path: PathBuf::from(".env"),
            },
        ];
        for err in errors {
            let message = err.to_string();
            assert!(!message.ends_with('.'), "{message}");
            assert!(message.starts_with(char::is_lowercase), "{message}");
        }
    }
}
