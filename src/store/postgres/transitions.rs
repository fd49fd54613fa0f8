//! The transitions and reads in SQL for PostgreSQL, each a prepared statement (parsed once
//! per connection) in its own autocommit transaction, written at open for the column types
//! the table has: strings are sent as `text` and cast to the column's type when it is not a
//! string type (a native ENUM, `uuid`), numbers as `int8`, timestamps in the column's own
//! type (`timestamp` or `timestamptz`, binary, so no time zone setting is involved).
use blocking_postgres::{Client, Timestamp, ToSql};

use super::super::utc::format_utc;
use super::super::{Applied, Claim, Status, StoreError, Transition};
use super::schema::Table;
use crate::request::ProvisionRequest;

/// The SQL of every statement, for one table.
#[derive(Debug)]
pub(super) struct Statements {
    claim: String,
    claim_insert: String,
    status: String,
    complete: String,
    fail: String,
    insert_pending: String,
    get: String,
    stale: String,
    /// `request_id` is not a string type (`uuid`): an id that is not one of its values has
    /// no row.
    typed_request_id: bool,
}

// The statements, with `{id}`, `{user}`, `{kubeconfig}`, `{reason}` standing for their
// parameters in the column's type (see `Statements::for_table`) and `{row}` for a row's
// columns as the reads take them. The status literals are `Status::as_str` values, and each
// WHERE clause is the set of statuses that `Status::can_move_to` allows into the target, as
// in the SQLite backend.

/// `claim`, first step: the usual case, a row the backend inserted as `pending` (or one left
/// `provisioning` by a crash). A plain UPDATE: an upsert would take a value of a surrogate
/// key's sequence at every claim, and try the insert first.
const CLAIM_SQL: &str = "\
UPDATE provision_requests SET status = 'provisioning', updated_at = $2
WHERE request_id = {id} AND status IN ('pending', 'provisioning')";

/// `claim`, when no row moved: a missing row is inserted as `provisioning`; a row that exists
/// (final, or in a status we do not own) conflicts and is left alone.
const CLAIM_INSERT_SQL: &str = "\
INSERT INTO provision_requests
  (request_id, user_id, gpu_count, duration_hours, status, created_at, updated_at)
VALUES ({id}, {user}, $3::int8, $4::int8, 'provisioning', $5, $5)
ON CONFLICT (request_id) DO NOTHING";

const STATUS_SQL: &str = "SELECT status::text FROM provision_requests WHERE request_id = {id}";

const COMPLETE_SQL: &str = "\
UPDATE provision_requests SET status = 'completed', kubeconfig = {kubeconfig}, updated_at = $3
WHERE request_id = {id} AND status = 'provisioning'";

const FAIL_SQL: &str = "\
UPDATE provision_requests SET status = 'failed', error_message = {reason}, updated_at = $3
WHERE request_id = {id} AND status IN ('pending', 'provisioning')";

const INSERT_PENDING_SQL: &str = "\
INSERT INTO provision_requests
  (request_id, user_id, gpu_count, duration_hours, status, created_at, updated_at)
VALUES ({id}, {user}, $3::int8, $4::int8, 'pending', $5, $5)";

const GET_SQL: &str = "SELECT {row} FROM provision_requests WHERE request_id = {id}";

const STALE_SQL: &str = "\
SELECT {row} FROM provision_requests
WHERE status = 'provisioning' AND updated_at < $1 ORDER BY updated_at";

/// A row's columns as `Row` takes them: strings as text (an ENUM, a uuid too), counts as
/// int8, timestamps as they are.
const ROW: &str = "request_id::text, user_id::text, gpu_count::int8, duration_hours::int8, \
                   status::text, kubeconfig::text, error_message::text, created_at, updated_at";

/// A claim's three statements run as separate transactions, so the row can change between
/// them (the backend inserts it after our UPDATE found nothing, or deletes it); each retry
/// starts over. Three rounds without an answer is a race worth retrying later.
const CLAIM_ROUNDS: usize = 3;

impl Statements {
    /// The statements for `table`'s column types.
    pub(super) fn for_table(table: &Table) -> Statements {
        // `$n` as the column's type: text for a string type, else cast from text.
        let text = |column: &str, n: &str| {
            let c = table.column(column);
            if c.category == "S" {
                format!("${n}::text")
            } else {
                format!("CAST(${n}::text AS {})", c.type_name)
            }
        };
        let (id, user) = (text("request_id", "1"), text("user_id", "2"));
        let (kubeconfig, reason) = (text("kubeconfig", "2"), text("error_message", "2"));
        let sql = |template: &str| {
            template
                .replace("{id}", &id)
                .replace("{user}", &user)
                .replace("{kubeconfig}", &kubeconfig)
                .replace("{reason}", &reason)
                .replace("{row}", ROW)
        };
        Statements {
            claim: sql(CLAIM_SQL),
            claim_insert: sql(CLAIM_INSERT_SQL),
            status: sql(STATUS_SQL),
            complete: sql(COMPLETE_SQL),
            fail: sql(FAIL_SQL),
            insert_pending: sql(INSERT_PENDING_SQL),
            get: sql(GET_SQL),
            stale: sql(STALE_SQL),
            typed_request_id: table.column("request_id").category != "S",
        }
    }

