//! The store: the `provision_requests` table and every state transition as a named function,
//! behind one interface ([`Store`]) whatever database holds it.
//!
//! Each transition is conditional (`... WHERE status IN (...)`), so a redelivered or
//! duplicated message can never move a request backwards: `completed` and `failed` are final.
//! The store never retries: a fault comes back as a [`StoreError`], sorted in one place
//! ([`StoreError::fault`], `error.rs`) into transient (retry with backoff), permanent (the
//! database refuses this transition and will again) and fatal (durability is lost), and the
//! worker that called decides, where shutdown can interrupt a wait.
//!
//! Durability: a transition returns once committed, but a commit need not be on disk yet.
//! [`Store::start_sync`] makes every transaction committed before it durable, off the
//! caller's thread; the poller waits for it before it commits Kafka offsets, so one sync
//! covers a whole batch of completions.
//!
//! # Layout
//! - `mod.rs` (this file): the interface: [`Status`], [`Claim`], [`Row`], [`Store`], and the
//!   [`Backend`] trait each database implements.
//! - `error.rs`: [`StoreError`] and [`Fault`], the one sorting of database errors.
//! - `utc.rs`: timestamps in the text SQLAlchemy stores.
//! - `group.rs`: group commit, the leader/follower queue in front of one write connection
//!   (pure; SQLite uses it).
//! - `sqlite/`: the SQLite backend, the default: `mod.rs` (the backend, its reads),
//!   `schema.rs` (opening and checking the file and table), `transitions.rs` (the SQL of each
//!   transition and the batches group commit runs), `durability.rs` (the thread that syncs
//!   and checkpoints).
//! - `postgres/`: the PostgreSQL backend: `mod.rs` (the backend, its pool), `schema.rs`
//!   (connecting, creating and checking the table, what `check` reports), `transitions.rs`
//!   (the SQL of each transition, one autocommit statement each).
//!
//! The two implement [`Backend`]; nothing above the store knows which one runs.
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};

use crate::request::ProvisionRequest;

mod error;
mod group;
mod postgres;
mod sqlite;
mod utc;

pub use error::{Fault, StoreError};
pub use postgres::{PostgresOptions, ServerReport};
pub use sqlite::StoreOptions;
pub use utc::utc_now;

/// Where a request is in its life. Stored as lower-case text in `provision_requests.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Inserted by the backend; no worker has taken it yet.
    Pending,
    /// A worker has claimed it and is (or was, before a crash) provisioning.
    Provisioning,
    /// Final: provisioned; the row holds the kubeconfig.
    Completed,
    /// Final: gave up; the row holds the reason.
    Failed,
}

/// What [`Store::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The row is now `provisioning` (inserted, moved from `pending`, or re-claimed after a
    /// redelivery); the caller goes on to provision.
    Claimed,
    /// The row was already final and was left as it was; the message is a duplicate.
    AlreadyFinal(Status),
}

/// One row of `provision_requests`, as stored.
///
/// `status` stays text, so a row written by another program with a value this worker does not
/// know can still be read and shown. `Debug` is written by hand to keep the kubeconfig (it holds
/// a token) out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Row {
    pub request_id: String,
    pub user_id: String,
    pub gpu_count: i64,
    pub duration_hours: i64,
    pub status: String,
    pub kubeconfig: Option<String>,
    pub error_message: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// What the writer has done since the store opened (see [`Store::write_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteCounts {
    /// Transactions of transitions committed.
    pub transactions: u64,
    /// Transitions (claims, completions, failures) committed in them, including those that
    /// matched no row.
    pub transitions: u64,
}

/// The database, shared by the worker threads (`Store` is `Sync`; wrap it in an `Arc`).
#[derive(Debug)]
pub struct Store {
    engine: Engine,
}

/// The backend a store runs on; each implements [`Backend`]. An enum, not a trait object:
/// the calls are static and inline into the workers' path, where a `dyn` call measurably
/// deepened every worker's stack (scenario 3 of the benchmark, 64 threads). A second backend
/// adds a variant here and a line to `on_backend!`.
#[derive(Debug)]
enum Engine {
    Sqlite(Arc<sqlite::Sqlite>),
    Postgres(Arc<postgres::Postgres>),
}

