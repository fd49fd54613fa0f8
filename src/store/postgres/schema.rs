//! Connecting to PostgreSQL with the worker's session settings, creating `provision_requests`
//! when it is missing, and checking the table found: every column the worker needs, of a
//! type it can write, a unique key on `request_id`, and the right to write it. What `check`
//! reports comes from here too.
use std::time::Duration;

use blocking_postgres::{
    AuthMethod, Client, Config, Connector, Password, TlsInfo, TransactionStatus,
};

use super::super::StoreError;
use crate::config::{DatabasePassword, PostgresConfig};

/// The DDL run when the table is missing.
const SCHEMA: &str = include_str!("../../../sql/schema-postgresql.sql");

/// The columns the worker reads and writes.
pub(super) const REQUIRED_COLUMNS: [&str; 9] = [
    "request_id",
    "user_id",
    "gpu_count",
    "duration_hours",
    "status",
    "kubeconfig",
    "error_message",
    "created_at",
    "updated_at",
];

/// Session settings the worker's connections start with, before the URL's own `options`:
/// - `lock_timeout=5s`: a row the backend holds locked makes a transition fail within 5 s
///   with 55P03, a transient error the worker retries with backoff (and logs), instead of
///   waiting silently behind it;
/// - `statement_timeout=30s`: no statement of the worker takes more than milliseconds; one
///   that does is stuck, and is retried;
/// - `idle_in_transaction_session_timeout=60s`: the worker never leaves a transaction open,
///   but if a bug did, its row locks would not outlive a minute.
const SESSION_OPTIONS: &str =
    "-c lock_timeout=5s -c statement_timeout=30s -c idle_in_transaction_session_timeout=60s";

/// Appended after the URL's `options`, so that it wins: an offset is committed only after
/// the transitions it covers are committed, and with `synchronous_commit=on` a commit
/// returns only once the server flushed it to its WAL. The server's (or the role's)
/// default does not matter.
const DURABLE_COMMITS: &str = "-c synchronous_commit=on";

/// Longest wait for any read or write on an open connection: above `statement_timeout`
/// (30 s), so a slow statement ends with the server's own error first; past it, the server
/// or the network is gone and the connection is dropped (a transient error).
const IO_TIMEOUT: Duration = Duration::from_secs(40);

/// The advisory lock two workers starting at once take around creating the table, so that
/// one creates it and the other finds it (a `CREATE TABLE IF NOT EXISTS` racing another can
/// still fail on the catalog's unique index).
const CREATE_LOCK: i64 = 0x7072_6f76_6973_696f; // "provisio"

/// The column types found, for writing the statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Table {
    pub columns: Vec<ColumnType>,
}

/// One required column: its type's name (without modifiers, e.g. `character varying`) and
/// PostgreSQL's category for it (`S` string, `N` numeric, `D` date/time, `E` enum, `U` user
/// types such as `uuid`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ColumnType {
    pub name: &'static str,
    pub type_name: String,
    pub category: String,
}

/// What `check` says about the server and the table, without creating anything.
#[derive(Debug)]
pub struct ServerReport {
    /// e.g. "15.8 (Debian 15.8-0+deb12u1)".
    pub server_version: String,
    pub user: String,
    pub auth: AuthMethod,
    /// `None` without TLS.
    pub tls: Option<TlsInfo>,
    /// `synchronous_commit` in the worker's sessions (always `on`: it sets it).
    pub synchronous_commit: String,
    /// `synchronous_commit` as the server would give a session that does not set it: the
    /// backend's own sessions, for instance.
    pub server_synchronous_commit: String,
    /// The server's `fsync`: off, a crash of its host may lose committed transactions.
    pub fsync: String,
    /// The table: complete (and writable), or what is wrong with it.
    pub table: Result<String, StoreError>,
}

impl Table {
    pub(super) fn column(&self, name: &str) -> &ColumnType {
        self.columns
            .iter()
            .find(|c| c.name == name)
            // `check_table` found every required column before a `Table` was made.
            .unwrap_or_else(|| unreachable!("column {name} was checked at open"))
    }
}

/// The connector for `config`: the URL's settings, the worker's session settings, and the
/// password from the URL or read from its file before each login. The TLS files are read
/// now: one that cannot be used is an error at start.
pub(super) fn connector(config: &PostgresConfig) -> Result<Connector, StoreError> {
    connector_with(config, true)
}

