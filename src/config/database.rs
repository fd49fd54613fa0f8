//! `DATABASE_URL`: a SQLite file or a PostgreSQL server, as the backend's SQLAlchemy URL names
//! it, and [`mask_password`], the only form in which a URL is ever shown.
//!
//! SQLite: `sqlite:///relative.db`, `sqlite:////absolute.db`, with the drivers
//! `+aiosqlite` and `+pysqlite`. PostgreSQL: `postgresql://`, `postgres://` and SQLAlchemy's
//! `postgresql+asyncpg://`, `+psycopg://`, `+psycopg2://`, `+pg8000://`, taken apart as
//! SQLAlchemy does (`scheme://user:password@host:port/database?query`), percent-escapes
//! decoded, and the query parameters libpq users write (`sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey`, `connect_timeout`, `application_name`, `options`,
//! `channel_binding`, and asyncpg's `ssl`). Any other parameter is refused rather than
//! ignored: a misspelt `sslmode` silently ignored would connect without TLS.
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use blocking_postgres::{ChannelBinding, RootCerts, SslMode};

use super::{ConfigError, Secret};

/// The database `DATABASE_URL` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file shared with the backend (the default).
    Sqlite(PathBuf),
    /// A PostgreSQL server. Boxed: the configuration is read once, and `Database` is moved
    /// around with `Config`.
    Postgres(Box<PostgresConfig>),
}

/// Where and how to reach PostgreSQL: libpq's parameters, as the URL gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// A host name or IP address (an IPv6 address without its brackets). Never empty.
    pub host: String,
    pub port: u16,
    /// Never empty.
    pub user: String,
    pub password: Option<DatabasePassword>,
    /// `None`: the server's default, a database named like the user.
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    pub sslrootcert: RootCerts,
    /// Client certificate and key (both or neither).
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub channel_binding: ChannelBinding,
    /// `None`: the client's default (10 s).
    pub connect_timeout: Option<Duration>,
    /// `None`: `provision-worker`.
    pub application_name: Option<String>,
    /// Session options (`-c name=value ...`) the URL adds to the worker's own.
    pub options: Option<String>,
}

/// Where the PostgreSQL password comes from. Never shown: `Secret` redacts itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabasePassword {
    /// The URL's `user:password@`.
    Url(Secret),
    /// `DATABASE_PASSWORD_FILE`: read again before each login, so a rotated secret is used
    /// by the next connection.
    File(PathBuf),
}

/// What [`mask_password`] puts in place of a password.
pub const MASK: &str = "***";

/// An example of each form, for error messages (the fix is one copy away); macros, so that
/// the messages are whole strings at compile time (`concat!`), not formatted at run time.
macro_rules! sqlite_example {
    () => {
        "sqlite:///./poc.db"
    };
}
macro_rules! postgres_example {
    () => {
        "postgresql://user:password@db.example.com:5432/app"
    };
}

const SQLITE_SCHEMES: [&str; 3] = ["sqlite", "sqlite+aiosqlite", "sqlite+pysqlite"];
const POSTGRES_SCHEMES: [&str; 6] = [
    "postgresql",
    "postgres",
    "postgresql+asyncpg",
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "postgresql+pg8000",
];
/// The query parameters a PostgreSQL URL may carry.
const POSTGRES_PARAMETERS: [&str; 9] = [
    "sslmode",
    "ssl",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "channel_binding",
    "connect_timeout",
    "application_name",
    "options",
];

/// The database `url` names; `password_file` is `DATABASE_PASSWORD_FILE` (already checked
/// to be readable), which only a PostgreSQL URL without a password may use. Errors show the
/// URL with its password masked.
pub fn parse(url: &str, password_file: Option<PathBuf>) -> Result<Database, ConfigError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    let is =
        |known: &[&str]| scheme.is_some_and(|s| known.iter().any(|k| s.eq_ignore_ascii_case(k)));
    if is(&POSTGRES_SCHEMES) {
        return parse_postgres(url, password_file).map(|pg| Database::Postgres(Box::new(pg)));
    }
    let path = parse_sqlite(url)?;
    if let Some(file) = password_file {
        return Err(ConfigError::Invalid {
            name: "DATABASE_PASSWORD_FILE",
            value: file.display().to_string(),
            expected: "it unset: DATABASE_URL names a SQLite file, which has no password"
                .to_owned(),
        });
    }
    Ok(Database::Sqlite(path))
}