/// `$call` with `$b` bound to the store's backend, dispatched statically.
macro_rules! on_backend {
    ($store:expr, $b:ident => $call:expr) => {
        match &$store.engine {
            Engine::Sqlite($b) => $call,
            Engine::Postgres($b) => $call,
        }
    };
}

/// A sync started by [`Store::start_sync`]: [`Syncing::receiver`] gets a message once every
/// transaction committed before the sync started is on disk, or durability is lost; then
/// [`Syncing::result`] says which.
///
/// Why a `()` channel and a slot beside it, not a channel of results: a channel of a type of
/// its own brings its own copy of crossbeam's channel code, which the poller's loop runs
/// (and keeps in memory: code pages counted in the benchmark's peak RSS), where `()` channels
/// are already there for the shutdown signal.
#[derive(Debug)]
pub struct Syncing {
    done: Receiver<()>,
    failure: Arc<Mutex<Option<StoreError>>>,
}

/// The sending half of a [`Syncing`], for the backend that runs the sync.
#[derive(Debug)]
pub(crate) struct SyncAnswer {
    done: Sender<()>,
    failure: Arc<Mutex<Option<StoreError>>>,
}

/// A status text that is not one of `pending`, `provisioning`, `completed`, `failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseStatusError {
    pub value: String,
}

/// What a database backend provides. Every method may block (the callers are worker threads
/// and the poller's sync thread, never the poller itself); none retries.
pub(crate) trait Backend: Send + Sync + fmt::Debug {
    /// Runs `transitions` in this order, each with its own conditional statement and its own
    /// outcome (one refused transition fails alone, the others are committed); returns once
    /// they are committed or failed. SQLite runs them in one transaction, which may also
    /// carry the transitions of other callers (group commit); PostgreSQL each in its own. An
    /// outcome whose fault is fatal stops the worker (it is not retried); every later sync
    /// should fail with it too (PostgreSQL has no fatal outcome).
    fn write(&self, transitions: Vec<Transition>) -> Vec<Result<Applied, StoreError>>;

    /// Starts a sync (see [`Store::start_sync`]) and returns at once.
    fn start_sync(&self) -> Syncing;

    /// Transactions and transitions committed since the store opened.
    fn write_counts(&self) -> WriteCounts;

    /// Inserts a `pending` row (for the demo backend, `send`); [`StoreError::AlreadyExists`]
    /// if the request id is taken.
    fn insert_pending(&self, req: &ProvisionRequest) -> Result<(), StoreError>;

    /// The row of `request_id`, if there is one.
    fn get(&self, request_id: &str) -> Result<Option<Row>, StoreError>;

    /// Rows `provisioning` whose `updated_at` is before `cutoff`, oldest first.
    fn provisioning_before(&self, cutoff: SystemTime) -> Result<Vec<Row>, StoreError>;
}

/// One state transition. It owns what it writes: the leader of group commit that runs it may
/// be another worker's thread. `Debug` is written by hand: a completion holds a kubeconfig
/// (a bearer token).
pub(crate) enum Transition {
    Claim {
        request_id: String,
        user_id: String,
        gpu_count: i64,
        duration_hours: i64,
    },
    Complete {
        request_id: String,
        kubeconfig: String,
    },
    Fail {
        request_id: String,
        reason: String,
    },
}

/// What one transition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Claim(Claim),
    /// An update with a conditional `WHERE`: whether the row moved.
    Moved(bool),
}

impl Status {
    /// Every status, in the order of a request's life.
    pub const ALL: [Status; 4] = [
        Status::Pending,
        Status::Provisioning,
        Status::Completed,
        Status::Failed,
    ];

