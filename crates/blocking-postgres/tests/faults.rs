//! Faults: a real server restarted or stopped under a connection (a cluster of its own,
//! crates/pg-testkit), and fake servers on a raw TCP listener that send what a real one never
//! does (a man in the middle, a hostile or broken server): huge length prefixes, an
//! "authenticated" before the proof, a request for a cleartext password over plaintext,
//! bytes injected after the TLS answer, silence.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use blocking_postgres::{Class, Client, Config, Error, Password, SslMode};
use pg_testkit::{PgCluster, SCRAM_PASSWORD};

// ---------------------------------------------------------------------------------------
// A real server, restarted and stopped

#[test]
fn a_server_restart_mid_use_gives_a_transient_error_and_reconnecting_works() {
    let cluster = PgCluster::start();
    let mut config = Config::new(cluster.host(), "scram_user");
    config.port = cluster.port();
    config.dbname = Some("postgres".to_owned());
    config.password = Some(Password::new(SCRAM_PASSWORD));
    config.sslmode = SslMode::Require;
    config.connect_timeout = Duration::from_secs(20);
    let connector = blocking_postgres::Connector::new(config).expect("config");
    let mut client = connector.connect().expect("connect");
    client.is_valid().expect("valid");

    cluster.restart();
    let err = client
        .query("SELECT 1", &[])
        .expect_err("the old session is gone");
    assert_eq!(err.class(), Class::Transient, "{err:?}");
    // A fast shutdown sends FATAL 57P01 before closing; we may also only see the close.
    assert!(
        err.code() == Some("57P01") || matches!(err, Error::Io { .. }),
        "{err:?}"
    );
    assert!(client.is_broken());
    let mut client = connector.connect().expect("reconnect after the restart");
    client.is_valid().expect("valid");

    cluster.stop();
    let err = connector.connect().expect_err("no server");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert_eq!(err.class(), Class::Transient);
    assert!(err.to_string().contains("is the server running"), "{err}");
    cluster.start_again();
    connector
        .connect()
        .expect("connect after the start")
        .is_valid()
        .expect("valid");
}

// ---------------------------------------------------------------------------------------
// Fake servers

/// A listener on 127.0.0.1 whose first connection is handed to `script`.
fn fake_server<T: Send + 'static>(
    script: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (u16, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        script(stream)
    });
    (port, handle)
}

fn config_for(port: u16, sslmode: SslMode) -> Config {
    let mut config = Config::new("127.0.0.1", "app");
    config.port = port;
    config.sslmode = sslmode;
    config.password = Some(Password::new("app-password"));
    config.connect_timeout = Duration::from_secs(10);
    config
}

/// Reads the start-up message (or SSLRequest): length-prefixed, no tag. Its body.
fn read_startup(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("start-up length");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
    stream.read_exact(&mut body).expect("start-up body");
    body
}

/// Reads one frontend message: (tag, body); `None` at EOF.
fn read_message(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).ok()?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).ok()?;
    Some((header[0], body))
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn auth_request(code: i32, data: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    message(b'R', &body)
}

