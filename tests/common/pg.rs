//! The worker's tests on PostgreSQL: [`PgDb`], a database of its own on a private cluster
//! (crates/pg-testkit), read and seeded through psql, an independent client, the way a
//! backend would; and [`Db`], what a test needs of a database whichever backend holds it,
//! so the same test body runs against SQLite ([`TempDb`]) and PostgreSQL.
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

pub use pg_testkit::{Options, PgCluster, SCRAM_PASSWORD};

use super::{RequestRow, TempDb};

/// What a test reads and writes in the database, on either backend.
pub trait Db {
    /// `DATABASE_URL` for the worker.
    fn url(&self) -> String;
    /// `DATABASE_URL` as the worker shows it (its password masked).
    fn shown_url(&self) -> String {
        self.url()
    }
    /// Inserts a `pending` row as the backend does, creating the table first if needed.
    fn insert_pending(&self, id: &str, user: &str, gpus: i64, hours: i64);
    /// Every row, by request id (empty when there is no table yet).
    fn all_rows(&self) -> HashMap<String, RequestRow>;
    /// The status of `id`, or `None` without such a row (or table).
    fn status_of(&self, id: &str) -> Option<String>;
    /// The row of `id`, if any.
    fn row(&self, id: &str) -> Option<RequestRow>;
    /// How many rows have each status.
    fn count_by_status(&self) -> HashMap<String, i64>;
    /// Runs SQL both backends read alike (literal values, no placeholders), as the backend.
    fn execute(&self, sql: &str);
    /// Whether `provision_requests` exists.
    fn table_exists(&self) -> bool;
}

/// A database of its own (owned by `scram_user`) on the cluster shared by this test binary,
/// or on one a test started for itself (to restart or stop it).
pub struct PgDb {
    cluster: Arc<PgCluster>,
    name: String,
}

/// The advisory lock the worker takes around creating the table (src/store/postgres/
/// schema.rs), so a test creating it at the same moment does not race it.
const CREATE_LOCK: i64 = 0x7072_6f76_6973_696f;

/// What psql prints for NULL here (never a hex string).
const NULL: &str = "NULL";

/// One cluster for the test binary, with room for several workers' pools (each takes
/// `WORKER_THREADS` + 1 connections).
pub fn cluster() -> Arc<PgCluster> {
    static SHARED: OnceLock<Arc<PgCluster>> = OnceLock::new();
    SHARED
        .get_or_init(|| Arc::new(PgCluster::start_with(roomy())))
        .clone()
}

/// The harness's defaults with room for several workers' pools.
pub fn roomy() -> Options {
    Options {
        extra_conf: vec!["max_connections = 200".to_owned()],
        ..Options::default()
    }
}

impl PgDb {
    /// A fresh database on the shared cluster.
    pub fn new() -> PgDb {
        PgDb::on(cluster())
    }

    /// A fresh database on `cluster` (one a test restarts or stops).
    pub fn on(cluster: Arc<PgCluster>) -> PgDb {
        let name = cluster.create_database("scram_user");
        PgDb { cluster, name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn cluster(&self) -> &PgCluster {
        &self.cluster
    }

    /// The URL with `query` (e.g. `sslmode=verify-full&sslrootcert=...`) and the scheme
    /// the async backend writes.
    pub fn url_with(&self, password: Option<&str>, query: &str) -> String {
        let auth = match password {
            Some(p) => format!("scram_user:{p}"),
            None => "scram_user".to_owned(),
        };
        let mut url = format!(
            "postgresql+asyncpg://{auth}@{}:{}/{}",
            self.cluster.host(),
            self.cluster.port(),
            self.name
        );
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// TLS checked against the test CA, by name.
    pub fn verify_full(&self) -> String {
        format!(
            "sslmode=verify-full&sslrootcert={}",
            self.cluster.ca_file().display()
        )
    }

    /// psql in this database, as the superuser.
    pub fn psql(&self, sql: &str) -> String {
        self.cluster.psql_in(&self.name, sql)
    }

    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.cluster.try_psql_in(&self.name, sql)
    }

    /// Creates the table as the worker would (sql/schema-postgresql.sql), owned by the
    /// worker's user, unless it exists.
    pub fn ensure_schema(&self) {
        let schema = std::fs::read_to_string(super::repo_root().join("sql/schema-postgresql.sql"))
            .expect("read sql/schema-postgresql.sql");
        let schema = schema.replace(
            "CREATE TABLE provision_requests",
            "CREATE TABLE IF NOT EXISTS provision_requests",
        );
        self.psql(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({CREATE_LOCK}); SET LOCAL ROLE scram_user; \
             {schema}; COMMIT;"
        ));
    }

    /// Rows read through psql, every text as hex so that nothing in a value can break the
    /// output apart.
    fn rows(&self, filter: &str) -> Vec<RequestRow> {
        if !self.table_exists() {
            return Vec::new();
        }
        let hex = |column: &str| {
            format!("coalesce(encode(convert_to({column}::text, 'UTF8'), 'hex'), '{NULL}')")
        };
        let timestamp =
            |column: &str| hex(&format!("to_char({column}, 'YYYY-MM-DD HH24:MI:SS.US')"));
        let sql = format!(
            "SELECT {}, {}, gpu_count, duration_hours, {}, {}, {}, {}, {} \
             FROM provision_requests {filter}",
            hex("request_id"),
            hex("user_id"),
            hex("status"),
            hex("kubeconfig"),
            hex("error_message"),
            timestamp("created_at"),
            timestamp("updated_at"),
        );
        self.psql(&sql)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|line| {
                let f: Vec<&str> = line.split('|').collect();
                assert_eq!(f.len(), 9, "a row of nine fields: {line}");
                let text = |i: usize| from_hex(f[i]).unwrap_or_else(|| panic!("NULL in {line}"));
                RequestRow {
                    request_id: text(0),
                    user_id: text(1),
                    gpu_count: f[2].parse().expect("gpu_count"),
                    duration_hours: f[3].parse().expect("duration_hours"),
                    status: text(4),
                    kubeconfig: from_hex(f[5]),
                    error_message: from_hex(f[6]),
                    created_at: text(7),
                    updated_at: text(8),
                }
            })
            .collect()
    }
}