    /// The text stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Provisioning => "provisioning",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    /// `completed` and `failed` never change again.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed)
    }

    /// Whether a row in `self` may be moved to `next`. The SQL `WHERE` clauses of the
    /// transitions encode the same table (a test checks they agree).
    ///
    /// `provisioning -> provisioning` is allowed because a worker that crashed after claiming
    /// leaves the row there, and the redelivered message must be able to claim it again.
    pub fn can_move_to(self, next: Status) -> bool {
        matches!(
            (self, next),
            (Status::Pending, Status::Provisioning)
                | (Status::Provisioning, Status::Provisioning)
                | (Status::Provisioning, Status::Completed)
                | (Status::Pending | Status::Provisioning, Status::Failed)
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = ParseStatusError;

    fn from_str(s: &str) -> Result<Status, ParseStatusError> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| ParseStatusError {
                value: s.to_owned(),
            })
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Row")
            .field("request_id", &self.request_id)
            .field("user_id", &self.user_id)
            .field("gpu_count", &self.gpu_count)
            .field("duration_hours", &self.duration_hours)
            .field("status", &self.status)
            .field("kubeconfig", &self.kubeconfig.as_deref().map(Redacted))
            .field("error_message", &self.error_message)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database file with the default busy timeout
    /// (5 s). See [`Store::open_with`].
    pub fn open(path: &std::path::Path, pool_size: u32) -> Result<Store, StoreError> {
        Store::open_with(path, StoreOptions::new(pool_size))
    }

    /// Opens (creating if needed) the SQLite database file, applies `sql/schema.sql`, and
    /// checks at start what would otherwise fail on the first message (see
    /// `sqlite/schema.rs`).
    pub fn open_with(path: &std::path::Path, options: StoreOptions) -> Result<Store, StoreError> {
        sqlite::Sqlite::open(path, options).map(|s| Store::on_sqlite(Arc::new(s)))
    }

    /// Connects to PostgreSQL, creates `provision_requests` if it is missing (and
    /// `options.create_table` says so), checks the table and starts a pool of
    /// `options.pool_size` connections (see `postgres/`).
    pub fn open_postgres(
        config: &crate::config::PostgresConfig,
        options: PostgresOptions,
    ) -> Result<Store, StoreError> {
        postgres::Postgres::open(config, options).map(|p| Store {
            engine: Engine::Postgres(Arc::new(p)),
        })
    }

    /// Reads the TLS files PostgreSQL's settings name (`sslrootcert`, `sslcert`, `sslkey`)
    /// and checks the settings libpq would refuse, without connecting.
    pub fn check_postgres_settings(
        config: &crate::config::PostgresConfig,
    ) -> Result<(), StoreError> {
        postgres::check_settings(config)
    }

    /// What `check` reports about a PostgreSQL server: version, TLS, the user, durability
    /// settings, and the table (checked, never created).
    pub fn postgres_report(
        config: &crate::config::PostgresConfig,
    ) -> Result<ServerReport, StoreError> {
        postgres::report(config)
    }

    /// A store on a SQLite backend.
    fn on_sqlite(sqlite: Arc<sqlite::Sqlite>) -> Store {
        Store {
            engine: Engine::Sqlite(sqlite),
        }
    }

    /// Takes a request for provisioning: a missing row is inserted from the request as
    /// `provisioning`; a `pending` or `provisioning` row becomes `provisioning` (a
    /// `provisioning` row is a redelivery after a crash); a final row is left as it was and
    /// reported as [`Claim::AlreadyFinal`]. Returns once committed.
    pub fn claim(&self, req: &ProvisionRequest) -> Result<Claim, StoreError> {
        self.write_one(Transition::claim_of(req))
            .map(Applied::claim)
    }

    /// `provisioning -> completed`, storing the kubeconfig. `Ok(false)` if no row moved: the
    /// row is missing, still `pending`, or already final. Returns once committed.
    pub fn complete(&self, request_id: &str, kubeconfig: &str) -> Result<bool, StoreError> {
        self.write_one(Transition::Complete {
            request_id: request_id.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
        })
        .map(Applied::moved)
    }

    /// `pending | provisioning -> failed`, storing the reason. `Ok(false)` if no row moved: the
    /// row is missing or already final. Returns once committed.
    pub fn fail(&self, request_id: &str, reason: &str) -> Result<bool, StoreError> {
        self.write_one(Transition::Fail {
            request_id: request_id.to_owned(),
            reason: reason.to_owned(),
        })
        .map(Applied::moved)
    }

    /// [`Store::complete`] of one request and [`Store::claim`] of the next, written in the same
    /// transaction, each with its own outcome (one can fail while the other is committed). A
    /// worker that finishes a request while the next one is already waiting for it saves a
    /// round trip to the writer, and the transaction carries both.
    pub fn complete_and_claim(
        &self,
        request_id: &str,
        kubeconfig: &str,
        next: &ProvisionRequest,
    ) -> (Result<bool, StoreError>, Result<Claim, StoreError>) {
        let transitions = vec![
            Transition::Complete {
                request_id: request_id.to_owned(),
                kubeconfig: kubeconfig.to_owned(),
            },
            Transition::claim_of(next),
        ];
        let mut outcomes = on_backend!(self, b => b.write(transitions)).into_iter();
        let (Some(completed), Some(claimed)) = (outcomes.next(), outcomes.next()) else {
            unreachable!("a backend answers each transition")
        };
        (completed.map(Applied::moved), claimed.map(Applied::claim))
    }

    /// Transactions and transitions the writer has committed since the store opened; their
    /// ratio is the mean batch of group commit.
    pub fn write_counts(&self) -> WriteCounts {
        on_backend!(self, b => b.write_counts())
    }

    /// Starts making every transaction committed so far durable, on the store's own thread,
    /// and returns at once; the caller (the poller) keeps heartbeating while it runs and
    /// commits Kafka offsets only once it succeeded.
    pub fn start_sync(&self) -> Syncing {
        on_backend!(self, b => b.start_sync())
    }

    /// [`Store::start_sync`], waiting for its result.
    pub fn make_durable(&self) -> Result<(), StoreError> {
        self.start_sync().wait()
    }

    /// For the demo backend: inserts a `pending` row. Fails with
    /// [`StoreError::AlreadyExists`] if the request id is taken.
    pub fn insert_pending(&self, req: &ProvisionRequest) -> Result<(), StoreError> {
        on_backend!(self, b => b.insert_pending(req))
    }

    /// The row for `request_id`, if there is one.
    pub fn get(&self, request_id: &str) -> Result<Option<Row>, StoreError> {
        on_backend!(self, b => b.get(request_id))
    }

    /// Rows still `provisioning` whose `updated_at` is older than `older_than`, oldest first:
    /// requests a worker claimed and never finished (a crash, or a message now on another
    /// consumer), for the start-up report.
    pub fn stale_provisioning(&self, older_than: Duration) -> Result<Vec<Row>, StoreError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(UNIX_EPOCH);
        on_backend!(self, b => b.provisioning_before(cutoff))
    }

    /// Writes one transition and returns its outcome.
    fn write_one(&self, transition: Transition) -> Result<Applied, StoreError> {
        let mut outcomes = on_backend!(self, b => b.write(vec![transition]));
        // One transition in, one outcome out (the `Backend::write` contract).
        outcomes
            .pop()
            .unwrap_or_else(|| unreachable!("a backend answers each transition"))
    }
}