/// AuthenticationOk, BackendKeyData, ReadyForQuery(idle).
fn accept_login(stream: &mut TcpStream) {
    let mut out = auth_request(0, &[]);
    out.extend(message(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
    out.extend(message(b'Z', b"I"));
    stream.write_all(&out).expect("write");
}

/// Every frontend message until the client hangs up.
fn read_until_eof(stream: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut messages = Vec::new();
    while let Some(m) = read_message(stream) {
        messages.push(m);
    }
    messages
}

#[test]
fn a_huge_length_before_authentication_is_refused_at_once_without_reading_it() {
    let (port, server) = fake_server(|mut s| {
        read_startup(&mut s);
        // An authentication request claiming 2 GiB, and then nothing: a client that
        // allocated or waited for the body would hang until its timeout.
        let mut header = vec![b'R'];
        header.extend_from_slice(&0x7fff_fff0u32.to_be_bytes());
        s.write_all(&header).expect("write");
        read_until_eof(&mut s);
    });
    let started = Instant::now();
    let err = Client::connect(config_for(port, SslMode::Disable)).expect_err("refused");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    match &err {
        Error::MessageTooLarge {
            tag,
            len,
            limit,
            before_auth,
            ..
        } => {
            assert_eq!((*tag, *len, *before_auth), (b'R', 0x7fff_fff0 - 4, true));
            assert_eq!(*limit, blocking_postgres::MAX_MESSAGE_LEN_BEFORE_AUTH);
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert!(err.to_string().contains("before authentication"), "{err}");
    assert_eq!(err.class(), Class::Permanent);
    server.join().expect("fake server");
}

#[test]
fn a_huge_row_after_authentication_is_refused_at_max_message_len() {
    let (port, server) = fake_server(|mut s| {
        read_startup(&mut s);
        accept_login(&mut s);
        let (tag, _) = read_message(&mut s).expect("a query");
        assert_eq!(tag, b'Q');
        // One text column, then a DataRow claiming 1 GiB.
        let mut description = 1u16.to_be_bytes().to_vec();
        description.extend_from_slice(b"big\0");
        description.extend_from_slice(&[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 255, 255, 255, 255, 255, 255, 0, 0,
        ]);
        let mut out = message(b'T', &description);
        out.push(b'D');
        out.extend_from_slice(&(1u32 << 30).to_be_bytes());
        s.write_all(&out).expect("write");
        read_until_eof(&mut s);
    });
    let mut config = config_for(port, SslMode::Disable);
    config.max_message_len = 1 << 20;
    let mut client = Client::connect(config).expect("login");
    let err = client.simple_query("SELECT big").expect_err("refused");
    match &err {
        Error::MessageTooLarge {
            tag,
            limit,
            before_auth,
            ..
        } => assert_eq!((*tag, *limit, *before_auth), (b'D', 1 << 20, false)),
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert!(client.is_broken());
    drop(client);
    server.join().expect("fake server");
}

#[test]
fn sslmode_require_refuses_a_server_that_declines_tls_and_prefer_goes_on_without() {
    let (port, server) = fake_server(|mut s| {
        assert_eq!(
            read_startup(&mut s),
            [4, 210, 22, 47],
            "SSLRequest (80877103)"
        );
        s.write_all(b"N").expect("write");
        read_until_eof(&mut s)
    });
    let err = Client::connect(config_for(port, SslMode::Require)).expect_err("refused");
    assert!(matches!(err, Error::TlsRefused { .. }), "{err:?}");
    assert!(
        err.to_string().contains("sslmode=require requires TLS"),
        "{err}"
    );
    assert!(
        server.join().expect("fake server").is_empty(),
        "nothing sent after 'N'"
    );

    let (port, server) = fake_server(|mut s| {
        read_startup(&mut s);
        s.write_all(b"N").expect("write");
        let startup = read_startup(&mut s);
        accept_login(&mut s);
        read_until_eof(&mut s);
        startup
    });
    let client = Client::connect(config_for(port, SslMode::Prefer)).expect("plaintext");
    assert_eq!(client.session().tls, None);
    drop(client);
    let startup = server.join().expect("fake server");
    assert_eq!(&startup[..4], &[0, 3, 0, 0], "protocol 3.0");
}

#[test]
fn a_cleartext_password_request_over_plaintext_gets_no_password() {
    let (port, server) = fake_server(|mut s| {
        read_startup(&mut s);
        s.write_all(&auth_request(3, &[])).expect("write");
        read_until_eof(&mut s)
    });
    let err = Client::connect(config_for(port, SslMode::Disable)).expect_err("refused");
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(
        err.to_string().contains("refused without sending it"),
        "{err}"
    );
    let received = server.join().expect("fake server");
    assert!(
        received.iter().all(|(tag, _)| *tag != b'p'),
        "a password message was sent: {received:?}"
    );
    let everything: Vec<u8> = received.iter().flat_map(|(_, b)| b.clone()).collect();
    assert!(!everything.windows(12).any(|w| w == b"app-password"));
}

#[test]
fn an_authentication_ok_before_the_servers_scram_proof_is_refused() {
    let (port, server) = fake_server(|mut s| {
        read_startup(&mut s);
        s.write_all(&auth_request(10, b"SCRAM-SHA-256\0\0"))
            .expect("write");
        let (tag, _) = read_message(&mut s).expect("SASLInitialResponse");
        assert_eq!(tag, b'p');
        // "Authenticated", without the challenge or the server's signature.
        accept_login(&mut s);
        read_until_eof(&mut s);
    });
    let err = Client::connect(config_for(port, SslMode::Disable)).expect_err("refused");
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("before proving that it knows the password"),
        "{err}"
    );
    server.join().expect("fake server");
}

#[test]
fn bytes_injected_after_the_tls_answer_are_not_taken_as_the_server() {
    // CVE-2021-23222: a man in the middle answers 'S' and appends plaintext messages of
    // its own, hoping the client reads them as if they came through TLS.
    let (port, server) = fake_server(|mut s| {
        read_startup(&mut s);
        let mut out = b"S".to_vec();
        out.extend(auth_request(0, &[]));
        out.extend(message(b'Z', b"I"));
        s.write_all(&out).expect("write");
        read_until_eof(&mut s);
    });
    let err = Client::connect(config_for(port, SslMode::Require)).expect_err("refused");
    assert!(
        matches!(err, Error::Tls { .. } | Error::Io { .. }),
        "{err:?}"
    );
    server.join().expect("fake server");
}

#[test]
fn a_server_that_never_answers_times_out_within_connect_timeout() {
    let (port, server) = fake_server(|mut s| {
        read_startup(&mut s);
        read_until_eof(&mut s);
    });
    let mut config = config_for(port, SslMode::Disable);
    config.connect_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = Client::connect(config).expect_err("timed out");
    let elapsed = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    assert_eq!(err.class(), Class::Transient);
    assert!(err.to_string().contains("within 300ms"), "{err}");
    server.join().expect("fake server");
}
