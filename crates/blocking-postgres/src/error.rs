//! What can go wrong talking to PostgreSQL: [`Error`], whose every variant says what to do
//! about it, [`DbError`] (the server's ErrorResponse, with its SQLSTATE) and [`Class`], the
//! sorting of both into transient and permanent. The bottom of the crate: it imports
//! nothing of the rest.
use std::fmt;
use std::io;
use std::time::Duration;

/// What went wrong. Every variant's `Display` says what was wrong and what to do.
#[derive(Debug)]
pub enum Error {
    /// A setting cannot be used (a certificate file that cannot be read, a combination
    /// libpq refuses). Found before anything is sent.
    Config {
        setting: &'static str,
        detail: String,
    },
    /// The TCP connection could not be made (refused, unreachable, no such host).
    Connect { addr: String, source: io::Error },
    /// The server did not answer within the connect timeout or the I/O timeout.
    Timeout {
        addr: String,
        what: &'static str,
        after: Duration,
    },
    /// The connection failed or dropped mid-conversation.
    Io {
        addr: String,
        what: &'static str,
        source: io::Error,
    },
    /// TLS failed: an untrusted, expired or misnamed server certificate, or the server
    /// refused ours. `reason` is a sentence that names the cause and what to do.
    Tls { addr: String, reason: String },
    /// `sslmode` requires TLS and the server does not offer it.
    TlsRefused { addr: String, sslmode: &'static str },
    /// We refused to authenticate the way the server asked (a method we do not speak, a
    /// cleartext password over an unencrypted connection, channel binding required but not
    /// offered), or the server failed to prove it knows the password (SCRAM).
    Auth { addr: String, reason: String },
    /// The server refused something: its ErrorResponse.
    Db(Box<DbError>),
    /// The server sent something that is not the PostgreSQL protocol as we expect it.
    Protocol { addr: String, detail: String },
    /// A message longer than we accept at this point of the conversation; nothing was
    /// allocated for it and the connection was dropped.
    MessageTooLarge {
        addr: String,
        tag: u8,
        len: usize,
        limit: usize,
        /// Before authentication completed, the limit is small and fixed.
        before_auth: bool,
    },
    /// A query's rows together exceed `max_result_bytes`; the rest was read and dropped.
    ResultTooLarge { limit: usize },
    /// A parameter or column that cannot be converted to or from the Rust type asked for.
    Conversion { detail: String },
    /// The caller used the client in a way it does not allow (a statement of another
    /// connection, the wrong number of parameters, `transaction` inside a transaction).
    Usage { detail: String },
    /// The connection broke earlier (see the error returned then); open a new one.
    Closed,
}

/// How an error is to be handled: retried (with backoff, after reconnecting if the
/// connection broke) or given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Will likely clear by itself: the connection was lost, the server is restarting or
    /// short of resources, the transaction lost a race (serialization failure, deadlock,
    /// lock timeout). Retry the whole transaction.
    Transient,
    /// Will not clear by retrying the same thing: a constraint, a trigger's refusal, a
    /// schema error, bad credentials or certificates, a bug of the caller.
    Permanent,
}

/// A PostgreSQL ErrorResponse: SQLSTATE, severity, message and the optional fields the
/// server filled in. `Display` is hand-written: one line with all of it.
#[derive(Clone, PartialEq, Eq)]
pub struct DbError {
    /// `ERROR`, `FATAL` or `PANIC` (the non-localized `V` field when the server sends it).
    pub severity: String,
    /// The five-character SQLSTATE, e.g. `23505`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub schema: Option<String>,
    pub table: Option<String>,
    pub column: Option<String>,
    pub constraint: Option<String>,
    /// The PL/pgSQL call stack or the SQL function, for errors raised inside one.
    pub context: Option<String>,
}

