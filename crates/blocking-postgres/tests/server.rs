//! The client against a real PostgreSQL 15 (one cluster for this file, crates/pg-testkit):
//! every sslmode, every authentication method, prepared statements and their types,
//! transactions, and the server's errors sorted into transient and permanent.

use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use blocking_postgres::{
    AuthMethod, ChannelBinding, Class, Client, Config, Error, Isolation, Password, RootCerts,
    SslMode, Timestamp, TransactionStatus,
};
use pg_testkit::{CLEAR_PASSWORD, MD5_PASSWORD, SCRAM_PASSWORD, shared};

/// A configuration for the shared cluster.
fn config(user: &str, password: Option<&str>, sslmode: SslMode) -> Config {
    let cluster = shared();
    let mut config = Config::new(cluster.host(), user);
    config.port = cluster.port();
    config.dbname = Some("postgres".to_owned());
    config.password = password.map(Password::new);
    config.sslmode = sslmode;
    config.connect_timeout = Duration::from_secs(20);
    config
}

fn connect(config: Config) -> Client {
    Client::connect(config).unwrap_or_else(|e| panic!("connect: {e}"))
}

fn superuser() -> Client {
    connect(config("postgres", None, SslMode::Disable))
}

/// What the server says about this connection's TLS (pg_stat_ssl), independently of us.
fn server_sees_tls(client: &mut Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .and_then(|row| row.get::<bool>(0))
        .expect("pg_stat_ssl")
}

fn expect_err<T>(result: Result<T, Error>, what: &str) -> Error {
    match result {
        Ok(_) => panic!("{what}: expected an error, got success"),
        Err(e) => e,
    }
}

/// A table of our own for one test.
fn table(client: &mut Client, name: &str, columns: &str) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({columns})"
        ))
        .expect("create the table");
}

// ---------------------------------------------------------------------------------------
// sslmode

#[test]
fn sslmode_disable_connects_without_tls() {
    let mut client = connect(config("trust_user", None, SslMode::Disable));
    assert_eq!(client.session().tls, None);
    assert!(!server_sees_tls(&mut client));
}

#[test]
fn sslmode_prefer_uses_tls_when_the_server_offers_it() {
    let mut client = connect(config("trust_user", None, SslMode::Prefer));
    let tls = client.session().tls.clone().expect("TLS");
    assert!(tls.version.starts_with("TLS 1."), "{tls:?}");
    assert!(server_sees_tls(&mut client));
}

#[test]
fn sslmode_require_without_root_certificates_checks_no_certificate() {
    // No sslrootcert and (on these machines) no ~/.postgresql/root.crt: libpq's `require`
    // encrypts without checking who answers.
    let home_root = std::env::var_os("HOME").map(|h| Path::new(&h).join(".postgresql/root.crt"));
    assert!(
        !home_root.as_ref().is_some_and(|p| p.exists()),
        "this test assumes no {home_root:?}"
    );
    let mut client = connect(config("trust_user", None, SslMode::Require));
    assert_eq!(
        client.session().tls.as_ref().map(|t| t.verified),
        Some("none")
    );
    assert!(server_sees_tls(&mut client));
}

#[test]
fn sslmode_require_with_a_root_file_checks_the_ca_as_libpq_does() {
    let cluster = shared();
    let mut good = config("trust_user", None, SslMode::Require);
    good.sslrootcert = RootCerts::File(cluster.ca_file());
    let client = connect(good);
    assert_eq!(
        client.session().tls.as_ref().map(|t| t.verified),
        Some("CA")
    );

    let mut wrong = config("trust_user", None, SslMode::Require);
    wrong.sslrootcert = RootCerts::File(cluster.other_ca_file());
    let err = expect_err(Client::connect(wrong), "require with another CA");
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("not signed by a CA in sslrootcert="),
        "{text}"
    );
    assert_eq!(err.class(), Class::Permanent);
}

#[test]
fn sslmode_prefer_falls_back_to_plaintext_when_the_certificate_is_refused() {
    // libpq's behaviour: `prefer` retries without TLS after a failed handshake.
    let mut config = config("trust_user", None, SslMode::Prefer);
    config.sslrootcert = RootCerts::File(shared().other_ca_file());
    let mut client = connect(config);
    assert_eq!(client.session().tls, None);
    assert!(!server_sees_tls(&mut client));
}

#[test]
fn verify_ca_accepts_the_certificate_under_any_host_name() {
    let cluster = shared();
    let mut config = config("trust_user", None, SslMode::VerifyCa);
    config.host = "db.wrong.example".to_owned();
    config.hostaddr = Some("127.0.0.1".parse().expect("ip"));
    config.sslrootcert = RootCerts::File(cluster.ca_file());
    let mut client = connect(config);
    assert_eq!(
        client.session().tls.as_ref().map(|t| t.verified),
        Some("CA")
    );
    assert!(server_sees_tls(&mut client));
}