/// `url` with its password replaced by `***` (SQLAlchemy's own mask), as logs, `check` and
/// errors show it: `postgresql+asyncpg://app:***@db:5432/app`. The password is found as
/// SQLAlchemy finds it (between the first `:` of the user part and the first `@`), so
/// whatever a URL's parser would take for a password is masked; a `password=` query
/// parameter is masked too. Any scheme: a URL the worker refuses is shown masked as well.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let mut masked = format!("{scheme}://");
    let rest = match split_userinfo(rest) {
        Some((user, Some(_), after)) => {
            masked.push_str(&format!("{user}:{MASK}@"));
            after
        }
        Some((user, None, after)) => {
            masked.push_str(&format!("{user}@"));
            after
        }
        None => rest,
    };
    match rest.split_once('?') {
        Some((before, query)) => {
            masked.push_str(before);
            masked.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if decode_query(key).as_deref() == Some("password") => {
                        format!("{key}={MASK}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            masked.push_str(&pairs.join("&"));
        }
        None => masked.push_str(rest),
    }
    masked
}

impl PostgresConfig {
    /// "db.example.com:5432", as messages name the server.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for DatabasePassword {
    /// Where the password comes from, never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabasePassword::Url(_) => f.write_str("password from DATABASE_URL"),
            DatabasePassword::File(path) => write!(f, "password from file {}", path.display()),
        }
    }
}

/// Turns a SQLAlchemy SQLite URL into the database file path.
///
/// Accepts the schemes `sqlite`, `sqlite+aiosqlite` and `sqlite+pysqlite` followed by `:///`
/// and a path (`sqlite:////abs.db` for an absolute one); drops a `?query`; decodes `%XX`.
/// In-memory databases are refused because the worker must share a file with the backend.
fn parse_sqlite(url: &str) -> Result<PathBuf, ConfigError> {
    let invalid = |expected: &'static str| invalid(url, expected);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid(concat!(
            "a SQLite URL like ",
            sqlite_example!(),
            " (a bare path needs the sqlite:/// prefix) or a PostgreSQL URL like ",
            postgres_example!()
        )));
    };
    let scheme_ok = SQLITE_SCHEMES
        .iter()
        .any(|known| scheme.eq_ignore_ascii_case(known));
    if !scheme_ok {
        return Err(invalid(concat!(
            "a SQLite URL like ",
            sqlite_example!(),
            " (scheme sqlite, sqlite+aiosqlite or sqlite+pysqlite) or a PostgreSQL URL like ",
            postgres_example!(),
            " (scheme postgresql or postgres, plain or with +asyncpg, +psycopg, +psycopg2 or \
             +pg8000); the worker speaks SQLite and PostgreSQL"
        )));
    }
    // A query (`?timeout=5`) configures SQLAlchemy's driver, not the file; a `?` that belongs
    // to the file name would be written %3F, so the first `?` always starts the query.
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    let in_memory = || {
        invalid(concat!(
            "a database file like ",
            sqlite_example!(),
            ", not an in-memory database: the worker must share the file with the backend"
        ))
    };
    if rest.is_empty() {
        return Err(in_memory());
    }
    let Some(path) = rest.strip_prefix('/') else {
        return Err(invalid(concat!(
            "a SQLite URL with no host, like ",
            sqlite_example!(),
            " (three slashes for a relative path, four for an absolute one)"
        )));
    };
    let path = percent_decode(path).ok_or_else(|| {
        invalid(concat!(
            "a SQLite URL like ",
            sqlite_example!(),
            " whose %-escapes decode to UTF-8 text without NUL"
        ))
    })?;
    if path.is_empty() || path == ":memory:" {
        return Err(in_memory());
    }
    Ok(PathBuf::from(path))
}

