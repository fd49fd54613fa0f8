//! Connects, reports what `check` would (server version, TLS, authentication,
//! synchronous_commit) and runs one prepared statement. Also the smallest program that
//! links the whole client, for measuring its size (README "Size").
//!
//! ```text
//! PGHOST=127.0.0.1 PGPORT=5432 PGUSER=app PGPASSWORD=... PGDATABASE=app PGSSLMODE=require \
//!     cargo run --release --example pg_check
//! ```
use std::process::ExitCode;

use blocking_postgres::{Client, Config, Password, RootCerts, SslMode};

fn main() -> ExitCode {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut config = Config::new(
        var("PGHOST").unwrap_or_else(|| "127.0.0.1".to_owned()),
        var("PGUSER").unwrap_or_else(|| "postgres".to_owned()),
    );
    if let Some(port) = var("PGPORT").and_then(|p| p.parse().ok()) {
        config.port = port;
    }
    config.dbname = var("PGDATABASE");
    config.password = var("PGPASSWORD").map(Password::new);
    if let Some(mode) = var("PGSSLMODE") {
        match SslMode::parse(&mode) {
            Some(mode) => config.sslmode = mode,
            None => {
                eprintln!(
                    "pg_check: PGSSLMODE={mode:?} is not disable, prefer, require, verify-ca or verify-full"
                );
                return ExitCode::from(2);
            }
        }
    }
    if let Some(root) = var("PGSSLROOTCERT") {
        config.sslrootcert = if root == "system" {
            RootCerts::System
        } else {
            RootCerts::File(root.into())
        };
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg_check: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(config: Config) -> Result<(), blocking_postgres::Error> {
    let mut client = Client::connect(config)?;
    let session = client.session().clone();
    println!(
        "server version: {}",
        client.server_version().unwrap_or("(not reported)")
    );
    match &session.tls {
        Some(tls) => println!(
            "TLS: {}, {}, certificate checked: {}",
            tls.version, tls.cipher_suite, tls.verified
        ),
        None => println!("TLS: none"),
    }
    println!("authenticated as {} with {}", session.user, session.auth);
    println!("synchronous_commit: {}", client.show("synchronous_commit")?);
    let row = client.query_one("SELECT now()::timestamp, $1::int8 + 1", &[&41i64])?;
    println!(
        "server time: {}, answer: {}",
        row.get::<blocking_postgres::Timestamp>(0)?,
        row.get::<i64>(1)?
    );
    client.close()
}