#[test]
fn verify_full_accepts_each_name_in_the_certificate() {
    let cluster = shared();
    for host in cluster.server_names() {
        let mut config = config("trust_user", None, SslMode::VerifyFull);
        config.host = host.to_owned();
        config.sslrootcert = RootCerts::File(cluster.ca_file());
        let client = connect(config);
        assert_eq!(
            client.session().tls.as_ref().map(|t| t.verified),
            Some("CA and host name"),
            "{host}"
        );
    }
}

#[test]
fn verify_full_refuses_a_wrong_host_name_naming_the_names_in_the_certificate() {
    let cluster = shared();
    let mut config = config("trust_user", None, SslMode::VerifyFull);
    config.host = "db.wrong.example".to_owned();
    config.hostaddr = Some("127.0.0.1".parse().expect("ip"));
    config.sslrootcert = RootCerts::File(cluster.ca_file());
    let err = expect_err(Client::connect(config), "verify-full with a wrong name");
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(
            "the server's certificate is for localhost, 127.0.0.1, not for db.wrong.example"
        ),
        "{text}"
    );
    assert!(text.contains("sslmode=verify-ca"), "{text}");
    assert_eq!(err.class(), Class::Permanent);
    assert!(err.is_security());
}

#[test]
fn verify_full_without_root_certificates_is_refused_before_connecting() {
    let mut config = config("trust_user", None, SslMode::VerifyFull);
    config.sslrootcert = RootCerts::File(shared().scratch().join("no-such-root.crt"));
    let err = expect_err(Client::connect(config), "verify-full with a missing file");
    let text = err.to_string();
    assert!(text.starts_with("cannot use sslrootcert"), "{text}");
    assert!(text.contains("no-such-root.crt"), "{text}");
}