/// [`connector`], with or without the worker's `synchronous_commit` (`check` asks the server
/// for its own default through a session without it).
fn connector_with(config: &PostgresConfig, durable: bool) -> Result<Connector, StoreError> {
    let server = config.addr();
    let mut pg = Config::new(config.host.clone(), config.user.clone());
    pg.port = config.port;
    pg.dbname = config.dbname.clone();
    pg.password = match &config.password {
        None => None,
        Some(DatabasePassword::Url(secret)) => Some(Password::new(secret.expose())),
        Some(DatabasePassword::File(path)) => Some(Password::from_file(path).map_err(
            |reason| StoreError::PgPasswordFile {
                path: path.clone(),
                reason,
            },
        )?),
    };
    pg.application_name = Some(
        config
            .application_name
            .clone()
            .unwrap_or_else(|| "provision-worker".to_owned()),
    );
    let mut options = SESSION_OPTIONS.to_owned();
    if let Some(own) = &config.options {
        options.push(' ');
        options.push_str(own);
    }
    if durable {
        options.push(' ');
        options.push_str(DURABLE_COMMITS);
    }
    pg.options = Some(options);
    pg.sslmode = config.sslmode;
    pg.sslrootcert = config.sslrootcert.clone();
    pg.sslcert = config.sslcert.clone();
    pg.sslkey = config.sslkey.clone();
    pg.channel_binding = config.channel_binding;
    if let Some(timeout) = config.connect_timeout {
        pg.connect_timeout = timeout;
    }
    pg.io_timeout = Some(IO_TIMEOUT);
    Connector::new(pg).map_err(|source| StoreError::PgConnect { server, source })
}

/// Makes sure the table is there (creating it when `create` and it is missing) and checks
/// it; returns its column types.
pub(super) fn prepare_table(
    client: &mut Client,
    server: &str,
    create: bool,
) -> Result<Table, StoreError> {
    let db = |source| StoreError::PgConnect {
        server: server.to_owned(),
        source,
    };
    if !table_exists(client).map_err(db)? {
        if !create {
            return Err(schema_error(
                server,
                "has no table provision_requests; start the worker once (it creates the table) \
                 or create it as in sql/schema-postgresql.sql"
                    .to_owned(),
            ));
        }
        create_table(client, server)?;
    }
    check_table(client, server)
}

/// What `check` reports: the session (version, TLS, user), durability settings, and the
/// table, checked as the worker checks it at start but never created.
pub(super) fn report(config: &PostgresConfig) -> Result<ServerReport, StoreError> {
    let server = config.addr();
    let db = |source| StoreError::PgConnect {
        server: server.clone(),
        source,
    };
    let mut client = connector(config)?.connect().map_err(db)?;
    let session = client.session().clone();
    let synchronous_commit = client.show("synchronous_commit").map_err(db)?;
    let fsync = client.show("fsync").map_err(db)?;
    let server_synchronous_commit = connector_with(config, false)?
        .connect()
        .and_then(|mut plain| plain.show("synchronous_commit"))
        .map_err(db)?;
    let table = match table_exists(&mut client).map_err(db)? {
        false => Ok("table provision_requests does not exist yet; the worker will create it".to_owned()),
        true => check_table(&mut client, &server).map(|_| {
            "table provision_requests has every column the worker needs, a unique request_id and is writable".to_owned()
        }),
    };
    Ok(ServerReport {
        server_version: client
            .server_version()
            .unwrap_or("(not reported)")
            .to_owned(),
        user: session.user,
        auth: session.auth,
        tls: session.tls,
        synchronous_commit,
        server_synchronous_commit,
        fsync,
        table,
    })
}

fn table_exists(client: &mut Client) -> Result<bool, blocking_postgres::Error> {
    let row = client.query_one("SELECT to_regclass('provision_requests') IS NOT NULL", &[])?;
    row.get::<bool>(0)
}

/// Creates the table under an advisory lock (another worker may be creating it now: then it
/// exists once the lock is ours).
fn create_table(client: &mut Client, server: &str) -> Result<(), StoreError> {
    let refused = |source: blocking_postgres::Error| {
        if source.is_transient() {
            StoreError::PgConnect {
                server: server.to_owned(),
                source,
            }
        } else {
            schema_error(
                server,
                format!(
                    "has no table provision_requests and it cannot be created: {source}; create \
                     it as in sql/schema-postgresql.sql, or grant this user CREATE on the schema"
                ),
            )
        }
    };
    let mut tx = client.transaction().map_err(refused)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK])
        .map_err(refused)?;
    if !table_exists(&mut tx).map_err(refused)? {
        tx.batch_execute(SCHEMA).map_err(refused)?;
        log::info!("Created table provision_requests (sql/schema-postgresql.sql)");
    }
    tx.commit().map_err(refused)?;
    debug_assert_eq!(client.transaction_status(), TransactionStatus::Idle);
    Ok(())
}