impl Syncing {
    /// A sync and the handle its backend answers through.
    pub(crate) fn start() -> (SyncAnswer, Syncing) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let failure = Arc::new(Mutex::new(None));
        (
            SyncAnswer {
                done: tx,
                failure: failure.clone(),
            },
            Syncing { done: rx, failure },
        )
    }

    /// Gets one message when the sync has finished (or is disconnected when its thread is
    /// gone), for a `select`; then [`Syncing::result`].
    pub fn receiver(&self) -> &Receiver<()> {
        &self.done
    }

    /// What became of the sync, given what [`Syncing::receiver`] gave.
    pub fn result(
        &self,
        received: Result<(), crossbeam_channel::RecvError>,
    ) -> Result<(), StoreError> {
        if received.is_err() {
            return Err(StoreError::SyncThreadGone);
        }
        match lock(&self.failure).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits for the result.
    pub fn wait(self) -> Result<(), StoreError> {
        let received = self.done.recv();
        self.result(received)
    }
}

impl SyncAnswer {
    /// Answers the sync; a caller that stopped waiting is not told.
    pub(crate) fn answer(self, result: Result<(), StoreError>) {
        if let Err(e) = result {
            *lock(&self.failure) = Some(e);
        }
        let _ = self.done.send(());
    }
}