    /// Runs one transition in its own transaction.
    pub(super) fn apply(
        &self,
        conn: &mut Client,
        transition: &Transition,
    ) -> Result<Applied, StoreError> {
        let now = Timestamp::now();
        match transition {
            Transition::Claim {
                request_id,
                user_id,
                gpu_count,
                duration_hours,
            } => {
                for _ in 0..CLAIM_ROUNDS {
                    let moved =
                        conn.execute(self.claim.as_str(), &[request_id as &dyn ToSql, &now])?;
                    if moved > 0 {
                        return Ok(Applied::Claim(Claim::Claimed));
                    }
                    let inserted = conn.execute(
                        self.claim_insert.as_str(),
                        &[
                            request_id as &dyn ToSql,
                            user_id,
                            gpu_count,
                            duration_hours,
                            &now,
                        ],
                    )?;
                    if inserted > 0 {
                        return Ok(Applied::Claim(Claim::Claimed));
                    }
                    // Neither moved nor inserted: the row exists in a status outside
                    // pending/provisioning, unless it changed since the UPDATE.
                    let value = conn
                        .query_opt(self.status.as_str(), &[request_id])?
                        .map(|row| row.get::<String>(0))
                        .transpose()?;
                    let Some(value) = value else {
                        continue; // deleted meanwhile: insert it
                    };
                    match value.parse::<Status>() {
                        Ok(status) if status.is_final() => {
                            return Ok(Applied::Claim(Claim::AlreadyFinal(status)));
                        }
                        Ok(_) => continue, // back to pending or provisioning: claim it
                        Err(_) => {
                            return Err(StoreError::ForeignStatus {
                                request_id: request_id.clone(),
                                status: value,
                            });
                        }
                    }
                }
                Err(StoreError::PgClaimRaced {
                    request_id: request_id.clone(),
                })
            }
            Transition::Complete {
                request_id,
                kubeconfig,
            } => {
                let changed = conn.execute(
                    self.complete.as_str(),
                    &[request_id as &dyn ToSql, kubeconfig, &now],
                )?;
                Ok(Applied::Moved(changed > 0))
            }
            Transition::Fail { request_id, reason } => {
                let changed = conn.execute(
                    self.fail.as_str(),
                    &[request_id as &dyn ToSql, reason, &now],
                )?;
                Ok(Applied::Moved(changed > 0))
            }
        }
    }

    /// Inserts a `pending` row, as the backend does.
    pub(super) fn insert_pending(
        &self,
        conn: &mut Client,
        req: &ProvisionRequest,
    ) -> Result<(), StoreError> {
        let gpus = i64::from(req.gpu_count);
        let hours = i64::from(req.duration_hours);
        let result = conn.execute(
            self.insert_pending.as_str(),
            &[
                &req.request_id as &dyn ToSql,
                &req.user_id,
                &gpus,
                &hours,
                &Timestamp::now(),
            ],
        );
        match result {
            Ok(_) => Ok(()),
            // A unique violation: the id is taken (by the primary key or another unique
            // index on it).
            Err(e) if e.code() == Some("23505") => Err(StoreError::AlreadyExists {
                request_id: req.request_id.clone(),
            }),
            Err(e) => Err(StoreError::Postgres(e)),
        }
    }

    /// The row of `request_id`, if there is one.
    pub(super) fn get(
        &self,
        conn: &mut Client,
        request_id: &str,
    ) -> Result<Option<super::super::Row>, StoreError> {
        match conn.query_opt(self.get.as_str(), &[&request_id]) {
            Ok(row) => row.map(|r| row_from_sql(&r)).transpose(),
            // Not a value of the column's type (not a uuid, say): no row has it.
            Err(e) if self.typed_request_id && e.code() == Some("22P02") => Ok(None),
            Err(e) => Err(StoreError::Postgres(e)),
        }
    }

    /// Rows `provisioning` since before `cutoff`, oldest first.
    pub(super) fn provisioning_before(
        &self,
        conn: &mut Client,
        cutoff: Timestamp,
    ) -> Result<Vec<super::super::Row>, StoreError> {
        conn.query(self.stale.as_str(), &[&cutoff])?
            .iter()
            .map(row_from_sql)
            .collect()
    }
}

/// A row as the store's readers see it: timestamps as the text SQLAlchemy stores on SQLite
/// (`YYYY-MM-DD HH:MM:SS.ffffff`, UTC), so `status` shows the same either way.
fn row_from_sql(r: &blocking_postgres::Row) -> Result<super::super::Row, StoreError> {
    Ok(super::super::Row {
        request_id: r.get(0)?,
        user_id: r.get(1)?,
        gpu_count: r.get(2)?,
        duration_hours: r.get(3)?,
        status: r.get(4)?,
        kubeconfig: r.get(5)?,
        error_message: r.get(6)?,
        created_at: timestamp_text(r.get(7)?),
        updated_at: timestamp_text(r.get(8)?),
    })
}

/// `infinity` and `-infinity` as PostgreSQL writes them; any other time as SQLAlchemy does.
fn timestamp_text(t: Timestamp) -> String {
    match t.to_system_time() {
        Some(time) if t.unix_micros() >= 0 => format_utc(time),
        _ => t.to_string(),
    }
}
