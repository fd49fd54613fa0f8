//! The PostgreSQL backend: for a backend that outgrew one host, so that workers on several
//! hosts share the requests' state.
//!
//! Each transition is one conditional statement in its own autocommit transaction, on a
//! connection of an r2d2 pool (one per worker thread, plus one for reads), through our
//! blocking client (`crates/blocking-postgres`) with prepared statements. No group commit of
//! our own: PostgreSQL flushes the WAL of every transaction committing at the same time in
//! one write, so concurrent workers' commits share their flushes on the server (measured:
//! README "Performance").
//!
//! Durability: every session runs with `synchronous_commit=on` (set by the worker, whatever
//! the server's default), so a transition returns only once its commit is flushed to the
//! server's WAL; a sync before an offset commit has nothing left to do and answers at once.
//!
//! - `schema.rs`: connecting, the session's settings, creating and checking the table (as
//!   SQLAlchemy creates it: `varchar`/`text`, `timestamp`), and what `check` reports.
//! - `transitions.rs`: the SQL of each transition and of the reads, written for the
//!   column types the table has.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use blocking_postgres::{Manager, Timestamp};

use super::{Applied, Backend, Row, StoreError, Syncing, Transition, WriteCounts};
use crate::config::PostgresConfig;
use crate::request::ProvisionRequest;
use transitions::Statements;

mod schema;
mod transitions;

pub use schema::ServerReport;

/// How to open the PostgreSQL store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Connections in the pool: one per worker thread, plus one for reads (the health
    /// check, the start-up report). At least 1.
    pub pool_size: u32,
    /// Create `provision_requests` when it is missing (the worker, `send`); `status` only
    /// reads, and a missing table is an error.
    pub create_table: bool,
}

/// The PostgreSQL backend: a pool of connections, and the SQL of each transition for the
/// table it found.
#[derive(Debug)]
pub(super) struct Postgres {
    /// Connections, each opened with the worker's session settings; a connection that broke
    /// is dropped when it comes back and a new one opened. Lives as long as the store.
    pool: r2d2::Pool<Manager>,
    /// The statements, written at open for the table's column types.
    statements: Arc<Statements>,
    /// "host:port", for messages.
    server: String,
    /// For [`Store::write_counts`](super::Store::write_counts): one transaction per
    /// transition.
    transitions: AtomicU64,
}

/// How long a worker waits for a pooled connection before the step counts as failed (and is
/// retried with backoff). The pool has a connection per worker thread, so a wait means
/// connections are being (re)opened: the server restarts, or refuses us. Short, so the
/// worker logs the outage within seconds and a shutdown is not held up for long.
pub(super) const POOL_TIMEOUT: Duration = Duration::from_secs(5);

impl Postgres {
    /// Connects, checks the server and the table (creating it if asked to), and starts the
    /// pool. Every error names the server and what to do.
    pub(super) fn open(
        config: &PostgresConfig,
        options: PostgresOptions,
    ) -> Result<Postgres, StoreError> {
        if options.pool_size == 0 {
            return Err(StoreError::ZeroPoolSize);
        }
        let server = config.addr();
        let connector = schema::connector(config)?;
        let mut first = connector
            .connect()
            .map_err(|source| StoreError::PgConnect {
                server: server.clone(),
                source,
            })?;
        let table = schema::prepare_table(&mut first, &server, options.create_table)?;
        let statements = Arc::new(Statements::for_table(&table));
        // The first connection served its purpose; the pool opens its own.
        drop(first);
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size)
            .connection_timeout(POOL_TIMEOUT)
            // One round trip per checkout would double the worker's: a broken connection
            // is found when it is used (a transient error, retried), and dropped on return.
            .test_on_check_out(false)
            .error_handler(Box::new(QuietErrors))
            .build_unchecked(Manager::new(connector));
        log::info!(
            "database {} at {server} ready (pool of {})",
            config.dbname.as_deref().unwrap_or(&config.user),
            options.pool_size
        );
        Ok(Postgres {
            pool,
            statements,
            server,
            transitions: AtomicU64::new(0),
        })
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<Manager>, StoreError> {
        self.pool.get().map_err(|e| StoreError::PgPool {
            server: self.server.clone(),
            reason: e.to_string(),
        })
    }
}

impl Backend for Postgres {
    /// Each transition in its own transaction, in order, on one connection: two in one
    /// transaction would cost a round trip each for `BEGIN` and `COMMIT` and save nothing
    /// the server does not already share (one WAL flush serves every commit waiting).
    fn write(&self, transitions: Vec<Transition>) -> Vec<Result<Applied, StoreError>> {
        let mut conn = match self.pool.get() {
            Ok(conn) => conn,
            Err(e) => {
                let reason = e.to_string();
                return transitions
                    .iter()
                    .map(|_| {
                        Err(StoreError::PgPool {
                            server: self.server.clone(),
                            reason: reason.clone(),
                        })
                    })
                    .collect();
            }
        };
        let outcomes: Vec<Result<Applied, StoreError>> = transitions
            .iter()
            .map(|t| self.statements.apply(&mut conn, t))
            .collect();
        let done = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
        self.transitions.fetch_add(done, Ordering::Relaxed);
        outcomes
    }

    /// Nothing to wait for: each transition returned only once its commit was flushed
    /// (`synchronous_commit=on`).
    fn start_sync(&self) -> Syncing {
        let (answer, syncing) = Syncing::start();
        answer.answer(Ok(()));
        syncing
    }

    fn write_counts(&self) -> WriteCounts {
        let n = self.transitions.load(Ordering::Relaxed);
        WriteCounts {
            transactions: n,
            transitions: n,
        }
    }

    fn insert_pending(&self, req: &ProvisionRequest) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        self.statements.insert_pending(&mut conn, req)
    }

    fn get(&self, request_id: &str) -> Result<Option<Row>, StoreError> {
        let mut conn = self.conn()?;
        self.statements.get(&mut conn, request_id)
    }

    fn provisioning_before(&self, cutoff: SystemTime) -> Result<Vec<Row>, StoreError> {
        let mut conn = self.conn()?;
        self.statements
            .provisioning_before(&mut conn, Timestamp::from(cutoff))
    }
}

/// The settings checked and the TLS files read, without connecting.
pub(super) fn check_settings(config: &PostgresConfig) -> Result<(), StoreError> {
    schema::connector(config).map(drop)
}

/// What `check` reports about a PostgreSQL server, without creating anything.
pub(super) fn report(config: &PostgresConfig) -> Result<ServerReport, StoreError> {
    schema::report(config)
}

/// r2d2 logs a failed connection attempt at ERROR from its own threads; the worker's own
/// retries already say that the database is unavailable, and why, once per step.
#[derive(Debug)]
struct QuietErrors;

impl r2d2::HandleError<blocking_postgres::Error> for QuietErrors {
    fn handle_error(&self, error: blocking_postgres::Error) {
        log::debug!("opening a pooled PostgreSQL connection failed: {error}");
    }
}