/// Takes a PostgreSQL URL apart as SQLAlchemy's `make_url` does:
/// `scheme://[user[:password]@][host][:port][/database][?query]`, the host possibly an
/// `[IPv6]` literal; user, password, host and database percent-decoded; the query as
/// Python's `parse_qsl` reads it (`+` is a space).
fn parse_postgres(
    url: &str,
    password_file: Option<PathBuf>,
) -> Result<PostgresConfig, ConfigError> {
    let invalid = |what: &'static str| invalid(url, what);
    let decode = |part: &str| {
        percent_decode(part).ok_or_else(|| {
            invalid(
                "a PostgreSQL URL whose user, password, host and database %-escapes decode to \
                 UTF-8 text without NUL",
            )
        })
    };
    // Parsed only for PostgreSQL schemes: the split cannot fail.
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let (user, password, rest) = split_userinfo(rest).unwrap_or(("", None, rest));
    let (rest, query) = match rest.split_once('?') {
        Some((before, query)) => (before, query),
        None => (rest, ""),
    };
    let (hostport, database) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(invalid(
                "a PostgreSQL URL whose IPv6 host is closed by ], like postgresql://user:password@[::1]:5432/app",
            ));
        };
        if !after.is_empty() && !after.starts_with(':') {
            return Err(invalid(
                "a PostgreSQL URL with :port after the ] of an IPv6 host",
            ));
        }
        (host, after.trim_start_matches(':'))
    } else {
        hostport.split_once(':').unwrap_or((hostport, ""))
    };
    let host = decode(host)?;
    if host.is_empty() {
        return Err(invalid(concat!(
            "a PostgreSQL URL naming the server's host, like ",
            postgres_example!(),
            " (the worker connects over TCP; Unix-domain sockets are not supported)"
        )));
    }
    if host.contains(',') {
        return Err(invalid(concat!(
            "a PostgreSQL URL naming one host, like ",
            postgres_example!(),
            " (several hosts are not supported: point it at the primary, or at a proxy or DNS \
             name that follows it)"
        )));
    }
    let port = match port {
        "" => 5432,
        p => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            invalid(concat!(
                "a PostgreSQL URL whose port is a number from 1 to 65535, like ",
                postgres_example!()
            ))
        })?,
    };
    let user = decode(user)?;
    if user.is_empty() {
        return Err(invalid(concat!(
            "a PostgreSQL URL with a user name, like ",
            postgres_example!()
        )));
    }
    let url_password = match password {
        Some(p) => Some(decode(p)?).filter(|p| !p.is_empty()),
        None => None,
    };
    let password = match (url_password, password_file) {
        (Some(_), Some(file)) => {
            return Err(ConfigError::Invalid {
                name: "DATABASE_PASSWORD_FILE",
                value: file.display().to_string(),
                expected: "either a password in DATABASE_URL or DATABASE_PASSWORD_FILE, not both; remove one".to_owned(),
            });
        }
        (Some(p), None) => Some(DatabasePassword::Url(Secret::new(p))),
        (None, Some(file)) => Some(DatabasePassword::File(file)),
        (None, None) => None,
    };
    let dbname = Some(decode(database)?).filter(|d| !d.is_empty());

    let mut config = PostgresConfig {
        host,
        port,
        user,
        password,
        dbname,
        sslmode: SslMode::Prefer,
        sslrootcert: RootCerts::Default,
        sslcert: None,
        sslkey: None,
        channel_binding: ChannelBinding::Prefer,
        connect_timeout: None,
        application_name: None,
        options: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(key), Some(value)) = (decode_query(key), decode_query(value)) else {
            return Err(invalid("query parameters that decode to UTF-8 text"));
        };
        if !POSTGRES_PARAMETERS.contains(&key.as_str()) {
            return Err(self::invalid(
                url,
                format!(
                    "a PostgreSQL URL whose parameters are among {}; the worker does not use \
                     {key:?}, and refuses it rather than ignore it: remove it",
                    POSTGRES_PARAMETERS.join(", ")
                ),
            ));
        }
        // `ssl` is asyncpg's name for `sslmode`: one of them, once.
        let slot = if key == "ssl" {
            "sslmode"
        } else {
            key.as_str()
        };
        if seen.iter().any(|s| s == slot) {
            return Err(invalid(
                "each parameter at most once (sslmode and asyncpg's ssl are the same)",
            ));
        }
        seen.push(slot.to_owned());
        apply_parameter(&mut config, &key, value).map_err(invalid)?;
    }
    if config.sslcert.is_some() != config.sslkey.is_some() {
        return Err(invalid(
            "sslcert together with sslkey (the client certificate and its private key), or \
             neither",
        ));
    }
    Ok(config)
}