impl Default for PgDb {
    fn default() -> Self {
        PgDb::new()
    }
}

impl Db for PgDb {
    fn url(&self) -> String {
        self.url_with(Some(SCRAM_PASSWORD), &self.verify_full())
    }

    fn shown_url(&self) -> String {
        self.url_with(Some("***"), &self.verify_full())
    }

    fn insert_pending(&self, id: &str, user: &str, gpus: i64, hours: i64) {
        self.ensure_schema();
        self.psql(&format!(
            "INSERT INTO provision_requests \
             (request_id, user_id, gpu_count, duration_hours, status, created_at, updated_at) \
             VALUES ({}, {}, {gpus}, {hours}, 'pending', now() AT TIME ZONE 'UTC', \
                     now() AT TIME ZONE 'UTC')",
            literal(id),
            literal(user)
        ));
    }

    fn all_rows(&self) -> HashMap<String, RequestRow> {
        self.rows("")
            .into_iter()
            .map(|r| (r.request_id.clone(), r))
            .collect()
    }

    fn status_of(&self, id: &str) -> Option<String> {
        self.row(id).map(|r| r.status)
    }

    fn row(&self, id: &str) -> Option<RequestRow> {
        self.rows(&format!("WHERE request_id::text = {}", literal(id)))
            .pop()
    }

    fn count_by_status(&self) -> HashMap<String, i64> {
        if !self.table_exists() {
            return HashMap::new();
        }
        self.psql("SELECT status, count(*) FROM provision_requests GROUP BY status")
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(s, n)| (s.to_owned(), n.parse().expect("a count")))
            .collect()
    }

    fn execute(&self, sql: &str) {
        self.psql(sql);
    }

    fn table_exists(&self) -> bool {
        self.psql("SELECT to_regclass('provision_requests') IS NOT NULL") == "t"
    }
}

impl Db for TempDb {
    fn url(&self) -> String {
        TempDb::url(self)
    }

    fn insert_pending(&self, id: &str, user: &str, gpus: i64, hours: i64) {
        TempDb::insert_pending(self, id, user, gpus, hours);
    }

    fn all_rows(&self) -> HashMap<String, RequestRow> {
        TempDb::all_rows(self)
    }

    fn status_of(&self, id: &str) -> Option<String> {
        TempDb::status_of(self, id)
    }

    fn row(&self, id: &str) -> Option<RequestRow> {
        TempDb::row(self, id)
    }

    fn count_by_status(&self) -> HashMap<String, i64> {
        TempDb::count_by_status(self)
    }

    fn execute(&self, sql: &str) {
        self.conn()
            .execute_batch(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn table_exists(&self) -> bool {
        self.path().exists() && super::table_exists(&self.conn())
    }
}

/// A string as an SQL literal both dialects read alike: `'...'` with quotes doubled (no
/// backslash escapes in either, with PostgreSQL's standard_conforming_strings on).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn from_hex(field: &str) -> Option<String> {
    if field == NULL {
        return None;
    }
    let bytes: Vec<u8> = (0..field.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&field[i..i + 2], 16).expect("hex from encode()"))
        .collect();
    Some(String::from_utf8(bytes).expect("UTF-8 text"))
}