impl Error {
    /// Transient or permanent: see [`Class`]. The server's errors are sorted by their
    /// SQLSTATE ([`DbError::class`]); a lost connection, a timeout or a protocol violation
    /// is transient (a new connection may well be fine); a refused certificate, password or
    /// setting is permanent until someone changes the configuration.
    pub fn class(&self) -> Class {
        match self {
            Error::Connect { .. }
            | Error::Timeout { .. }
            | Error::Io { .. }
            | Error::Protocol { .. }
            | Error::Closed => Class::Transient,
            Error::Db(db) => db.class(),
            Error::Config { .. }
            | Error::Tls { .. }
            | Error::TlsRefused { .. }
            | Error::Auth { .. }
            | Error::MessageTooLarge { .. }
            | Error::ResultTooLarge { .. }
            | Error::Conversion { .. }
            | Error::Usage { .. } => Class::Permanent,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.class() == Class::Transient
    }

    /// True for a failure of TLS or authentication (certificates, passwords, `sslmode`):
    /// permanent at start-up, but mid-run a caller may prefer to treat it as an outage
    /// (credentials rotated on the server are put right while it waits).
    pub fn is_security(&self) -> bool {
        match self {
            Error::Tls { .. } | Error::TlsRefused { .. } | Error::Auth { .. } => true,
            Error::Db(db) => db.code.starts_with("28"),
            _ => false,
        }
    }

    /// The server's error, if this is one.
    pub fn as_db(&self) -> Option<&DbError> {
        match self {
            Error::Db(db) => Some(db),
            _ => None,
        }
    }

    /// The SQLSTATE, if the server sent one.
    pub fn code(&self) -> Option<&str> {
        self.as_db().map(|db| db.code.as_str())
    }
}

impl DbError {
    /// Transient or permanent, by SQLSTATE.
    ///
    /// Transient: class 08 (connection exception), 40001 serialization failure, 40P01
    /// deadlock, 40003 statement completion unknown, class 53 (insufficient resources:
    /// 53100 disk full, 53200 out of memory, 53300 too many connections), 55P03 lock not
    /// available (`lock_timeout`), 55006 object in use, 57P01/57P02/57P03 server shut down,
    /// crashed or starting, 57P05 and 25P03 idle timeouts, 57014 query canceled (an
    /// administrator's cancel or `statement_timeout`), 25006 read-only transaction (a
    /// standby, as after a failover that has not reached the client yet), 58030 I/O error,
    /// 72000 snapshot too old. Everything else is permanent: class 23 (constraints), P0001
    /// (a trigger's RAISE EXCEPTION), class 42 (schema and privileges), class 22 (data),
    /// class 28 (authentication), 3D000 (no such database), ...
    pub fn class(&self) -> Class {
        let code = self.code.as_str();
        let transient = code.starts_with("08")
            || code.starts_with("53")
            || matches!(
                code,
                "40001"
                    | "40P01"
                    | "40003"
                    | "55P03"
                    | "55006"
                    | "57P01"
                    | "57P02"
                    | "57P03"
                    | "57P05"
                    | "25P03"
                    | "57014"
                    | "25006"
                    | "58030"
                    | "72000"
            );
        if transient {
            Class::Transient
        } else {
            Class::Permanent
        }
    }

    /// FATAL and PANIC end the session: the server closes the connection after sending them.
    pub fn ends_session(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }

    /// The SQLSTATE's condition name (as in PL/pgSQL), for the codes a caller is likely to
    /// meet; `None` for the others.
    pub fn condition_name(&self) -> Option<&'static str> {
        condition_name(&self.code)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { setting, detail } => write!(f, "cannot use {setting}: {detail}"),
            Error::Connect { addr, source } => write!(
                f,
                "cannot connect to PostgreSQL at {addr}: {source} (is the server running and accepting TCP connections on that address and port?)"
            ),
            Error::Timeout { addr, what, after } => write!(
                f,
                "PostgreSQL at {addr} did not answer {what} within {after:?} (the server or the network is slow or down)"
            ),
            Error::Io { addr, what, source } => write!(
                f,
                "connection to PostgreSQL at {addr} lost during {what}: {source} (the server restarted, or the connection was cut; a new connection is needed)"
            ),
            Error::Tls { addr, reason } => write!(f, "TLS with PostgreSQL at {addr}: {reason}"),
            Error::TlsRefused { addr, sslmode } => write!(
                f,
                "PostgreSQL at {addr} does not accept TLS connections, and sslmode={sslmode} requires TLS: enable ssl on the server, or set sslmode=prefer or disable"
            ),
            Error::Auth { addr, reason } => {
                write!(f, "authentication with PostgreSQL at {addr}: {reason}")
            }
            Error::Db(db) => fmt::Display::fmt(db, f),
            Error::Protocol { addr, detail } => write!(
                f,
                "PostgreSQL at {addr} broke the protocol: {detail} (is it a PostgreSQL server? the connection was dropped)"
            ),
            Error::MessageTooLarge {
                addr,
                tag,
                len,
                limit,
                before_auth,
            } => {
                let tag = char::from(*tag).escape_default();
                if *before_auth {
                    write!(
                        f,
                        "PostgreSQL at {addr} announced a message '{tag}' of {len} bytes before authentication, where at most {limit} are accepted: it is not a PostgreSQL server, or something between us tampers with the connection"
                    )
                } else {
                    write!(
                        f,
                        "PostgreSQL at {addr} announced a message '{tag}' of {len} bytes, more than the {limit} bytes accepted (max_message_len): select fewer or smaller columns, or raise max_message_len"
                    )
                }
            }
            Error::ResultTooLarge { limit } => write!(
                f,
                "the query's rows add up to more than {limit} bytes (max_result_bytes): add a LIMIT or select fewer columns, or raise max_result_bytes"
            ),
            Error::Conversion { detail } => write!(f, "{detail}"),
            Error::Usage { detail } => write!(f, "{detail}"),
            Error::Closed => f.write_str(
                "the PostgreSQL connection broke earlier and cannot be used: open a new one",
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } | Error::Io { source, .. } => Some(source),
            Error::Db(db) => Some(db.as_ref()),
            _ => None,
        }
    }
}

impl From<DbError> for Error {
    fn from(db: DbError) -> Error {
        Error::Db(Box::new(db))
    }
}

impl fmt::Display for DbError {
    /// `postgresql ERROR 23505 (unique_violation): duplicate key value violates unique
    /// constraint "t_pkey"; detail: Key (id)=(1) already exists.; table public.t; constraint
    /// t_pkey`, then advice for the codes where we have some.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgresql {} {}", self.severity, self.code)?;
        if let Some(name) = self.condition_name() {
            write!(f, " ({name})")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, "; detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        match (&self.schema, &self.table) {
            (Some(schema), Some(table)) => write!(f, "; table {schema}.{table}")?,
            (None, Some(table)) => write!(f, "; table {table}")?,
            _ => {}
        }
        if let Some(column) = &self.column {
            write!(f, "; column {column}")?;
        }
        if let Some(constraint) = &self.constraint {
            write!(f, "; constraint {constraint}")?;
        }
        if let Some(advice) = advice(&self.code) {
            write!(f, " ({advice})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The one-line form is the most readable in a test failure or a log line.
        write!(f, "DbError({self})")
    }
}

impl std::error::Error for DbError {}

/// Condition names of the SQLSTATEs a caller is likely to meet (PostgreSQL's Appendix A).
fn condition_name(code: &str) -> Option<&'static str> {
    Some(match code {
        "08000" => "connection_exception",
        "08003" => "connection_does_not_exist",
        "08006" => "connection_failure",
        "08001" => "sqlclient_unable_to_establish_sqlconnection",
        "08004" => "sqlserver_rejected_establishment_of_sqlconnection",
        "08P01" => "protocol_violation",
        "0A000" => "feature_not_supported",
        "22001" => "string_data_right_truncation",
        "22003" => "numeric_value_out_of_range",
        "22007" => "invalid_datetime_format",
        "22008" => "datetime_field_overflow",
        "22P02" => "invalid_text_representation",
        "23000" => "integrity_constraint_violation",
        "23502" => "not_null_violation",
        "23503" => "foreign_key_violation",
        "23505" => "unique_violation",
        "23514" => "check_violation",
        "23P01" => "exclusion_violation",
        "25001" => "active_sql_transaction",
        "25006" => "read_only_sql_transaction",
        "25P02" => "in_failed_sql_transaction",
        "25P03" => "idle_in_transaction_session_timeout",
        "28000" => "invalid_authorization_specification",
        "28P01" => "invalid_password",
        "3D000" => "invalid_catalog_name",
        "3F000" => "invalid_schema_name",
        "40001" => "serialization_failure",
        "40003" => "statement_completion_unknown",
        "40P01" => "deadlock_detected",
        "42501" => "insufficient_privilege",
        "42601" => "syntax_error",
        "42703" => "undefined_column",
        "42P01" => "undefined_table",
        "42P07" => "duplicate_table",
        "53000" => "insufficient_resources",
        "53100" => "disk_full",
        "53200" => "out_of_memory",
        "53300" => "too_many_connections",
        "55006" => "object_in_use",
        "55P03" => "lock_not_available",
        "57014" => "query_canceled",
        "57P01" => "admin_shutdown",
        "57P02" => "crash_shutdown",
        "57P03" => "cannot_connect_now",
        "57P04" => "database_dropped",
        "57P05" => "idle_session_timeout",
        "58030" => "io_error",
        "72000" => "snapshot_too_old",
        "P0001" => "raise_exception",
        "XX000" => "internal_error",
        _ => return None,
    })
}