/// Sets one query parameter; the error says what it accepts.
fn apply_parameter(
    config: &mut PostgresConfig,
    key: &str,
    value: String,
) -> Result<(), &'static str> {
    let path = |value: String| -> Result<PathBuf, &'static str> {
        if value.is_empty() {
            Err("sslrootcert, sslcert and sslkey naming a file")
        } else {
            Ok(PathBuf::from(value))
        }
    };
    match key {
        "sslmode" | "ssl" => {
            config.sslmode = match SslMode::parse(&value) {
                Some(mode) => mode,
                None if value == "allow" => {
                    return Err(
                        "sslmode (or ssl)=disable, prefer, require, verify-ca or verify-full (allow, plaintext first, is not supported: use prefer, or disable)",
                    );
                }
                None => {
                    return Err(
                        "sslmode (or ssl)=disable, prefer, require, verify-ca or verify-full",
                    );
                }
            };
        }
        "sslrootcert" => {
            config.sslrootcert = if value == "system" {
                RootCerts::System
            } else {
                RootCerts::File(path(value)?)
            };
        }
        "sslcert" => config.sslcert = Some(path(value)?),
        "sslkey" => config.sslkey = Some(path(value)?),
        "channel_binding" => {
            config.channel_binding = ChannelBinding::parse(&value)
                .ok_or("channel_binding=disable, prefer or require")?;
        }
        "connect_timeout" => {
            let seconds = value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=3600).contains(s))
                .ok_or(
                    "connect_timeout=a whole number of seconds from 1 to 3600 (0, libpq's \
                     \"wait forever\", would let a dead server hang the worker)",
                )?;
            config.connect_timeout = Some(Duration::from_secs(seconds));
        }
        "application_name" => config.application_name = Some(value),
        "options" => config.options = Some(value).filter(|o| !o.trim().is_empty()),
        // Only the parameters above reach here (checked by the caller).
        _ => return Err("a parameter the worker knows"),
    }
    Ok(())
}

/// Splits `user[:password]@rest` as SQLAlchemy's URL pattern does: the user part has no `:`
/// or `/`, the password no `@`. `None` when there is no user part.
fn split_userinfo(rest: &str) -> Option<(&str, Option<&str>, &str)> {
    let at = rest.find('@')?;
    let userinfo = &rest[..at];
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    if user.contains('/') {
        return None;
    }
    Some((user, password, &rest[at + 1..]))
}

fn invalid(url: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: "DATABASE_URL",
        value: mask_password(url),
        expected: expected.into(),
    }
}

/// A query key or value as Python's `parse_qsl` reads it: `+` is a space, then `%XX`.
fn decode_query(text: &str) -> Option<String> {
    percent_decode(&text.replace('+', " "))
}

/// Decodes `%XX` escapes as SQLAlchemy does, leaving malformed ones as they are; `None` when
/// the result is not UTF-8 or holds a NUL, which no file name, host or password can.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = match bytes.get(i..i + 3) {
            Some([b'%', high, low]) => hex_value(*high).zip(hex_value(*low)),
            _ => None,
        };
        match escape {
            Some((high, low)) => {
                decoded.push(high << 4 | low);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded)
        .ok()
        .filter(|decoded| !decoded.contains('\0'))
}

fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|value| value as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn postgres(url: &str) -> PostgresConfig {
        match parse(url, None) {
            Ok(Database::Postgres(config)) => *config,
            other => panic!("{url}: expected a PostgreSQL configuration, got {other:?}"),
        }
    }

    fn refused(url: &str, fragment: &str) -> String {
        let err = parse(url, None).expect_err(url);
        let message = err.to_string();
        assert!(
            message.starts_with("invalid DATABASE_URL=") && message.contains(": expected "),
            "{message}"
        );
        assert!(message.contains(fragment), "{url}: {message}");
        message
    }

    #[test]
    fn every_scheme_the_backend_writes_is_accepted_unchanged() {
        for scheme in POSTGRES_SCHEMES {
            let config = postgres(&format!("{scheme}://app:pw@db.example.com:6543/appdb"));
            assert_eq!(config.host, "db.example.com");
            assert_eq!(config.port, 6543);
            assert_eq!(config.user, "app");
            assert_eq!(config.dbname.as_deref(), Some("appdb"));
            assert_eq!(
                config.password,
                Some(DatabasePassword::Url(Secret::new("pw".to_owned())))
            );
            // libpq's defaults.
            assert_eq!(config.sslmode, SslMode::Prefer);
            assert_eq!(config.sslrootcert, RootCerts::Default);
            assert_eq!(config.channel_binding, ChannelBinding::Prefer);
        }
        assert!(matches!(
            parse("POSTGRESQL+ASYNCPG://a@h/d", None),
            Ok(Database::Postgres(_))
        ));
    }

    #[test]
    fn parts_are_percent_decoded_and_defaults_filled_in() {
        let config = postgres("postgresql://us%40er:p%40ss%3Aw%2Fo%3Frd@db/my%20db");
        assert_eq!(config.user, "us@er");
        assert_eq!(
            config.password,
            Some(DatabasePassword::Url(Secret::new("p@ss:w/o?rd".to_owned())))
        );
        assert_eq!(config.dbname.as_deref(), Some("my db"));
        assert_eq!(config.port, 5432);
        // SQLAlchemy's pattern: the password runs to the first @, so : / ? need no escape.
        let config = postgres("postgresql+psycopg2://app:a:b/c?d@db:5433");
        assert_eq!(
            config.password,
            Some(DatabasePassword::Url(Secret::new("a:b/c?d".to_owned())))
        );
        assert_eq!((config.host.as_str(), config.port), ("db", 5433));
        assert_eq!(config.dbname, None);
        let config = postgres("postgresql://app@[::1]:5433/x");
        assert_eq!((config.host.as_str(), config.port), ("::1", 5433));
        assert_eq!(config.addr(), "[::1]:5433");
        assert_eq!(config.password, None);
        assert_eq!(postgres("postgresql://app:@h/x").password, None);
    }

    #[test]
    fn query_parameters_people_use_are_applied() {
        let config = postgres(
            "postgresql://app@db/app?sslmode=verify-full&sslrootcert=/etc/ca.pem\
             &sslcert=/etc/c.pem&sslkey=/etc/c.key&connect_timeout=7\
             &application_name=prov+worker&options=-c%20search_path%3Dapp+-c+lock_timeout%3D2s\
             &channel_binding=require",
        );
        assert_eq!(config.sslmode, SslMode::VerifyFull);
        assert_eq!(config.sslrootcert, RootCerts::File("/etc/ca.pem".into()));
        assert_eq!(config.sslcert, Some("/etc/c.pem".into()));
        assert_eq!(config.sslkey, Some("/etc/c.key".into()));
        assert_eq!(config.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(config.application_name.as_deref(), Some("prov worker"));
        assert_eq!(
            config.options.as_deref(),
            Some("-c search_path=app -c lock_timeout=2s")
        );
        assert_eq!(config.channel_binding, ChannelBinding::Require);
        assert_eq!(
            postgres("postgresql+asyncpg://a@h/d?ssl=require").sslmode,
            SslMode::Require
        );
        assert_eq!(
            postgres("postgresql://a@h/d?sslmode=verify-full&sslrootcert=system").sslrootcert,
            RootCerts::System
        );
    }

    #[test]
    fn what_cannot_work_is_refused_saying_what_would() {
        refused("postgresql://db/app", "with a user name");
        refused("postgresql://app@/app", "naming the server's host");
        refused(
            "postgresql:///app?host=/var/run/postgresql",
            "naming the server's host",
        );
        refused("postgresql://app@h1,h2/app", "one host");
        refused("postgresql://app@db:0/app", "port");
        refused("postgresql://app@db:99999/app", "port");
        refused("postgresql://app@db:x/app", "port");
        refused("postgresql://app@[::1/app", "closed by ]");
        refused("postgresql://app@db/app?sslmode=allow", "allow");
        refused("postgresql://app@db/app?sslmode=on", "verify-full");
        refused("postgresql://app@db/app?ssl_mode=require", "\"ssl_mode\"");
        refused(
            "postgresql://app@db/app?target_session_attrs=any",
            "remove it",
        );
        refused(
            "postgresql://app@db/app?sslmode=require&ssl=disable",
            "at most once",
        );
        refused("postgresql://app@db/app?connect_timeout=0", "1 to 3600");
        refused(
            "postgresql://app@db/app?sslcert=/c.pem",
            "together with sslkey",
        );
        refused(
            "postgresql://app@db/app?sslkey=/c.key",
            "sslcert together with sslkey",
        );
        refused(
            "postgresql://app@db/app?channel_binding=yes",
            "channel_binding=",
        );
        refused("postgresql://app@db/a%00b", "without NUL");
        refused("mysql://app@db/app", "PostgreSQL URL like");
        refused("sqlite+asyncpg:///x.db", "sqlite+aiosqlite");
    }

    #[test]
    fn a_refused_url_never_shows_its_password() {
        for url in [
            "postgresql+asyncpg://app:app-pw@db:notaport/app",
            "postgresql://app:app-pw@db/app?sslmode=bogus",
            "postgresql://app:app-pw@db/app?password=app-pw",
            "mysql://app:app-pw@db/app",
            "sqlite://app:app-pw@host/x.db",
            "postgres://app:app-pw@[::1/app",
        ] {
            let message = parse(url, None).unwrap_err().to_string();
            assert!(!message.contains("app-pw"), "{message}");
            assert!(message.contains(MASK), "{message}");
        }
    }

    #[test]
    fn mask_password_hides_what_a_parser_would_take_for_a_password() {
        let cases = [
            (
                "postgresql+asyncpg://app:app-pw@db:5432/app",
                "postgresql+asyncpg://app:***@db:5432/app",
            ),
            ("postgresql://app@db/app", "postgresql://app@db/app"),
            (
                "postgresql://app:a/b?c@db/app",
                "postgresql://app:***@db/app",
            ),
            (
                "postgresql://app@db/app?sslmode=require&password=x&pass%77ord=y",
                "postgresql://app@db/app?sslmode=require&password=***&pass%77ord=***",
            ),
            ("sqlite:///./poc.db", "sqlite:///./poc.db"),
            ("./poc.db", "./poc.db"),
        ];
        for (url, masked) in cases {
            assert_eq!(mask_password(url), masked, "{url}");
        }
    }

    #[test]
    fn the_password_file_replaces_the_urls_password_and_never_both() {
        let file = PathBuf::from("/run/secrets/pg");
        let Ok(Database::Postgres(config)) = parse("postgresql://app@db/app", Some(file.clone()))
        else {
            panic!("a password file with a URL without a password");
        };
        assert_eq!(config.password, Some(DatabasePassword::File(file.clone())));
        assert_eq!(
            config.password.as_ref().map(ToString::to_string).as_deref(),
            Some("password from file /run/secrets/pg")
        );
        let both = parse("postgresql://app:pw@db/app", Some(file.clone()))
            .unwrap_err()
            .to_string();
        assert!(both.contains("not both"), "{both}");
        assert!(!both.contains(":pw@"), "{both}");
        let sqlite = parse("sqlite:///x.db", Some(file)).unwrap_err().to_string();
        assert!(
            sqlite.starts_with("invalid DATABASE_PASSWORD_FILE=") && sqlite.contains("SQLite"),
            "{sqlite}"
        );
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let config = postgres("postgresql://app:hunter2-secret@db/app");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
    }
}