/// Checks that the table has every required column, of a type the worker can write; a
/// unique key on `request_id` alone (the claim's `ON CONFLICT (request_id)`); and that this
/// user may insert and update it (a read-only server, a standby, says so here too).
fn check_table(client: &mut Client, server: &str) -> Result<Table, StoreError> {
    let db = |source| StoreError::PgConnect {
        server: server.to_owned(),
        source,
    };
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, NULL), t.typcategory::text,
                    (SELECT string_agg(e.enumlabel::text, ',' ORDER BY e.enumsortorder)
                     FROM pg_enum e WHERE e.enumtypid = t.oid)
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
             WHERE a.attrelid = to_regclass('provision_requests')
               AND a.attnum > 0 AND NOT a.attisdropped",
            &[],
        )
        .map_err(db)?;
    let mut found = Vec::new();
    for row in &rows {
        let name: String = row.get(0).map_err(db)?;
        let type_name: String = row.get(1).map_err(db)?;
        let category: String = row.get(2).map_err(db)?;
        let labels: Option<String> = row.get(3).map_err(db)?;
        found.push((name, type_name, category, labels));
    }
    let missing: Vec<&str> = REQUIRED_COLUMNS
        .into_iter()
        .filter(|c| !found.iter().any(|(name, ..)| name == c))
        .collect();
    if !missing.is_empty() {
        return Err(schema_error(
            server,
            format!(
                "has a table provision_requests without column(s) {}; migrate the table or add \
                 them as in sql/schema-postgresql.sql",
                missing.join(", ")
            ),
        ));
    }
    let mut columns = Vec::new();
    for name in REQUIRED_COLUMNS {
        let Some((_, type_name, category, labels)) = found.iter().find(|(n, ..)| n == name) else {
            continue;
        };
        let usable = match name {
            "created_at" | "updated_at" => matches!(
                type_name.as_str(),
                "timestamp without time zone" | "timestamp with time zone"
            ),
            "gpu_count" | "duration_hours" => category == "N",
            // Strings are written as text and cast to the column's type (an enum, uuid, ...).
            _ => true,
        };
        if !usable {
            let wanted = if name.ends_with("_at") {
                "timestamp (or timestamp with time zone), as SQLAlchemy's DateTime creates it"
            } else {
                "a number type (integer, as SQLAlchemy's Integer creates it)"
            };
            return Err(schema_error(
                server,
                format!(
                    "has column provision_requests.{name} of type {type_name}; the worker needs \
                     {wanted}: migrate the column"
                ),
            ));
        }
        if let (Some(labels), "status") = (labels, name) {
            let labels: Vec<&str> = labels.split(',').collect();
            let lacking: Vec<&str> = ["pending", "provisioning", "completed", "failed"]
                .into_iter()
                .filter(|l| !labels.contains(l))
                .collect();
            if !lacking.is_empty() {
                return Err(schema_error(
                    server,
                    format!(
                        "has column provision_requests.status of enum type {type_name} without \
                         the label(s) {}; add them with ALTER TYPE {type_name} ADD VALUE",
                        lacking.join(", ")
                    ),
                ));
            }
        }
        columns.push(ColumnType {
            name,
            type_name: type_name.clone(),
            category: category.clone(),
        });
    }
    let unique = client
        .query_one(
            "SELECT EXISTS (
               SELECT 1 FROM pg_index i
               WHERE i.indrelid = to_regclass('provision_requests')
                 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
                 AND i.indnkeyatts = 1
                 AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                                    WHERE attrelid = i.indrelid AND attname = 'request_id'))",
            &[],
        )
        .and_then(|row| row.get::<bool>(0))
        .map_err(db)?;
    if !unique {
        return Err(schema_error(
            server,
            "has a table provision_requests without a unique key on request_id alone; add one \
             with CREATE UNIQUE INDEX provision_requests_request_id ON \
             provision_requests(request_id)"
                .to_owned(),
        ));
    }
    // Privileges are checked when a statement is planned, so statements that touch no row
    // prove them without writing anything.
    let columns_list = REQUIRED_COLUMNS.join(", ");
    client
        .batch_execute(&format!(
            "UPDATE provision_requests SET status = status WHERE false;
             INSERT INTO provision_requests ({columns_list})
               SELECT {columns_list} FROM provision_requests WHERE false"
        ))
        .map_err(|source| {
            if source.is_transient() {
                db(source)
            } else {
                schema_error(
                    server,
                    format!(
                        "has a table provision_requests this user cannot write: {source}; \
                         grant it SELECT, INSERT and UPDATE on provision_requests"
                    ),
                )
            }
        })?;
    Ok(Table { columns })
}

fn schema_error(server: &str, problem: String) -> StoreError {
    StoreError::PgSchema {
        server: server.to_owned(),
        problem,
    }
}