/// What to do, for the codes where the server's message does not say it.
fn advice(code: &str) -> Option<&'static str> {
    Some(match code {
        "28P01" => "check the user name and the password",
        "28000" => {
            "the server's pg_hba.conf has no entry that lets this user in from here over this kind of connection (TLS or not): ask its administrator"
        }
        "3D000" => "create the database, or fix the database name",
        "53300" => {
            "the server is at max_connections: retry later, use fewer connections, or raise max_connections"
        }
        "57P03" => "the server is starting up or shutting down: retry shortly",
        "57P01" | "57P02" => "the server closed the session: reconnect and retry",
        "40001" | "40P01" => "the transaction lost a race with another one: retry it",
        "55P03" => "another session holds the lock (lock_timeout): retry later",
        "25006" => "the server is a read-only standby: connect to the primary",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(code: &str) -> DbError {
        DbError {
            severity: "ERROR".to_owned(),
            code: code.to_owned(),
            message: "m".to_owned(),
            detail: None,
            hint: None,
            schema: None,
            table: None,
            column: None,
            constraint: None,
            context: None,
        }
    }

    #[test]
    fn sqlstates_sort_into_transient_and_permanent() {
        for code in [
            "08006", "08P01", "40001", "40P01", "53100", "53300", "55P03", "57P01", "57P02",
            "57P03", "25006", "57014",
        ] {
            assert_eq!(db(code).class(), Class::Transient, "{code}");
        }
        for code in [
            "23505", "23503", "23502", "P0001", "42P01", "42703", "42501", "22P02", "28P01",
            "3D000", "XX000", "25P02",
        ] {
            assert_eq!(db(code).class(), Class::Permanent, "{code}");
        }
    }

    #[test]
    fn a_db_error_displays_every_field_on_one_line() {
        let mut e = db("23505");
        e.message = "duplicate key value violates unique constraint \"t_pkey\"".to_owned();
        e.detail = Some("Key (id)=(1) already exists.".to_owned());
        e.schema = Some("public".to_owned());
        e.table = Some("t".to_owned());
        e.constraint = Some("t_pkey".to_owned());
        assert_eq!(
            e.to_string(),
            "postgresql ERROR 23505 (unique_violation): duplicate key value violates unique constraint \"t_pkey\"; detail: Key (id)=(1) already exists.; table public.t; constraint t_pkey"
        );
    }

    #[test]
    fn connection_failures_are_transient_and_refusals_permanent() {
        let io = || io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert!(
            Error::Io {
                addr: "a".into(),
                what: "x",
                source: io()
            }
            .is_transient()
        );
        assert!(Error::Closed.is_transient());
        assert!(
            !Error::Tls {
                addr: "a".into(),
                reason: "r".into()
            }
            .is_transient()
        );
        assert!(Error::from(db("28P01")).is_security());
        assert!(!Error::from(db("28P01")).is_transient());
    }
}