#[test]
fn sslrootcert_system_trusts_the_public_cas_and_not_the_test_ca() {
    let mut config = config("trust_user", None, SslMode::VerifyFull);
    config.sslrootcert = RootCerts::System;
    let err = expect_err(Client::connect(config), "public CAs against the test CA");
    let text = err.to_string();
    assert!(
        text.contains("not signed by a CA in the compiled-in Mozilla roots"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------
// Client certificates

/// Makes an RSA key in PKCS#1 form and a certificate for `cert_user` signed by the test CA,
/// and the EC key of the harness in SEC1 form; returns (cert, key) pairs by key format.
fn client_identities() -> Vec<(&'static str, std::path::PathBuf, std::path::PathBuf)> {
    let cluster = shared();
    let dir = cluster.scratch();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("could not run openssl ({e}): apt-get install -y openssl"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |name: &str| dir.join(name).display().to_string();
    let rsa_key = dir.join("client-rsa.key");
    if !rsa_key.exists() {
        openssl(&[
            "genrsa",
            "-traditional",
            "-out",
            &p("client-rsa.tmp"),
            "2048",
        ]);
        openssl(&[
            "req",
            "-new",
            "-key",
            &p("client-rsa.tmp"),
            "-subj",
            "/CN=cert_user",
            "-out",
            &p("client-rsa.csr"),
        ]);
        // Extensions make it a v3 certificate, which webpki requires.
        std::fs::write(
            dir.join("client-rsa.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        )
        .expect("write the extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p("client-rsa.csr"),
            "-extfile",
            &p("client-rsa.ext"),
            "-CA",
            &cluster.ca_file().display().to_string(),
            "-CAkey",
            &cluster.ca_key().display().to_string(),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &p("client-rsa.crt"),
        ]);
        openssl(&[
            "ec",
            "-in",
            &cluster.client_key().display().to_string(),
            "-out",
            &p("client-sec1.tmp"),
        ]);
        for (tmp, key) in [
            ("client-rsa.tmp", "client-rsa.key"),
            ("client-sec1.tmp", "client-sec1.key"),
        ] {
            std::fs::set_permissions(
                dir.join(tmp),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("chmod");
            std::fs::rename(dir.join(tmp), dir.join(key)).expect("rename");
        }
    }
    let pem = |path: &Path| std::fs::read_to_string(path).expect("read a key");
    assert!(pem(&cluster.client_key()).contains("BEGIN PRIVATE KEY"));
    assert!(pem(&dir.join("client-rsa.key")).contains("BEGIN RSA PRIVATE KEY"));
    assert!(pem(&dir.join("client-sec1.key")).contains("BEGIN EC PRIVATE KEY"));
    vec![
        ("PKCS#8", cluster.client_cert(), cluster.client_key()),
        (
            "PKCS#1",
            dir.join("client-rsa.crt"),
            dir.join("client-rsa.key"),
        ),
        ("SEC1", cluster.client_cert(), dir.join("client-sec1.key")),
    ]
}

#[test]
fn a_client_certificate_authenticates_with_each_key_format() {
    // One test, so the keys are made once and not by two tests at the same time.
    for (format, cert, key) in client_identities() {
        let mut config = config("cert_user", None, SslMode::VerifyFull);
        config.host = "localhost".to_owned();
        config.sslrootcert = RootCerts::File(shared().ca_file());
        config.sslcert = Some(cert);
        config.sslkey = Some(key);
        let mut client = Client::connect(config).unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(client.session().auth, AuthMethod::NoPassword, "{format}");
        let user = client
            .query_one("SELECT current_user::text", &[])
            .and_then(|r| r.get::<String>(0))
            .expect("current_user");
        assert_eq!(user, "cert_user", "{format}");
    }
}

#[test]
fn cert_authentication_without_a_client_certificate_is_refused_in_words() {
    let mut config = config("cert_user", None, SslMode::Require);
    config.channel_binding = ChannelBinding::Disable;
    let err = expect_err(Client::connect(config), "cert auth without a certificate");
    assert_eq!(err.code(), Some("28000"), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_eq!(err.class(), Class::Permanent);
}

// ---------------------------------------------------------------------------------------
// Authentication

#[test]
fn scram_over_tls_binds_to_the_channel() {
    let client = connect(config("scram_user", Some(SCRAM_PASSWORD), SslMode::Require));
    assert_eq!(client.session().auth, AuthMethod::ScramSha256Plus);
}

#[test]
fn scram_without_channel_binding_over_tls_and_over_plaintext() {
    let mut over_tls = config("scram_user", Some(SCRAM_PASSWORD), SslMode::Require);
    over_tls.channel_binding = ChannelBinding::Disable;
    assert_eq!(connect(over_tls).session().auth, AuthMethod::ScramSha256);
    let plain = config("scram_user", Some(SCRAM_PASSWORD), SslMode::Disable);
    assert_eq!(connect(plain).session().auth, AuthMethod::ScramSha256);
}

#[test]
fn channel_binding_require_refuses_every_other_method() {
    let mut md5 = config("md5_user", Some(MD5_PASSWORD), SslMode::Require);
    md5.channel_binding = ChannelBinding::Require;
    let err = expect_err(Client::connect(md5), "MD5 with channel_binding=require");
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(err.to_string().contains("channel_binding=require"), "{err}");

    let mut trust = config("trust_user", None, SslMode::Require);
    trust.channel_binding = ChannelBinding::Require;
    expect_err(Client::connect(trust), "trust with channel_binding=require");

    let mut scram = config("scram_user", Some(SCRAM_PASSWORD), SslMode::Require);
    scram.channel_binding = ChannelBinding::Require;
    assert_eq!(connect(scram).session().auth, AuthMethod::ScramSha256Plus);
}

#[test]
fn md5_authenticates() {
    for sslmode in [SslMode::Disable, SslMode::Require] {
        let client = connect(config("md5_user", Some(MD5_PASSWORD), sslmode));
        assert_eq!(client.session().auth, AuthMethod::Md5);
    }
}

#[test]
fn trust_needs_no_password() {
    let client = connect(config("trust_user", None, SslMode::Disable));
    assert_eq!(client.session().auth, AuthMethod::NoPassword);
    assert_eq!(client.session().user, "trust_user");
}

#[test]
fn a_wrong_password_is_refused_clearly() {
    for (user, sslmode) in [
        ("scram_user", SslMode::Require),
        ("scram_user", SslMode::Disable),
        ("md5_user", SslMode::Disable),
    ] {
        let err = expect_err(
            Client::connect(config(user, Some("not-the-password"), sslmode)),
            "a wrong password",
        );
        assert_eq!(err.code(), Some("28P01"), "{user}: {err}");
        let text = err.to_string();
        assert!(
            text.contains("password authentication failed for user")
                && text.contains("check the user name and the password"),
            "{text}"
        );
        assert_eq!(err.class(), Class::Permanent);
        assert!(err.is_security());
    }
}

#[test]
fn a_missing_password_is_reported_without_a_round_trip_of_guesses() {
    let err = expect_err(
        Client::connect(config("scram_user", None, SslMode::Require)),
        "no password",
    );
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(err.to_string().contains("none is configured"), "{err}");
}

#[test]
fn a_cleartext_password_is_sent_only_over_tls_or_when_allowed() {
    let err = expect_err(
        Client::connect(config("clear_user", Some(CLEAR_PASSWORD), SslMode::Disable)),
        "cleartext over plaintext",
    );
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(
        err.to_string().contains("refused without sending it"),
        "{err}"
    );

    let client = connect(config("clear_user", Some(CLEAR_PASSWORD), SslMode::Require));
    assert_eq!(client.session().auth, AuthMethod::Cleartext);

    let mut allowed = config("clear_user", Some(CLEAR_PASSWORD), SslMode::Disable);
    allowed.allow_cleartext_password_without_tls = true;
    assert_eq!(connect(allowed).session().auth, AuthMethod::Cleartext);
}

#[cfg(feature = "saslprep")]
#[test]
fn a_non_ascii_password_is_saslprepped_as_the_server_stores_it() {
    // The server stores the SCRAM secret of SASLprep(password): here "passIXword", from a
    // Roman numeral nine (NFKC) and a soft hyphen (mapped to nothing).
    let password = "pass\u{2168}\u{00AD}word";
    shared().psql(&format!(
        "DROP ROLE IF EXISTS nfkc_user; CREATE ROLE nfkc_user LOGIN PASSWORD '{password}'"
    ));
    let client = connect(config("nfkc_user", Some(password), SslMode::Require));
    assert_eq!(client.session().auth, AuthMethod::ScramSha256Plus);
    let err = expect_err(
        Client::connect(config("nfkc_user", Some("passIXwordX"), SslMode::Require)),
        "another password",
    );
    assert_eq!(err.code(), Some("28P01"));
}

#[test]
fn a_password_file_is_read_at_each_login() {
    let path = shared().scratch().join("scram-password");
    std::fs::write(&path, format!("{SCRAM_PASSWORD}\n")).expect("write");
    let mut config = config("scram_user", None, SslMode::Disable);
    config.password = Some(Password::from_file(&path).expect("readable"));
    let connector = blocking_postgres::Connector::new(config).expect("config");
    connector.connect().expect("the password from the file");
    std::fs::write(&path, "rotated-elsewhere\n").expect("write");
    let err = expect_err(connector.connect(), "the rotated password");
    assert_eq!(err.code(), Some("28P01"));
}

#[test]
fn application_name_and_options_reach_the_server() {
    let mut config = config("trust_user", None, SslMode::Disable);
    config.application_name = Some("blocking-postgres-test".to_owned());
    config.options = Some("-c lock_timeout=1234ms -c statement_timeout=5min".to_owned());
    let mut client = connect(config);
    assert_eq!(client.show("lock_timeout").expect("show"), "1234ms");
    assert_eq!(client.show("statement_timeout").expect("show"), "5min");
    assert_eq!(
        client.parameter("application_name"),
        Some("blocking-postgres-test")
    );
    let seen = client
        .query_one(
            "SELECT application_name::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .and_then(|r| r.get::<String>(0))
        .expect("pg_stat_activity");
    assert_eq!(seen, "blocking-postgres-test");
}

#[test]
fn a_database_of_its_own_isolates_a_test() {
    let name = shared().create_database("scram_user");
    let mut config = config("scram_user", Some(SCRAM_PASSWORD), SslMode::Require);
    config.dbname = Some(name.clone());
    let mut client = connect(config);
    table(&mut client, "mine", "k int");
    let db = client
        .query_one("SELECT current_database()::text", &[])
        .and_then(|r| r.get::<String>(0))
        .expect("current_database");
    assert_eq!(db, name);
    assert_eq!(
        shared().psql("SELECT count(*) FROM pg_tables WHERE tablename = 'mine'"),
        "0",
        "not in the postgres database"
    );
}

#[test]
fn server_parameters_and_settings_are_read() {
    let mut client = superuser();
    let version = client.server_version().expect("server_version").to_owned();
    assert!(version.starts_with("15."), "{version}");
    assert_eq!(client.parameter("client_encoding"), Some("UTF8"));
    assert_eq!(client.show("synchronous_commit").expect("show"), "on");
    let err = expect_err(client.show("x; DROP TABLE t"), "a SHOW of SQL");
    assert!(matches!(err, Error::Usage { .. }), "{err}");
    assert!(client.backend_pid() > 0);
    client.is_valid().expect("valid");
}

// ---------------------------------------------------------------------------------------
// Statements and types

#[test]
fn prepared_statements_round_trip_every_supported_type_and_null() {
    let mut client = connect(config("scram_user", Some(SCRAM_PASSWORD), SslMode::Require));
    table(
        &mut client,
        "types_round_trip",
        "t text, v varchar(64), c char(3), i2 int2, i4 int4, i8 int8, b bool, ts timestamp, tz timestamptz, by bytea",
    );
    let insert = client
        .prepare("INSERT INTO types_round_trip VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
        .expect("prepare");
    let select = client
        .prepare("SELECT t, v, c, i2, i4, i8, b, ts, tz, by FROM types_round_trip ORDER BY i4 NULLS LAST")
        .expect("prepare");
    let ts = Timestamp::parse("2024-02-29 12:34:56.789012").expect("timestamp");
    let tz = Timestamp::from_unix_micros(1_700_000_000_123_456);
    let text = "héllo, wörld ✓ 'quoted' \"and\" \\ back";
    let n = client
        .execute(
            &insert,
            &[
                &text,
                &"varchar",
                &"abc",
                &-7i16,
                &i32::MIN,
                &i64::MAX,
                &true,
                &ts,
                &tz,
                &vec![0u8, 1, 255],
            ],
        )
        .expect("insert values");
    assert_eq!(n, 1);
    let nulls: [&dyn blocking_postgres::ToSql; 10] = [
        &None::<&str>,
        &None::<String>,
        &None::<&str>,
        &None::<i16>,
        &None::<i32>,
        &None::<i64>,
        &None::<bool>,
        &None::<Timestamp>,
        &None::<Timestamp>,
        &None::<Vec<u8>>,
    ];
    client.execute(&insert, &nulls).expect("insert NULLs");

    let rows = client.query(&select, &[]).expect("select");
    assert_eq!(rows.len(), 2);
    let r = &rows[0];
    assert_eq!(r.get::<String>(0).expect("t"), text);
    assert_eq!(r.get::<String>(1).expect("v"), "varchar");
    assert_eq!(r.get::<String>(2).expect("c"), "abc");
    assert_eq!(r.get::<i16>(3).expect("i2"), -7);
    assert_eq!(r.get::<i32>(4).expect("i4"), i32::MIN);
    assert_eq!(r.get::<i64>(5).expect("i8"), i64::MAX);
    assert!(r.get::<bool>(6).expect("b"));
    assert_eq!(r.get::<Timestamp>(7).expect("ts"), ts);
    assert_eq!(r.get::<Timestamp>(8).expect("tz"), tz);
    assert_eq!(r.get::<Vec<u8>>(9).expect("by"), vec![0u8, 1, 255]);
    assert_eq!(
        r.get_named::<i64>("i4").expect("widened"),
        i64::from(i32::MIN)
    );
    let n = &rows[1];
    assert_eq!(n.get::<Option<String>>(0).expect("t"), None);
    assert_eq!(n.get::<Option<i32>>(4).expect("i4"), None);
    assert_eq!(n.get::<Option<bool>>(6).expect("b"), None);
    assert_eq!(n.get::<Option<Timestamp>>(7).expect("ts"), None);
    let err = n.get::<String>(0).expect_err("NULL into String");
    assert!(
        err.to_string().contains("read it as Option<String>"),
        "{err}"
    );

    // What the server itself makes of our timestamp: the same text PostgreSQL prints.
    let shown = client
        .query_one(
            "SELECT ts::text FROM types_round_trip WHERE ts IS NOT NULL",
            &[],
        )
        .and_then(|r| r.get::<String>(0))
        .expect("ts as text");
    assert_eq!(shown, "2024-02-29 12:34:56.789012");
    let shown = client
        .query_one(
            "SELECT (tz AT TIME ZONE 'UTC')::text FROM types_round_trip WHERE tz IS NOT NULL",
            &[],
        )
        .and_then(|r| r.get::<String>(0))
        .expect("tz as text");
    assert_eq!(
        shown,
        Timestamp::from_unix_micros(1_700_000_000_123_456).to_string()
    );
}

#[test]
fn a_statement_is_parsed_once_per_connection() {
    let mut client = superuser();
    let sql = "SELECT $1::int8 * 2";
    for i in 0..5i64 {
        let row = client.query_one(sql, &[&i]).expect("query");
        assert_eq!(row.get::<i64>(0).expect("value"), i * 2);
    }
    let prepared = client
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1",
            &[&sql],
        )
        .and_then(|r| r.get::<i64>(0))
        .expect("pg_prepared_statements");
    assert_eq!(prepared, 1);
    let a = client.prepare_cached(sql).expect("cached");
    let b = client.prepare_cached(sql).expect("cached");
    assert_eq!(a.params(), b.params());
}

#[test]
fn a_statement_of_another_connection_is_refused() {
    let mut one = superuser();
    let mut two = superuser();
    let statement = one.prepare("SELECT 1").expect("prepare");
    let err = expect_err(two.query(&statement, &[]), "a foreign statement");
    assert!(matches!(err, Error::Usage { .. }), "{err}");
    assert!(
        err.to_string().contains("prepared on another connection"),
        "{err}"
    );
    two.is_valid().expect("still usable");
}

#[test]
fn bad_parameters_are_refused_before_sending_and_leave_the_connection_usable() {
    let mut client = superuser();
    let err = expect_err(
        client.query("SELECT $1::int4, $2::text", &[&1i32]),
        "too few",
    );
    assert!(
        err.to_string()
            .contains("takes 2 parameter(s) and 1 were given"),
        "{err}"
    );
    let err = expect_err(client.query("SELECT $1::text", &[&1i32]), "i32 as text");
    assert!(matches!(err, Error::Conversion { .. }), "{err}");
    assert!(err.to_string().starts_with("parameter $1:"), "{err}");
    let err = expect_err(
        client.query("SELECT $1::int2", &[&100_000i32]),
        "out of range",
    );
    assert!(err.to_string().contains("does not fit"), "{err}");
    let err = expect_err(client.query("SELECT 'a\0b'", &[]), "NUL in SQL");
    assert!(matches!(err, Error::Usage { .. }), "{err}");
    assert!(!client.is_broken());
    assert_eq!(
        client
            .query_one("SELECT 1::int4", &[])
            .and_then(|r| r.get::<i32>(0))
            .expect("usable"),
        1
    );
}

#[test]
fn simple_queries_run_ddl_and_return_text() {
    let mut client = superuser();
    client
        .batch_execute(
            "DROP TABLE IF EXISTS simple_t; CREATE TABLE simple_t (k int, v text); INSERT INTO simple_t VALUES (1, 'one'), (2, NULL)",
        )
        .expect("ddl");
    let rows = client
        .simple_query("SELECT k, v FROM simple_t ORDER BY k")
        .expect("select");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get("k"), Some("1"));
    assert_eq!(rows[0].get("v"), Some("one"));
    assert_eq!(rows[1].values[1], None);
    assert!(client.simple_query("").expect("empty").is_empty());
}

#[test]
fn notices_and_warnings_are_ignored_safely() {
    let mut client = superuser();
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION noisy(n int) RETURNS int LANGUAGE plpgsql AS $$
             BEGIN RAISE NOTICE 'notice %', n; RAISE WARNING 'warning %', n; RETURN n; END $$",
        )
        .expect("function");
    let rows = client
        .query("SELECT noisy(g) FROM generate_series(1, 50) g", &[])
        .expect("rows among notices");
    assert_eq!(rows.len(), 50);
    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello'; END $$")
        .expect("a notice in a simple query");
    client.is_valid().expect("usable");
}

#[test]
fn copy_is_refused_and_the_connection_stays_usable() {
    let mut client = superuser();
    table(&mut client, "copy_t", "k int");
    let err = expect_err(client.batch_execute("COPY copy_t FROM STDIN"), "COPY FROM");
    assert!(err.to_string().contains("COPY is not supported"), "{err}");
    let err = expect_err(
        client.execute("COPY copy_t FROM STDIN", &[]),
        "COPY FROM, extended",
    );
    assert!(err.to_string().contains("COPY is not supported"), "{err}");
    client
        .batch_execute("INSERT INTO copy_t VALUES (1)")
        .expect("insert");
    let err = expect_err(client.batch_execute("COPY copy_t TO STDOUT"), "COPY TO");
    assert!(err.to_string().contains("COPY is not supported"), "{err}");
    client.is_valid().expect("usable");
}

#[test]
fn a_result_over_max_result_bytes_is_refused_and_the_connection_stays_usable() {
    let mut config = config("postgres", None, SslMode::Disable);
    config.max_result_bytes = 10_000;
    let mut client = connect(config);
    let err = expect_err(
        client.query("SELECT repeat('x', 1000) FROM generate_series(1, 100)", &[]),
        "100 kB of rows",
    );
    assert!(
        matches!(err, Error::ResultTooLarge { limit: 10_000 }),
        "{err}"
    );
    let err = expect_err(
        client.simple_query("SELECT repeat('x', 1000) FROM generate_series(1, 100)"),
        "100 kB of rows, simple",
    );
    assert!(matches!(err, Error::ResultTooLarge { .. }), "{err}");
    assert!(!client.is_broken());
    // `execute` keeps no rows, so it has nothing to bound.
    let n = client
        .execute("SELECT repeat('x', 1000) FROM generate_series(1, 100)", &[])
        .expect("rows counted, not kept");
    assert_eq!(n, 100);
    client.is_valid().expect("usable");
}

#[test]
fn a_row_over_max_message_len_breaks_the_connection_without_reading_it() {
    let mut config = config("postgres", None, SslMode::Disable);
    config.max_message_len = 1000;
    let mut client = connect(config);
    let err = expect_err(client.query("SELECT repeat('x', 5000)", &[]), "a 5 kB row");
    match &err {
        Error::MessageTooLarge {
            tag,
            limit,
            before_auth,
            ..
        } => assert_eq!((*tag, *limit, *before_auth), (b'D', 1000, false)),
        other => panic!("expected MessageTooLarge, got {other}"),
    }
    assert!(err.to_string().contains("raise max_message_len"), "{err}");
    assert!(client.is_broken());
    assert!(matches!(client.is_valid(), Err(Error::Closed)));
}

// ---------------------------------------------------------------------------------------
// Transactions

#[test]
fn a_transaction_commits_rolls_back_and_rolls_back_when_dropped() {
    let mut client = superuser();
    table(&mut client, "tx_t", "k int PRIMARY KEY");
    let count = |client: &mut Client| {
        client
            .query_one("SELECT count(*) FROM tx_t", &[])
            .and_then(|r| r.get::<i64>(0))
            .expect("count")
    };

    let mut tx = client.transaction().expect("begin");
    tx.execute("INSERT INTO tx_t VALUES ($1)", &[&1i32])
        .expect("insert");
    assert_eq!(tx.transaction_status(), TransactionStatus::InTransaction);
    tx.rollback().expect("rollback");
    assert_eq!(count(&mut client), 0, "rolled back");

    {
        let mut tx = client.transaction().expect("begin");
        tx.execute("INSERT INTO tx_t VALUES ($1)", &[&2i32])
            .expect("insert");
        // Dropped without commit: an early return, a panic.
    }
    assert_eq!(client.transaction_status(), TransactionStatus::Idle);
    assert_eq!(count(&mut client), 0, "rolled back on drop");

    let mut tx = client.transaction().expect("begin");
    tx.execute("INSERT INTO tx_t VALUES ($1)", &[&3i32])
        .expect("insert");
    let err = expect_err(tx.transaction(), "a nested transaction");
    assert!(matches!(err, Error::Usage { .. }), "{err}");
    tx.commit().expect("commit");
    assert_eq!(count(&mut client), 1, "committed");
}

#[test]
fn commit_after_a_failed_statement_says_it_rolled_back() {
    let mut client = superuser();
    table(&mut client, "tx_fail_t", "k int PRIMARY KEY");
    let mut tx = client.transaction().expect("begin");
    tx.execute("INSERT INTO tx_fail_t VALUES (1)", &[])
        .expect("insert");
    let err = expect_err(
        tx.execute("INSERT INTO tx_fail_t VALUES (1)", &[]),
        "duplicate",
    );
    assert_eq!(err.code(), Some("23505"));
    assert_eq!(tx.transaction_status(), TransactionStatus::Failed);
    let err = expect_err(tx.commit(), "commit of a failed transaction");
    assert!(
        err.to_string()
            .contains("COMMIT rolled the transaction back"),
        "{err}"
    );
    let n = client
        .query_one("SELECT count(*) FROM tx_fail_t", &[])
        .and_then(|r| r.get::<i64>(0))
        .expect("count");
    assert_eq!(n, 0);
}

// ---------------------------------------------------------------------------------------
// Errors sorted by SQLSTATE

#[test]
fn a_unique_violation_is_permanent_and_names_the_constraint_and_table() {
    let mut client = superuser();
    table(
        &mut client,
        "unique_t",
        "k int CONSTRAINT unique_t_pk PRIMARY KEY",
    );
    client
        .execute("INSERT INTO unique_t VALUES ($1)", &[&1i32])
        .expect("first");
    let err = expect_err(
        client.execute("INSERT INTO unique_t VALUES ($1)", &[&1i32]),
        "second",
    );
    let db = err.as_db().expect("a server error");
    assert_eq!(db.code, "23505");
    assert_eq!(db.severity, "ERROR");
    assert_eq!(db.constraint.as_deref(), Some("unique_t_pk"));
    assert_eq!(db.table.as_deref(), Some("unique_t"));
    assert_eq!(db.detail.as_deref(), Some("Key (k)=(1) already exists."));
    assert_eq!(err.class(), Class::Permanent);
    let text = err.to_string();
    assert!(
        text.starts_with("postgresql ERROR 23505 (unique_violation): duplicate key value violates unique constraint \"unique_t_pk\""),
        "{text}"
    );
    assert!(text.contains("constraint unique_t_pk"), "{text}");
    assert!(!client.is_broken());
}

#[test]
fn a_trigger_raise_exception_is_permanent_and_carries_its_message() {
    let mut client = superuser();
    table(&mut client, "trigger_t", "k int, status text");
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION refuse_failed() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.status = 'failed' THEN
                 RAISE EXCEPTION 'the backend refuses status % for row %', NEW.status, NEW.k;
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON trigger_t
               FOR EACH ROW EXECUTE FUNCTION refuse_failed();",
        )
        .expect("trigger");
    client
        .execute(
            "INSERT INTO trigger_t VALUES ($1, $2)",
            &[&1i32, &"pending"],
        )
        .expect("allowed");
    let err = expect_err(
        client.execute(
            "UPDATE trigger_t SET status = $1 WHERE k = $2",
            &[&"failed", &1i32],
        ),
        "refused by the trigger",
    );
    let db = err.as_db().expect("a server error");
    assert_eq!(db.code, "P0001");
    assert_eq!(db.message, "the backend refuses status failed for row 1");
    assert!(
        db.context
            .as_deref()
            .unwrap_or("")
            .contains("refuse_failed"),
        "{db}"
    );
    assert_eq!(err.class(), Class::Permanent);
}

#[test]
fn a_schema_error_is_permanent() {
    let mut client = superuser();
    let err = expect_err(client.query("SELECT * FROM no_such_table", &[]), "no table");
    assert_eq!(err.code(), Some("42P01"));
    assert_eq!(err.class(), Class::Permanent);
}

#[test]
fn a_serialization_failure_between_two_serializable_transactions_is_transient() {
    let mut setup = superuser();
    table(&mut setup, "serial_t", "k int PRIMARY KEY, v int");
    setup
        .execute("INSERT INTO serial_t VALUES (1, 0)", &[])
        .expect("row");
    let mut first = superuser();
    let mut second = superuser();

    let mut tx1 = first
        .transaction_with(Isolation::Serializable)
        .expect("begin 1");
    // The snapshot is taken by the first statement.
    tx1.query("SELECT v FROM serial_t WHERE k = 1", &[])
        .expect("read 1");
    let mut tx2 = second
        .transaction_with(Isolation::Serializable)
        .expect("begin 2");
    tx2.execute("UPDATE serial_t SET v = v + 1 WHERE k = 1", &[])
        .expect("update 2");
    tx2.commit().expect("commit 2");
    let err = expect_err(
        tx1.execute("UPDATE serial_t SET v = v + 10 WHERE k = 1", &[]),
        "an update of a row changed since the snapshot",
    );
    assert_eq!(err.code(), Some("40001"), "{err}");
    assert_eq!(err.class(), Class::Transient);
    assert!(err.to_string().contains("retry it"), "{err}");
    drop(tx1);
    assert_eq!(first.transaction_status(), TransactionStatus::Idle);
}

#[test]
fn lock_timeout_while_another_session_holds_the_row_is_transient() {
    let mut setup = superuser();
    table(&mut setup, "locked_t", "k int PRIMARY KEY, v int");
    setup
        .execute("INSERT INTO locked_t VALUES (1, 0)", &[])
        .expect("row");
    let mut holder = superuser();
    let mut tx = holder.transaction().expect("begin");
    tx.query("SELECT v FROM locked_t WHERE k = 1 FOR UPDATE", &[])
        .expect("lock");

    let mut waiter = superuser();
    waiter
        .batch_execute("SET lock_timeout = '100ms'")
        .expect("set");
    let err = expect_err(
        waiter.execute("UPDATE locked_t SET v = 1 WHERE k = 1", &[]),
        "an update of a locked row",
    );
    assert_eq!(err.code(), Some("55P03"), "{err}");
    assert_eq!(err.class(), Class::Transient);
    tx.rollback().expect("release");
    waiter
        .execute("UPDATE locked_t SET v = 1 WHERE k = 1", &[])
        .expect("now free");
}

#[test]
fn a_deadlock_is_transient() {
    let mut setup = superuser();
    table(&mut setup, "deadlock_t", "k int PRIMARY KEY, v int");
    setup
        .execute("INSERT INTO deadlock_t VALUES (1, 0), (2, 0)", &[])
        .expect("rows");
    // Each session locks one row, then wants the other's: the server (deadlock_timeout
    // 200 ms) cancels one of them with 40P01.
    let (locked_tx, locked_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let other = thread::spawn(move || {
        let mut client = superuser();
        let mut tx = client.transaction().expect("begin");
        tx.execute("UPDATE deadlock_t SET v = 2 WHERE k = 2", &[])
            .expect("lock 2");
        locked_tx.send(()).expect("send");
        go_rx.recv().expect("recv");
        let result = tx.execute("UPDATE deadlock_t SET v = 2 WHERE k = 1", &[]);
        let code = result
            .as_ref()
            .err()
            .and_then(|e| e.code().map(str::to_owned));
        let class = result.as_ref().err().map(Error::class);
        drop(tx);
        (code, class)
    });
    let mut client = superuser();
    let mut tx = client.transaction().expect("begin");
    tx.execute("UPDATE deadlock_t SET v = 1 WHERE k = 1", &[])
        .expect("lock 1");
    locked_rx.recv().expect("the other session holds row 2");
    go_tx.send(()).expect("go");
    // Wait until the other session is blocked on row 1, so that our request closes the
    // cycle (a condition awaited, not a sleep).
    pg_testkit::PgCluster::wait_until(
        "the other session to wait for row 1",
        Duration::from_secs(10),
        || {
            let waiting = shared().psql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE deadlock_t%'",
        );
            (waiting == "1").then_some(())
        },
    );
    let mine = tx.execute("UPDATE deadlock_t SET v = 1 WHERE k = 2", &[]);
    let my_code = mine
        .as_ref()
        .err()
        .and_then(|e| e.code().map(str::to_owned));
    let my_class = mine.as_ref().err().map(Error::class);
    drop(tx);
    let (their_code, their_class) = other.join().expect("the other session");
    let outcomes = [(my_code, my_class), (their_code, their_class)];
    let deadlocks: Vec<_> = outcomes
        .iter()
        .filter(|(code, _)| code.as_deref() == Some("40P01"))
        .collect();
    assert_eq!(
        deadlocks.len(),
        1,
        "exactly one session is cancelled: {outcomes:?}"
    );
    assert_eq!(deadlocks[0].1, Some(Class::Transient));
}

#[test]
fn a_connection_killed_by_pg_terminate_backend_gives_a_transient_error_and_a_new_one_works() {
    let mut victim = superuser();
    let pid = victim.backend_pid();
    assert_eq!(
        shared().psql(&format!("SELECT pg_terminate_backend({pid})")),
        "t"
    );
    let err = expect_err(
        victim.query("SELECT 1", &[]),
        "a query on a killed connection",
    );
    assert_eq!(err.class(), Class::Transient, "{err}");
    // Either the server's FATAL 57P01 is read, or the closed socket.
    assert!(
        err.code() == Some("57P01") || matches!(err, Error::Io { .. }),
        "{err:?}"
    );
    assert!(victim.is_broken());
    assert!(matches!(victim.is_valid(), Err(Error::Closed)));
    let mut fresh = superuser();
    fresh.is_valid().expect("a new connection works");
}

#[test]
fn the_r2d2_pool_replaces_a_broken_connection() {
    let connector = blocking_postgres::Connector::new(config(
        "scram_user",
        Some(SCRAM_PASSWORD),
        SslMode::Require,
    ))
    .expect("config");
    let pool = r2d2::Pool::builder()
        .max_size(2)
        .build(blocking_postgres::Manager::new(connector))
        .expect("pool");
    let pid = {
        let mut conn = pool.get().expect("a connection");
        conn.is_valid().expect("valid");
        conn.backend_pid()
    };
    shared().psql(&format!("SELECT pg_terminate_backend({pid})"));
    // The pool's next connection works, whichever it hands out: a killed one fails its
    // check on checkout (r2d2 tests on checkout by default) and is replaced.
    for _ in 0..3 {
        let mut conn = pool.get().expect("a connection");
        conn.query_one("SELECT 1::int4", &[]).expect("works");
        assert_ne!(conn.backend_pid(), pid);
    }
}