/// The slot is written once and taken once: a holder that panicked left it consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Transition {
    /// The claim of `req`, as the writer takes it.
    fn claim_of(req: &ProvisionRequest) -> Transition {
        Transition::Claim {
            request_id: req.request_id.clone(),
            user_id: req.user_id.clone(),
            gpu_count: i64::from(req.gpu_count),
            duration_hours: i64::from(req.duration_hours),
        }
    }
}

impl fmt::Debug for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transition::Claim {
                request_id,
                user_id,
                gpu_count,
                duration_hours,
            } => f
                .debug_struct("Claim")
                .field("request_id", request_id)
                .field("user_id", user_id)
                .field("gpu_count", gpu_count)
                .field("duration_hours", duration_hours)
                .finish(),
            Transition::Complete {
                request_id,
                kubeconfig,
            } => f
                .debug_struct("Complete")
                .field("request_id", request_id)
                .field("kubeconfig", &Redacted(kubeconfig))
                .finish(),
            Transition::Fail { request_id, reason } => f
                .debug_struct("Fail")
                .field("request_id", request_id)
                .field("reason", reason)
                .finish(),
        }
    }
}

impl Applied {
    /// The outcome of a claim.
    pub(crate) fn claim(self) -> Claim {
        match self {
            Applied::Claim(claim) => claim,
            // A backend answers a claim with `Applied::Claim`, always.
            Applied::Moved(_) => unreachable!("a claim was answered as an update"),
        }
    }

    pub(crate) fn moved(self) -> bool {
        match self {
            Applied::Moved(moved) => moved,
            Applied::Claim(claim) => claim == Claim::Claimed,
        }
    }
}

impl fmt::Display for ParseStatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown status {:?}; expected pending, provisioning, completed or failed",
            self.value
        )
    }
}

impl std::error::Error for ParseStatusError {}

/// A kubeconfig in `Debug` output: its size, never its text (it holds a bearer token).
pub(crate) struct Redacted<'a>(pub &'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_round_trips_and_rejects_other_spellings() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
            assert_eq!(status.to_string(), status.as_str());
        }
        for bad in ["", "Pending", "PENDING", "done", " pending"] {
            let err = bad.parse::<Status>().unwrap_err();
            assert_eq!(err.value, bad);
            assert!(err.to_string().starts_with("unknown status"));
        }
    }

    #[test]
    fn transition_debug_shows_no_kubeconfig() {
        let token = crate::kubeconfig::new_token();
        let complete = Transition::Complete {
            request_id: "r1".to_owned(),
            kubeconfig: format!("users:\n- user:\n    token: \"{token}\"\n"),
        };
        let shown = format!("{complete:?}");
        assert!(!shown.contains(&token), "{shown}");
        assert!(
            shown.contains("r1") && shown.contains("redacted"),
            "{shown}"
        );
        // The other transitions hold nothing secret and show everything.
        let fail = Transition::Fail {
            request_id: "r2".to_owned(),
            reason: "quota".to_owned(),
        };
        assert_eq!(
            format!("{fail:?}"),
            "Fail { request_id: \"r2\", reason: \"quota\" }"
        );
    }

    #[test]
    fn row_debug_shows_no_kubeconfig() {
        let token = crate::kubeconfig::new_token();
        let row = Row {
            request_id: "r1".to_owned(),
            user_id: "alice".to_owned(),
            gpu_count: 1,
            duration_hours: 1,
            status: "completed".to_owned(),
            kubeconfig: Some(format!("token: \"{token}\"")),
            error_message: None,
            created_at: String::new(),
            updated_at: String::new(),
        };
        let shown = format!("{row:?}");
        assert!(!shown.contains(&token), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn can_move_to_allows_exactly_the_legal_transitions() {
        use Status::*;
        let legal = [
            (Pending, Provisioning),
            (Provisioning, Provisioning),
            (Provisioning, Completed),
            (Pending, Failed),
            (Provisioning, Failed),
        ];
        for from in Status::ALL {
            for to in Status::ALL {
                assert_eq!(
                    from.can_move_to(to),
                    legal.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
            assert_eq!(from.is_final(), matches!(from, Completed | Failed));
        }
    }
}
